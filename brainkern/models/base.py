"""The container every registered generative model is: its networks, latent prior and sampling."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import nn

__all__ = ["FAMILIES", "LOSSES", "GenerativeModel"]

# Which training recipe drives a model (``brainkern.train`` picks its loop by this).
FAMILIES = ("gan", "alpha", "vae-gan")
# The adversarial loss a model's paper trains it with.
LOSSES = ("wgan-gp", "standard", "hinge")

# The order in which the paper's training step updates the networks (Kwon et al.
# 2019: encoder-generator, then discriminator, then code discriminator).
_NETWORK_ORDER = ("encoder", "generator", "discriminator", "code_discriminator")


class GenerativeModel(nn.Module):
    """A generator with the networks that train it, and a standard-normal latent prior.

    A container: it has no ``forward``; the training engine calls its networks.
    Build one with :func:`brainkern.models.build_model`, which sets ``name`` and
    ``config`` from the registry entry and its resolved keyword arguments.

    Attributes:
        generator: ``z (N, latent_dim) -> x (N, 1, D, H, W)``.
        discriminator: ``x (N, 1, D, H, W) -> (N, 1)`` scores.
        encoder: ``x -> z (N, latent_dim)`` (``(mu, logvar)`` for a variational
            one), or ``None``.
        code_discriminator: ``z (N, latent_dim) -> (N, 1)``, or ``None``.
        name: the registry name.
        shape: the training grid ``(D, H, W)``.
        latent_dim: size of the latent code.
        family: the training recipe: ``"gan"`` (G + D), ``"alpha"`` (encoder + G + D
            + code discriminator) or ``"vae-gan"`` (variational encoder + G + D).
        loss: the adversarial loss: ``"wgan-gp"``, ``"standard"`` or ``"hinge"``.
        config: the keyword arguments that rebuild the architecture,
            ``brainkern.models.build_model(**model.config)``, JSON/YAML-able.

    Raises:
        ValueError: an unknown ``family`` or ``loss``, or a missing network the
            family needs.
    """

    def __init__(
        self,
        *,
        name: str,
        shape: tuple[int, int, int],
        latent_dim: int,
        family: str,
        loss: str,
        generator: nn.Module,
        discriminator: nn.Module,
        encoder: nn.Module | None = None,
        code_discriminator: nn.Module | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"GenerativeModel: family must be one of {FAMILIES}, got {family!r}")
        if loss not in LOSSES:
            raise ValueError(f"GenerativeModel: loss must be one of {LOSSES}, got {loss!r}")
        if family in ("alpha", "vae-gan") and encoder is None:
            raise ValueError(f"GenerativeModel: family {family!r} needs an encoder")
        if family == "alpha" and code_discriminator is None:
            raise ValueError("GenerativeModel: family 'alpha' needs a code discriminator")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim = int(latent_dim)
        self.family = family
        self.loss = loss
        self.encoder = encoder
        self.generator = generator
        self.discriminator = discriminator
        self.code_discriminator = code_discriminator
        self.config: dict[str, Any] = (
            dict(config)
            if config is not None
            else {"name": name, "shape": list(self.shape), "latent_dim": self.latent_dim}
        )

    # -- latent prior and sampling ------------------------------------------------

    def sample_latent(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` latent codes from N(0, I), float32, shape ``(n, latent_dim)``.

        Drawn on the CPU with ``generator`` (the global RNG when ``None``) and then
        moved to ``device``, so a seeded generator gives the same codes on every device.

        Raises:
            ValueError: ``n < 0``.
        """
        n = _check_count(n, "n", minimum=0)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float32)
        return z if device is None else z.to(device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """``generator(z)``: ``(N, latent_dim) -> (N, 1, D, H, W)`` (with autograd, current mode)."""
        return self.generator(z)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` volumes from the prior, float32 on the CPU, shape ``(n, 1, D, H, W)``.

        The codes come from :meth:`sample_latent` (all ``n`` drawn first, so the
        result does not depend on ``batch_size``); the generator runs without
        autograd, in eval mode (BatchNorm uses its running statistics), in batches
        of ``batch_size``, on ``device`` (default: where the generator's parameters
        are). Its previous train/eval mode is restored afterwards, also on error.

        Raises:
            ValueError: ``n < 0`` or ``batch_size < 1``.
        """
        n = _check_count(n, "n", minimum=0)
        batch_size = _check_count(batch_size, "batch_size", minimum=1)
        if device is None:
            device = _module_device(self.generator)
        z = self.sample_latent(n, generator=generator)
        was_training = self.generator.training
        out = []
        try:
            self.generator.eval()
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    x = self.generate(z[start : start + batch_size].to(device))
                    out.append(x.to(device="cpu", dtype=torch.float32))
        finally:
            self.generator.train(was_training)
        if not out:
            return torch.empty(0, 1, *self.shape, dtype=torch.float32)
        return torch.cat(out)

    # -- introspection --------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        """The present networks, in the paper's update order (encoder, generator,
        discriminator, code discriminator)."""
        return {key: net for key in _NETWORK_ORDER if (net := getattr(self, key)) is not None}

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters (trainable or not; buffers excluded) of each present network."""
        return {key: sum(p.numel() for p in net.parameters()) for key, net in self.networks().items()}

    def describe(self) -> str:
        """A small text table: one line per network with its parameter count, and the total."""
        counts = self.parameter_counts()
        rows = [(key, f"{value:,}") for key, value in counts.items()]
        rows.append(("total", f"{sum(counts.values()):,}"))
        left = max(len("network"), *(len(k) for k, _ in rows))
        right = max(len("parameters"), *(len(v) for _, v in rows))
        grid = "x".join(str(s) for s in self.shape)
        lines = [
            f"{self.name} (family {self.family}, loss {self.loss}, grid {grid}, latent {self.latent_dim})",
            f"{'network':<{left}}  {'parameters':>{right}}",
        ]
        lines += [f"{k:<{left}}  {v:>{right}}" for k, v in rows]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, shape={self.shape}, latent_dim={self.latent_dim}, "
            f"family={self.family!r}, loss={self.loss!r}"
        )


def _check_count(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
