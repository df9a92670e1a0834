"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops.conv3d_gradfix import conv3d_gradfix, no_weight_gradients
from brainkern.ops.gradient_penalty import gradient_penalty, gradient_penalty_reference

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "conv3d_gradfix",
    "forced_backend",
    "gradient_penalty",
    "gradient_penalty_reference",
    "no_weight_gradients",
    "use_backend",
]
