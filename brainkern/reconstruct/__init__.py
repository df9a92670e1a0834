"""Seeliger et al. (2018): reconstructing seen images from brain responses through a fixed GAN.

A DCGAN trained on the stimulus domain (``seeliger-dcgan``, :mod:`brainkern.models.seeliger`)
is the image prior; a linear map from PCA-reduced voxel responses to its latent ``z`` on the
unit sphere is trained with an image-space loss (pixel, feature presence, feature magnitude of
a feature network trained on the domain); an ensemble averages ``z``; pairwise
identification judges the reconstructions. ``python -m brainkern.reconstruct`` runs it all.

Modules: :mod:`~brainkern.reconstruct.features` (the feature network),
:mod:`~brainkern.reconstruct.loss` (the image-space loss),
:mod:`~brainkern.reconstruct.responses` (the Gabor-wavelet voxel simulator, a loader for your
responses, PCA), :mod:`~brainkern.reconstruct.model` (the latent ensemble and the baselines),
:mod:`~brainkern.reconstruct.identify` (pairwise identification),
:mod:`~brainkern.reconstruct.pictures`, :mod:`~brainkern.reconstruct.human` (the human pairwise
test on the Turing page), :mod:`~brainkern.reconstruct.pipeline` (the experiment). The stimulus
domains live in :mod:`brainkern.data.stimuli`.
"""

from brainkern._lazy import lazy_exports

_EXPORTS = {
    "FeatureNet": "features",
    "feature_vector": "features",
    "load_feature_net": "features",
    "train_feature_net": "features",
    "identify": "identify",
    "similarity_matrix": "identify",
    "ReconstructionLoss": "loss",
    "LatentEnsemble": "model",
    "fit_latent_ensemble": "model",
    "nearest_training": "model",
    "reconstruct": "model",
    "ridge_pixels": "model",
    "load_config": "pipeline",
    "run": "pipeline",
    "GaborEncoder": "responses",
    "load_responses": "responses",
    "simulate": "responses",
    "simulate_responses": "responses",
}

__all__ = sorted(_EXPORTS)

# Loaded on first use: importing one module (e.g. the loss) does not pull in the pipeline's
# dependencies (yaml, scikit-learn, matplotlib).
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
