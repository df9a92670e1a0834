"""A training iteration makes no host-device synchronisation.

A GPU training step should only queue work. Every ``.item()``, every tensor built
from host data, every data-dependent shape (``nonzero``, boolean masks) and every
blocking copy between devices makes the host wait until the device has caught
up, and a step with a few of them loses the overlap of Python with the kernels.

There is no GPU here, so :class:`tests.guards.SyncRecorder` finds these places on the CPU: a
``TorchDispatchMode`` records the ATen ops that read tensor data on the host or
block on the device, and patches record the tensor methods that read memory
without dispatching (``tolist``, ``numpy``). The tests run a step once to fill
caches (optimiser state, kernel and layout caches), then again under the
recorder, and assert that nothing was recorded; a failure lists each event with
a short stack. On a CUDA device the recorded step also runs under
``torch.cuda.set_sync_debug_mode("error")``.

The step is a recipe step of the model zoo (Kwon et al.'s alpha-WGAN-GP, built
as the training engine builds it: forward, losses, gradient penalties, backward,
optimiser steps). The engine's reads of the losses at its logging windows are
not part of it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import brainkern.nn as bnn
import brainkern.nn.resize_conv as resize_conv_layer
from brainkern.ops import gradient_penalty, use_backend
from brainkern.ops._backend import interpreter_enabled
from brainkern.train import config
from brainkern.train.engine import build_run_model
from brainkern.train.recipes import make_recipe
from tests.guards import Event, recording


def _no_sync(step: Callable[[], object], device: str, host_scalars=lambda: ()) -> list[Event]:
    """Runs ``step`` once to warm up, then once recorded (and, on CUDA, in sync debug mode 'error')."""
    step()
    before = torch.cuda.get_sync_debug_mode() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        with recording(host_scalars()) as rec:
            step()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(before)
    return rec.events


def _assert_none(events: list[Event]) -> None:
    assert not events, f"{len(events)} host syncs in one step:\n" + "\n".join(map(str, events))


# ----------------------------------------------------------------------------- the recorder itself


def test_recorder_sees_the_usual_syncs():
    x = torch.randn(4, 3)
    with recording() as rec:
        x.sum().item()
        bool(x[0, 0] > 0)
        x.tolist()
        x.numpy()
        torch.tensor([1.0, 2.0])
        x[x > 0]
        torch.nonzero(x)
        torch.equal(x, x)
        torch.allclose(x, x)
        torch.unique(x)
        x.to("meta")
    whats = [e.what for e in rec.events]
    # bool() reaches the dispatcher as _local_scalar_dense (is_nonzero is decomposed above it)
    expected = ["_local_scalar_dense", "_local_scalar_dense", "Tensor.tolist", "Tensor.numpy", "lift_fresh"]
    expected += ["boolean mask", "nonzero", "equal", "allclose", "_unique2", "blocking copy cpu -> meta"]
    assert len(whats) == len(expected), "\n".join(whats)
    for what, part in zip(whats, expected, strict=True):
        assert part in what
    assert all("test_host_sync" not in line for e in rec.events for line in e.stack)
    assert "spy" not in torch.Tensor.tolist.__qualname__  # the patches are gone


def test_recorder_ignores_queued_work_and_host_scalars():
    x = torch.randn(4, 3)
    step = torch.tensor(3.0)
    with recording(host_scalars=(step,)) as rec:
        torch.zeros((), device=x.device) + x.sum() * 2.0
        torch.where(x > 0, x, torch.zeros_like(x)).mean()
        torch.full((2,), 0.5, dtype=torch.float64)
        step.item()
        x.to(torch.float64)
        x.to("meta", non_blocking=True)
    assert rec.events == [], "\n".join(map(str, rec.events))


# ----------------------------------------------------------------------------- a recipe step of the model zoo


def _tiny_recipe(device: str):
    """Kwon et al.'s alpha-WGAN-GP at 16^3 with widths of 1 to 8 channels, as the engine builds it."""
    cfg = config.resolve(
        None,
        [
            {
                "model": {"name": "alpha-wgan-gp", "latent_dim": 8, "width": 1, "code_hidden": 8},
                "data": {"shape": [16, 16, 16]},
                # one generator update instead of Kwon's two: the second repeats the first's calls
                "train": {"batch_size": 2, "gradfix": True, "g_updates": 1},
            }
        ],
    )
    model = build_run_model(cfg, torch.device(device))
    model.train()
    return make_recipe(model, cfg["train"], device)


def _step_counters(*optimizers: torch.optim.Optimizer) -> tuple[torch.Tensor, ...]:
    return tuple(
        state["step"]
        for opt in optimizers
        for state in opt.state.values()
        if isinstance(state.get("step"), torch.Tensor) and state["step"].device.type == "cpu"
    )


def _recipe_step_events(backend: str, device: str) -> list[Event]:
    recipe = _tiny_recipe(device)
    real = torch.rand(2, 1, 16, 16, 16, device=device) * 2 - 1
    # The discriminators' fresh batch (train.critic_batch), already on the device as the
    # engine's batches deliver it.
    second = torch.rand(2, 1, 16, 16, 16, device=device) * 2 - 1
    recipe.draw = lambda: second
    logs: dict[str, torch.Tensor] = {}

    def step():
        with use_backend(backend):
            logs.update(recipe.step(real))

    events = _no_sync(step, device, lambda: _step_counters(*recipe.optimizers.values()))
    assert {"loss_d", "gp_d", "loss_c", "gp_c"} <= set(logs)
    assert all(v.dim() == 0 for v in logs.values())
    return events


def test_a_recipe_step_does_not_synchronise(backend_device, monkeypatch):
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        # resize_conv3d's Triton kernels take about 90 s a step in the interpreter: here
        # they run on the C++ backend; test_..._all_triton_interpreted runs them (-m slow).
        original = resize_conv_layer.resize_conv3d

        def on_cpu(*args, **kwargs):
            with use_backend("cpu"):
                return original(*args, **kwargs)

        monkeypatch.setattr(resize_conv_layer, "resize_conv3d", on_cpu)
    _assert_none(_recipe_step_events(backend, device))


@pytest.mark.slow
def test_a_recipe_step_does_not_synchronise_all_triton_interpreted(request):
    if not interpreter_enabled():
        pytest.skip("runs Triton's CPU interpreter (TRITON_INTERPRET=1)")
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("3 minutes of CPU time in the interpreter: select it with -m slow")
    _assert_none(_recipe_step_events("triton", "cpu"))


# ----------------------------------------------------------------------------- the shuffle and penalty ops


class _ShuffleGAN(nn.Module):
    """A generator upsampling by pixel shuffle and a critic downsampling by unshuffle (brainkern.nn)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Sequential(bnn.Conv3d(2, 8, 3, padding=1), bnn.PixelShuffle3d(2), nn.Tanh())
        # (N, 1, 6, 6, 6) -> (N, 8, 3, 3, 3) -> (N, 4, 1, 1, 1) -> (N, 1)
        self.critic = nn.Sequential(
            bnn.PixelUnshuffle3d(2), bnn.Conv3d(8, 4, 3), nn.Flatten(), nn.Linear(4, 1)
        )


@pytest.mark.parametrize("mode", ["two-sided", "one-sided", "r1"])
def test_shuffle_and_penalty_steps_do_not_synchronise(backend_device, mode):
    """pixel_shuffle3d / unshuffle and each penalty mode, forward and backward, lazy or not."""
    backend, device = backend_device
    net = _ShuffleGAN().to(device)
    opt = torch.optim.Adam(net.parameters())
    z = torch.randn(3, 2, 3, 3, 3, device=device)
    real = torch.rand(3, 1, 6, 6, 6, device=device)

    def step():
        with use_backend(backend):
            fake = net.generator(z)
            loss = net.critic(fake).mean() - net.critic(real).mean()
            for every in (1, 2, 2):  # with every=2, one call skips and one applies
                loss = loss + gradient_penalty(net.critic, real, fake, mode=mode, every=every)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    _assert_none(_no_sync(step, device, lambda: _step_counters(opt)))


def test_recorder_sees_inside_brainkern_custom_ops(monkeypatch):
    """A sync inside an op (a torch.library custom op, dispatched as one call) is recorded."""
    import importlib

    module = importlib.import_module("brainkern.ops.pixel_shuffle3d")  # the module, not the function

    x = torch.randn(1, 8, 2, 2, 2)
    with recording() as rec, use_backend("reference"):
        module.pixel_shuffle3d(x, 2)
    assert rec.events == []
    original = module.pixel_shuffle3d_reference

    def syncing(*args, **kwargs):
        args[0].sum().item()  # a host read inside the op's body
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "pixel_shuffle3d_reference", syncing)
    with recording() as rec, use_backend("reference"):
        module.pixel_shuffle3d(x, 2)
    assert any("Python number" in e.what for e in rec.events), [e.what for e in rec.events]
