"""Helpers shared by the benchmarks: device, sizes, timing closures, peak memory.

Each benchmark file builds its cases with one setup factory and times every
provider (brainkern and each baseline that docs/design.md names for its op) in the same run;
``benchmarks/conftest.py`` prints the ratios per group at the end and, with
``BRAINKERN_BENCH_MD=path``, writes them as a Markdown table.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
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
