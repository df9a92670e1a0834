"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.pixel_shuffle import PixelShuffle3d, PixelUnshuffle3d, icnr_

__all__ = [
    "PixelShuffle3d",
    "PixelUnshuffle3d",
    "icnr_",
]
