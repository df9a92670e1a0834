"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "forced_backend",
    "use_backend",
]
