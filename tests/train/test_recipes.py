"""Kwon et al.'s recipes (seed 001) step by step: which optimiser steps how often, on
which gradients, on which batch, with which loss weights.

The models are the registered ones at 16^3 with 2 channels (a step takes milliseconds);
optimisers are watched by wrapping their ``step``. Gradient comparisons run in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from brainkern.models import build_model
from brainkern.train.config import DEFAULTS, merge
from brainkern.train.recipes import make_recipe

GRID = (16, 16, 16)
LATENT = 4


def model_of(name: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    extra = {"code_hidden": 8} if name.startswith("alpha") else {}
    return build_model(name, shape=GRID, latent_dim=LATENT, width=2, **extra).to(dtype)


def recipe_of(name: str, dtype: torch.dtype = torch.float32, **train):
    dtype_name = "float64" if dtype == torch.float64 else "float32"
    cfg = merge(DEFAULTS["train"], {"amp": "off", "dtype": dtype_name, **train}, where="train")
    return make_recipe(model_of(name, dtype), cfg, "cpu")


def volumes(seed: int, n: int = 2, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, *GRID, generator=gen) * 2 - 1).to(dtype)


def watch(recipe) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Each optimiser step of each network, as the gradients it stepped on (copies)."""
    seen: dict[str, list[dict[str, torch.Tensor]]] = {name: [] for name in recipe.optimizers}
    for name, opt in recipe.optimizers.items():
        net = recipe.model[name]

        def step(*args, _opt_step=opt.step, _name=name, _net=net, **kwargs):
            grads = {k: p.grad.clone() for k, p in _net.named_parameters() if p.grad is not None}
            seen[_name].append(grads)
            return _opt_step(*args, **kwargs)

        opt.step = step
    return seen


def counting_draw(recipe, seed: int = 100) -> list[torch.Tensor]:
    """Bind ``recipe.draw`` to a stream of new batches; returns the list of those drawn."""
    drawn: list[torch.Tensor] = []

    def draw():
        drawn.append(volumes(seed + len(drawn), dtype=recipe.dtype))
        return {"image": drawn[-1]}

    recipe.draw = draw
    return drawn


# ---------------------------------------------------------------------- how often each network steps

CASES = {
    "gan g3 d2": ("wgan-gp", {"g_updates": 3, "d_updates": 2}, {"generator": 3, "discriminator": 2}, 0),
    "gan reference 5:1": ("wgan-gp", {"g_updates": 5}, {"generator": 5, "discriminator": 1}, 0),
    "alpha paper": (
        "alpha-wgan-gp",
        {"eg_schedule": "paper"},
        {"encoder": 1, "generator": 2, "discriminator": 1, "code_discriminator": 1},
        1,
    ),
    "alpha reference": (
        "alpha-wgan-gp",
        {"eg_schedule": "reference"},
        {"encoder": 1, "generator": 2, "discriminator": 1, "code_discriminator": 1},
        1,
    ),
    "alpha joint": (
        "alpha-wgan-gp",
        {"eg_schedule": "joint"},
        {"encoder": 2, "generator": 2, "discriminator": 1, "code_discriminator": 1},
        1,
    ),
    "alpha paper g3 d2 same batch": (
        "alpha-gan",
        {"g_updates": 3, "d_updates": 2, "critic_batch": "same"},
        {"encoder": 1, "generator": 3, "discriminator": 2, "code_discriminator": 1},
        0,
    ),
    "alpha reference g3": (
        "alpha-wgan-gp",
        {"g_updates": 3, "eg_schedule": "reference"},
        {"encoder": 1, "generator": 3, "discriminator": 1, "code_discriminator": 1},
        1,
    ),
    "vae-gan reference": (
        "vae-gan",
        {"g_updates": 1, "d_updates": 1},
        {"encoder": 1, "generator": 1, "discriminator": 1},
        0,
    ),
    "vae-gan g2 d3": (
        "vae-gan",
        {"g_updates": 2, "d_updates": 3},
        {"encoder": 2, "generator": 2, "discriminator": 3},
        0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimiser_steps_and_batches_per_iteration(case):
    name, train, per_iteration, draws = CASES[case]
    recipe = recipe_of(name, **train)
    seen, drawn = watch(recipe), counting_draw(recipe)
    for it in range(2):
        logs = recipe.step({"image": volumes(it)})
        assert set(logs) == set(recipe.losses)
        assert all(torch.isfinite(v) for v in logs.values())
    assert {net: len(steps) for net, steps in seen.items()} == {k: 2 * v for k, v in per_iteration.items()}
    assert len(drawn) == 2 * draws


def test_reference_steps_the_generator_twice_on_one_gradient():
    recipe = recipe_of("alpha-wgan-gp", torch.float64, eg_schedule="reference")
    seen = watch(recipe)
    counting_draw(recipe)
    before = copy.deepcopy(recipe.model.generator.state_dict())
    recipe.step({"image": volumes(0, dtype=torch.float64)})
    first, second = seen["generator"]
    assert first.keys() == second.keys() and len(first) == len(list(recipe.model.generator.parameters()))
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # Two Adam steps on the same gradient: the oracle is torch's Adam run twice by hand.
    oracle = model_of("alpha-wgan-gp", torch.float64).generator
    oracle.load_state_dict(before)
    opt = torch.optim.Adam(oracle.parameters(), lr=DEFAULTS["train"]["lr"], betas=DEFAULTS["train"]["betas"])
    for _ in range(2):
        for k, p in oracle.named_parameters():
            p.grad = first[k].clone()
        opt.step()
    for (k, a), b in zip(oracle.named_parameters(), recipe.model.generator.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-14, msg=k)


def test_paper_recomputes_the_generator_loss_without_the_encoder():
    recipe = recipe_of("alpha-wgan-gp", torch.float64, eg_schedule="paper")
    seen = watch(recipe)
    counting_draw(recipe)
    real = volumes(0, dtype=torch.float64)
    snapshot = {}
    g_step = recipe.optimizers["generator"].step

    def keep_state_after_first(*args, **kwargs):
        out = g_step(*args, **kwargs)
        if "model" not in snapshot:  # what the second generator update starts from
            snapshot.update(model=copy.deepcopy(recipe.model), rng=torch.get_rng_state())
        return out

    recipe.optimizers["generator"].step = keep_state_after_first
    recipe.step({"image": real})
    first, second = seen["generator"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # The encoder stepped once, and the second pass left its gradients alone.
    (enc,) = seen["encoder"]
    for k, p in recipe.model.encoder.named_parameters():
        assert torch.equal(p.grad, enc[k]), k
    # Oracle: L_G by its formula (Kwon et al.: -E[D(G(E(x)))] - E[D(G(z))] + 10 |x - G(E(x))|)
    # from the state after the first update, with the same prior codes.
    m = snapshot["model"]
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(snapshot["rng"])
        with torch.no_grad():
            z_e = m.encoder(real)
        x_rec = m.generator(z_e)
        x_rand = m.generator(m.sample_latent(real.shape[0]).double())
        loss = (
            -m.discriminator(x_rec).mean() - m.discriminator(x_rand).mean() + 10 * (real - x_rec).abs().mean()
        )
        names, params = zip(*m.generator.named_parameters(), strict=True)
        grads = torch.autograd.grad(loss, params)
    for k, g in zip(names, grads, strict=True):
        torch.testing.assert_close(second[k], g, rtol=1e-10, atol=1e-12, msg=k)


def test_the_schedules_agree_with_one_generator_update():
    states = []
    for schedule in ("paper", "reference", "joint"):
        recipe = recipe_of("alpha-wgan-gp", torch.float64, eg_schedule=schedule, g_updates=1)
        counting_draw(recipe)
        torch.manual_seed(3)
        recipe.step({"image": volumes(0, dtype=torch.float64)})
        states.append(recipe.model.state_dict())
    for other in states[1:]:
        for k, v in states[0].items():
            assert torch.equal(v, other[k]), k


# ---------------------------------------------------------------------- the discriminators' real batch


@pytest.mark.parametrize("critic_batch", ["fresh", "same"])
def test_the_discriminators_see_the_fresh_batch(critic_batch):
    recipe = recipe_of("alpha-wgan-gp", critic_batch=critic_batch)
    drawn = counting_draw(recipe)
    first = volumes(0)
    to_d: list[torch.Tensor] = []

    def record(x: torch.Tensor, name: str) -> torch.Tensor:
        if name == "discriminator":
            to_d.append(x.detach())
        return x

    recipe.add_hook("critic_input", record)
    encoded: list[torch.Tensor] = []
    recipe.model.encoder.register_forward_pre_hook(lambda mod, args: encoded.append(args[0].detach()))
    recipe.step({"image": first})

    def fed(x: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
        return any(i.shape == x.shape and torch.equal(i, x) for i in inputs)

    if critic_batch == "fresh":
        (second,) = drawn
        assert fed(second, to_d) and not fed(first, to_d)
        # The encoder sees the first batch in the E-G updates (twice: the "paper" schedule's
        # generator-only pass encodes it again), then the second for D and C.
        assert len(encoded) == 3 and all(torch.equal(e, first) for e in encoded[:2])
        assert torch.equal(encoded[2], second)
    else:
        assert drawn == [] and fed(first, to_d)
        assert len(encoded) == 3 and all(torch.equal(e, first) for e in encoded)


def test_fresh_without_a_draw_is_a_clear_error():
    recipe = recipe_of("alpha-wgan-gp")
    before = copy.deepcopy(recipe.model.state_dict())
    with pytest.raises(ValueError, match=r"critic_batch='fresh'.*recipe\.draw.*critic_batch='same'"):
        recipe.step({"image": volumes(0)})
    # Refused before any update.
    for k, v in recipe.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_alpha_keys_belong_to_the_alpha_family():
    with pytest.raises(
        ValueError, match="train.eg_schedule is not used by the 'gan' recipe.*only by 'alpha'"
    ):
        recipe_of("wgan-gp", eg_schedule="joint")
    with pytest.raises(ValueError, match="train.lambda_dec is not used by the 'alpha' recipe"):
        recipe_of("alpha-wgan-gp", lambda_dec=1.0)
    with pytest.raises(ValueError, match=r"train.eg_schedule must be one of .*'paper'.*got 'twice'"):
        recipe_of("alpha-wgan-gp", eg_schedule="twice")


# ---------------------------------------------------------------------- VAE-GAN loss weights


def first_grads(**train) -> dict[str, dict[str, torch.Tensor]]:
    """The encoder's and generator's gradients of a VAE-GAN's first update (float64, same draws)."""
    recipe = recipe_of("vae-gan", torch.float64, g_updates=1, **train)
    seen = watch(recipe)
    torch.manual_seed(5)
    recipe.step({"image": volumes(0, dtype=torch.float64)})
    return {net: seen[net][0] for net in ("encoder", "generator")}


def assert_grads(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], equal: bool) -> None:
    assert a.keys() == b.keys()
    same = all(torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-14) for k in a)
    assert same == equal


def test_vae_gan_weights_reach_their_networks():
    base = first_grads()
    # lambda_dec weighs the generator's reconstruction term: the encoder does not see it ...
    dec = first_grads(lambda_dec=5.0)
    assert_grads(base["encoder"], dec["encoder"], equal=True)
    assert_grads(base["generator"], dec["generator"], equal=False)
    # ... and enters the generator's gradient linearly: g(20) - g(0) = 4 (g(5) - g(0)).
    zero = first_grads(lambda_dec=0.0)
    for k, g in base["generator"].items():
        torch.testing.assert_close(g - zero["generator"][k], 4 * (dec["generator"][k] - zero["generator"][k]))
    # lambda_kl weighs the encoder's prior term only.
    kl = first_grads(lambda_kl=3.0)
    assert_grads(base["generator"], kl["generator"], equal=True)
    assert_grads(base["encoder"], kl["encoder"], equal=False)


def test_vae_gan_kl_reduction_divides_by_the_latent_size():
    # Encoder gradient = lambda_kl * dKL + lambda_rec * dRec; the summed KL is L times the mean.
    mean, total, no_kl = (
        first_grads(kl_reduction="mean")["encoder"],
        first_grads(kl_reduction="sum")["encoder"],
        first_grads(lambda_kl=0.0)["encoder"],
    )
    for k in mean:
        torch.testing.assert_close(total[k] - no_kl[k], LATENT * (mean[k] - no_kl[k]))


def test_vae_gan_reconstruction_choice_changes_both_networks():
    mse, l1 = first_grads(reconstruction="mse"), first_grads(reconstruction="l1")
    assert_grads(mse["encoder"], l1["encoder"], equal=False)
    assert_grads(mse["generator"], l1["generator"], equal=False)
