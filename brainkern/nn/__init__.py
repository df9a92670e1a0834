"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.conv import Conv3d
from brainkern.nn.pixel_shuffle import PixelShuffle3d, PixelUnshuffle3d, icnr_
from brainkern.nn.resize_conv import ResizeConv3d
from brainkern.nn.spectral_norm import SNConv2d, SNConv3d, SNLinear, has_spectral_norm, spectral_norm_update

__all__ = [
    "Conv3d",
    "PixelShuffle3d",
    "PixelUnshuffle3d",
    "ResizeConv3d",
    "SNConv2d",
    "SNConv3d",
    "SNLinear",
    "has_spectral_norm",
    "icnr_",
    "spectral_norm_update",
]
