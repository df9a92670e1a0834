"""Training recipes: one optimisation step of each model family.

A recipe owns the optimisers of a :class:`~brainkern.models.GenerativeModel`'s
networks and knows their update order; the engine (:mod:`brainkern.train.engine`)
feeds it batches and handles everything else (logging, checkpoints, signals).
New families (hinge-loss SN-GANs, HA-GANs, conditional GANs) add a recipe here and
register it in :data:`RECIPES`; the engine does not change.

- ``"gan"`` (G + D): WGAN-GP or standard / hinge GAN. Per iteration the
  generator is updated ``g_updates`` times, then the discriminator ``d_updates``
  times (Kwon et al.'s order, seed 001).
- ``"alpha"`` (E + G + D + C): the alpha-GAN of Rosca et al. (2017) as 3D
  alpha-WGAN-GP (Kwon et al. 2019, eqs. 1-3): encoder and generator trained as
  one network on ``L_G + L_E`` (``g_updates`` times: Kwon et al. update it twice),
  then the image discriminator, then the code discriminator.
- ``"vae-gan"`` (variational E + G + D): Larsen et al. (2016) with an L1
  reconstruction: the encoder minimises ``lambda_kl * KL + lambda_rec * L1``, the
  generator ``adversarial + lambda_rec * L1``, the discriminator sees real,
  reconstructed and sampled volumes.

Every step returns a dict of 0-d, detached loss tensors (no device sync).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from brainkern.ops import gradient_penalty
from brainkern.train.objectives import (
    discriminator_loss,
    generator_loss,
    kl_standard_normal,
    l1_reconstruction,
)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """No parameter gradients for ``modules`` inside the block (their inputs still get them)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Recipe:
    """Base class: optimisers per network, autocast, and the shared discriminator step.

    Args:
        model: the model; its ``networks()`` get one Adam optimiser each.
        train: the ``train`` section of the run configuration (``lr``, ``betas``,
            ``loss``, ``g_updates``, ``d_updates``, ``lambda_gp``, ``lambda_rec``,
            ``lambda_kl``, ``amp``).
        device: where the model lives.
    """

    family = ""

    def __init__(self, model: nn.Module, train: dict[str, Any], device: torch.device) -> None:
        self.model = model
        self.cfg = train
        self.device = torch.device(device)
        self.loss = train.get("loss") or model.loss
        self.g_updates = int(train["g_updates"])
        self.d_updates = int(train["d_updates"])
        self.lambda_gp = float(train["lambda_gp"])
        self.lambda_rec = float(train["lambda_rec"])
        self.lambda_kl = float(train["lambda_kl"])
        amp = train.get("amp", "auto")
        self.amp_dtype = (
            torch.bfloat16 if (amp == "bf16" or (amp == "auto" and self.device.type == "cuda")) else None
        )
        self.optimizers = {
            name: torch.optim.Adam(net.parameters(), lr=float(train["lr"]), betas=tuple(train["betas"]))
            for name, net in model.networks().items()
        }

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _update(self, loss: torch.Tensor, *names: str) -> None:
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            self.optimizers[name].step()

    def _latent(self, n: int) -> torch.Tensor:
        return self.model.sample_latent(n, device=self.device)

    def _penalty(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return gradient_penalty(critic, real, fake, weight=self.lambda_gp)

    def _critic_step(
        self, name: str, critic: nn.Module, real: torch.Tensor, fakes: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One update of ``critic`` against every fake set (WGAN-GP: a penalty per set)."""
        with self.autocast():
            loss = discriminator_loss(self.loss, critic(real), [critic(f) for f in fakes])
            gp = torch.zeros((), device=self.device)
            if self.loss == "wgan-gp":
                gp = sum(self._penalty(critic, real, f) for f in fakes)
        self._update(loss + gp, name)
        short = "d" if name == "discriminator" else "c"
        return {f"loss_{short}": loss.detach(), f"gp_{short}": gp.detach()}

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.optimizers) ^ set(state)
        if missing:
            raise KeyError(f"optimiser states do not match the model's networks: {sorted(missing)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


class GANRecipe(Recipe):
    """Generator + discriminator (``wgan-gp`` and other plain GANs)."""

    family = "gan"

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        G, D = self.model.generator, self.model.discriminator
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        with frozen(D):
            for _ in range(self.g_updates):
                with self.autocast():
                    loss_g = generator_loss(self.loss, [D(G(self._latent(n)))])
                self._update(loss_g, "generator")
        logs["loss_g"] = loss_g.detach()
        for _ in range(self.d_updates):
            with torch.no_grad(), self.autocast():
                fake = G(self._latent(n)).float()
            logs.update(self._critic_step("discriminator", D, real, [fake]))
        return logs


class AlphaRecipe(Recipe):
    """Encoder + generator + discriminator + code discriminator (alpha-GAN family)."""

    family = "alpha"

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        E, G = self.model.encoder, self.model.generator
        D, C = self.model.discriminator, self.model.code_discriminator
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        # 1. encoder and generator as one network (Kwon et al.: L_G + L_E, updated twice).
        with frozen(D, C):
            for _ in range(self.g_updates):
                with self.autocast():
                    z_e = E(real)
                    x_rec, x_rand = G(z_e), G(self._latent(n))
                    adv = generator_loss(self.loss, [D(x_rec), D(x_rand)])
                    rec = l1_reconstruction(real, x_rec)
                    code = generator_loss(self.loss, [C(z_e)])
                    loss_eg = adv + self.lambda_rec * rec + code
                self._update(loss_eg, "encoder", "generator")
        logs.update(loss_g=adv.detach(), loss_rec=rec.detach(), loss_e=code.detach())
        # 2. the image discriminator: real against reconstructions and samples.
        with torch.no_grad(), self.autocast():
            z_e = E(real).float()
            x_rec, x_rand = G(z_e).float(), G(self._latent(n)).float()
        for _ in range(self.d_updates):
            logs.update(self._critic_step("discriminator", D, real, [x_rec, x_rand]))
        # 3. the code discriminator: prior samples are "real", encodings "fake".
        logs.update(self._critic_step("code_discriminator", C, self._latent(n), [z_e]))
        return logs


class VAEGANRecipe(Recipe):
    """Variational encoder + generator + discriminator (VAE-GAN)."""

    family = "vae-gan"

    def step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        E, G, D = self.model.encoder, self.model.generator, self.model.discriminator
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        with frozen(D):
            for _ in range(self.g_updates):
                with self.autocast():
                    mu, logvar = E(real)
                    z_e = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                    x_rec, x_rand = G(z_e), G(self._latent(n))
                    adv = generator_loss(self.loss, [D(x_rec), D(x_rand)])
                    rec = l1_reconstruction(real, x_rec)
                    kl = kl_standard_normal(mu, logvar)
                    loss_e = self.lambda_kl * kl + self.lambda_rec * rec
                    loss_g = adv + self.lambda_rec * rec
                for opt in (self.optimizers["encoder"], self.optimizers["generator"]):
                    opt.zero_grad(set_to_none=True)
                # The encoder learns from the prior and reconstruction terms only, the
                # generator from reconstruction and the discriminator (Larsen et al.).
                loss_e.backward(inputs=list(E.parameters()), retain_graph=True)
                loss_g.backward(inputs=list(G.parameters()))
                self.optimizers["encoder"].step()
                self.optimizers["generator"].step()
        logs.update(loss_g=adv.detach(), loss_rec=rec.detach(), loss_kl=kl.detach())
        with torch.no_grad(), self.autocast():
            mu, logvar = E(real)
            z_e = (mu + torch.randn_like(mu) * (0.5 * logvar).exp()).float()
            x_rec, x_rand = G(z_e).float(), G(self._latent(n)).float()
        for _ in range(self.d_updates):
            logs.update(self._critic_step("discriminator", D, real, [x_rec, x_rand]))
        return logs


RECIPES: dict[str, type[Recipe]] = {r.family: r for r in (GANRecipe, AlphaRecipe, VAEGANRecipe)}


def make_recipe(model: nn.Module, train: dict[str, Any], device: torch.device | str) -> Recipe:
    """The recipe for ``model.family``.

    Raises:
        ValueError: a family without a recipe.
    """
    try:
        cls = RECIPES[model.family]
    except KeyError:
        raise ValueError(
            f"no training recipe for model family {model.family!r}; known: {sorted(RECIPES)}"
        ) from None
    return cls(model, train, torch.device(device))
