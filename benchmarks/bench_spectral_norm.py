"""Spectral normalisation of a whole 3D discriminator: brainkern vs torch's parametrization.

The network is the five spectral-normalised layers of a 64^3 DC-GAN style 3D
discriminator in the manner of King et al.'s SN-GAN and Kwon et al.'s critic:
conv3d 1 -> 64 -> 128 -> 256 -> 512 with 4x4x4 kernels (stride 2), then a
linear layer 512 * 4^3 -> 1. Weight matrices: (64, 64), (128, 4096), (256, 8192),
(512, 16384), (1, 32768): 11.0 M weights, 44 MB in float32.

What one step times, for the whole network (the spectral-norm part of a
discriminator training forward; the convolutions themselves are not included):

- ``brainkern``: :func:`brainkern.nn.spectral_norm_update` (one grouped power
  iteration; three kernel launches per group of up to 24 layers on the GPU, with a
  fixed-order reduction) then each layer's ``W / sigma``;
- ``torch-parametrization``: each layer's ``module.weight`` under
  :func:`torch.nn.utils.parametrizations.spectral_norm` in training mode (one
  power iteration and ``W / sigma`` per layer, layer by layer).

Modes: ``forward`` (the weights), ``full`` (plus the backward through the
normalised weights for a fixed upstream gradient). Peak memory is recorded.
Smoke mode shrinks the channels to 4, 8, 8, 16.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from benchmarks._util import assert_matches, bench_device, peak_memory, record, timed
from brainkern.nn import SNConv3d, SNLinear, spectral_norm_update

GROUP = "spectral_norm_step"


def _layers(channels, sn_conv, sn_linear, device):
    convs = [sn_conv(c_in, c_out, 4, stride=2, padding=1) for c_in, c_out in itertools.pairwise(channels)]
    return [m.to(device) for m in (*convs, sn_linear(channels[-1] * 4**3, 1))]


def setup(smoke: bool, device: torch.device):
    """Both networks with equal weights, u and v, plus an upstream gradient per layer."""
    channels = (1, 4, 8, 8, 16) if smoke else (1, 64, 128, 256, 512)
    torch.manual_seed(0)
    ours = _layers(channels, SNConv3d, SNLinear, device)
    theirs = _layers(
        channels,
        lambda *a, **k: spectral_norm(nn.Conv3d(*a, **k)),
        lambda *a, **k: spectral_norm(nn.Linear(*a, **k)),
        device,
    )
    with torch.no_grad():
        for a, b in zip(ours, theirs, strict=True):
            b.parametrizations.weight.original.copy_(a.weight)
            b.parametrizations.weight[0]._u.copy_(a.u)
            b.parametrizations.weight[0]._v.copy_(a.v)
    grads = [torch.randn_like(m.weight) for m in ours]
    model = nn.ModuleList(ours)

    def brainkern_weights():
        spectral_norm_update(model)
        # The weight each layer's training forward uses (consumes the grouped result).
        return [m._sn_weight() for m in ours]

    def torch_weights():
        return [m.weight for m in theirs]

    fns = {"brainkern": brainkern_weights, "torch-parametrization": torch_weights}
    originals = {
        "brainkern": [m.weight for m in ours],
        "torch-parametrization": [m.parametrizations.weight.original for m in theirs],
    }
    return fns, grads, originals


def _weights_and_grads(provider: str, device: torch.device) -> list[torch.Tensor]:
    """The normalised weights and the gradients of sum(W_sn * grad) into the raw weights."""
    fns, grads, originals = setup(True, device)
    ws = fns[provider]()
    loss = sum((w * g).sum() for w, g in zip(ws, grads, strict=True))
    return [*ws, *torch.autograd.grad(loss, originals[provider])]


@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("provider", ["brainkern", "torch-parametrization"])
def test_spectral_norm_discriminator(benchmark, smoke, provider, mode):
    device = bench_device()
    if smoke and provider == "brainkern":
        assert_matches(
            _weights_and_grads(provider, device),
            _weights_and_grads("torch-parametrization", device),
            what="spectral norm: normalised weights and their gradients",
        )
    fns, grads, _ = setup(smoke, device)
    weights_fn = fns[provider]

    if mode == "forward":

        def step():
            with torch.no_grad():
                return weights_fn()

    else:

        def step():
            ws = weights_fn()
            torch.autograd.backward(ws, grads)
            return ws

    ws = step()
    assert len(ws) == 5 and all(torch.isfinite(w).all() for w in ws)
    peak = peak_memory(step, device)
    record(
        benchmark,
        group=f"{GROUP}-{mode}",
        provider=provider,
        device=device,
        peak_bytes=peak,
        weights=sum(w.numel() for w in ws),
        smoke=smoke,
    )
    benchmark(timed(step, device))


def test_same_normalised_weights(smoke):
    """Both providers produce the same weights from the same state (sanity for the timings)."""
    device = bench_device()
    fns, _, _ = setup(True, device)
    with torch.no_grad():
        for a, b in zip(fns["brainkern"](), fns["torch-parametrization"](), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
