"""Metrics and reports for synthetic brain volumes.

The picture functions import matplotlib only when called, so importing
``brainkern.evaluate`` stays cheap.
"""

from brainkern.evaluate.generation import (
    batch_mmd2,
    format_table,
    generation_table,
    matched_noise,
    ms_ssim_diversity,
)
from brainkern.evaluate.ms_ssim import ms_ssim3d
from brainkern.evaluate.pictures import loss_curves, triplanar_mosaic

__all__ = [
    "batch_mmd2",
    "format_table",
    "generation_table",
    "loss_curves",
    "matched_noise",
    "ms_ssim3d",
    "ms_ssim_diversity",
    "triplanar_mosaic",
]
