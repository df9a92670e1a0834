"""Helpers shared by the benchmarks: device, sizes, timing closures, peak memory.

Each benchmark file builds its cases with one setup factory and times every
provider (brainkern and each baseline that docs/design.md names for its op) in the same run;
``benchmarks/conftest.py`` prints the ratios per group at the end and, with
``BRAINKERN_BENCH_MD=path``, writes them as a Markdown table.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def bench_device() -> torch.device:
    """``BRAINKERN_BENCH_DEVICE`` or CUDA when present, else the CPU."""
    name = os.environ.get("BRAINKERN_BENCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_smoke(config) -> bool:
    """True when benchmarks run once for correctness only (``--benchmark-disable``)."""
    disabled = config.getoption("benchmark_disable", False)
    enabled = config.getoption("benchmark_enable", False)
    return bool(disabled and not enabled)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """A closure that runs ``fn`` and waits for the device, so wall time is real."""

    def run() -> None:
        fn()
        sync(device)

    return run


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def assert_matches(got, want, *, what: str, rtol: float = 1e-4) -> None:
    """Smoke-mode check that a provider computes what the reference computes.

    ``got`` and ``want`` are tensors or nested tuples / lists / dicts of tensors
    (an output, or the gradients of a backward), compared pairwise in float64 on
    the CPU by their norm-wise relative error ``||got - want|| / ||want||``: sums
    in another order differ by rounding element by element, while a wrong kernel
    (a bad index, a missing tile) is off by a sizeable fraction of the norm. A
    result whose reference is near zero while others are not (the gradient of a
    bias that BatchNorm cancels is pure rounding noise) is measured against a
    thousandth of the largest reference norm instead. A benchmark calls this
    before timing so that a fast but wrong kernel cannot pass CI's smoke run.

    Raises:
        AssertionError: the structures or shapes differ, or an error exceeds ``rtol``;
            the message names ``what`` and the result's index.
    """
    a, b = _tensors(got), _tensors(want)
    assert len(a) == len(b) and a, f"{what}: {len(a)} result tensors against the reference's {len(b)}"
    a = [t.detach().double().cpu() for t in a]
    b = [t.detach().double().cpu() for t in b]
    floor = 1e-3 * max(torch.linalg.vector_norm(y).item() for y in b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.shape == y.shape, f"{what}, result {i}: shape {tuple(x.shape)}, reference {tuple(y.shape)}"
        scale = max(torch.linalg.vector_norm(y).item(), floor, 1e-30)
        err = torch.linalg.vector_norm(x - y).item() / scale
        assert err <= rtol, f"{what}, result {i}: norm-wise relative error {err:.3g} > {rtol:g}"


def _rss_field(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory in bytes that one call of ``fn`` adds over what was held before.

    On CUDA: ``torch.cuda.max_memory_allocated`` above the starting allocation.
    On the CPU: the process's peak resident set (VmHWM, reset through
    ``/proc/self/clear_refs``) above the resident set before the call; memory the
    allocator already holds is reused and not counted, so this is a lower bound.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return -1
    start = _rss_field("VmRSS")
    fn()
    return max(_rss_field("VmHWM") - start, 0)


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs forward.

    This is the activation memory a training step keeps alive between its
    forward and backward passes (storages counted once).
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(benchmark, *, group: str, provider: str, device: torch.device, **info) -> None:
    """Name a benchmark's group and provider and record where it ran."""
    benchmark.group = group
    benchmark.extra_info.update(
        provider=provider,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        commit=_commit(),
        threads=torch.get_num_threads(),
        **info,
    )


class _Packed:
    """What :class:`SavedTensorMeter` stores in place of a saved tensor: the tensor and
    the storage it counts against; released (and uncounted) when autograd drops it."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, tensor: torch.Tensor, key: tuple[str, int], meter: SavedTensorMeter) -> None:
        self.tensor = tensor
        self.key = key
        self.meter = meter

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Bytes that autograd holds for backward while the meter is active: live, peak and total.

    Inside ``with meter:`` every tensor an op saves for backward (including the graph a
    ``create_graph=True`` backward builds for a second backward) is counted against its
    storage, each distinct storage once however many saved tensors (views, the same
    input of several ops) refer to it. A storage stops counting when autograd releases
    the last saved tensor on it (after the backward that used it). ``live`` is the
    bytes counted now, ``peak`` the most counted at any moment (the activation memory
    a training step needs between its forwards and backwards), ``total`` every
    storage's bytes each time it started to count (the sum over all forward-backward
    passes).

    Storages of ``exclude`` (a model's parameters, counted as weights elsewhere) and
    empty storages are not counted. Not seen: what a checkpointed block saves inside
    itself (``torch.utils.checkpoint`` installs its own hooks there, keeps only the
    block's inputs, which are counted, and recomputes the rest during backward).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._skip = {self._key(t) for t in exclude}
        self._refs: dict[tuple[str, int], list[int]] = {}
        self.live = 0
        self.peak = 0
        self.total = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    @staticmethod
    def _key(t: torch.Tensor) -> tuple[str, int]:
        return (t.device.type, t.untyped_storage().data_ptr())

    def _pack(self, t: torch.Tensor) -> object:
        nbytes = t.untyped_storage().nbytes()
        key = self._key(t)
        if nbytes == 0 or key in self._skip:
            return t
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [0, nbytes]
            self.live += nbytes
            self.total += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        return _Packed(t, key, self)

    @staticmethod
    def _unpack(packed: object) -> torch.Tensor:
        return packed.tensor if isinstance(packed, _Packed) else packed

    def _release(self, key: tuple[str, int]) -> None:
        entry = self._refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            del self._refs[key]
            self.live -= entry[1]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        hooks, self._hooks = self._hooks, None
        hooks.__exit__(*exc)


def adam_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes of weights, gradients and Adam's two moments of ``params``: 4 tensors of
    each parameter's size and dtype (Adam's step counters, one scalar each, left out)."""
    return sum(4 * p.numel() * p.element_size() for p in params)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``"unknown"`` where it has none)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
