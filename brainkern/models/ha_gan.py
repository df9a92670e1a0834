"""HA-GAN and alpha-HA-GAN: hierarchical (sub-volume) 3D GANs (Sun et al. 2022; King et al. 2024, seed 003).

Sun et al.'s hierarchical amortised GAN never builds a whole high-resolution volume
while it trains. Its generator is split in three (King et al.'s Fig. S6):

- ``G^A`` (shared): the latent code to a feature volume at a quarter of the grid's
  resolution, ``h (N, 2w, D/4, H/4, W/4)``;
- ``G^L`` (low): ``h`` to the whole volume at low resolution ``(N, 1, D/4, H/4, W/4)``;
- ``G^H`` (high): a slab of ``h`` to the matching slab of the full-resolution volume,
  ``(N, 1, d, H, W)`` for a slab of depth ``d`` along the first axis.

Two discriminators judge the two outputs: ``D^H`` a slab together with its position
``c`` (its start over ``D - d``, in [0, 1]) and ``D^L`` the low-resolution volume; the
training recipe (:mod:`brainkern.train.recipes`, families ``"ha"`` and ``"alpha-ha"``)
averages their logits, ``D(x, c) = (D^H(x^H, c) + D^L(x^L)) / 2``. King et al. adapt
the model to 64^3 with slabs of 8 x 64 x 64 and a 16^3 low resolution, and train it
with the standard (non-saturating) GAN loss: the hinge loss was unstable here.

The alpha-HA-GAN adds King et al.'s alpha-GAN parts (their equations 1-4): ``E^H``
encodes one real slab into features of ``G^H``'s input size (trained on the L1 error of
``G^H(E^H(x^H))``), ``E^L`` encodes the ``E^H`` features of all non-overlapping slabs of
a volume, concatenated along depth, into a latent code (trained with the generator), and
a code discriminator tells prior codes from encodings.

Layers (brainkern's design; the sizes follow King et al.'s SN-GAN networks, Figs.
S2-S5, split where their text says):

- ``G^A``: a linear map (no bias) to ``8w`` channels on a coarse grid (``4^3`` for a
  cube), BatchNorm3d, LeakyReLU; then :class:`~brainkern.models.king.ShuffleUp3d`
  (x2) + BatchNorm3d + LeakyReLU blocks up to the feature resolution, channels halving
  but not below ``2w``. At 64^3 this is King et al.'s generator up to its third
  convolution (``8w @ 4^3 -> 4w @ 8^3 -> 2w @ 16^3``).
- ``G^H``: ShuffleUp3d ``2w -> w`` + BatchNorm3d + LeakyReLU, ShuffleUp3d ``w -> 1`` +
  tanh: King et al.'s last two layers, a 4x upsampling. ``G^A`` and ``G^H`` together
  are exactly King et al.'s SN-GAN generator (25.7 M parameters at 64^3, ``w = 32``,
  latent 1000).
- ``G^L`` (the papers give no layers; brainkern's choice): a 3x3x3 convolution
  ``2w -> w`` + BatchNorm3d + LeakyReLU, a 3x3x3 convolution ``w -> 1`` + tanh.
- ``D^H``: spectrally normalised 4x4x4 convolutions with stride 2 (padding 1) and
  LeakyReLU, channels ``w, 2w, 4w, 8w, 8w, ...`` until the smaller of ``H, W`` is 4;
  along depth the stride is 2 while the depth is at least 2, then the kernel is 1
  (stride 1) there; an SN convolution over the remaining grid to ``8w`` features,
  LeakyReLU, the position appended, SN linear ``8w + 1 -> 4w``, LeakyReLU, SN linear
  ``4w -> 1``: one logit per slab, ``(N, 1)``.
- ``D^L``: King et al.'s :class:`~brainkern.models.king.SNDiscriminator` on the
  low-resolution grid (whose sides must then be multiples of 16: grid sides are
  multiples of 64).
- ``E^H``: King et al.'s encoder up to its second convolution: 4x4x4 stride-2
  convolutions ``1 -> w`` (bias, LeakyReLU) and ``w -> 2w`` (BatchNorm3d, LeakyReLU):
  ``(N, 1, d, H, W) -> (N, 2w, d/4, H/4, W/4)``.
- ``E^L``: the rest of that encoder: 4x4x4 stride-2 convolutions with BatchNorm3d and
  LeakyReLU, channels ``4w, 8w, 8w, ...``, down to the coarse grid of ``G^A``, then a
  convolution over that grid to the code (with bias). ``E^H`` and ``E^L`` together have
  exactly the parameters of :class:`brainkern.models.kwon.Encoder` at the same grid.
- the code discriminator: King et al.'s :class:`~brainkern.models.king.SNCodeDiscriminator`.

Normalisation: BatchNorm (King et al.) rather than Sun et al.'s GroupNorm. In eval mode
BatchNorm acts on each voxel alone, so generating a volume slab by slab gives exactly
the volume ``G^H`` would give on the whole feature volume at once; GroupNorm's
statistics depend on the slab it sees, and would not.

Exact slab generation. ``G^H`` is a stack of 3x3x3 convolutions and pixel shuffles, so
each output plane depends on a bounded window of feature planes. :meth:`HAGenerator.high_slab`
feeds ``G^H`` the feature planes of the slab plus a margin of ``halo`` planes on each side
(2 for these two stages, computed from the layers), shifted inwards at the volume's ends
(where the whole-volume convolution sees zero padding, as the window's edge then does), and
crops the output back to the slab: in eval mode the result equals ``G^H`` on the whole
feature volume restricted to the slab (in float64 to rounding, about 1e-17: the convolution
backend's summation order depends on its input's size). Training sees the slabs with the
same context as generation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainkern.data.subvolume import slab_starts
from brainkern.models._checkpoint import run_block
from brainkern.models.base import GenerativeModel
from brainkern.models.king import ShuffleUp3d, SNCodeDiscriminator, SNDiscriminator
from brainkern.models.kwon import _check_positive, parse_grid
from brainkern.models.registry import register_model
from brainkern.nn.spectral_norm import SNConv3d, SNLinear

__all__ = [
    "LOW_FACTOR",
    "HADiscriminatorHigh",
    "HAEncoderHigh",
    "HAEncoderLow",
    "HAGenerator",
    "check_ha_grid",
    "low_resolution",
    "slabs_at",
]

LOW_FACTOR = 4  # the low resolution (and the feature resolution) is the grid over 4
_GRID_MULTIPLE = (
    16 * LOW_FACTOR
)  # D^L (an SNDiscriminator) needs low-resolution sides that are multiples of 16


def check_ha_grid(
    shape: int | Sequence[int], sub_depth: int | None = None, owner: str = "HA-GAN"
) -> tuple[tuple[int, int, int], int]:
    """The grid ``(D, H, W)`` and the slab depth ``d`` of a hierarchical model, checked.

    Every side must be a positive multiple of 64 (the low resolution is a quarter of the
    grid and ``D^L`` needs sides that are multiples of 16); ``d`` (default ``D // 8``)
    must be a positive multiple of 4 that divides ``D`` (the slabs tile the volume, and
    each spans whole feature planes).

    Raises:
        TypeError: a shape that is not an int or three ints, or a non-int ``sub_depth``.
        ValueError: a side or ``sub_depth`` that breaks the rules above.
    """
    shape = parse_grid(shape, owner)
    for axis, side in zip("DHW", shape, strict=True):
        if side <= 0 or side % _GRID_MULTIPLE:
            raise ValueError(
                f"{owner}: grid side {axis} = {side} must be a positive multiple of {_GRID_MULTIPLE} "
                f"(the low resolution is 1/{LOW_FACTOR} of it, and its discriminator halves that 4 times); "
                f"got shape {shape}"
            )
    depth = shape[0]
    d = max(depth // 8, LOW_FACTOR) if sub_depth is None else sub_depth
    d = _check_positive(d, "sub_depth", owner)
    if d % LOW_FACTOR or depth % d:
        raise ValueError(
            f"{owner}: sub_depth = {d} must be a multiple of {LOW_FACTOR} that divides the grid's depth "
            f"D = {depth} (e.g. {depth // 8}); got shape {shape}"
        )
    return shape, d  # type: ignore[return-value]


def _coarse(features: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The coarse grid ``G^A`` starts from and the number of x2 stages up to ``features``:
    as many halvings as keep every side an integer and the smallest side at least 4."""
    k = 0
    while all(f % 2 ** (k + 1) == 0 for f in features) and min(features) // 2 ** (k + 1) >= 4:
        k += 1
    return tuple(f // 2**k for f in features), k


def _check_input(x: torch.Tensor, want: tuple[int, ...], what: str, owner: str) -> None:
    """``x`` must be ``(N, *want)``."""
    if x.dim() != 1 + len(want) or tuple(x.shape[1:]) != want:
        raise ValueError(
            f"{owner}: expected {what} of shape (N, {', '.join(map(str, want))}), got {tuple(x.shape)}"
        )


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    for block in blocks:
        x = run_block(block, x, checkpoint)
    return x


def _bn_lrelu(channels: int, slope: float) -> list[nn.Module]:
    return [nn.BatchNorm3d(channels), nn.LeakyReLU(slope)]


def _positions(start: int | torch.Tensor, n: int, limit: int, owner: str) -> torch.Tensor:
    """Slab starts as an int64 ``(n,)`` CPU or device tensor, range-checked where that costs no sync."""
    if isinstance(start, torch.Tensor):
        if start.dim() != 1 or start.shape[0] != n:
            raise ValueError(
                f"{owner}: expected one start per sample, shape ({n},), got {tuple(start.shape)}"
            )
        starts = start.long()
        if starts.device.type == "cpu" and n and (int(starts.min()) < 0 or int(starts.max()) > limit):
            raise ValueError(f"{owner}: slab starts must lie in [0, {limit}], got {starts.tolist()}")
        return starts
    if isinstance(start, bool) or not isinstance(start, numbers.Integral):
        raise TypeError(f"{owner}: start must be an int or an (N,) tensor, got {type(start).__name__}")
    if not 0 <= start <= limit:
        raise ValueError(f"{owner}: slab start must lie in [0, {limit}], got {start}")
    return torch.full((n,), int(start), dtype=torch.int64)


def slabs_at(x: torch.Tensor, first: torch.Tensor, count: int) -> torch.Tensor:
    """One slab per sample: planes ``first[i] .. first[i] + count - 1`` along dim 2 of sample ``i``,
    ``(N, C, D, H, W), (N,) -> (N, C, count, H, W)`` (differentiable; ``first`` on any device)."""
    n, c, _, h, w = x.shape
    index = first.to(x.device).view(n, 1) + torch.arange(count, device=x.device).view(1, count)
    return torch.gather(x, 2, index.view(n, 1, count, 1, 1).expand(n, c, count, h, w))


class HAGenerator(nn.Module):
    """The hierarchical generator ``G = (G^A, G^L, G^H)`` (Sun et al. 2022; King et al.'s Fig. S6).

    ``forward(z) -> (N, 1, D, H, W)`` in [-1, 1]: the whole volume, assembled slab by slab
    (every start of :func:`brainkern.data.subvolume.slab_starts` through
    :meth:`high_slab`), so ``G^H`` never holds a whole-volume high-resolution graph; under
    ``torch.no_grad()`` each slab's activations are freed before the next. Training calls
    :meth:`forward_train` instead: one slab per sample and the low-resolution volume.

    Args:
        shape: the grid ``(D, H, W)`` (an int for a cube), sides multiples of 64.
        latent_dim: size of the code.
        width: ``w`` (32 in King et al.).
        sub_depth: slab depth ``d`` along ``D`` (default ``D // 8``; a multiple of 4 dividing ``D``).
        negative_slope: LeakyReLU slope.
        checkpoint: recompute each block in backward (training with autograd only).

    Raises:
        ValueError: a bad grid, ``sub_depth`` or size (see :func:`check_ha_grid`); at call
            time, codes that are not ``(N, latent_dim)``, labels, or bad slab starts.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        width: int = 32,
        sub_depth: int | None = None,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        owner = "HAGenerator"
        self.shape, self.sub_depth = check_ha_grid(shape, sub_depth, owner)
        self.latent_dim = _check_positive(latent_dim, "latent_dim", owner)
        self.width = w = _check_positive(width, "width", owner)
        self.checkpoint = bool(checkpoint)
        slope = float(negative_slope)
        self.features_shape = tuple(s // LOW_FACTOR for s in self.shape)
        coarse, stages = _coarse(self.features_shape)
        chans = [max(8 * w // 2**i, 2 * w) for i in range(stages + 1)]
        shared: list[nn.Module] = [
            nn.Sequential(
                nn.Linear(self.latent_dim, chans[0] * math.prod(coarse), bias=False),
                nn.Unflatten(1, (chans[0], *coarse)),
                *_bn_lrelu(chans[0], slope),
            )
        ]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            shared.append(nn.Sequential(ShuffleUp3d(c_in, c_out, slope), *_bn_lrelu(c_out, slope)))
        self.shared = nn.ModuleList(shared)  # G^A
        self.low_res = nn.Sequential(  # G^L
            nn.Conv3d(2 * w, w, 3, padding=1, bias=False),
            *_bn_lrelu(w, slope),
            nn.Conv3d(w, 1, 3, padding=1),
            nn.Tanh(),
        )
        self.high = nn.ModuleList(  # G^H
            [
                nn.Sequential(ShuffleUp3d(2 * w, w, slope), *_bn_lrelu(w, slope)),
                nn.Sequential(ShuffleUp3d(w, 1, slope), nn.Tanh()),
            ]
        )
        self.halo = self._halo()

    def _halo(self) -> int:
        """Feature planes of context each side that one output plane of ``G^H`` can depend on:
        the interval of one feature plane's output walked back through each stage's
        convolution (its padding is its reach) and x2 shuffle."""
        lo, hi = 0, LOW_FACTOR  # output planes of feature plane 0, at full resolution
        for block in reversed(self.high):
            up = block[0]
            reach = int(up.conv.padding[0])
            factor = int(up.shuffle.upscale_factor)
            lo, hi = lo // factor - reach, -(-hi // factor) + reach
        return max(-lo, hi - 1)

    # -- the three parts ----------------------------------------------------------------

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """``G^A``: ``(N, latent_dim) -> h (N, 2w, D/4, H/4, W/4)``."""
        _check_input(z, (self.latent_dim,), "codes", "HAGenerator")
        return _run_blocks(self.shared, z, self.checkpoint)

    def low(self, h: torch.Tensor) -> torch.Tensor:
        """``G^L``: features ``(N, 2w, D/4, H/4, W/4) -> (N, 1, D/4, H/4, W/4)``."""
        self._check_features(h, self.features_shape[0])
        return run_block(self.low_res, h, self.checkpoint)

    def high_planes(self, h: torch.Tensor) -> torch.Tensor:
        """``G^H`` on feature planes as they are (zero padding at their ends):
        ``(N, 2w, P, H/4, W/4) -> (N, 1, 4P, H, W)``. The alpha-HA-GAN's ``E^H`` loss uses it
        on one slab's encoding; :meth:`high_slab` adds the context for exact slabs."""
        self._check_features(h, None)
        return _run_blocks(self.high, h, self.checkpoint)

    def high_slab(self, h: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """``G^H`` for the slab of depth ``d`` at ``start``: ``(N, 1, d, H, W)``.

        Args:
            h: the whole feature volume ``(N, 2w, D/4, H/4, W/4)`` (:meth:`features`).
            start: the slab's first plane, an int (every sample) or an ``(N,)`` integer
                tensor (one per sample), in ``[0, D - d]``; any plane, not only multiples
                of 4 (an int start that is a multiple of 4 runs one feature plane less).

        ``G^H`` runs on a window of feature planes: the slab's, plus :attr:`halo` planes
        each side, shifted inwards at the volume's ends; its output is cropped to the
        slab. In eval mode this equals ``G^H`` on all of ``h``, restricted to the slab.

        Raises:
            ValueError: features of the wrong shape, or starts out of range (a device
                tensor's range is not checked: that would synchronise).
        """
        n_feat = self.features_shape[0]
        self._check_features(h, n_feat)
        d = self.sub_depth
        starts = _positions(start, h.shape[0], self.shape[0] - d, "HAGenerator.high_slab")
        aligned = not isinstance(start, torch.Tensor) and start % LOW_FACTOR == 0
        planes = d // LOW_FACTOR + (0 if aligned else 1)  # feature planes a slab can touch
        width = min(planes + 2 * self.halo, n_feat)
        starts = starts.to(h.device)
        first = (starts // LOW_FACTOR - self.halo).clamp(0, n_feat - width)
        out = self.high_planes(slabs_at(h, first, width))
        return slabs_at(out, starts - LOW_FACTOR * first, d)

    # -- training and generation ----------------------------------------------------------

    def forward_train(self, z: torch.Tensor, starts: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One slab per sample and the low-resolution volume, from one ``G^A`` pass:
        ``(N, latent_dim), (N,) -> ((N, 1, d, H, W), (N, 1, D/4, H/4, W/4))``."""
        h = self.features(z)
        return self.high_slab(h, starts), self.low(h)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The whole volume ``(N, 1, D, H, W)``, slab by slab (see the class docstring)."""
        if labels is not None:
            raise ValueError("HAGenerator is unconditional: it takes no labels")
        h = self.features(z)
        d = self.sub_depth
        out = None
        for start in slab_starts(self.shape[0], d):
            slab = self.high_slab(h, start)
            if out is None:
                out = slab.new_empty((z.shape[0], 1, *self.shape))
            out[:, :, start : start + d] = slab
        return out

    def _check_features(self, h: torch.Tensor, depth: int | None) -> None:
        want = (2 * self.width, *self.features_shape[1:])
        if h.dim() != 5 or (h.shape[1], *h.shape[3:]) != want or (depth is not None and h.shape[2] != depth):
            shown = "P" if depth is None else str(depth)
            raise ValueError(
                f"HAGenerator: expected features of shape (N, {want[0]}, {shown}, {want[1]}, {want[2]}), "
                f"got {tuple(h.shape)}"
            )

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, latent_dim={self.latent_dim}, width={self.width}"
        s += f", sub_depth={self.sub_depth}, halo={self.halo}"
        return s + (", checkpoint=True" if self.checkpoint else "")


class _SlabNet(nn.Module):
    """A network that reads slabs ``(N, 1, d, H, W)``: the grid, slab depth, width and
    checkpointing it was built with, and its checked input."""

    def __init__(self, shape, sub_depth: int | None, width: int, checkpoint: bool) -> None:
        super().__init__()
        owner = type(self).__name__
        self.shape, self.sub_depth = check_ha_grid(shape, sub_depth, owner)
        self.width = _check_positive(width, "width", owner)
        self.checkpoint = bool(checkpoint)

    def _check_slabs(self, x: torch.Tensor) -> None:
        _check_input(x, (1, self.sub_depth, *self.shape[1:]), "slabs", type(self).__name__)

    def extra_repr(self) -> str:
        s = f"shape={self.shape}, sub_depth={self.sub_depth}, width={self.width}"
        return s + (", checkpoint=True" if self.checkpoint else "")


class HADiscriminatorHigh(_SlabNet):
    """``D^H``: a slab and its position to one logit, ``(N, 1, d, H, W), (N,) -> (N, 1)``.

    Layers as the module docstring says (spectrally normalised throughout). The position
    is the slab's start over ``D - d`` (0 when ``d = D``), a float in [0, 1].

    Args:
        shape: the grid (sides multiples of 64); sub_depth: the slab depth ``d``.
        width: ``w``; negative_slope: LeakyReLU slope; checkpoint: as :class:`HAGenerator`.

    Raises:
        ValueError: a bad grid or size; at call time, a slab that is not ``(N, 1, d, H, W)``
            or positions that are not ``(N,)``.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        sub_depth: int | None = None,
        width: int = 32,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__(shape, sub_depth, width, checkpoint)
        w, slope = self.width, float(negative_slope)
        grid = [self.sub_depth, *self.shape[1:]]
        blocks, c_in, i = [], 1, 0
        while min(grid[1:]) > 4:
            c_out = min(w * 2**i, 8 * w)
            step = 2 if grid[0] >= 2 else 1
            kernel, pad = (4, 4, 4), (1, 1, 1)
            if step == 1:
                kernel, pad = (1, 4, 4), (0, 1, 1)
            blocks.append(
                nn.Sequential(
                    SNConv3d(c_in, c_out, kernel, stride=(step, 2, 2), padding=pad), nn.LeakyReLU(slope)
                )
            )
            grid = [grid[0] // step, grid[1] // 2, grid[2] // 2]
            c_in, i = c_out, i + 1
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(SNConv3d(c_in, 8 * w, tuple(grid)), nn.Flatten(1), nn.LeakyReLU(slope))
        self.out = nn.Sequential(SNLinear(8 * w + 1, 4 * w), nn.LeakyReLU(slope), SNLinear(4 * w, 1))

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self._check_slabs(x)
        position = torch.as_tensor(position)
        if position.dim() != 1 or position.shape[0] != x.shape[0]:
            raise ValueError(
                f"HADiscriminatorHigh: expected one position per slab, shape ({x.shape[0]},), "
                f"got {tuple(position.shape)}"
            )
        f = self.head(_run_blocks(self.blocks, x, self.checkpoint))
        return self.out(torch.cat([f, position.to(device=f.device, dtype=f.dtype).view(-1, 1)], dim=1))


class HAEncoderHigh(_SlabNet):
    """``E^H``: a slab to features of ``G^H``'s input size, ``(N, 1, d, H, W) -> (N, 2w, d/4, H/4, W/4)``.

    King et al.'s encoder up to its second convolution (their Fig. S4): 4x4x4 stride-2
    convolutions ``1 -> w`` (bias) + LeakyReLU and ``w -> 2w`` + BatchNorm3d + LeakyReLU.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        sub_depth: int | None = None,
        width: int = 32,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__(shape, sub_depth, width, checkpoint)
        w, slope = self.width, float(negative_slope)
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv3d(1, w, 4, stride=2, padding=1), nn.LeakyReLU(slope)),
                nn.Sequential(
                    nn.Conv3d(w, 2 * w, 4, stride=2, padding=1, bias=False), *_bn_lrelu(2 * w, slope)
                ),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_slabs(x)
        return _run_blocks(self.blocks, x, self.checkpoint)

    def encode_volume(self, x: torch.Tensor) -> torch.Tensor:
        """The features of every non-overlapping slab of whole volumes, concatenated along
        depth: ``(N, 1, D, H, W) -> (N, 2w, D/4, H/4, W/4)`` (``E^L``'s input). The slabs go
        through ``E^H`` as one batch (in training mode, one BatchNorm statistic for all)."""
        _check_input(x, (1, *self.shape), "volumes", "HAEncoderHigh")
        n, d, k = x.shape[0], self.sub_depth, self.shape[0] // self.sub_depth
        # all slabs in one batch (one BatchNorm statistic), then back in depth order
        f = self(x.reshape(n * k, 1, d, *self.shape[1:]))
        f = f.reshape(n, k, *f.shape[1:]).transpose(1, 2)  # (N, 2w, k, d/4, H/4, W/4)
        return f.reshape(n, f.shape[1], k * f.shape[3], *f.shape[4:])


class HAEncoderLow(nn.Module):
    """``E^L``: the concatenated ``E^H`` features to a code, ``(N, 2w, D/4, H/4, W/4) -> (N, latent_dim)``.

    The rest of King et al.'s encoder: 4x4x4 stride-2 convolutions (no bias) + BatchNorm3d +
    LeakyReLU, channels ``4w, 8w, 8w, ...``, down to ``G^A``'s coarse grid (``4^3`` for a
    cube), then a convolution over that grid to the code (with bias).
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        latent_dim: int,
        width: int = 32,
        negative_slope: float = 0.2,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        owner = "HAEncoderLow"
        self.shape, _ = check_ha_grid(shape, None, owner)
        self.latent_dim = _check_positive(latent_dim, "latent_dim", owner)
        self.width = w = _check_positive(width, "width", owner)
        self.checkpoint = bool(checkpoint)
        slope = float(negative_slope)
        self.features_shape = tuple(s // LOW_FACTOR for s in self.shape)
        coarse, stages = _coarse(self.features_shape)
        chans = [2 * w] + [min(2 * w * 2 ** (i + 1), 8 * w) for i in range(stages)]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(c_in, c_out, 4, stride=2, padding=1, bias=False), *_bn_lrelu(c_out, slope)
            )
            for c_in, c_out in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = nn.Conv3d(chans[-1], self.latent_dim, coarse)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        _check_input(h, (2 * self.width, *self.features_shape), "features", "HAEncoderLow")
        return self.head(_run_blocks(self.blocks, h, self.checkpoint)).flatten(1)


def low_resolution(volumes: torch.Tensor) -> torch.Tensor:
    """Volumes ``(N, C, D, H, W)`` at the low resolution, ``(N, C, D/4, H/4, W/4)``: 4x4x4 average
    pooling (as :func:`brainkern.data.subvolume.sample_subvolumes`; Sun et al. resize by
    interpolation, average pooling is the anti-aliased choice)."""
    return F.avg_pool3d(volumes, LOW_FACTOR)


# ---------------------------------------------------------------------------
# registered models


def _ha_model(
    name, family, shape, latent_dim, width, sub_depth, conditioning, slope, checkpoint, code_hidden
):
    if conditioning != "none":
        raise ValueError(
            f"{name} is unconditional (conditioning='none'); got conditioning={conditioning!r}: "
            "train one model per class instead (data.classes)"
        )
    shape, sub_depth = check_ha_grid(shape, sub_depth, name)
    nets: dict[str, nn.Module] = {
        "discriminator_high": HADiscriminatorHigh(shape, sub_depth, width, slope, checkpoint),
        "discriminator_low": SNDiscriminator(
            tuple(s // LOW_FACTOR for s in shape), width, negative_slope=slope, checkpoint=checkpoint
        ),
        "generator": HAGenerator(shape, latent_dim, width, sub_depth, slope, checkpoint),
    }
    if family == "alpha-ha":
        nets["encoder_low"] = HAEncoderLow(shape, latent_dim, width, slope, checkpoint)
        nets["encoder_high"] = HAEncoderHigh(shape, sub_depth, width, slope, checkpoint)
        nets["code_discriminator"] = SNCodeDiscriminator(latent_dim, code_hidden, slope)
    return GenerativeModel(
        name=name, shape=shape, latent_dim=latent_dim, family=family, loss="standard", networks=nets
    )


@register_model("ha-gan")
def ha_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 32,
    sub_depth: int | None = None,
    conditioning: str = "none",
    negative_slope: float = 0.2,
    checkpoint: bool = False,
) -> GenerativeModel:
    """Sun et al.'s hierarchical HA-GAN as King et al. adapt it: G^A/G^L/G^H, slab and
    low-resolution discriminators averaged, standard GAN loss; unconditional."""
    return _ha_model(
        "ha-gan", "ha", shape, latent_dim, width, sub_depth, conditioning, negative_slope, checkpoint, None
    )


@register_model("alpha-ha-gan")
def alpha_ha_gan(
    shape: Sequence[int] = (64, 64, 64),
    latent_dim: int = 1000,
    width: int = 32,
    sub_depth: int | None = None,
    conditioning: str = "none",
    negative_slope: float = 0.2,
    code_hidden: int = 2048,
    checkpoint: bool = False,
) -> GenerativeModel:
    """King et al.'s alpha-HA-GAN: the HA-GAN with slab and volume encoders (E^H, E^L), an SN
    code discriminator and L1 terms (their eqs. 1-4), standard GAN loss; unconditional."""
    return _ha_model(
        "alpha-ha-gan",
        "alpha-ha",
        shape,
        latent_dim,
        width,
        sub_depth,
        conditioning,
        negative_slope,
        checkpoint,
        code_hidden,
    )
