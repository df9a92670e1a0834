"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.spectral_norm import SNConv2d, SNConv3d, SNLinear, spectral_norm_update

__all__ = [
    "SNConv2d",
    "SNConv3d",
    "SNLinear",
    "spectral_norm_update",
from brainkern.nn.pixel_shuffle import PixelShuffle3d, PixelUnshuffle3d, icnr_

__all__ = [
    "PixelShuffle3d",
    "PixelUnshuffle3d",
    "icnr_",
]
