"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops.mmd import mmd2, mmd2_batched
from brainkern.ops.pixel_shuffle3d import (
    pixel_shuffle3d,
    pixel_shuffle3d_reference,
    pixel_unshuffle3d,
    pixel_unshuffle3d_reference,
)
from brainkern.ops.spectral_norm import spectral_norm_step, spectral_norm_step_reference, spectral_normalize

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "forced_backend",
    "mmd2",
    "mmd2_batched",
    "spectral_norm_step",
    "spectral_norm_step_reference",
    "spectral_normalize",
    "pixel_shuffle3d",
    "pixel_shuffle3d_reference",
    "pixel_unshuffle3d",
    "pixel_unshuffle3d_reference",
    "use_backend",
]
