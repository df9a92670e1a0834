"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.resize_conv import ResizeConv3d

__all__ = [
    "ResizeConv3d",
]
