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

from brainkern.reconstruct.features import FeatureNet, feature_vector, load_feature_net, train_feature_net
from brainkern.reconstruct.identify import identify, similarity_matrix
from brainkern.reconstruct.loss import ReconstructionLoss
from brainkern.reconstruct.model import (
    LatentEnsemble,
    fit_latent_ensemble,
    nearest_training,
    reconstruct,
    ridge_pixels,
)
from brainkern.reconstruct.pipeline import load_config, run
from brainkern.reconstruct.responses import GaborEncoder, load_responses, simulate, simulate_responses

__all__ = [
    "FeatureNet",
    "GaborEncoder",
    "LatentEnsemble",
    "ReconstructionLoss",
    "feature_vector",
    "fit_latent_ensemble",
    "identify",
    "load_config",
    "load_feature_net",
    "load_responses",
    "nearest_training",
    "reconstruct",
    "ridge_pixels",
    "run",
    "similarity_matrix",
    "simulate",
    "simulate_responses",
    "train_feature_net",
]
