"""The 3D alpha-WGAN-GP family of Kwon, Han and Kim (2019, seed 001) and its baselines.

Kwon et al. generate 64^3 brain MRI with alpha-GAN (Rosca et al. 2017) trained
with WGAN-GP losses: an encoder and a discriminator of five 4x4x4 convolutions,
a generator of nearest-neighbour upsampling followed by 3x3x3 convolutions
(resize-convolution, run here as the fused :class:`brainkern.nn.ResizeConv3d`),
and a code discriminator of three fully connected layers on the latent vectors.
Their baselines (WGAN-GP, VAE-GAN, alpha-GAN with the basic GAN loss) reuse the
same networks, so all four are registered here.

Every network here keeps PyTorch's default initialisation (Kaiming-uniform
weights and uniform biases for convolutions and linear layers, unit scale and
zero shift for BatchNorm).

The networks take any grid whose sides are multiples of 16 (four stride-2 stages
down, four x2 stages up); at 64^3 they are the paper's networks.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from brainkern.models._checkpoint import run_block
from brainkern.models.base import GenerativeModel
from brainkern.models.registry import register_model
from brainkern.nn.conv import Conv3d as GradfixConv3d
from brainkern.nn.resize_conv import ResizeConv3d

__all__ = [
    "CodeDiscriminator",
    "Discriminator",
    "Encoder",
    "Generator",
    "check_grid",
]

_STAGES = 4
_FACTOR = 2**_STAGES


def parse_grid(shape: int | Sequence[int], owner: str = "grid") -> tuple[int, int, int]:
    """``shape`` as a tuple of three ints (an int means a cube); sizes are not checked.

    Raises:
        TypeError: not an int or three ints.
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),) * 3
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{owner}: shape must be an int or 3 ints (D, H, W), got {shape!r}")
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
        raise TypeError(f"{owner}: shape must be 3 ints (D, H, W), got {tuple(shape)!r}")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def check_grid(shape: int | Sequence[int], owner: str = "grid") -> tuple[int, int, int]:
    """The training grid ``(D, H, W)`` as a tuple of ints, each side a positive multiple of 16.

    An int means a cube.

    Raises:
        TypeError: not an int or three ints.
        ValueError: a side that is not a positive multiple of 16.
    """
    shape = parse_grid(shape, owner)
    for axis, side in zip("DHW", shape, strict=True):
        if side <= 0 or side % _FACTOR:
            raise ValueError(
                f"{owner}: grid side {axis} = {side} must be a positive multiple of {_FACTOR} "
                f"(the networks halve or double it {_STAGES} times with stride-2 stages); "
                f"got shape {shape}"
            )
    return shape  # type: ignore[return-value]


def _check_positive(value: object, name: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be >= 1, got {value}")
    return int(value)


def _check_volume(x: torch.Tensor, shape: tuple[int, int, int], owner: str) -> None:
    if x.dim() != 5 or tuple(x.shape[1:]) != (1, *shape):
        raise ValueError(
            f"{owner}: expected volumes of shape (N, 1, {', '.join(map(str, shape))}), got {tuple(x.shape)}"
        )


class _ConvStack(nn.Module):
    """Four stride-2 4x4x4 conv blocks then a conv that covers the whole remaining map.

    Block 1: conv ``1 -> w`` with bias, LeakyReLU. Blocks 2-4: conv ``w -> 2w -> 4w
    -> 8w`` without bias, BatchNorm3d, LeakyReLU. Head: conv ``8w -> out`` with a
    ``(D/16, H/16, W/16)`` kernel and bias, no norm or activation.
    """

    def __init__(
        self,
        shape,
        out_features: int,
        width: int,
        negative_slope: float,
        checkpoint: bool,
        gradfix: bool,
        owner: str,
    ) -> None:
        super().__init__()
        self.shape = check_grid(shape, owner)
        width = _check_positive(width, "width", owner)
        out_features = _check_positive(out_features, "out_features", owner)
        self.width = width
        self.out_features = out_features
        self.negative_slope = float(negative_slope)
        self.checkpoint = bool(checkpoint)
        self.gradfix = bool(gradfix)
        self._owner = owner
        conv = GradfixConv3d if gradfix else nn.Conv3d
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        blocks = []
        for i in range(_STAGES):
            first = i == 0
            layers: list[nn.Module] = [conv(chans[i], chans[i + 1], 4, stride=2, padding=1, bias=first)]
            if not first:
                layers.append(nn.BatchNorm3d(chans[i + 1]))
            layers.append(nn.LeakyReLU(self.negative_slope))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        last = tuple(s // _FACTOR for s in self.shape)
        self.head = conv(chans[-1], out_features, last, stride=1, padding=0, bias=True)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each of the four blocks:
        ``(N, 2^i w, D / 2^(i+1), H / 2^(i+1), W / 2^(i+1))`` for ``i = 0..3``."""
        _check_volume(x, self.shape, self._owner)
        feats = []
        for block in self.blocks:
            x = run_block(block, x, self.checkpoint)
            feats.append(x)
        return feats

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        # The head is not checkpointed: its input is kept either way and it has no norm or activation.
        return self.head(self.features(x)[-1]).flatten(1)

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, width={self.width}, out_features={self.out_features}"
        if self.checkpoint:
            s += ", checkpoint=True"
        if self.gradfix:
            s += ", gradfix=True"
        return s


class Discriminator(_ConvStack):
    """Kwon et al.'s image discriminator (critic): ``(N, 1, D, H, W) -> (N, out_features)``.

    Five 3D convolutions with 4x4x4 kernels (at 64^3; the last kernel is
    ``(D/16, H/16, W/16)`` in general): ``1 -> w`` (stride 2, LeakyReLU, no
    BatchNorm), ``w -> 2w -> 4w -> 8w`` (stride 2, BatchNorm3d, LeakyReLU), and
    ``8w -> out_features`` to a single position (no norm, no activation: an
    unbounded score for the Wasserstein loss, a logit for the standard one).

    Args:
        shape: training grid ``(D, H, W)`` (or an int for a cube), each side a multiple of 16.
        width: ``w``, channels of the first layer (64 in the paper).
        out_features: scores per volume.
        negative_slope: LeakyReLU slope.
        checkpoint: recompute each block in backward instead of keeping its
            activations (training mode with autograd only); see
            :mod:`brainkern.models._checkpoint`.
        gradfix: build the convolutions as :class:`brainkern.nn.Conv3d`, whose
            weight gradients :func:`brainkern.ops.gradient_penalty` skips in its
            first backward; parameters and state dict are the same.

    Raises:
        ValueError: a side not a multiple of 16, a non-positive width or out_features;
            at call time, an input that is not ``(N, 1, D, H, W)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        width: int = 64,
        out_features: int = 1,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
        gradfix: bool = False,
    ) -> None:
        super().__init__(shape, out_features, width, negative_slope, checkpoint, gradfix, "Discriminator")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk(x)


class Encoder(_ConvStack):
    """Kwon et al.'s encoder: the discriminator's five convolutions with a latent-sized output.

    ``(N, 1, D, H, W) -> (N, latent_dim)``; with ``variational=True`` (VAE-GAN,
    Larsen et al. 2016) the last convolution gives ``2 * latent_dim`` channels,
    returned as ``(mu, logvar)``, each ``(N, latent_dim)``.

    Args:
        shape, width, negative_slope, checkpoint, gradfix: as :class:`Discriminator`.
        latent_dim: size of the code.
        variational: return the mean and log-variance of a Gaussian posterior.

    Raises:
        ValueError: as :class:`Discriminator`; a non-positive ``latent_dim``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        width: int = 64,
        variational: bool = False,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
        gradfix: bool = False,
    ) -> None:
        latent_dim = _check_positive(latent_dim, "latent_dim", "Encoder")
        out = 2 * latent_dim if variational else latent_dim
        super().__init__(shape, out, width, negative_slope, checkpoint, gradfix, "Encoder")
        self.latent_dim = latent_dim
        self.variational = bool(variational)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self._trunk(x)
        if self.variational:
            mu, logvar = out.chunk(2, dim=1)
            return mu, logvar
        return out


class Generator(nn.Module):
    """Kwon et al.'s resize-convolution generator: ``(N, latent_dim) -> (N, 1, D, H, W)`` in [-1, 1].

    A linear layer ``latent_dim -> 8w * D/16 * H/16 * W/16`` (no bias), reshaped
    to ``(N, 8w, D/16, H/16, W/16)``, BatchNorm3d, ReLU (the paper's first
    transposed convolution from a 1^3 code is exactly this linear map); then four
    :class:`brainkern.nn.ResizeConv3d` (nearest x2 upsample + 3x3x3 conv, fused):
    ``8w -> 4w -> 2w -> w`` (no bias, BatchNorm3d, ReLU) and ``w -> 1`` with bias
    and a fused tanh.

    Args:
        shape: training grid ``(D, H, W)`` (or an int for a cube), each side a multiple of 16.
        latent_dim: size of the code.
        width: ``w`` (64 in the paper).
        checkpoint: recompute each block in backward (training mode with autograd only).

    Raises:
        ValueError: a side not a multiple of 16, a non-positive ``latent_dim`` or
            ``width``; at call time, a code that is not ``(N, latent_dim)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        width: int = 64,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.shape = check_grid(shape, "Generator")
        self.latent_dim = _check_positive(latent_dim, "latent_dim", "Generator")
        self.width = _check_positive(width, "width", "Generator")
        self.checkpoint = bool(checkpoint)
        w = self.width
        start = tuple(s // _FACTOR for s in self.shape)
        n_start = 8 * w * start[0] * start[1] * start[2]
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.Linear(self.latent_dim, n_start, bias=False),
                nn.Unflatten(1, (8 * w, *start)),
                nn.BatchNorm3d(8 * w),
                nn.ReLU(),
            )
        ]
        for c_in, c_out in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            blocks.append(
                nn.Sequential(ResizeConv3d(c_in, c_out, bias=False), nn.BatchNorm3d(c_out), nn.ReLU())
            )
        blocks.append(nn.Sequential(ResizeConv3d(w, 1, bias=True, activation="tanh")))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"Generator: expected codes of shape (N, {self.latent_dim}), got {tuple(z.shape)}"
            )
        x = z
        for block in self.blocks:
            x = run_block(block, x, self.checkpoint)
        return x

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, latent_dim={self.latent_dim}, width={self.width}"
        return s + (", checkpoint=True" if self.checkpoint else "")


class CodeDiscriminator(nn.Module):
    """Kwon et al.'s (after Rosca et al.'s alpha-GAN) code discriminator: ``(N, latent_dim) -> (N, 1)``.

    ``Linear(L, hidden)``, BatchNorm1d, LeakyReLU; ``Linear(hidden, hidden)``,
    BatchNorm1d, LeakyReLU; ``Linear(hidden, 1)``; all linear layers with bias, as
    in the authors' code (the paper says three fully connected layers only).

    Checkpoints written before the first BatchNorm1d was added (brainkern's layout
    had none there) do not load: their layer indices no longer match, and loading
    says so instead of listing every key.

    Args:
        latent_dim: ``L``.
        hidden: width of the two hidden layers. 4096 is the value the authors'
            training notebook sets (their class's own default is 750); the paper
            gives none.
        negative_slope: LeakyReLU slope.

    Raises:
        ValueError: a non-positive ``latent_dim`` or ``hidden``; at call time, an
            input that is not ``(N, latent_dim)``.
        RuntimeError: (``load_state_dict``) a state dict of the earlier layout.
    """

    def __init__(self, latent_dim: int, hidden: int = 4096, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.latent_dim = _check_positive(latent_dim, "latent_dim", "CodeDiscriminator")
        self.hidden = _check_positive(hidden, "hidden", "CodeDiscriminator")
        slope = float(negative_slope)
        self.layers = nn.Sequential(
            nn.Linear(self.latent_dim, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.LeakyReLU(slope),
            nn.Linear(self.hidden, self.hidden),
            nn.BatchNorm1d(self.hidden),
            nn.LeakyReLU(slope),
            nn.Linear(self.hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"CodeDiscriminator: expected codes of shape (N, {self.latent_dim}), got {tuple(z.shape)}"
            )
        return self.layers(z)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The earlier layout ended in layers.5 (a Linear) and had no layers.6; without this
        # check the load fails with a page of missing keys and size mismatches.
        if f"{prefix}layers.5.weight" in state_dict and f"{prefix}layers.6.weight" not in state_dict:
            raise RuntimeError(
                f"{prefix.rstrip('.') or 'CodeDiscriminator'}: this state dict has the code discriminator "
                "layout without the BatchNorm1d after the first linear layer (brainkern before the "
                "layout of Kwon et al.'s code was adopted); it cannot be loaded into the current "
                "network: retrain, or use the brainkern version that wrote it"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------------------
# registered models


def _image_networks(shape, latent_dim, width, checkpoint, gradfix, negative_slope):
    generator = Generator(shape, latent_dim, width, checkpoint=checkpoint)
    discriminator = Discriminator(
        shape, width, negative_slope=negative_slope, checkpoint=checkpoint, gradfix=gradfix
    )
    return generator, discriminator


def _alpha(name, loss, shape, latent_dim, width, checkpoint, gradfix, negative_slope, code_hidden):
    shape = check_grid(shape, name)
    generator, discriminator = _image_networks(shape, latent_dim, width, checkpoint, gradfix, negative_slope)
    return GenerativeModel(
        name=name,
        shape=shape,
        latent_dim=latent_dim,
        family="alpha",
        loss=loss,
        networks={
            "encoder": Encoder(
                shape, latent_dim, width, negative_slope=negative_slope, checkpoint=checkpoint
            ),
            "generator": generator,
            "discriminator": discriminator,
            "code_discriminator": CodeDiscriminator(latent_dim, code_hidden, negative_slope),
        },
    )


@register_model("alpha-wgan-gp")
def alpha_wgan_gp(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 64,
    checkpoint: bool = False,
    gradfix: bool = False,
    negative_slope: float = 0.2,
    code_hidden: int = 4096,
) -> GenerativeModel:
    """Kwon et al.'s 3D alpha-WGAN-GP: encoder, generator, discriminator and code discriminator,
    trained with WGAN-GP losses on images and codes plus an L1 reconstruction."""
    return _alpha(
        "alpha-wgan-gp", "wgan-gp", shape, latent_dim, width, checkpoint, gradfix, negative_slope, code_hidden
    )


@register_model("alpha-gan")
def alpha_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 64,
    checkpoint: bool = False,
    gradfix: bool = False,
    negative_slope: float = 0.2,
    code_hidden: int = 4096,
) -> GenerativeModel:
    """Kwon et al.'s alpha-GAN baseline (Rosca et al. 2017): the alpha-WGAN-GP networks
    trained with the standard (cross-entropy) GAN loss."""
    return _alpha(
        "alpha-gan", "standard", shape, latent_dim, width, checkpoint, gradfix, negative_slope, code_hidden
    )


@register_model("wgan-gp")
def wgan_gp(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 64,
    checkpoint: bool = False,
    gradfix: bool = False,
    negative_slope: float = 0.2,
) -> GenerativeModel:
    """Kwon et al.'s WGAN-GP baseline (Gulrajani et al. 2017): their generator and discriminator."""
    shape = check_grid(shape, "wgan-gp")
    generator, discriminator = _image_networks(shape, latent_dim, width, checkpoint, gradfix, negative_slope)
    return GenerativeModel(
        name="wgan-gp",
        shape=shape,
        latent_dim=latent_dim,
        family="gan",
        loss="wgan-gp",
        networks={"generator": generator, "discriminator": discriminator},
    )


@register_model("vae-gan")
def vae_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 64,
    checkpoint: bool = False,
    gradfix: bool = False,
    negative_slope: float = 0.2,
) -> GenerativeModel:
    """Kwon et al.'s VAE-GAN baseline (Larsen et al. 2016): a variational encoder
    (``(mu, logvar)``), their generator and discriminator, standard GAN loss."""
    shape = check_grid(shape, "vae-gan")
    generator, discriminator = _image_networks(shape, latent_dim, width, checkpoint, gradfix, negative_slope)
    encoder = Encoder(
        shape, latent_dim, width, variational=True, negative_slope=negative_slope, checkpoint=checkpoint
    )
    return GenerativeModel(
        name="vae-gan",
        shape=shape,
        latent_dim=latent_dim,
        family="vae-gan",
        loss="standard",
        networks={"encoder": encoder, "generator": generator, "discriminator": discriminator},
    )
