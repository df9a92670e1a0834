"""Adversarial and auxiliary losses shared by the training recipes.

Each adversarial loss is written for one discriminator (critic) and any number of
fake sets, because alpha-GANs (Rosca et al. 2017; Kwon et al. 2019, seed 001)
show the image discriminator two kinds of fakes, reconstructions ``G(E(x))`` and
samples ``G(z)``: the real term is counted once per fake set, so that with
``wgan-gp`` the discriminator loss is Kwon et al.'s
``E[D(G(z_e))] + E[D(G(z_r))] - 2 E[D(x)]`` (their eq. 1, penalty aside).

- ``"wgan-gp"``: the Wasserstein critic loss (Arjovsky et al. 2017) with the gradient
  penalty added by the recipe (Gulrajani et al. 2017);
- ``"wgan"``: the same critic loss without a penalty, the critic kept Lipschitz by
  clipping its weights instead (Arjovsky et al. 2017; Han et al.'s WGAN, seed 002), which
  the recipe does after each critic update (``train.weight_clip``);
- ``"standard"``: the non-saturating GAN loss (Goodfellow et al. 2014), written with
  ``softplus`` on logits (numerically safe);
- ``"hinge"``: the hinge loss of SN-GANs (Miyato et al. 2018; King et al., seed 003).

Discriminator outputs are ``(N, 1)`` or ``(N,)`` logits / critic values; losses are
0-d tensors.

The auxiliary terms: the absolute (Kwon et al. eq. 2) or squared reconstruction
error, or the binary cross-entropy of [0, 1] volumes and sigmoid outputs (the
conditional VAE of Zhuang et al. 2019, seed 000), averaged over the voxels or summed
over each volume's voxels (:func:`reconstruction_loss`), and the Gaussian prior's KL
term of the VAE-GAN encoder, summed or averaged over the latent dimensions
(:func:`kl_standard_normal`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSSES = ("wgan-gp", "wgan", "standard", "hinge")
# The losses whose critic estimates a Wasserstein distance (no sigmoid, no margin).
WASSERSTEIN = ("wgan-gp", "wgan")
RECONSTRUCTIONS = ("l1", "mse", "bce")
# A recipe's reconstruction term per volume: averaged over its voxels, or summed (a log-likelihood).
RECONSTRUCTION_REDUCTIONS = ("mean", "sum")
KL_REDUCTIONS = ("sum", "mean")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (autocast) in float32 for the reductions; float64 stays float64."""
    return x if x.dtype == torch.float64 else x.float()


def _check(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown adversarial loss {loss!r}; choose one of {LOSSES}")


def discriminator_loss(loss: str, real: torch.Tensor, fakes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The discriminator's (critic's) loss for real outputs and one or more fake sets.

    Args:
        loss: ``"wgan-gp"``, ``"wgan"``, ``"standard"`` or ``"hinge"`` (the two WGAN
            losses are the same here: ``k E[D(fake)] - k E[D(real)]`` summed over fake sets;
            the penalty of ``"wgan-gp"`` is the recipe's).
        real: ``D(x)`` for real samples, ``(N, ...)``.
        fakes: ``D(x_fake)`` for each fake set.

    Raises:
        ValueError: unknown loss or no fake set.
    """
    _check(loss)
    if not fakes:
        raise ValueError("discriminator_loss needs at least one fake set")
    k = len(fakes)
    if loss in WASSERSTEIN:
        return sum(_wide(f).mean() for f in fakes) - k * _wide(real).mean()
    if loss == "standard":
        return k * F.softplus(-_wide(real)).mean() + sum(F.softplus(_wide(f)).mean() for f in fakes)
    return k * F.relu(1 - _wide(real)).mean() + sum(F.relu(1 + _wide(f)).mean() for f in fakes)


def generator_loss(loss: str, fakes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The generator's (or encoder's, against a code discriminator) adversarial loss.

    Raises:
        ValueError: unknown loss or no fake set.
    """
    _check(loss)
    if not fakes:
        raise ValueError("generator_loss needs at least one fake set")
    if loss == "standard":
        return sum(F.softplus(-_wide(f)).mean() for f in fakes)
    # WGAN and hinge generators both maximise the critic's value of their samples.
    return -sum(_wide(f).mean() for f in fakes)


def l1_reconstruction(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between volumes and their reconstructions (Kwon et al. eq. 2)."""
    return (_wide(x) - _wide(x_rec)).abs().mean()


def mse_reconstruction(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Mean squared error between volumes and their reconstructions, averaged over every
    voxel of the batch (the VAE-GAN reconstruction term of Kwon et al.'s code)."""
    return (_wide(x) - _wide(x_rec)).pow(2).mean()


def bce_reconstruction(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of volumes ``x`` in [0, 1] under voxel probabilities ``x_rec`` in
    [0, 1] (a sigmoid output), per voxel, unreduced, in float32 (float64 stays float64).

    Written out rather than ``F.binary_cross_entropy``, which autocast refuses; each log is
    clamped at -100, as that function does, so a saturated sigmoid gives a large finite loss.
    """
    x, p = _wide(x), _wide(x_rec)
    return -(x * p.log().clamp(min=-100) + (1 - x) * torch.log1p(-p).clamp(min=-100))


def reconstruction_loss(
    kind: str, x: torch.Tensor, x_rec: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``"l1"``, ``"mse"`` or ``"bce"`` (:func:`bce_reconstruction`) of volumes ``x`` and
    reconstructions ``x_rec``, both ``(N, 1, D, H, W)``.

    ``reduction="mean"``: averaged over every voxel of the batch (:func:`l1_reconstruction`,
    :func:`mse_reconstruction`); ``"sum"``: summed over each volume's voxels, averaged over
    the batch (the reconstruction term of a VAE's ELBO, a log-likelihood per volume).

    Raises:
        ValueError: another ``kind`` or ``reduction``.
    """
    if reduction not in RECONSTRUCTION_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {RECONSTRUCTION_REDUCTIONS}")
    if kind == "l1":
        per_voxel = (_wide(x) - _wide(x_rec)).abs()
    elif kind == "mse":
        per_voxel = (_wide(x) - _wide(x_rec)).pow(2)
    elif kind == "bce":
        per_voxel = bce_reconstruction(x, x_rec)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECONSTRUCTIONS}")
    if reduction == "mean":
        return per_voxel.mean()
    return per_voxel.flatten(1).sum(dim=1).mean()


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` of codes ``mu``, ``logvar`` of shape ``(N, L)``.

    ``reduction="sum"``: summed over the ``L`` latent dimensions, averaged over the
    batch (the KL of each code's whole posterior); ``"mean"``: averaged over batch and
    latent dimensions, i.e. the sum divided by ``L`` (what Kwon et al.'s VAE-GAN code
    weighs against its reconstruction error).

    Raises:
        ValueError: an unknown ``reduction``.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; choose one of {KL_REDUCTIONS}")
    mu, logvar = _wide(mu), _wide(logvar)
    per_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
    return per_dim.mean() if reduction == "mean" else per_dim.sum(dim=1).mean()
