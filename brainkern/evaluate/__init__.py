"""Metrics and reports for synthetic brain volumes.

- :func:`ms_ssim3d` (``ms_ssim``): 3D multi-scale SSIM;
- :func:`batch_mmd2`, :func:`ms_ssim_diversity`, :func:`matched_noise`,
  :func:`generation_table`, :func:`format_table` (``generation``): Kwon et al.'s
  Table 1 (seed 001);
- :func:`kernel_mmd2`, :func:`memorisation`, :func:`rbf_bandwidths`
  (``distribution``): unbiased RBF MMD^2 and KID on volumes, and the
  nearest-training-volume check, which the trivial generators of
  :mod:`brainkern.evaluate.baselines` (:func:`mean_volume`, :func:`voxel_gaussian`,
  :func:`training_copies`) cannot win;
- :func:`triplanar_mosaic`, :func:`loss_curves` (``pictures``): PNG pictures;
- :func:`resnet50_3d` (MedicalNet's 3D ResNet-50, weights from a checkpoint you give),
  :func:`fit_autoencoder` (the default ``autoencoder-3d`` extractor, trained on the
  training volumes), :func:`extract_features` (``features``): features of volumes;
- :func:`fid`, :func:`frechet_distance`, :func:`precision_recall`, :func:`feature_mmd2`,
  :func:`fidelity_metrics`, :func:`fidelity_table`, :func:`format_fidelity_table`,
  :func:`pca_scatter` (``fidelity``): King et al.'s (seed 003) FID, precision / recall
  and MMD^2 on 3D features, beside the trivial baselines, and the PCA picture;
- :func:`c2st` (``c2st``): a classifier two-sample test of real against synthetic 2D
  slices or 3D volumes (cross-validated accuracy, exact binomial CI, permutation p),
  the machine observer beside Han et al.'s (seed 002) Visual Turing Test;
- :func:`prepare_session`, :func:`serve`, :func:`read_answers`, :func:`turing_table`,
  :func:`format_turing_table` (``turing``): that Visual Turing Test as a local web page
  (durable answers, resumable sessions) and its Table 1 report, also reachable as
  ``python -m brainkern.evaluate turing SOURCE`` and ``turing-report SESSION``.

What a paper compares with these metrics is an experiment, in
:mod:`brainkern.experiment`: Kwon et al.'s Table 1 for a training run is
``python -m brainkern.experiment kwon2019-table1 RUN_DIR``, also reachable as
``python -m brainkern.evaluate RUN_DIR``.

Submodules load on first use, so ``import brainkern.evaluate`` (and the command
line's ``--help``) needs neither torch nor matplotlib.
"""

from __future__ import annotations

from brainkern._lazy import lazy_exports

_EXPORTS = {
    "batch_mmd2": "generation",
    "c2st": "c2st",
    "kernel_mmd2": "distribution",
    "make_baselines": "baselines",
    "mean_volume": "baselines",
    "memorisation": "distribution",
    "nearest_distances": "distribution",
    "rbf_bandwidths": "distribution",
    "training_copies": "baselines",
    "verdict": "generation",
    "voxel_gaussian": "baselines",
    "extract_features": "features",
    "feature_bandwidths": "fidelity",
    "feature_mmd2": "fidelity",
    "fid": "fidelity",
    "fidelity_metrics": "fidelity",
    "fidelity_table": "fidelity",
    "fit_autoencoder": "features",
    "format_fidelity_table": "fidelity",
    "format_table": "generation",
    "frechet_distance": "fidelity",
    "pca_scatter": "fidelity",
    "precision_recall": "fidelity",
    "resnet50_3d": "features",
    "generation_table": "generation",
    "loss_curves": "pictures",
    "matched_noise": "generation",
    "ms_ssim3d": "ms_ssim",
    "ms_ssim_diversity": "generation",
    "triplanar_mosaic": "pictures",
    "voxel_sd": "generation",
    "format_turing_table": "turing",
    "prepare_session": "turing",
    "read_answers": "turing",
    "serve": "turing",
    "turing_table": "turing",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
