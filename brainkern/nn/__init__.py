"""Layers built on :mod:`brainkern.ops`."""

from brainkern.nn.spectral_norm import SNConv2d, SNConv3d, SNLinear, spectral_norm_update

__all__ = [
    "SNConv2d",
    "SNConv3d",
    "SNLinear",
    "spectral_norm_update",
]
