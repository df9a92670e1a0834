"""The container every registered generative model is: its networks, latent prior and sampling."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["GenerativeModel"]


class GenerativeModel(nn.ModuleDict):
    """A generator with the networks that train it, and a standard-normal latent prior.

    A container of named networks (an :class:`torch.nn.ModuleDict`, so the state
    dict keys are ``<network>.<parameter>``); it has no ``forward``: the training
    recipe calls its networks. Build one with :func:`brainkern.models.build_model`,
    which sets ``name`` and ``config`` from the registry entry and its resolved
    keyword arguments. Networks are reached as ``model["generator"]`` or
    ``model.generator``; which networks a model must have, and which of them are
    trained, is the business of its family's recipe (``brainkern.train.recipes``),
    the one place where a family is named.

    Args:
        name: the registry name.
        shape: the training grid ``(D, H, W)`` (``(H, W)`` for 2D models).
        latent_dim: size of the latent code.
        family: the training recipe that drives the model (``"gan"``, ``"alpha"``,
            ``"vae-gan"``, ...: any name a recipe is registered under).
        loss: the adversarial loss of the model's paper (``"wgan-gp"``, ``"wgan"``,
            ``"standard"``, ``"hinge"``); the recipe checks it.
        networks: the networks by name, in the order the paper's training step
            updates them. By convention ``generator`` maps ``z (N, latent_dim)``
            (and ``labels (N,)`` for a conditional model) to ``x (N, channels, D, H, W)``
            (``(N, channels, H, W)`` in 2D).
        num_classes: ``0`` for an unconditional model; else the number of classes a
            conditional generator takes labels from (``0 .. num_classes - 1``).
        channels: image channels the generator writes (``1`` for every 3D model; the
            number of MR sequences stacked for a 2D model such as Han et al.'s).
        config: the keyword arguments that rebuild the architecture,
            ``brainkern.models.build_model(**model.config)``, JSON/YAML-able.

    Raises:
        ValueError: no ``generator`` network, an empty ``family`` or ``loss``, a
            negative ``num_classes``, or ``channels < 1``.
    """

    def __init__(
        self,
        *,
        name: str,
        shape: Sequence[int],
        latent_dim: int,
        family: str,
        loss: str,
        networks: Mapping[str, nn.Module],
        num_classes: int = 0,
        config: dict[str, Any] | None = None,
        channels: int = 1,
    ) -> None:
        super().__init__(networks)
        if "generator" not in self:
            raise ValueError(f"GenerativeModel {name!r}: needs a network named 'generator', got {list(self)}")
        for key, value in (("family", family), ("loss", loss)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"GenerativeModel {name!r}: {key} must be a non-empty string, got {value!r}")
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim = int(latent_dim)
        self.family = family
        self.loss = loss
        self.num_classes = _check_count(num_classes, "num_classes", minimum=0)
        self.channels = _check_count(channels, "channels", minimum=1)
        self.config: dict[str, Any] = (
            dict(config)
            if config is not None
            else {"name": name, "shape": list(self.shape), "latent_dim": self.latent_dim}
        )

    @property
    def conditional(self) -> bool:
        """Whether the generator (and the networks that judge it) take class labels."""
        return self.num_classes > 0

    # -- latent prior and sampling ------------------------------------------------

    def sample_latent(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` latent codes from N(0, I), float32, shape ``(n, latent_dim)``.

        With a ``generator`` (a seeded CPU ``torch.Generator``: sampling, evaluation)
        the codes are drawn on the CPU and then moved to ``device``, so a seed gives
        the same codes on every device. Without one (a training step) they are drawn
        by ``device``'s own global generator where they are used: no host-to-device
        copy, so the step never waits for the device (on the CPU both ways draw the
        same numbers).

        Raises:
            ValueError: ``n < 0``.
        """
        n = _check_count(n, "n", minimum=0)
        if generator is None and device is not None:
            return torch.randn(n, self.latent_dim, dtype=torch.float32, device=device)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float32)
        return z if device is None else z.to(device)

    def check_labels(self, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """``labels`` as an int64 ``(n,)`` tensor, checked against the model's classes.

        Raises:
            ValueError: labels for an unconditional model, none for a conditional
                one, the wrong count, or a class outside ``0 .. num_classes - 1``.
        """
        if not self.conditional:
            if labels is not None:
                raise ValueError(f"{self.name} is unconditional: it takes no labels")
            return None
        if labels is None:
            raise ValueError(
                f"{self.name} is conditional ({self.num_classes} classes): give labels, "
                f"e.g. sample(n, labels=torch.arange(n) % {self.num_classes})"
            )
        labels = torch.as_tensor(labels).long().flatten()
        if labels.numel() != n:
            raise ValueError(f"{self.name}: {labels.numel()} labels for {n} volumes")
        # Checked on the CPU copy only: a device tensor's range is the caller's business
        # (reading it would synchronise the device in a training step).
        if labels.device.type == "cpu" and n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{self.name}: labels must lie in 0 .. {self.num_classes - 1}")
        return labels

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``generator(z)`` or ``generator(z, labels)``: ``(N, latent_dim)`` (and ``(N,)``)
        -> ``(N, channels, *shape)``, with autograd, in the current train/eval mode."""
        if self.conditional:
            labels = labels if labels is None else labels.to(z.device)
            if labels is None:
                self.check_labels(None, z.shape[0])
            return self["generator"](z, labels)
        if labels is not None:
            self.check_labels(labels, z.shape[0])
        return self["generator"](z)

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` volumes (2D: images) from the prior, float32 on the CPU, shape
        ``(n, channels, *shape)``: ``(n, 1, D, H, W)`` for a 3D model.

        The codes come from :meth:`sample_latent` (all ``n`` drawn first, so the
        result does not depend on ``batch_size``); the generator runs without
        autograd, in eval mode (BatchNorm uses its running statistics), in batches
        of ``batch_size``, on ``device`` (default: where the generator's parameters
        are). Its previous train/eval mode is restored afterwards, also on error.

        Args:
            labels: ``(n,)`` classes for a conditional model (required there).

        Raises:
            ValueError: ``n < 0``, ``batch_size < 1``, or labels that do not fit
                (see :meth:`check_labels`).
        """
        n = _check_count(n, "n", minimum=0)
        batch_size = _check_count(batch_size, "batch_size", minimum=1)
        labels = self.check_labels(labels, n)
        net = self["generator"]
        if device is None:
            device = _module_device(net)
        z = self.sample_latent(n, generator=generator)
        was_training = net.training
        out = []
        try:
            net.eval()
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    part = None if labels is None else labels[start : start + batch_size].to(device)
                    x = self.generate(z[start : start + batch_size].to(device), part)
                    out.append(x.to(device="cpu", dtype=torch.float32))
        finally:
            net.train(was_training)
        if not out:
            return torch.empty(0, self.channels, *self.shape, dtype=torch.float32)
        return torch.cat(out)

    # -- introspection --------------------------------------------------------------

    def networks(self) -> dict[str, nn.Module]:
        """The networks by name, in the order the model's paper updates them."""
        return dict(self.items())

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
        if self.channels != 1:
            grid += f", {self.channels} channels"
        lines = [
            f"{self.name} (family {self.family}, loss {self.loss}, grid {grid}, latent {self.latent_dim}"
            + (f", {self.num_classes} classes)" if self.conditional else ")"),
            f"{'network':<{left}}  {'parameters':>{right}}",
        ]
        lines += [f"{k:<{left}}  {v:>{right}}" for k, v in rows]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, shape={self.shape}, latent_dim={self.latent_dim}, "
            f"family={self.family!r}, loss={self.loss!r}, num_classes={self.num_classes}"
            + (f", channels={self.channels}" if self.channels != 1 else "")
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
