"""Batch MMD^2 of many tests: brainkern's fused statistics against the usual forms.

Providers (the baselines docs/design.md names for ``mmd2``):

- ``brainkern``: :func:`brainkern.ops.mmd2_batched` (one pass over the data per test);
- ``three-mm``: per test, ``X X^T``, ``Y Y^T``, ``X Y^T`` with three ``torch.mm``, then the
  kernel function and estimator (3dbraingen, MONAI ``MMDMetric``), looped over tests;
- ``broadcast-rbf``: per test, the ``(2B, 2B, D)`` difference tensor of ``[X; Y]``, squared
  and summed (the RBF kernel only). Its size is checked first; a case that would not
  fit is skipped with the memory it would need, and an out-of-memory error is
  reported the same way rather than crashing the session.

Cases (Kwon et al. average 100 tests of B=8): 20 tests of B=8 at 32^3 (the CPU
target), 100 tests of B=8 at 64^3 and 128^3, and 100 of B=16 at 128^3; smoke mode
runs one tiny case. Modes: ``forward`` (the evaluation) and ``full`` (forward and
backward, MMD^2 as a training loss). On CUDA the linear forward records
``ceiling_copy_fraction``: one read of x and y at the measured copy bandwidth over
the measured time.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks._util import assert_matches, bench_device, peak_memory, record, sync, timed
from brainkern.ops import mmd2_batched
from brainkern.ops.mmd import mmd2_batched_reference

CASES = {
    "t20-b8-32^3": (20, 8, 32),
    "t100-b8-64^3": (100, 8, 64),
    "t100-b8-128^3": (100, 8, 128),
    "t100-b16-128^3": (100, 16, 128),
}
SMOKE_CASE = (3, 4, 8)


def _three_mm(x: torch.Tensor, y: torch.Tensor, kernel: str) -> torch.Tensor:
    """Biased MMD^2 per test from three torch.mm Gram matrices, looped over tests."""
    out = []
    for xt, yt in zip(x.flatten(2), y.flatten(2), strict=True):
        kxx, kyy, kxy = xt @ xt.T, yt @ yt.T, xt @ yt.T
        if kernel == "rbf":
            nx, ny = kxx.diagonal(), kyy.diagonal()
            dxx = (nx[:, None] + nx[None, :] - 2 * kxx).clamp_min(0)
            dyy = (ny[:, None] + ny[None, :] - 2 * kyy).clamp_min(0)
            dxy = (nx[:, None] + ny[None, :] - 2 * kxy).clamp_min(0)
            z = torch.cat([xt, yt]).detach()
            iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
            med = torch.cdist(z, z)[iu[0], iu[1]].median().clamp_min(1e-12)
            kxx, kyy, kxy = (
                sum(torch.exp(-d / (2 * (s * med) ** 2)) for s in (0.5, 1, 2)) for d in (dxx, dyy, dxy)
            )
        out.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    return torch.stack(out)


def _broadcast_rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased RBF MMD^2 per test through the (2B, 2B, D) difference tensor."""
    out = []
    m = x.shape[1]
    for xt, yt in zip(x.flatten(2), y.flatten(2), strict=True):
        z = torch.cat([xt, yt])
        d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
        med = d2.detach()[iu[0], iu[1]].sqrt().median().clamp_min(1e-12)
        k = sum(torch.exp(-d2 / (2 * (s * med) ** 2)) for s in (0.5, 1, 2))
        out.append(k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean())
    return torch.stack(out)


def _budget(device: torch.device) -> int:
    """Bytes a case may allocate here: part of the free GPU memory or of MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // 2
    return 8 << 30


def _need_bytes(provider: str, tests: int, batch: int, dim: int, mode: str) -> int:
    data = 2 * tests * batch * dim * 4
    total = data * (3 if mode == "full" else 1)  # inputs, plus their gradients and a temporary
    if provider == "broadcast-rbf":
        rows = 2 * batch
        per_test = rows * rows * dim * 4
        # The difference tensor and its square are alive together for the test in hand; in
        # "full" mode every test's difference tensor is also kept for the backward.
        total += 2 * per_test + (tests * per_test if mode == "full" else 0)
    return total


def _setup(case: tuple[int, int, int], device: torch.device, mode: str):
    tests, batch, side = case
    shape = (tests, batch, 1, side, side, side)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(shape, device=device, generator=gen)
    y = torch.rand(shape, device=device, generator=gen) * 0.9 + 0.05
    if mode == "full":
        x.requires_grad_(True)
        y.requires_grad_(True)
    return x, y


def _provider_fn(provider: str, kernel: str, x, y, mode: str):
    if provider == "brainkern":
        fwd = lambda: mmd2_batched(x, y, kernel, "biased")  # noqa: E731
    elif provider == "three-mm":
        fwd = lambda: _three_mm(x, y, kernel)  # noqa: E731
    else:
        fwd = lambda: _broadcast_rbf(x, y)  # noqa: E731
    if mode == "forward":
        return lambda: fwd()

    def full():
        x.grad = y.grad = None
        fwd().mean().backward()

    return full


def _result(provider: str, kernel: str, case, device: torch.device, mode: str) -> list[torch.Tensor]:
    """Per-test MMD^2 values, plus the input gradients of their mean in "full" mode."""
    x, y = _setup(case, device, mode)
    if provider == "reference":
        value = mmd2_batched_reference(x, y, kernel, "biased")
    else:
        value = {
            "brainkern": lambda: mmd2_batched(x, y, kernel, "biased"),
            "three-mm": lambda: _three_mm(x, y, kernel),
        }.get(provider, lambda: _broadcast_rbf(x, y))()
    if mode != "full":
        return [value]
    return [value, *torch.autograd.grad(value.mean(), (x, y))]


def _copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Measured device copy bandwidth in bytes/s (read + write)."""
    n = max(nbytes // 4, 1 << 20)
    src = torch.empty(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        dst.copy_(src)
    end.record()
    sync(device)
    return 2 * n * 4 * 5 / (start.elapsed_time(end) / 1e3)


@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("provider", ["brainkern", "three-mm", "broadcast-rbf"])
@pytest.mark.parametrize("case", list(CASES))
def test_mmd2_batched(benchmark, smoke, case, provider, kernel, mode):
    if provider == "broadcast-rbf" and kernel != "rbf":
        pytest.skip("the broadcast form is an RBF baseline")
    device = bench_device()
    if smoke:
        if case != next(iter(CASES)):
            pytest.skip("smoke mode runs one tiny case")
        dims = SMOKE_CASE
    else:
        dims = CASES[case]
    tests, batch, side = dims
    dim = side**3
    need = _need_bytes(provider, tests, batch, dim, mode)
    group = f"mmd2-{kernel}-{mode}-{case if not smoke else 'smoke'}"
    if need > _budget(device):
        record(
            benchmark, group=group, provider=provider, device=device, oom=f"would need {need / 2**30:.1f} GiB"
        )
        pytest.skip(f"{provider} {case}: would need {need / 2**30:.1f} GiB, more than this machine can give")
    x, y = _setup(dims, device, mode)
    fn = _provider_fn(provider, kernel, x, y, mode)
    try:
        fn()  # warm-up (Triton/CUDA compilation, allocator)
        peak = peak_memory(fn, device)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        record(benchmark, group=group, provider=provider, device=device, oom=type(exc).__name__)
        pytest.skip(f"{provider} {case}: out of memory ({type(exc).__name__})")
    if smoke:
        # A benchmark that cannot fail is no check: every provider's values (and, timed
        # with backward, its input gradients) against the plain-PyTorch reference.
        assert_matches(
            _result(provider, kernel, dims, device, mode),
            _result("reference", kernel, dims, device, mode),
            what=f"mmd2 {kernel} {mode}, {provider}",
        )
    record(
        benchmark,
        group=group,
        provider=provider,
        device=device,
        peak_bytes=peak,
        tests=tests,
        batch=batch,
        features=dim,
        data_bytes=2 * tests * batch * dim * x.element_size(),
    )
    benchmark.pedantic(timed(fn, device), rounds=1 if smoke else 5, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    if (
        device.type == "cuda"
        and provider == "brainkern"
        and kernel == "linear"
        and mode == "forward"
        and stats
    ):
        nbytes = 2 * tests * batch * dim * x.element_size()
        ceiling = nbytes / _copy_bandwidth(device, min(nbytes, 4 << 30))
        benchmark.extra_info["ceiling_copy_fraction"] = round(ceiling / stats.stats.median, 3)


def test_broadcast_matches_brainkern():
    """The broadcast baseline computes the same quantity (so its timing is a fair comparison)."""
    x, y = _setup(SMOKE_CASE, torch.device("cpu"), "forward")
    torch.testing.assert_close(
        _broadcast_rbf(x, y), mmd2_batched(x, y, "rbf", "biased"), rtol=1e-4, atol=1e-6
    )
    assert math.isfinite(float(_three_mm(x, y, "rbf").sum()))
