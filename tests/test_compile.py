"""``torch.compile(fullgraph=True)`` traces brainkern's blocks, and compiled blocks match eager ones.

A generator block (``ResizeConv3d`` + ``BatchNorm3d`` + ``ReLU``, Kwon et al.'s) and an
SN discriminator block (``SNConv3d`` + ``LeakyReLU``, King et al.'s) are compiled
whole, with no graph break, and their outputs, input and parameter gradients and
updated buffers are compared with an eager copy, on every backend that runs here.
The backend is chosen when the compiled graph runs, never frozen into it, and the
compiled backward runs on its forward's backend.

Compiler backend: ``aot_eager`` (Dynamo's graph, then AOT autograd's functionalised
forward and backward graphs, traced through the ops' fake kernels, run by eager
kernels): it exercises everything tracing relies on in about a second per graph
here. Inductor, which generates and compiles C++ on the CPU, is checked once on the
generator block, marked slow: 19 s on this 2-core machine with a cold compile cache.
The comparisons are in float64 with tolerances of 1e-12: the compiled graph runs the
same kernels as eager, but AOT autograd decomposes BatchNorm, which may round differently.
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import brainkern.nn as bnn
from brainkern.ops import BackendError, mmd2, pixel_shuffle3d, use_backend
from brainkern.ops._backend import interpreter_enabled
from brainkern.ops.conv3d_gradfix import no_weight_gradients
from brainkern.ops.gradient_penalty import interpolate, norm_penalty

ps = importlib.import_module("brainkern.ops.pixel_shuffle3d")
F64 = dict(dtype=torch.float64)
TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Every compiled module here shares nn.Sequential.forward's code: without a reset its
    # cache entries would pile up towards Dynamo's recompile limit across tests.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compiled(module: nn.Module, backend: str = "aot_eager") -> nn.Module:
    return torch.compile(module, fullgraph=True, backend=backend)


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward; the output and the input's gradient."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    return y.detach(), x.grad


def _assert_same_step(
    eager: nn.Module, compiled: nn.Module, x: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """One forward and backward of each: the same output and input gradient (returned)."""
    y_eager, gx_eager = _step(eager, x, grad)
    y, gx = _step(compiled, x, grad)
    torch.testing.assert_close(y, y_eager, **TOL)
    torch.testing.assert_close(gx, gx_eager, **TOL)
    return gx_eager


def _assert_same_state(eager: nn.Module, compiled: nn.Module) -> None:
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=f"gradient of {name}")
    for (name, p), (_, q) in zip(eager.named_buffers(), compiled.named_buffers(), strict=True):
        torch.testing.assert_close(q, p, **TOL, msg=f"buffer {name}")


def _generator_block() -> nn.Sequential:
    return nn.Sequential(bnn.ResizeConv3d(3, 4), nn.BatchNorm3d(4), nn.ReLU()).double()


def _check_generator_block(compiler: str, backend: str, device: str) -> None:
    block = _generator_block().to(device)
    eager = copy.deepcopy(block)
    compiled = _compiled(block, compiler)
    x = torch.randn(2, 3, 3, 4, 2, device=device, **F64)  # odd, non-cubic: 6x8x4 out
    grad = torch.randn(2, 4, 6, 8, 4, device=device, **F64)
    with use_backend(backend):
        for _ in range(2):  # the second call reuses the graph (and BatchNorm's updated statistics)
            _assert_same_step(eager, compiled, x, grad)
    _assert_same_state(eager, block)
    eager.eval(), compiled.eval()
    with use_backend(backend), torch.no_grad():  # inference: the ops' code outputs go unused
        torch.testing.assert_close(compiled(x), eager(x), **TOL)


def test_generator_block(backend_device):
    _check_generator_block("aot_eager", *backend_device)


@pytest.mark.slow
def test_generator_block_inductor(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("Inductor compiles C++ for about 20 s here: select it with -m slow")
    _check_generator_block("inductor", "cpu", "cpu")


def _sn_discriminator_block() -> nn.Sequential:
    return nn.Sequential(
        bnn.SNConv3d(2, 4, 3, padding=1), nn.LeakyReLU(0.2), bnn.SNConv3d(4, 1, 2, stride=2)
    ).double()


def test_sn_discriminator_block(backend_device):
    """Training forwards iterate the power method inside the graph (u, v, sigma updated in
    place); after spectral_norm_update a forward reuses its result; eval uses no iteration."""
    backend, device = backend_device
    block = _sn_discriminator_block().to(device)
    eager = copy.deepcopy(block)
    compiled = _compiled(block)
    x = torch.randn(2, 2, 5, 4, 6, device=device, **F64)
    grad = torch.randn(2, 1, 2, 2, 3, device=device, **F64)
    with use_backend(backend):
        for update in (False, False, True):
            if update:
                bnn.spectral_norm_update(eager)
                bnn.spectral_norm_update(block)
            _assert_same_step(eager, compiled, x, grad)
            _assert_same_state(eager, block)
        eager.eval(), compiled.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x), **TOL)


def test_gradfix_conv_and_pixel_unshuffle_block():
    """conv3d_gradfix's switch is read when the compiled backward runs, not when it was traced."""
    block = nn.Sequential(bnn.PixelUnshuffle3d(2), bnn.Conv3d(8, 3, 3, padding=1), nn.LeakyReLU(0.2)).double()
    eager = copy.deepcopy(block)
    compiled = _compiled(block)
    x = torch.randn(2, 1, 4, 6, 2, **F64)
    grad = torch.randn(2, 3, 2, 3, 1, **F64)
    gx_eager = _assert_same_step(eager, compiled, x, grad)  # traced with the switch off
    _assert_same_state(eager, block)
    block.zero_grad()
    with no_weight_gradients():
        _, gx = _step(compiled, x, grad)
    torch.testing.assert_close(gx, gx_eager, **TOL)  # input gradients as before ...
    conv = block[1]
    assert torch.all(conv.weight.grad == 0) and torch.all(conv.bias.grad == 0)  # ... weights skipped


def test_backend_is_chosen_when_the_graph_runs(monkeypatch):
    seen: list[tuple[str, bool]] = []
    real_run = ps._run

    def spy(name, x, r, shuffle):
        seen.append((name, shuffle))
        return real_run(name, x, r, shuffle)

    monkeypatch.setattr(ps, "_run", spy)
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda x: pixel_shuffle3d(x, 2) * 2, fullgraph=True, backend=counter)
    x = torch.randn(1, 8, 2, 3, 2, requires_grad=True)
    expected = pixel_shuffle3d(x.detach(), 2) * 2
    names = ["cpu", "reference"] + (["triton"] if interpreter_enabled() else [])
    for name in names:
        with use_backend(name):
            y = fn(x)
        y.sum().backward()  # outside the block: on the forward's backend all the same
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        if name != "reference":  # the reference does not go through _run
            assert seen[-2:] == [(name, True), (name, False)], seen
        seen.clear()
    assert counter.frame_count == 1  # one graph served every backend
    with use_backend("cuda"), pytest.raises(BackendError, match="backend 'cuda' was forced"):
        fn(x)  # the choice, and its error, happen when the graph runs


def test_penalty_pieces_and_mmd2():
    def penalty_pieces(real, fake, eps, grad):
        return interpolate(real, fake, eps).square().sum() + norm_penalty(grad, 10.0, 1.0, "one-sided")

    def metrics(x, y):
        return mmd2(x, y, "linear", "unbiased") + mmd2(x, y, "rbf") + mmd2(x, y, "poly", "unbiased")

    inputs_gp = [torch.randn(3, 2, 4, **F64, requires_grad=True) for _ in range(2)] + [
        torch.rand(3, **F64),
        torch.randn(3, 2, 4, **F64, requires_grad=True),
    ]
    inputs_mmd = [
        torch.randn(3, 2, 5, **F64, requires_grad=True),
        torch.randn(4, 2, 5, **F64, requires_grad=True),
    ]
    for fn, inputs in ((penalty_pieces, inputs_gp), (metrics, inputs_mmd)):
        want = fn(*inputs)
        want_grads = torch.autograd.grad(want, [t for t in inputs if t.requires_grad])
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*inputs)
        got_grads = torch.autograd.grad(got, [t for t in inputs if t.requires_grad])
        torch.testing.assert_close(got, want, **TOL)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, **TOL)
    bad = inputs_mmd[1].detach().clone()
    bad[0, 0, 0] = float("nan")
    compiled = torch.compile(metrics, fullgraph=True, backend="aot_eager")
    with pytest.raises(ValueError, match="NaN or infinite"):
        compiled(inputs_mmd[0].detach(), bad)  # checked when the graph runs
