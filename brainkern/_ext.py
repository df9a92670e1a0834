"""Lazy access to the compiled extension ``brainkern._C``.

The extension is imported on first use, never at ``import brainkern``, so a
missing or broken build only matters to the ``cpu`` and ``cuda`` backends, which
report why they are unavailable.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch


@functools.cache
def _load() -> tuple[ModuleType | None, str | None]:
    try:
        from brainkern import _C  # noqa: PLC0415  (registers torch.ops.brainkern.*)
    except ImportError as exc:  # not built, or built against another torch
        return None, (
            f"brainkern._C could not be imported ({exc}); build it with "
            "`pip install --no-build-isolation -e .` (or `./dev setup`)"
        )
    built = getattr(_C, "torch_version", None)
    running = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    if built is not None and built != running:
        return None, f"brainkern._C was built against torch {built}, but torch {running} is running"
    return _C, None


def extension_status() -> bool | str:
    """``True`` when ``brainkern._C`` is importable, else the reason it is not."""
    module, reason = _load()
    return True if module is not None else reason  # type: ignore[return-value]


def cuda_status() -> bool | str:
    """``True`` when the CUDA kernels of ``brainkern._C`` can run here, else why not."""
    module, reason = _load()
    if module is None:
        return reason  # type: ignore[return-value]
    if not module.cuda_built():
        return "brainkern._C was built without CUDA (no toolkit or a CPU-only torch at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    return True


def op(name: str):
    """The compiled op ``torch.ops.brainkern.<name>``; raises ``RuntimeError`` if missing."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    try:
        return getattr(torch.ops.brainkern, name)
    except (AttributeError, RuntimeError) as exc:
        raise RuntimeError(f"brainkern._C has no op {name!r}; rebuild the extension") from exc
