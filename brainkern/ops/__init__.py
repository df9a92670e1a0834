"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops.mmd import mmd2, mmd2_batched

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "forced_backend",
    "mmd2",
    "mmd2_batched",
    "use_backend",
]
