"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops.resize_conv3d import (
    fold_resize_conv_weight,
    fold_resize_conv_weight_transposed,
    resize_conv3d,
    resize_conv3d_reference,
)

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "fold_resize_conv_weight",
    "fold_resize_conv_weight_transposed",
    "forced_backend",
    "resize_conv3d",
    "resize_conv3d_reference",
    "use_backend",
]
