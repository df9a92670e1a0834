"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.conv import Conv3d

__all__ = [
    "Conv3d",
]
