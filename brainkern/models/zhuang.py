"""The conditional generative models of Zhuang, Schwing and Koyejo (2019, seed 000).

Zhuang et al. synthesise task fMRI maps (Neurovault statistical maps on the
53 x 63 x 46, 3 mm grid, min-max scaled to [0, 1]) for a given class label and
add the synthetic maps to a classifier's training set. They compare three
generators, all registered here and all class-conditional (``num_classes >= 1``;
``model.sample(n, labels=...)``):

- ``icw-gan`` (family ``gan``, loss ``wgan-gp``): their "improved conditional
  Wasserstein GAN" (Fig. 1): a 3D generator of four layers and its mirrored
  critic, both shown the label at their input and again at every hidden layer,
  trained with the WGAN-GP objective (Gulrajani et al. 2017).
- ``cvae`` (family ``cvae``, loss ``elbo``): a 3D convolutional conditional VAE.
- ``gmm`` (family ``em``, loss ``em``): one Gaussian mixture per class, fitted by
  expectation-maximisation. The paper fits it to the voxels directly; a full
  covariance over ~10^5 voxels cannot be estimated from a few hundred maps, so
  brainkern fits the mixtures in a PCA space of the brain-masked voxels (one PCA
  for all classes) and maps the draws back to the grid.

Grids. The networks work on a padded grid ``P = 8 * ceil(s / 8)`` per axis (three
factor-2 stages): the generators produce ``P`` and return the centre ``shape``;
the critic and the encoder zero-pad their input from ``shape`` to ``P`` with the
same margins. Any grid of positive sides works (53 x 63 x 46 runs on 56 x 64 x 48).

Every network keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainkern.models._checkpoint import run_block
from brainkern.models.base import GenerativeModel
from brainkern.models.kwon import _check_positive, _check_volume, parse_grid
from brainkern.models.registry import register_model
from brainkern.nn.conv import Conv3d as GradfixConv3d

__all__ = [
    "COVARIANCES",
    "CVAEEncoder",
    "ConditionalGenerator",
    "GMMGenerator",
    "ICWDiscriminator",
    "LabelVolume",
    "check_shape",
    "padded_grid",
]

_STAGES = 3
_FACTOR = 2**_STAGES
COVARIANCES = ("full", "tied", "diag", "spherical")  # scikit-learn's GaussianMixture covariance types
CRITIC_NORMS = ("none", "layer")


# ---------------------------------------------------------------------------
# grids and labels


def check_shape(shape: int | Sequence[int], owner: str = "grid") -> tuple[int, int, int]:
    """The grid ``(D, H, W)`` as three positive ints (an int means a cube).

    Raises:
        TypeError: not an int or three ints.
        ValueError: a side < 1.
    """
    out = parse_grid(shape, owner)
    if min(out) < 1:
        raise ValueError(f"{owner}: grid sides must be >= 1, got {out}")
    return out  # type: ignore[return-value]


def padded_grid(shape: Sequence[int]) -> tuple[int, int, int]:
    """``8 * ceil(s / 8)`` per side: the grid the networks compute on (three x2 stages)."""
    return tuple(_FACTOR * math.ceil(int(s) / _FACTOR) for s in shape)  # type: ignore[return-value]


def _margins(shape: Sequence[int]) -> list[tuple[int, int]]:
    """``(before, after)`` per axis between ``shape`` and its padded grid (the extra voxel of
    an odd margin goes after)."""
    return [((p - s) // 2, p - s - (p - s) // 2) for s, p in zip(shape, padded_grid(shape), strict=True)]


def _crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The centre ``shape`` of padded volumes ``(N, C, *P)``."""
    (d, _), (h, _), (w, _) = _margins(shape)
    return x[..., d : d + shape[0], h : h + shape[1], w : w + shape[2]]


def _pad(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Volumes ``(N, C, *shape)`` zero-padded to the padded grid, as :func:`_crop` undoes."""
    (d0, d1), (h0, h1), (w0, w1) = _margins(shape)
    if not any((d0, d1, h0, h1, w0, w1)):
        return x
    return F.pad(x, (w0, w1, h0, h1, d0, d1))


def _one_hot(labels: torch.Tensor, num_classes: int, n: int, dtype: torch.dtype, owner: str) -> torch.Tensor:
    """Labels ``(n,)`` as one-hot rows ``(n, num_classes)`` in ``dtype``."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{owner}: expected labels of shape ({n},), got {got}")
    if labels.is_floating_point():
        raise TypeError(f"{owner}: labels must be integer classes, got {labels.dtype}")
    return F.one_hot(labels.long(), num_classes).to(dtype)


def _check_code(z: torch.Tensor, latent_dim: int, owner: str) -> None:
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{owner}: expected codes of shape (N, {latent_dim}), got {tuple(z.shape)}")


class LabelVolume(nn.Module):
    """A one-hot label as an extra channel: ``(N, C) -> (N, 1, *grid)`` in (-1, 1).

    A fully connected layer ``C -> prod(grid)`` followed by tanh, Zhuang et al.'s
    way (Fig. 1) of concatenating the label to a hidden layer of spatial size
    ``grid``. On a one-hot input the layer is a learned volume per class (its
    weight column) plus a shared one (its bias).
    """

    def __init__(self, num_classes: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.linear = nn.Linear(num_classes, math.prod(self.grid))

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(onehot)).view(-1, 1, *self.grid)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"


# ---------------------------------------------------------------------------
# ICW-GAN and CVAE networks


class ConditionalGenerator(nn.Module):
    """A class-conditional 3D generator: ``(N, latent_dim), (N,) -> (N, 1, D, H, W)`` in [0, 1].

    Four layers on the padded grid ``P`` (see :func:`padded_grid`), ``S = P / 8``:

    1. the code and the one-hot label, concatenated ``(N, latent_dim + C)``, through a
       3D transposed convolution from a single voxel to ``(N, 4w, *S)`` (a kernel the
       size of ``S``: a fully connected layer written as a convolution), BatchNorm3d, ReLU;
    2. - 3. transposed convolutions ``4 x 4 x 4``, stride 2: ``4w -> 2w -> w``, each
       doubling the grid, BatchNorm3d, ReLU;
    4. a transposed convolution ``w -> 1`` to ``P``, with bias, and a sigmoid;

    then the centre ``shape`` of ``P``. With ``label_volumes=True`` (ICW-GAN, Zhuang
    et al. Fig. 1) the label also enters layers 2, 3 and 4: a :class:`LabelVolume`
    of the grid of that layer's input is concatenated to it as one more channel.
    With ``label_volumes=False`` (the CVAE's decoder) the label enters with the code
    only.

    Args:
        shape: output grid ``(D, H, W)`` (any positive sides; an int for a cube).
        latent_dim: size of the code.
        num_classes: ``C`` (>= 1).
        width: ``w``.
        label_volumes: concatenate the label to every hidden layer too.
        checkpoint: recompute each layer in backward (training with autograd only).

    Raises:
        ValueError: a bad grid or a non-positive size; at call time, codes that are
            not ``(N, latent_dim)``, labels that are not ``(N,)``.
        TypeError: floating-point labels.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        num_classes: int,
        width: int = 16,
        label_volumes: bool = True,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        owner = "ConditionalGenerator"
        self.shape = check_shape(shape, owner)
        self.latent_dim = _check_positive(latent_dim, "latent_dim", owner)
        self.num_classes = _check_positive(num_classes, "num_classes", owner)
        self.width = w = _check_positive(width, "width", owner)
        self.label_volumes = bool(label_volumes)
        self.checkpoint = bool(checkpoint)
        grid = padded_grid(self.shape)
        start = tuple(p // _FACTOR for p in grid)
        extra = 1 if self.label_volumes else 0
        self.project = nn.Sequential(
            nn.ConvTranspose3d(self.latent_dim + self.num_classes, 4 * w, kernel_size=start, bias=False),
            nn.BatchNorm3d(4 * w),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in ((4 * w, 2 * w), (2 * w, w)):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose3d(c_in + extra, c_out, 4, stride=2, padding=1, bias=False),
                    nn.BatchNorm3d(c_out),
                    nn.ReLU(),
                )
            )
        blocks.append(nn.Sequential(nn.ConvTranspose3d(w + extra, 1, 4, stride=2, padding=1), nn.Sigmoid()))
        self.blocks = nn.ModuleList(blocks)
        if self.label_volumes:
            sizes = [tuple(s * 2**i for s in start) for i in range(_STAGES)]
            self.labels = nn.ModuleList(LabelVolume(self.num_classes, g) for g in sizes)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_code(z, self.latent_dim, "ConditionalGenerator")
        onehot = _one_hot(labels, self.num_classes, z.shape[0], z.dtype, "ConditionalGenerator")
        x = torch.cat([z, onehot], dim=1)[:, :, None, None, None]
        x = run_block(self.project, x, self.checkpoint)
        for i, block in enumerate(self.blocks):
            if self.label_volumes:
                x = torch.cat([x, self.labels[i](onehot).to(x.dtype)], dim=1)
            x = run_block(block, x, self.checkpoint)
        return _crop(x, self.shape)

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, latent_dim={self.latent_dim}, num_classes={self.num_classes}"
        s += f", width={self.width}, label_volumes={self.label_volumes}"
        return s + (", checkpoint=True" if self.checkpoint else "")


class ICWDiscriminator(nn.Module):
    """ICW-GAN's critic, the generator mirrored: ``(N, 1, D, H, W), (N,) -> (N, 1)``.

    The volume is zero-padded to the padded grid ``P``; then four convolutions, the
    label concatenated before each as a :class:`LabelVolume` channel of that layer's
    input grid (Zhuang et al. Fig. 1):

    1. - 3. ``4 x 4 x 4``, stride 2: ``1 -> w -> 2w -> 4w``, LeakyReLU, halving ``P``
       to ``S = P / 8``;
    4. ``4w -> 1`` with a kernel covering all of ``S`` (a fully connected layer written
       as a convolution, the mirror of the generator's first layer), linear: an
       unbounded critic value.

    The label channel beside this linear layer adds a per-class constant to the critic
    value. Under the Wasserstein loss, real and fake batches with the same labels
    cancel it (as they cancel the layer's bias), so its weights get no gradient
    there; they do under the standard and hinge losses. It is kept, as in the paper's
    figure, so that the critic sees the label before every layer.

    No BatchNorm: the gradient penalty is a per-sample quantity and batch statistics
    would couple the samples of a batch (Gulrajani et al. 2017, Sec. 4). The
    default is no normalisation at all; ``norm="layer"`` adds a per-sample layer
    norm over channels and space (``GroupNorm`` with one group, the replacement
    Gulrajani et al. suggest) after the hidden convolutions.

    Args:
        shape: input grid ``(D, H, W)`` (any positive sides).
        num_classes: ``C`` (>= 1).
        width: ``w``.
        negative_slope: LeakyReLU slope.
        norm: ``"none"`` or ``"layer"``.
        checkpoint: recompute each layer in backward (training with autograd only).
        gradfix: convolutions as :class:`brainkern.nn.Conv3d`, whose weight gradients
            :func:`brainkern.ops.gradient_penalty` skips in its first backward.

    Raises:
        ValueError: a bad grid, a non-positive size, an unknown ``norm``; at call time,
            an input that is not ``(N, 1, D, H, W)`` or labels that are not ``(N,)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        num_classes: int,
        width: int = 16,
        negative_slope: float = 0.2,
        norm: str = "none",
        checkpoint: bool = False,
        gradfix: bool = False,
    ) -> None:
        super().__init__()
        owner = "ICWDiscriminator"
        self.shape = check_shape(shape, owner)
        self.num_classes = _check_positive(num_classes, "num_classes", owner)
        self.width = w = _check_positive(width, "width", owner)
        if norm not in CRITIC_NORMS:
            raise ValueError(f"{owner}: norm must be one of {CRITIC_NORMS}, got {norm!r}")
        self.norm = norm
        self.checkpoint = bool(checkpoint)
        self.gradfix = bool(gradfix)
        conv = GradfixConv3d if gradfix else nn.Conv3d
        grid = padded_grid(self.shape)
        sizes = [tuple(p // 2**i for p in grid) for i in range(_STAGES + 1)]
        self.labels = nn.ModuleList(LabelVolume(self.num_classes, g) for g in sizes)
        chans = [1, w, 2 * w, 4 * w]
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers: list[nn.Module] = [conv(c_in + 1, c_out, 4, stride=2, padding=1, bias=norm == "none")]
            if norm == "layer":
                layers.append(nn.GroupNorm(1, c_out))
            layers.append(nn.LeakyReLU(float(negative_slope)))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(4 * w + 1, 1, kernel_size=sizes[-1])

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_volume(x, self.shape, "ICWDiscriminator")
        onehot = _one_hot(labels, self.num_classes, x.shape[0], x.dtype, "ICWDiscriminator")
        x = _pad(x, self.shape)
        for embed, block in zip(self.labels[:-1], self.blocks, strict=True):
            x = run_block(block, torch.cat([x, embed(onehot).to(x.dtype)], dim=1), self.checkpoint)
        x = torch.cat([x, self.labels[-1](onehot).to(x.dtype)], dim=1)
        return self.head(x).flatten(1)

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, num_classes={self.num_classes}, width={self.width}, norm={self.norm!r}"
        s += ", checkpoint=True" if self.checkpoint else ""
        return s + (", gradfix=True" if self.gradfix else "")


class CVAEEncoder(nn.Module):
    """The CVAE's encoder: ``(N, 1, D, H, W), (N,) -> (mu, logvar)``, each ``(N, latent_dim)``.

    The volume, zero-padded to the padded grid ``P``, with the one-hot label as
    ``C`` constant channels concatenated to it; three ``4 x 4 x 4`` stride-2
    convolutions ``1 + C -> w -> 2w -> 4w`` (LeakyReLU; BatchNorm3d after the second
    and third), then a fully connected layer to ``2 * latent_dim``, split into the
    posterior's mean and log-variance.

    Args:
        shape: input grid ``(D, H, W)`` (any positive sides).
        latent_dim: size of the code.
        num_classes: ``C`` (>= 1).
        width: ``w``.
        negative_slope: LeakyReLU slope.

    Raises:
        ValueError: a bad grid or a non-positive size; at call time, an input that is
            not ``(N, 1, D, H, W)`` or labels that are not ``(N,)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        num_classes: int,
        width: int = 16,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        owner = "CVAEEncoder"
        self.shape = check_shape(shape, owner)
        self.latent_dim = _check_positive(latent_dim, "latent_dim", owner)
        self.num_classes = _check_positive(num_classes, "num_classes", owner)
        self.width = w = _check_positive(width, "width", owner)
        slope = float(negative_slope)
        grid = padded_grid(self.shape)
        self.blocks = nn.Sequential(
            nn.Conv3d(1 + self.num_classes, w, 4, stride=2, padding=1),
            nn.LeakyReLU(slope),
            nn.Conv3d(w, 2 * w, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(2 * w),
            nn.LeakyReLU(slope),
            nn.Conv3d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm3d(4 * w),
            nn.LeakyReLU(slope),
        )
        self.head = nn.Linear(4 * w * math.prod(p // _FACTOR for p in grid), 2 * self.latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_volume(x, self.shape, "CVAEEncoder")
        onehot = _one_hot(labels, self.num_classes, x.shape[0], x.dtype, "CVAEEncoder")
        x = _pad(x, self.shape)
        planes = onehot[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        mu, logvar = self.head(self.blocks(torch.cat([x, planes], dim=1)).flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, latent_dim={self.latent_dim}, num_classes={self.num_classes}, "
            f"width={self.width}"
        )


# ---------------------------------------------------------------------------
# the Gaussian mixtures


class GMMGenerator(nn.Module):
    """One Gaussian mixture per class in a PCA space of the brain: ``(N, K + 1), (N,) -> (N, 1, D, H, W)``.

    A module of buffers only (no parameters: nothing is trained by gradient), sized
    at construction so that ``load_state_dict`` restores a fitted model:

    - ``mask`` ``(D, H, W)`` bool: the brain mask of the training volumes
      (:func:`brainkern.data.foreground_mask`);
    - ``mean`` ``(V,)``: the training mean of every voxel (``V = D * H * W``);
    - ``components`` ``(K, V)``: the PCA axes, zero outside the mask;
    - ``weights`` ``(C, M)``, ``means`` ``(C, M, K)``, ``cholesky`` ``(C, M, K, K)``: each
      class's mixture (every covariance type stored as the lower Cholesky factor of
      its full covariance);
    - ``data_range`` ``(2,)``: the training volumes' minimum and maximum;
    - ``fitted``: whether :meth:`fit` has run.

    A code ``z`` draws one volume: ``Phi(z[:, 0])`` (the normal CDF, uniform on
    (0, 1) under the prior) picks a component by the class's weights, ``z[:, 1:]``
    is the standard normal draw that becomes ``mean_m + L_m z[:, 1:]``; the PCA map
    takes it back to the grid (outside the mask: the training mean), clamped to
    ``data_range``. A seeded prior sample is therefore a seeded mixture sample.

    Args:
        shape: the grid ``(D, H, W)``.
        num_classes: ``C``.
        n_components: ``K``, PCA dimensions.
        n_mixture: ``M``, mixture components per class.
        covariance: scikit-learn's ``covariance_type``: ``"full"``, ``"tied"``,
            ``"diag"`` or ``"spherical"``.
        reg_covar: added to the covariances' diagonals (scikit-learn's ``reg_covar``).
        seed: ``random_state`` of the PCA and of the mixtures' initialisation.

    Raises:
        ValueError: a bad grid, size, covariance type or ``reg_covar``; at call time,
            see :meth:`forward`.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        num_classes: int,
        n_components: int = 20,
        n_mixture: int = 2,
        covariance: str = "full",
        reg_covar: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__()
        owner = "GMMGenerator"
        self.shape = check_shape(shape, owner)
        self.num_classes = C = _check_positive(num_classes, "num_classes", owner)
        self.n_components = K = _check_positive(n_components, "n_components", owner)
        self.n_mixture = M = _check_positive(n_mixture, "n_mixture", owner)
        if covariance not in COVARIANCES:
            raise ValueError(f"{owner}: covariance must be one of {COVARIANCES}, got {covariance!r}")
        if not float(reg_covar) >= 0:
            raise ValueError(f"{owner}: reg_covar must be >= 0, got {reg_covar}")
        self.covariance = covariance
        self.reg_covar = float(reg_covar)
        self.seed = int(seed)
        V = math.prod(self.shape)
        if K > V:
            raise ValueError(f"{owner}: n_components={K} exceeds the {V} voxels of the grid")
        self.latent_dim = K + 1
        self.register_buffer("mask", torch.zeros(self.shape, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(V))
        self.register_buffer("components", torch.zeros(K, V))
        self.register_buffer("weights", torch.full((C, M), 1.0 / M))
        self.register_buffer("means", torch.zeros(C, M, K))
        self.register_buffer("cholesky", torch.eye(K).expand(C, M, K, K).clone())
        self.register_buffer("data_range", torch.tensor([0.0, 1.0]))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Volumes ``(N, 1, D, H, W)`` for codes ``z`` ``(N, K + 1)`` and classes ``labels`` ``(N,)``.

        Raises:
            RuntimeError: the mixtures are not fitted yet.
            ValueError: codes or labels of the wrong shape.
        """
        if not bool(self.fitted):
            raise RuntimeError(
                "gmm: the mixtures are not fitted: train the model (family 'em', e.g. python -m "
                "brainkern.train --preset zhuang2019-gmm), call generator.fit(volumes, labels), or load "
                "a fitted state dict"
            )
        _check_code(z, self.latent_dim, "GMMGenerator")
        _one_hot(labels, self.num_classes, z.shape[0], z.dtype, "GMMGenerator")  # checks the labels
        labels = labels.long()
        dtype = self.means.dtype
        z = z.to(dtype)
        cumulative = self.weights[labels].cumsum(dim=1)  # (N, M)
        u = torch.special.ndtr(z[:, :1])
        # The first component whose cumulative weight reaches u (the last one if rounding
        # leaves the total a hair below u).
        pick = (u > cumulative).sum(dim=1).clamp(max=self.n_mixture - 1)
        mu = self.means[labels, pick]  # (N, K)
        chol = self.cholesky[labels, pick]  # (N, K, K)
        y = mu + (chol @ z[:, 1:, None]).squeeze(-1)
        x = self.mean + y @ self.components
        x = torch.clamp(x, self.data_range[0], self.data_range[1])
        return x.view(-1, 1, *self.shape)

    @torch.no_grad()
    def fit(self, volumes: Any, labels: Any) -> float:
        """Fit the PCA and the per-class mixtures on training volumes; write the buffers.

        The brain mask is :func:`brainkern.data.foreground_mask` of ``volumes``; one
        PCA (scikit-learn, ``n_components`` axes) of the masked voxels of all
        volumes, then for each class a scikit-learn ``GaussianMixture`` on its
        volumes' PCA scores. Computed in float64 on the CPU.

        Args:
            volumes: ``(N, 1, D, H, W)`` or ``(N, D, H, W)`` tensor or array.
            labels: ``(N,)`` classes in ``0 .. num_classes - 1``.

        Returns:
            The mean negative log-likelihood per volume of its PCA scores under its
            own class's mixture (nats; a density in ``K`` dimensions, so it may be negative).

        Raises:
            ValueError: volumes not on the grid, labels that do not match, more PCA
                axes than training volumes - 1 (or masked voxels), or a class with
                fewer volumes than ``n_mixture``.
        """
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        from brainkern.data.masks import foreground_mask

        x = volumes.detach().cpu().double().numpy() if isinstance(volumes, torch.Tensor) else volumes
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 5 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"gmm: expected volumes (N, 1, {', '.join(map(str, self.shape))}), "
                f"got {tuple(np.shape(volumes))}"
            )
        y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        y = np.asarray(y).reshape(-1)
        n, K, M, C = x.shape[0], self.n_components, self.n_mixture, self.num_classes
        if y.shape[0] != n:
            raise ValueError(f"gmm: {y.shape[0]} labels for {n} volumes")
        if n and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"gmm: labels must lie in 0 .. {C - 1}")
        if K > n - 1:
            raise ValueError(
                f"gmm: n_components={K} PCA axes need at least {K + 1} training volumes, got {n}; "
                "lower model.n_components"
            )
        counts = np.bincount(y.astype(np.int64), minlength=C)
        short = [c for c in range(C) if counts[c] < M]
        if short:
            raise ValueError(
                f"gmm: class(es) {short} have {[int(counts[c]) for c in short]} training volumes, fewer than "
                f"n_mixture={M} mixture components; lower model.n_mixture or give every class more volumes"
            )
        mask = foreground_mask(x)
        flat_mask = mask.reshape(-1)
        rows = x.reshape(n, -1)
        if K > int(flat_mask.sum()):
            raise ValueError(
                f"gmm: n_components={K} exceeds the {int(flat_mask.sum())} voxels of the brain mask"
            )
        pca = PCA(n_components=K, random_state=self.seed)
        scores = pca.fit_transform(rows[:, flat_mask])
        weights = np.empty((C, M))
        means = np.empty((C, M, K))
        chol = np.empty((C, M, K, K))
        nll = 0.0
        for c in range(C):
            mine = scores[y == c]
            gm = GaussianMixture(
                n_components=M,
                covariance_type=self.covariance,
                reg_covar=self.reg_covar,
                random_state=self.seed,
            ).fit(mine)
            weights[c], means[c] = gm.weights_, gm.means_
            chol[c] = np.linalg.cholesky(_full_covariances(gm, K))
            nll -= float(gm.score_samples(mine).sum())
        components = np.zeros((K, rows.shape[1]))
        components[:, flat_mask] = pca.components_
        for name, value in (
            ("mask", torch.from_numpy(mask)),
            ("mean", torch.from_numpy(rows.mean(axis=0))),
            ("components", torch.from_numpy(components)),
            ("weights", torch.from_numpy(weights)),
            ("means", torch.from_numpy(means)),
            ("cholesky", torch.from_numpy(chol)),
            ("data_range", torch.tensor([x.min(), x.max()])),
            ("fitted", torch.ones((), dtype=torch.bool)),
        ):
            buffer = getattr(self, name)
            buffer.copy_(value.to(buffer.device, buffer.dtype))
        return nll / n

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, num_classes={self.num_classes}, n_components={self.n_components}, "
            f"n_mixture={self.n_mixture}, covariance={self.covariance!r}"
        )


def _full_covariances(gm, k: int) -> np.ndarray:
    """A fitted ``GaussianMixture``'s covariances as full ``(M, K, K)`` matrices."""
    cov, m = np.asarray(gm.covariances_), gm.n_components
    if gm.covariance_type == "full":
        return cov
    if gm.covariance_type == "tied":
        return np.broadcast_to(cov, (m, k, k)).copy()
    if gm.covariance_type == "diag":
        return cov[:, :, None] * np.eye(k)
    return cov[:, None, None] * np.eye(k)  # spherical


# ---------------------------------------------------------------------------
# registered models


def _conditional(
    name: str, family_loss: tuple[str, str], shape, latent_dim: int, num_classes: int, **networks: nn.Module
) -> GenerativeModel:
    family, loss = family_loss
    return GenerativeModel(
        name=name,
        shape=shape,
        latent_dim=latent_dim,
        family=family,
        loss=loss,
        num_classes=num_classes,
        networks=networks,
    )


@register_model("icw-gan")
def icw_gan(
    shape: Sequence[int] = (53, 63, 46),
    num_classes: int = 4,
    latent_dim: int = 128,
    width: int = 16,
    negative_slope: float = 0.2,
    critic_norm: Literal["none", "layer"] = "none",
    checkpoint: bool = False,
    gradfix: bool = False,
) -> GenerativeModel:
    """Zhuang et al.'s ICW-GAN: a class-conditional 3D WGAN-GP whose generator and critic
    see the label at every layer (sigmoid output, [0, 1] maps).

    Networks: ``generator`` (:class:`ConditionalGenerator` with label volumes) and
    ``discriminator`` (:class:`ICWDiscriminator`); family ``gan``, loss ``wgan-gp``.
    ``latent_dim`` 128 is the paper's (Fig. 1); ``width`` (channels ``4w, 2w, w``) is
    brainkern's choice, as the paper gives no channel counts: 16 by default, small
    enough for a CPU at a reduced grid (at 27 x 32 x 23, batch 32, 5 critic updates
    per generator update: about 2.7 s an iteration on 2 CPU cores, 1.8 s at width 8);
    the ``zhuang2019-icw-gan`` preset uses 32 at the paper's grid.
    """
    shape = check_shape(shape, "icw-gan")
    return _conditional(
        "icw-gan",
        ("gan", "wgan-gp"),
        shape,
        latent_dim,
        num_classes,
        generator=ConditionalGenerator(
            shape, latent_dim, num_classes, width, label_volumes=True, checkpoint=checkpoint
        ),
        discriminator=ICWDiscriminator(
            shape, num_classes, width, negative_slope, critic_norm, checkpoint=checkpoint, gradfix=gradfix
        ),
    )


@register_model("cvae")
def cvae(
    shape: Sequence[int] = (53, 63, 46),
    num_classes: int = 4,
    latent_dim: int = 128,
    width: int = 16,
    negative_slope: float = 0.2,
) -> GenerativeModel:
    """Zhuang et al.'s 3D convolutional conditional VAE (sigmoid output, [0, 1] maps).

    Networks: ``encoder`` (:class:`CVAEEncoder`, ``(x, labels) -> (mu, logvar)``) and
    ``generator`` (:class:`ConditionalGenerator`, the label concatenated to the code
    only); family ``cvae`` (the negative ELBO), loss ``elbo``. ``latent_dim``: 128 in
    the paper for collection 1952, 32 for 2138.
    """
    shape = check_shape(shape, "cvae")
    return _conditional(
        "cvae",
        ("cvae", "elbo"),
        shape,
        latent_dim,
        num_classes,
        encoder=CVAEEncoder(shape, latent_dim, num_classes, width, negative_slope),
        generator=ConditionalGenerator(shape, latent_dim, num_classes, width, label_volumes=False),
    )


@register_model("gmm")
def gmm(
    shape: Sequence[int] = (53, 63, 46),
    num_classes: int = 4,
    n_components: int = 20,
    n_mixture: int = 2,
    covariance: Literal["full", "tied", "diag", "spherical"] = "full",
    reg_covar: float = 1e-6,
    seed: int = 0,
) -> GenerativeModel:
    """Zhuang et al.'s GMM baseline: one Gaussian mixture per class (EM, scikit-learn) in a
    PCA space of the brain-masked voxels.

    One network, ``generator`` (:class:`GMMGenerator`, buffers only); family ``em``
    (fitted once on the whole training set), loss ``em``; ``latent_dim`` is
    ``n_components + 1``. The PCA and mixture sizes are brainkern's choice (the
    paper fits the mixtures to the voxels and gives no sizes).
    """
    shape = check_shape(shape, "gmm")
    generator = GMMGenerator(shape, num_classes, n_components, n_mixture, covariance, reg_covar, seed)
    return _conditional("gmm", ("em", "em"), shape, generator.latent_dim, num_classes, generator=generator)
