"""Benchmark: a WGAN-GP discriminator step with brainkern's penalty vs the plain autograd form.

The step of Kwon et al. (2019)'s alpha-WGAN-GP discriminator: ``D(fake).mean() -
D(real).mean() + penalty``, then backward. Five 4x4x4 convolutions
1 -> 64 -> 128 -> 256 -> 512 -> 1, stride 2 with BatchNorm + LeakyReLU; the last
convolution covers what is left of the grid (4^3 at the paper's 64^3 input).

Providers, in one group per precision (fp32, bf16 autocast):

- ``brainkern``: :func:`brainkern.ops.gradient_penalty` with :class:`brainkern.nn.Conv3d`
  (fused interpolation and norm kernels, weight gradients skipped in the first backward);
- ``brainkern+nn.Conv3d``: the fused kernels with ``torch.nn.Conv3d`` (what the
  conv3d gradfix adds, by difference);
- ``torch.autograd.grad``: the plain form (:func:`gradient_penalty_reference`, ``nn.Conv3d``).

And the fused pieces alone (forward + backward), against eager PyTorch:
``gradient_penalty-interp`` and ``gradient_penalty-norm``.

Sizes: on a GPU, 64^3 at batch 4 (the issue's target). On the CPU, 32^3 at batch
2 (64^3 takes tens of seconds per step on a few cores); smoke mode 16^3 with
narrow layers.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import brainkern.nn as bnn
from benchmarks._util import assert_matches, bench_device, peak_memory, record, saved_tensor_bytes, timed
from brainkern.ops import gradient_penalty, gradient_penalty_reference
from brainkern.ops.gradient_penalty import interpolate, norm_penalty

DEVICE = bench_device()
STEP_PROVIDERS = ["brainkern", "brainkern+nn.Conv3d", "torch.autograd.grad"]
PRECISIONS = ["fp32", "bf16"]


def _sizes(smoke: bool) -> tuple[int, int, tuple[int, ...]]:
    """(batch, grid size, conv widths)."""
    if smoke:
        return 2, 16, (4, 8, 16, 32)
    if DEVICE.type == "cuda":
        return 4, 64, (64, 128, 256, 512)
    return 2, 32, (64, 128, 256, 512)


def kwon_discriminator(conv: type[nn.Conv3d], size: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 1
    for i, w in enumerate(widths):
        layers.append(conv(c_in, w, 4, 2, 1))
        if i > 0:
            layers.append(nn.BatchNorm3d(w))
        layers.append(nn.LeakyReLU(0.2))
        c_in, size = w, size // 2
    layers.append(conv(c_in, 1, size, 1, 0))  # 4x4x4 at a 64^3 input, as in the paper
    return nn.Sequential(*layers)


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(provider: str, precision: str, smoke: bool):
    """The setup factory shared by the speed and memory measurements: (step, loss, D)."""
    torch.manual_seed(0)
    batch, size, widths = _sizes(smoke)
    conv = bnn.Conv3d if provider == "brainkern" else nn.Conv3d
    D = kwon_discriminator(conv, size, widths).to(DEVICE)
    penalty = gradient_penalty_reference if provider == "torch.autograd.grad" else gradient_penalty
    real = torch.rand(batch, 1, size, size, size, device=DEVICE) * 2 - 1
    fake = torch.rand_like(real) * 2 - 1

    def loss() -> torch.Tensor:
        with _autocast(precision):
            return D(fake).float().mean() - D(real).float().mean() + penalty(D, real, fake, weight=10.0)

    def step() -> None:
        D.zero_grad(set_to_none=True)
        loss().backward()

    return step, loss, D


def _step_result(provider: str, precision: str, smoke: bool) -> list[torch.Tensor]:
    """The loss and every parameter gradient of one step: what providers must agree on."""
    _, loss, D = make_step(provider, precision, smoke)
    value = loss()
    value.backward()
    return [value, *(p.grad for p in D.parameters() if p.grad is not None)]


def _run(benchmark, fn, smoke: bool) -> None:
    if smoke:
        benchmark(fn)
    else:
        rounds = 20 if DEVICE.type == "cuda" else 3
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("provider", STEP_PROVIDERS)
def test_discriminator_step(benchmark, smoke, provider, precision):
    if smoke and provider != "torch.autograd.grad":
        assert_matches(
            _step_result(provider, precision, smoke),
            _step_result("torch.autograd.grad", precision, smoke),
            what=f"gradient_penalty step, {provider}, {precision}",
            rtol=2e-2 if precision == "bf16" else 1e-4,
        )
    step, loss, _ = make_step(provider, precision, smoke)
    step()  # warm up (cuDNN choice, Triton compilation)
    peak = peak_memory(step, DEVICE)
    saved = saved_tensor_bytes(loss)
    batch, size, widths = _sizes(smoke)
    record(
        benchmark,
        group=f"gradient_penalty-step-{precision}",
        provider=provider,
        device=DEVICE,
        peak_bytes=peak,
        saved_bytes=saved,
        shape=f"{batch}x1x{size}^3",
        widths=str(widths),
        mode="full",
    )
    _run(benchmark, timed(step, DEVICE), smoke)


def _piece_inputs(smoke: bool):
    batch, size = (2, 16) if smoke else (4, 64)
    real = torch.randn(batch, 1, size, size, size, device=DEVICE)
    fake = torch.randn_like(real, requires_grad=True)
    eps = torch.rand(batch, device=DEVICE)
    grad = (torch.randn_like(real) / size**1.5).requires_grad_(True)
    return real, fake, eps, grad


def _eager_interp(real, fake, eps):
    e = eps.view(-1, 1, 1, 1, 1)
    return e * real + (1 - e) * fake


def _eager_norm(grad):
    return 10.0 * (torch.linalg.vector_norm(grad.flatten(1), dim=1) - 1).square().mean()


@pytest.mark.parametrize("provider", ["brainkern", "torch"])
def test_interpolation(benchmark, smoke, provider):
    real, fake, eps, _ = _piece_inputs(smoke)
    fn = interpolate if provider == "brainkern" else _eager_interp
    go = torch.randn_like(real)
    if smoke:
        assert_matches(fn(real, fake, eps), _eager_interp(real, fake, eps), what=f"interpolation, {provider}")

    def full():
        fake.grad = None
        fn(real, fake, eps).backward(go)

    full()
    record(
        benchmark,
        group="gradient_penalty-interp",
        provider=provider,
        device=DEVICE,
        peak_bytes=peak_memory(full, DEVICE),
        shape=str(tuple(real.shape)),
        mode="full",
    )
    _run(benchmark, timed(full, DEVICE), smoke)


@pytest.mark.parametrize("provider", ["brainkern", "torch"])
def test_norm_penalty(benchmark, smoke, provider):
    _, _, _, grad = _piece_inputs(smoke)
    fn = norm_penalty if provider == "brainkern" else _eager_norm
    if smoke:
        got, want = fn(grad), _eager_norm(grad)
        assert_matches(
            [got, *torch.autograd.grad(got, grad)],
            [want, *torch.autograd.grad(want, grad)],
            what=f"norm penalty, {provider}",
        )

    def full():
        grad.grad = None
        fn(grad).backward()

    full()
    record(
        benchmark,
        group="gradient_penalty-norm",
        provider=provider,
        device=DEVICE,
        peak_bytes=peak_memory(full, DEVICE),
        shape=str(tuple(grad.shape)),
        mode="full",
    )
    _run(benchmark, timed(full, DEVICE), smoke)
