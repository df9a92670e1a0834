"""Tiny linear GANs, class-conditional and not, registered for tests, and a configuration that
trains them in a second.

Sampling from the command line and the end-of-run evaluation must handle
conditional models (Zhuang et al. 2019's ICW-GAN, CVAE, GMM); these tests need one
that trains in two iterations on a 12x14x10 simulated fMRI cohort, whatever the
real models' sizes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from brainkern.models import GenerativeModel, model_names, register_model
from brainkern.train import config

NAME = "test-tiny-cgan"
UNCONDITIONAL = "test-tiny-gan"
SHAPE = (12, 14, 10)


class _Generator(nn.Module):
    """``(z[, labels])`` -> ``(N, 1, *shape)`` in [0, 1]; a class embedding is added to the code."""

    def __init__(self, latent_dim: int, num_classes: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.out = nn.Linear(latent_dim, math.prod(shape))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z + self.embed(labels)
        return torch.sigmoid(self.out(z)).view(-1, 1, *self.shape)


class _Critic(nn.Module):
    """``(x[, labels])`` -> ``(N, 1)``: the score of each volume's own class."""

    def __init__(self, num_classes: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.out = nn.Linear(math.prod(shape), max(num_classes, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.out(x.flatten(1))
        return scores if labels is None else scores.gather(1, labels.view(-1, 1))


def _model(name: str, shape, latent_dim: int, num_classes: int) -> GenerativeModel:
    shape = tuple(int(s) for s in shape)
    return GenerativeModel(
        name=name,
        shape=shape,
        latent_dim=latent_dim,
        family="gan",
        loss="wgan-gp",
        networks={
            "generator": _Generator(latent_dim, num_classes, shape),
            "discriminator": _Critic(num_classes, shape),
        },
        num_classes=num_classes,
    )


# Registered once, however often the module is imported (under another package path).
if NAME not in model_names():

    @register_model(NAME)
    def tiny_cgan(shape=SHAPE, latent_dim: int = 4, num_classes: int = 2) -> GenerativeModel:
        """A linear class-conditional GAN (a test model)."""
        return _model(NAME, shape, latent_dim, num_classes)

    @register_model(UNCONDITIONAL)
    def tiny_gan(shape=SHAPE, latent_dim: int = 4) -> GenerativeModel:
        """A linear GAN (a test model)."""
        return _model(UNCONDITIONAL, shape, latent_dim, 0)


def tiny_config(model: str = NAME, **sections) -> dict:
    """Two iterations of a tiny GAN (conditional by default) on a 2-class fMRI cohort in [0, 1].

    ``sections``: extra overrides per section, e.g. ``log={"picture_every": 2}``.
    """
    base = {
        "model": {"name": model, "latent_dim": 4},
        "data": {
            "cohort": "fmri",
            "n_per_class": 4,
            "n_classes": 2,
            "shape": list(SHAPE),
            "cohort_shape": list(SHAPE),
            "scale": "[0,1]",
            "folds": None,
            "flip": False,
            "intensity": None,
        },
        "train": {"iters": 2, "batch_size": 2, "threads": 1},
        "log": {"every": 1, "checkpoint_every": 2, "picture_every": 100, "n_samples": 0},
        "evaluate": {"enabled": False},
    }
    return config.resolve(None, [base, sections])
