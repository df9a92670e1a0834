"""Benchmark: one training iteration of Kwon et al.'s 3D alpha-WGAN-GP.

What ``python -m brainkern.train --preset kwon2019-alpha-wgan-gp`` runs per
iteration (:class:`brainkern.train.recipes.AlphaRecipe`): two encoder-generator
updates, one discriminator update with two gradient penalties, one code
discriminator update with its penalty; bf16 autocast on a GPU, float32 on the CPU.

Providers (one group):

- ``brainkern``: the fused ops on their automatic backends;
- ``brainkern+checkpoint``: the same with gradient checkpointing of the generator
  and discriminator blocks (less activation memory, more compute);
- ``reference-ops``: every brainkern op forced to its plain-PyTorch reference
  (``use_backend("reference")``: interpolate + conv3d for the resize-convolution,
  ``autograd.grad`` arithmetic for the penalty), the same networks otherwise.

Sizes: on a GPU the paper's (64^3, width 64, latent 1000, batch 4). On the CPU
32^3 at width 16 (the paper's model takes about 15 s per iteration on 2 cores);
smoke mode 16^3 with tiny layers.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks._util import assert_matches, bench_device, peak_memory, record, timed
from brainkern.models import build_model
from brainkern.ops import use_backend
from brainkern.train.config import DEFAULTS
from brainkern.train.recipes import make_recipe

DEVICE = bench_device()
PROVIDERS = ["brainkern", "brainkern+checkpoint", "reference-ops"]


def _sizes(smoke: bool) -> dict:
    if smoke:
        return dict(shape=(16, 16, 16), width=4, latent_dim=8, code_hidden=16, batch=2)
    if DEVICE.type == "cuda":
        return dict(shape=(64, 64, 64), width=64, latent_dim=1000, code_hidden=4096, batch=4)
    return dict(shape=(32, 32, 32), width=16, latent_dim=1000, code_hidden=4096, batch=4)


def make_iteration(provider: str, smoke: bool):
    """The setup factory shared by the speed and memory measurements."""
    s = _sizes(smoke)
    torch.manual_seed(0)
    model = build_model(
        "alpha-wgan-gp",
        shape=s["shape"],
        width=s["width"],
        latent_dim=s["latent_dim"],
        code_hidden=s["code_hidden"],
        checkpoint=provider == "brainkern+checkpoint",
    ).to(DEVICE)
    recipe = make_recipe(model, dict(DEFAULTS["train"]), DEVICE)
    real = torch.rand(s["batch"], 1, *s["shape"], device=DEVICE) * 2 - 1
    recipe.draw = lambda: real  # the discriminators' fresh batch (train.critic_batch) is the same one

    def iteration() -> dict[str, torch.Tensor]:
        with use_backend("reference") if provider == "reference-ops" else contextlib.nullcontext():
            return recipe.step(real)

    return iteration, s, model


def _first_losses(provider: str, smoke: bool) -> list[torch.Tensor]:
    """The losses one iteration logs from a fixed start."""
    iteration, _, _ = make_iteration(provider, smoke)
    return list(iteration().values())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_alpha_wgan_gp_iteration(benchmark, smoke, provider):
    if smoke and provider != "reference-ops":
        # One iteration from the same start and data: the fused ops and checkpointing change
        # only the order of float32 sums. (Later iterations are no test: Adam's first steps
        # turn the rounding of near-zero gradients into full-size steps of either sign.)
        assert_matches(
            _first_losses(provider, smoke),
            _first_losses("reference-ops", smoke),
            what=f"alpha-WGAN-GP iteration losses, {provider}",
            rtol=1e-3,
        )
    iteration, s, _ = make_iteration(provider, smoke)
    iteration()  # warm up (cuDNN choice, Triton compilation, Adam state)
    peak = peak_memory(iteration, DEVICE)
    record(
        benchmark,
        group="train-alpha-wgan-gp-iteration",
        provider=provider,
        device=DEVICE,
        peak_bytes=peak,
        shape=f"{s['batch']}x1x{'x'.join(map(str, s['shape']))}",
        width=s["width"],
        latent=s["latent_dim"],
        mode="full",
    )
    fn = timed(iteration, DEVICE)
    if smoke:
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=10 if DEVICE.type == "cuda" else 3, warmup_rounds=1, iterations=1)
