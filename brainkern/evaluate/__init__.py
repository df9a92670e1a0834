"""Metrics and reports for synthetic brain volumes."""

from brainkern.evaluate.ms_ssim import ms_ssim3d

__all__ = ["ms_ssim3d"]
