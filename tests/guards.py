"""Guards that make a kernel's out-of-bounds write, or a host synchronisation, fail a test.

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
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


# ----------------------------------------------------------------------------- host synchronisation
#
# A GPU training step should only queue work. Every ``.item()``, every tensor built
# from host data, every data-dependent shape and every blocking copy between devices
# makes the host wait for the device. There is no GPU in CI, so ``recording()``
# finds these places on the CPU: a TorchDispatchMode records the ATen ops that read
# tensor data on the host or block on the device, and patches record the tensor
# methods that read memory without dispatching (``tolist``, ``numpy``).

aten = torch.ops.aten

# ATen ops that read tensor data on the host, or whose output shape depends on it.
_SYNCING = {
    aten._local_scalar_dense.default: "a tensor read as a Python number (item, float, int, bool)",
    aten.item.default: "a tensor read as a Python number (item)",
    aten.is_nonzero.default: "bool() of a tensor",
    aten.equal.default: "torch.equal",
    aten.allclose.default: "torch.allclose",
    aten.nonzero.default: "nonzero: a data-dependent shape",
    aten.masked_select.default: "masked_select: a data-dependent shape",
    aten.lift_fresh.default: "a tensor made from host data (torch.tensor(...))",
    aten.lift_fresh_copy.default: "a tensor made from host data (torch.tensor(...))",
}
_DATA_DEPENDENT = ("_unique", "_unique2", "unique_dim", "unique_consecutive")

# Frames that say nothing about where a sync comes from.
_NOISE = ("/torch/", "/_pytest/", "/pluggy/", "/tests/guards.py", "/tests/test_host_sync.py")


@dataclass
class Event:
    """One recorded sync: what it was and the innermost frames that caused it."""

    what: str
    stack: list[str]

    def __str__(self) -> str:
        return self.what + "".join(f"\n      {line}" for line in self.stack)


def _short_stack(limit: int = 5) -> list[str]:
    frames = [f for f in traceback.extract_stack()[:-3] if not any(n in f.filename for n in _NOISE)]
    return [f"{f.filename}:{f.lineno} in {f.name}: {f.line}" for f in frames[-limit:]]


class SyncRecorder(TorchDispatchMode):
    """Records every op that makes the host wait for a device, with a short stack.

    Args:
        host_scalars: tensors that live on the host by design (``torch.optim``'s
            step counters, kept on the CPU unless ``capturable``): reading them is
            not a device sync.
    """

    def __init__(self, host_scalars: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.events: list[Event] = []
        self._host = {id(t) for t in host_scalars}

    def record(self, what: str) -> None:
        self.events.append(Event(what, _short_stack()))

    def _why(self, func, args, kwargs) -> str | None:
        if func in _SYNCING:
            if func is aten._local_scalar_dense.default and id(args[0]) in self._host:
                return None
            return f"{func}: {_SYNCING[func]}"
        name = func.overloadpacket.__name__
        if name in _DATA_DEPENDENT or (name == "repeat_interleave" and "output_size" not in kwargs):
            return f"{func}: a data-dependent shape"
        if name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            return f"{func} with a boolean mask: a data-dependent shape"
        if not kwargs.get("non_blocking", False):
            if name == "copy_" and args[0].device != args[1].device:
                return f"{func}: a blocking copy {args[1].device} -> {args[0].device}"
            target = kwargs.get("device")
            if name == "_to_copy" and target is not None and torch.device(target) != args[0].device:
                return f"{func}: a blocking copy {args[0].device} -> {target}"
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = self._why(func, args, kwargs)
        if why is not None:
            self.record(why)
        if func.namespace == "brainkern":
            # brainkern's ops are torch.library custom ops: dispatched as one call, their
            # insides (the backend's ATen ops) would stay unseen. Run the Python body
            # under this mode instead, so a sync inside an op is recorded too.
            from torch._library.custom_ops import _maybe_get_opdef

            opdef = _maybe_get_opdef(func)
            if opdef is not None:
                with self:
                    return opdef._init_fn(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def recording(host_scalars: tuple[torch.Tensor, ...] = ()) -> Iterator[SyncRecorder]:
    """Within the block, host syncs are recorded (see :class:`SyncRecorder`)."""
    recorder = SyncRecorder(host_scalars)
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def spy(name: str, original: Callable) -> Callable:
        def method(self, *args, **kwargs):
            recorder.record(f"Tensor.{name}(): reads the tensor's data on the host")
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, spy(name, original))
    try:
        with recorder:
            yield recorder
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
