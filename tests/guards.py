"""Guards that make a kernel's out-of-bounds write fail a test.

A Triton kernel that stores one element past its output buffer corrupts the heap
and every assertion still passes; the process may die much later. Under the
interpreter (and on a GPU) a store goes to the raw address, so the fix is to give
the kernel an output that sits inside a larger buffer whose margins hold a known
bit pattern, and to check the margins after the call.

``poisoned_outputs(module)`` swaps the ``torch`` name of a kernel module (the
``brainkern.kernels.*`` launchers allocate their outputs with ``torch.empty``,
``torch.empty_like``, ``torch.zeros`` and ``torch.zeros_like``) for a shim whose
allocations are views into such buffers::

    from brainkern.kernels import pixel_shuffle3d as kmod

    with poisoned_outputs(kmod) as guard:
        y = kmod.pixel_shuffle3d(x, 2)
    assert guard.count > 0  # the launcher allocated through the shim

On leaving the block, every margin is compared bit for bit with the pattern; a
changed byte raises ``AssertionError`` naming the allocation's shape and side.
``torch.empty`` outputs keep their own interior poison too (callers that read
an unwritten element see the pattern, not zeros).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import torch

MARGIN_BYTES = 4096  # each side; larger than any tile a kernel writes in one step
_PATTERN = 0xA5  # byte value of the margins


def _size(args: tuple) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(int(s) for s in args[0])
    return tuple(int(s) for s in args)


class _Guard:
    def __init__(self) -> None:
        self.buffers: list[tuple[torch.Tensor, int, int, tuple[int, ...]]] = []

    @property
    def count(self) -> int:
        """How many allocations went through the shim."""
        return len(self.buffers)

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype | None, device) -> torch.Tensor:
        dtype = dtype or torch.get_default_dtype()
        device = torch.device(device) if device is not None else torch.device("cpu")
        item = torch.empty((), dtype=dtype).element_size()
        numel = 1
        for s in shape:
            numel *= s
        margin = MARGIN_BYTES // item
        raw = torch.full(((numel + 2 * margin) * item,), _PATTERN, dtype=torch.uint8, device=device)
        flat = raw.view(dtype)
        self.buffers.append((raw, margin * item, (margin + numel) * item, shape))
        return flat[margin : margin + numel].view(shape)

    def check(self) -> None:
        for raw, lo, hi, shape in self.buffers:
            for side, part in (("before", raw[:lo]), ("after", raw[hi:])):
                bad = (part != _PATTERN).nonzero()
                if bad.numel():
                    first = int(bad[0]) if side == "after" else lo - int(bad[-1])
                    raise AssertionError(
                        f"a kernel wrote {side} its output buffer of shape {shape}: "
                        f"{bad.numel()} margin bytes changed, the nearest {first} bytes from the edge"
                    )


class _PoisonTorch:
    """``torch`` with output allocators that sit inside poisoned buffers."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def empty(self, *size, dtype=None, device=None, **_kw) -> torch.Tensor:
        return self._guard.allocate(_size(size), dtype, device)

    def zeros(self, *size, dtype=None, device=None, **_kw) -> torch.Tensor:
        return self._guard.allocate(_size(size), dtype, device).zero_()

    def empty_like(self, t: torch.Tensor, *, dtype=None, device=None, **_kw) -> torch.Tensor:
        return self._guard.allocate(tuple(t.shape), dtype or t.dtype, device or t.device)

    def zeros_like(self, t: torch.Tensor, *, dtype=None, device=None, **_kw) -> torch.Tensor:
        return self.empty_like(t, dtype=dtype, device=device).zero_()


@contextlib.contextmanager
def poisoned_outputs(*modules: ModuleType) -> Iterator[_Guard]:
    """Within the block, the modules' ``torch.empty*`` / ``torch.zeros*`` outputs are guarded.

    Raises:
        AssertionError: on exit, when a kernel wrote into a margin.
    """
    guard = _Guard()
    shim = _PoisonTorch(guard)
    saved = [(m, m.torch) for m in modules]
    for m in modules:
        m.torch = shim
    try:
        yield guard
    finally:
        for m, t in saved:
            m.torch = t
    guard.check()
