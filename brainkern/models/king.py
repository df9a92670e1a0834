"""King, Hollenbenders and Reichenbach's SN-GAN and alpha-SN-GAN (2024, seed 003), with their
three ways of generating one clinical group at a time.

King et al. build their 3D generators for a small structural-MRI data set (193 volumes at
64^3) on a DCGAN with two changes (their Figs. S2 and S3):

- the generator upsamples by a 3x3x3 convolution to ``8 C`` channels followed by a 3D
  pixel shuffle (:class:`brainkern.nn.PixelShuffle3d`, brainkern's fused op), initialised
  with ICNR (:func:`brainkern.nn.icnr_`) so that each upsampling starts as
  nearest-neighbour interpolation and leaves no checkerboard; LeakyReLU throughout;
- every layer of the discriminator is spectrally normalised
  (:class:`brainkern.nn.SNConv3d`; the training recipe refreshes all of them in one
  grouped power iteration, :func:`brainkern.nn.spectral_norm_update`, before each use of
  the discriminator), trained with the hinge loss.

The alpha-SN-GAN adds Kwon et al.'s encoder (their Fig. S4: the same network as
:class:`brainkern.models.kwon.Encoder`) and a code discriminator of spectrally normalised
linear layers (Fig. S5), trained by the alpha-GAN recipe with the hinge loss.

Conditioning (``conditioning=``), for generating patients and controls separately:

- ``"none"``: unconditional;
- ``"projection"``: the generator gets a learned embedding of the label concatenated to
  its latent code; the discriminator is a projection discriminator (Miyato and Koyama
  2018): its score plus the inner product of a spectrally normalised class embedding with
  its pooled last features;
- ``"aux-classifier"``: the same generator; the discriminator stays unconditional, and a
  separate classifier with the discriminator's body (``classifier``, plain convolutions)
  is trained on the real training volumes before the GAN and then used frozen to give
  the generator a cross-entropy loss for the class it was asked for (King et al.'s
  winning scheme, after Liao and Dong's separate-classifier AC-GAN);
- ``"separate"``: one unconditional model per class (:class:`PerClass`), trained side by
  side in one run (each sample of a batch reaches its own class's networks only) and
  sampled as one conditional model.

Sizes: the networks take grids whose sides are multiples of 16; at 64^3 with
``width=32`` and ``latent_dim=1000`` they are the networks of the paper's figures
(generator 25.7 M parameters: a latent-to-``256 x 4^3`` linear map and four
shuffle-convolutions 256 -> 128 -> 64 -> 32 -> 1; discriminator 2.8 M: four stride-2
4x4x4 convolutions 1 -> 32 -> 64 -> 128 -> 256 and a 4^3 convolution to one score;
code discriminator 6.2 M: 1000 -> 2048 -> 2048 -> 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainkern.models._checkpoint import run_block
from brainkern.models.base import GenerativeModel
from brainkern.models.kwon import Encoder, _check_positive, _check_volume, check_grid
from brainkern.models.registry import register_model
from brainkern.nn.pixel_shuffle import PixelShuffle3d, icnr_
from brainkern.nn.spectral_norm import SNConv3d, SNLinear

__all__ = [
    "CONDITIONING",
    "ConvClassifier",
    "PerClass",
    "SNCodeDiscriminator",
    "SNDiscriminator",
    "ShuffleGenerator",
    "ShuffleUp3d",
]

CONDITIONING = ("none", "projection", "aux-classifier", "separate")
_STAGES = 4
_FACTOR = 2**_STAGES


def _leaky_init(negative_slope: float) -> Callable[[torch.Tensor], object]:
    return lambda w: nn.init.kaiming_normal_(w, a=negative_slope, nonlinearity="leaky_relu")


class ShuffleUp3d(nn.Module):
    """Learned x2 upsampling: a 3x3x3 convolution to ``8 * out_channels`` channels, then a
    3D pixel shuffle: ``(N, C_in, D, H, W) -> (N, C_out, 2D, 2H, 2W)``.

    The convolution (no bias) is ICNR-initialised, so the layer starts as nearest-neighbour
    upsampling of a ``C_in -> C_out`` convolution (Aitken et al. 2017; King et al.'s remedy
    for checkerboard artefacts).

    Args:
        in_channels, out_channels: ``C_in``, ``C_out``.
        negative_slope: the slope of the LeakyReLU that follows (for the Kaiming gain).
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 8 * out_channels, 3, padding=1, bias=False)
        icnr_(self.conv.weight, 2, _leaky_init(negative_slope))
        self.shuffle = PixelShuffle3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def _labels_ok(labels: torch.Tensor | None, n: int, num_classes: int, owner: str) -> torch.Tensor:
    if labels is None:
        raise ValueError(f"{owner}: conditional on {num_classes} classes; give labels (N,)")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{owner}: expected labels of shape ({n},), got {tuple(labels.shape)}")
    return labels.long()


class ShuffleGenerator(nn.Module):
    """King et al.'s pixel-shuffle generator: ``(N, L) [, (N,)] -> (N, 1, D, H, W)`` in [-1, 1].

    A linear map (no bias; the paper's 1x1x1 convolution of the code) to
    ``8w x D/16 x H/16 x W/16``, BatchNorm3d, LeakyReLU; three :class:`ShuffleUp3d`
    ``8w -> 4w -> 2w -> w``, each followed by BatchNorm3d and LeakyReLU; a last
    :class:`ShuffleUp3d` ``w -> 1`` and tanh. With ``num_classes > 0`` a learned
    ``label_dim``-sized embedding of the label is concatenated to the code first.

    Args:
        shape: the grid ``(D, H, W)`` (or an int for a cube), sides multiples of 16.
        latent_dim: ``L`` (1000 in the paper).
        width: ``w`` (32 in the paper).
        num_classes: 0 (unconditional) or the number of classes.
        label_dim: size of the label embedding (brainkern's choice; the paper gives none).
        negative_slope: LeakyReLU slope.
        checkpoint: recompute each block in backward (training with autograd only).

    Raises:
        ValueError: a bad grid or size; at call time, codes that are not ``(N, L)`` or
            missing labels for a conditional generator.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        width: int = 32,
        num_classes: int = 0,
        label_dim: int = 16,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        owner = "ShuffleGenerator"
        self.shape = check_grid(shape, owner)
        self.latent_dim = _check_positive(latent_dim, "latent_dim", owner)
        self.width = w = _check_positive(width, "width", owner)
        self.num_classes = int(num_classes)
        self.checkpoint = bool(checkpoint)
        slope = float(negative_slope)
        code = self.latent_dim
        self.embed = None
        if self.num_classes:
            self.embed = nn.Embedding(self.num_classes, _check_positive(label_dim, "label_dim", owner))
            code += label_dim
        start = tuple(s // _FACTOR for s in self.shape)
        blocks: list[nn.Module] = [
            nn.Sequential(
                nn.Linear(code, 8 * w * start[0] * start[1] * start[2], bias=False),
                nn.Unflatten(1, (8 * w, *start)),
                nn.BatchNorm3d(8 * w),
                nn.LeakyReLU(slope),
            )
        ]
        for c_in, c_out in ((8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)):
            blocks.append(
                nn.Sequential(ShuffleUp3d(c_in, c_out, slope), nn.BatchNorm3d(c_out), nn.LeakyReLU(slope))
            )
        blocks.append(nn.Sequential(ShuffleUp3d(w, 1, slope), nn.Tanh()))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"ShuffleGenerator: expected codes of shape (N, {self.latent_dim}), got {tuple(z.shape)}"
            )
        if self.embed is not None:
            labels = _labels_ok(labels, z.shape[0], self.num_classes, "ShuffleGenerator")
            z = torch.cat([z, self.embed(labels.to(z.device)).to(z.dtype)], dim=1)
        x = z
        for block in self.blocks:
            x = run_block(block, x, self.checkpoint)
        return x

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, latent_dim={self.latent_dim}, width={self.width}"
        s += f", num_classes={self.num_classes}" if self.num_classes else ""
        return s + (", checkpoint=True" if self.checkpoint else "")


class SNDiscriminator(nn.Module):
    """King et al.'s spectrally normalised discriminator: ``(N, 1, D, H, W) [, (N,)] -> (N, out)``.

    Four stride-2 4x4x4 :class:`brainkern.nn.SNConv3d` ``1 -> w -> 2w -> 4w -> 8w``, each
    followed by LeakyReLU, and an SN convolution whose kernel covers the remaining
    ``D/16 x H/16 x W/16`` grid to ``out_features`` scores (no activation: hinge-loss
    logits). ``projection=True`` (needs ``num_classes``): Miyato and Koyama's projection
    discriminator, the score plus ``<e_y, sum_space h>`` with ``h`` the last hidden features
    and ``e_y`` the label's row of a spectrally normalised embedding (an
    :class:`brainkern.nn.SNLinear` on one-hot labels). ``spectral=False`` builds plain
    convolutions (the auxiliary classifier's body).

    Args:
        shape: the grid (sides multiples of 16).
        width: ``w`` (32 in the paper).
        out_features: scores per volume (1; the number of classes for a classifier).
        num_classes: classes of a projection discriminator (else 0).
        projection: add the class projection term.
        spectral: spectral normalisation on every layer.
        negative_slope: LeakyReLU slope.
        checkpoint: recompute each block in backward (training with autograd only).

    Raises:
        ValueError: a bad grid or size, ``projection`` without classes; at call time, an
            input that is not ``(N, 1, D, H, W)`` or missing labels.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        width: int = 32,
        out_features: int = 1,
        num_classes: int = 0,
        projection: bool = False,
        spectral: bool = True,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        owner = "SNDiscriminator"
        self.shape = check_grid(shape, owner)
        self.width = w = _check_positive(width, "width", owner)
        self.out_features = _check_positive(out_features, "out_features", owner)
        self.projection = bool(projection)
        if self.projection and int(num_classes) < 2:
            raise ValueError(f"{owner}: a projection discriminator needs num_classes >= 2, got {num_classes}")
        self.num_classes = int(num_classes) if self.projection else 0
        self.spectral = bool(spectral)
        self.checkpoint = bool(checkpoint)
        conv = SNConv3d if self.spectral else nn.Conv3d
        chans = [1, w, 2 * w, 4 * w, 8 * w]
        self.blocks = nn.ModuleList(
            nn.Sequential(conv(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(float(negative_slope)))
            for c_in, c_out in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = conv(8 * w, self.out_features, tuple(s // _FACTOR for s in self.shape))
        self.embed = None
        if self.projection:
            linear = SNLinear if self.spectral else nn.Linear
            self.embed = linear(self.num_classes, 8 * w * self.out_features, bias=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _check_volume(x, self.shape, "SNDiscriminator")
        for block in self.blocks:
            x = run_block(block, x, self.checkpoint)
        out = self.head(x).flatten(1)
        if self.embed is None:
            return out
        labels = _labels_ok(labels, x.shape[0], self.num_classes, "SNDiscriminator")
        onehot = F.one_hot(labels.to(x.device), self.num_classes).to(x.dtype)
        e = self.embed(onehot).view(x.shape[0], self.out_features, -1)  # (N, out, 8w)
        pooled = x.sum(dim=(2, 3, 4))  # (N, 8w)
        return out + torch.einsum("noc,nc->no", e, pooled)

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, width={self.width}, out_features={self.out_features}"
        s += f", projection over {self.num_classes} classes" if self.projection else ""
        s += "" if self.spectral else ", spectral=False"
        return s + (", checkpoint=True" if self.checkpoint else "")


class ConvClassifier(SNDiscriminator):
    """The auxiliary classifier: the discriminator's body without spectral normalisation,
    ``(N, 1, D, H, W) -> (N, num_classes)`` logits.

    Trained by the recipe on the run's real training volumes before the GAN, then frozen
    (``fitted`` records that, and travels in the checkpoint).
    """

    def __init__(
        self, shape: int | Sequence[int], num_classes: int, width: int = 32, negative_slope: float = 0.2
    ):
        super().__init__(
            shape, width, out_features=num_classes, spectral=False, negative_slope=negative_slope
        )
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))


class SNCodeDiscriminator(nn.Module):
    """King et al.'s code discriminator (their Fig. S5): ``(N, L) -> (N, 1)``.

    Spectrally normalised linear layers without bias ``L -> hidden -> hidden -> 1`` with
    LeakyReLU between them.

    Args:
        latent_dim: ``L``.
        hidden: hidden width (2048 in the paper).
        negative_slope: LeakyReLU slope.
    """

    def __init__(self, latent_dim: int, hidden: int = 2048, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.latent_dim = _check_positive(latent_dim, "latent_dim", "SNCodeDiscriminator")
        self.hidden = _check_positive(hidden, "hidden", "SNCodeDiscriminator")
        slope = float(negative_slope)
        self.layers = nn.Sequential(
            SNLinear(self.latent_dim, self.hidden, bias=False),
            nn.LeakyReLU(slope),
            SNLinear(self.hidden, self.hidden, bias=False),
            nn.LeakyReLU(slope),
            SNLinear(self.hidden, 1, bias=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"SNCodeDiscriminator: expected codes of shape (N, {self.latent_dim}), got {tuple(z.shape)}"
            )
        return self.layers(z)


class PerClass(nn.Module):
    """One network per class, called as one: ``forward(x, labels)`` sends each sample to the
    network of its class (``nets[labels[i]]``) and returns the outputs in the input's order.

    King et al.'s ``separate`` conditioning: a model per clinical group. Each network sees
    only its class's samples of a batch (its BatchNorm statistics too), so training the
    wrapped networks on mixed batches with one optimiser per role trains each class's GAN
    on its own data. (Adam keeps moving a class's weights with its momentum in an
    iteration whose batch has none of that class: the one difference from fully separate
    runs.)

    Raises:
        ValueError: fewer than two networks; at call time, labels that are not ``(N,)``.
    """

    takes_labels = True

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(nets) < 2:
            raise ValueError(f"PerClass: needs one network per class (>= 2), got {len(nets)}")
        self.nets = nn.ModuleList(nets)
        self.num_classes = len(nets)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = _labels_ok(labels, x.shape[0], self.num_classes, "PerClass").to(x.device)
        out: torch.Tensor | None = None
        for k, net in enumerate(self.nets):
            idx = (labels == k).nonzero().flatten()
            if idx.numel() == 0:
                continue
            part = net(x.index_select(0, idx))
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out = out.index_copy(0, idx, part)
        if out is None:  # an empty batch: run class 0 on it for the output's shape
            return self.nets[0](x)
        return out


# ---------------------------------------------------------------------------
# registered models


def _check_conditioning(conditioning: str, num_classes: int, name: str) -> int:
    if conditioning not in CONDITIONING:
        raise ValueError(f"{name}: conditioning must be one of {CONDITIONING}, got {conditioning!r}")
    if conditioning == "none":
        return 0
    if int(num_classes) < 2:
        raise ValueError(
            f"{name}: conditioning={conditioning!r} needs num_classes >= 2 (set by the training data), "
            f"got {num_classes}"
        )
    return int(num_classes)


def _networks(
    shape, latent_dim, width, conditioning, classes, label_dim, slope, checkpoint, encoder: bool, code_hidden
) -> dict[str, nn.Module]:
    """The networks of one model (``classes``: 0 or the class count) for ``conditioning``."""

    def one(k: int, cond: bool) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {}
        if encoder:
            nets["encoder"] = Encoder(shape, latent_dim, width, negative_slope=slope, checkpoint=checkpoint)
        nets["generator"] = ShuffleGenerator(
            shape, latent_dim, width, classes if cond else 0, label_dim, slope, checkpoint
        )
        projection = cond and conditioning == "projection"
        nets["discriminator"] = SNDiscriminator(
            shape,
            width,
            num_classes=classes if projection else 0,
            projection=projection,
            negative_slope=slope,
            checkpoint=checkpoint,
        )
        if encoder:
            nets["code_discriminator"] = SNCodeDiscriminator(latent_dim, code_hidden, slope)
        return nets

    if conditioning == "separate":
        per_class = [one(k, False) for k in range(classes)]
        return {role: PerClass([nets[role] for nets in per_class]) for role in per_class[0]}
    nets = one(0, conditioning != "none")
    if conditioning == "aux-classifier":
        classifier = ConvClassifier(shape, classes, width, slope)
        classifier.requires_grad_(False)  # trained by the recipe before the GAN, then frozen
        nets["classifier"] = classifier
    return nets


def _king_model(name, family, shape, latent_dim, width, conditioning, num_classes, label_dim, slope, **kw):
    shape = check_grid(shape, name)
    classes = _check_conditioning(conditioning, num_classes, name)
    nets = _networks(
        shape, latent_dim, width, conditioning, classes, label_dim, slope, encoder=family == "alpha", **kw
    )
    return GenerativeModel(
        name=name,
        shape=shape,
        latent_dim=latent_dim,
        family=family,
        loss="hinge",
        networks=nets,
        num_classes=classes,
    )


@register_model("sn-gan")
def sn_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 32,
    conditioning: str = "none",
    num_classes: int = 0,
    label_dim: int = 16,
    negative_slope: float = 0.2,
    checkpoint: bool = False,
) -> GenerativeModel:
    """King et al.'s 3D SN-GAN: pixel-shuffle generator (ICNR), spectrally normalised
    discriminator, hinge loss; conditioning none / projection / aux-classifier / separate."""
    return _king_model(
        "sn-gan",
        "gan",
        shape,
        latent_dim,
        width,
        conditioning,
        num_classes,
        label_dim,
        negative_slope,
        checkpoint=checkpoint,
        code_hidden=None,
    )


@register_model("alpha-sn-gan")
def alpha_sn_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 32,
    conditioning: str = "none",
    num_classes: int = 0,
    label_dim: int = 16,
    negative_slope: float = 0.2,
    code_hidden: int = 2048,
    checkpoint: bool = False,
) -> GenerativeModel:
    """King et al.'s 3D alpha-SN-GAN: the SN-GAN with an encoder, an SN code discriminator and
    an L1 reconstruction term (alpha-GAN recipe), hinge loss; conditioning as sn-gan."""
    return _king_model(
        "alpha-sn-gan",
        "alpha",
        shape,
        latent_dim,
        width,
        conditioning,
        num_classes,
        label_dim,
        negative_slope,
        checkpoint=checkpoint,
        code_hidden=code_hidden,
    )
