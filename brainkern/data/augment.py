"""Classic (non-differentiable) augmentation of 3D volumes, seeded.

The transforms the papers use on real training images: left-right flips,
intensity scaling in ``[0.7, 1.0]``, translation by up to 1/8 of the size,
cutout of up to half the size (King et al., seed 003, each applied with
probability 1/3), and additive Gaussian noise of a given variance (the
"Real + noise" baseline of Zhuang et al., seed 000).

Every transform takes ``(N, C, D, H, W)`` or ``(C, D, H, W)`` tensors and returns
a new tensor of the same shape, dtype and device; each sample gets its own draw.
Randomness comes from a CPU ``torch.Generator`` passed at call time, so a seeded
generator gives the same output on every run and device. The first spatial axis
is left-right for RAS-oriented data (what :class:`~brainkern.data.VolumeDataset`
produces).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.dim() == 5:
        return x, False
    if x.dim() == 4:
        return x.unsqueeze(0), True
    raise ValueError(f"expected a (N, C, D, H, W) or (C, D, H, W) tensor, got shape {tuple(x.shape)}")


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    return float(p)


def _fill_values(x: torch.Tensor, fill: float | None) -> torch.Tensor:
    """Per-sample fill value, ``(N, 1, 1, 1, 1)``: ``fill`` or each volume's minimum (background)."""
    if fill is not None:
        return torch.full((x.shape[0], 1, 1, 1, 1), float(fill), dtype=x.dtype, device=x.device)
    return x.flatten(1).amin(dim=1).view(-1, 1, 1, 1, 1)


class Transform:
    """Base class: ``t(x, generator=None)``; subclasses implement ``apply`` on 5D input."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        xb, squeezed = _batched(x)
        out = self.apply(xb, generator)
        return out.squeeze(0) if squeezed else out

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


class RandomFlipLR(Transform):
    """Mirror each sample along the left-right (first spatial) axis with probability ``p``."""

    def __init__(self, p: float = 0.5, axis: int = 0) -> None:
        self.p = _check_p(p)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis 0, 1 or 2, got {axis}")
        self.axis = axis

    def apply(self, x, generator):
        hit = (_rand(x.shape[0], generator) < self.p).to(x.device).view(-1, 1, 1, 1, 1)
        return torch.where(hit, x.flip(2 + self.axis), x)


class RandomIntensityScale(Transform):
    """Multiply each sample by a factor uniform in ``[low, high]`` (with probability ``p``)."""

    def __init__(self, low: float = 0.7, high: float = 1.0, p: float = 1.0) -> None:
        if not 0.0 <= low <= high:
            raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
        self.low, self.high, self.p = float(low), float(high), _check_p(p)

    def apply(self, x, generator):
        n = x.shape[0]
        factor = self.low + (self.high - self.low) * _rand(n, generator)
        hit = _rand(n, generator) < self.p
        factor = torch.where(hit, factor, torch.ones_like(factor))
        return x * factor.to(x.device, x.dtype).view(-1, 1, 1, 1, 1)


class GaussianNoise(Transform):
    """Add zero-mean Gaussian noise of the given ``variance`` (with probability ``p``)."""

    def __init__(self, variance: float, p: float = 1.0) -> None:
        if variance < 0:
            raise ValueError(f"variance must be >= 0, got {variance}")
        self.std, self.p = float(variance) ** 0.5, _check_p(p)

    def apply(self, x, generator):
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        hit = (_rand(x.shape[0], generator) < self.p).to(torch.float32).view(-1, 1, 1, 1, 1)
        return x + (noise * (self.std * hit)).to(x.device, x.dtype)


class RandomTranslate(Transform):
    """Shift each sample by a whole number of voxels, at most ``max_fraction`` of the size
    per axis, filling the uncovered border with ``fill`` (default: the sample's minimum)."""

    def __init__(self, max_fraction: float = 0.125, p: float = 1.0, fill: float | None = None) -> None:
        if not 0.0 <= max_fraction < 1.0:
            raise ValueError(f"max_fraction must be in [0, 1), got {max_fraction}")
        self.max_fraction, self.p, self.fill = float(max_fraction), _check_p(p), fill

    def apply(self, x, generator):
        n = x.shape[0]
        sizes = x.shape[2:]
        limits = torch.tensor([int(self.max_fraction * s) for s in sizes], dtype=torch.float64)
        u = torch.rand(n, 3, generator=generator, dtype=torch.float64)
        shifts = torch.round((2 * u - 1) * limits).to(torch.int64)
        hit = _rand(n, generator) < self.p
        fill = _fill_values(x, self.fill)
        out = x.clone()
        for i in range(n):
            if not hit[i] or not bool(shifts[i].any()):
                continue
            src = [slice(None)] * 3
            dst = [slice(None)] * 3
            for a, (s, size) in enumerate(zip(shifts[i].tolist(), sizes, strict=True)):
                src[a] = slice(max(-s, 0), size - max(s, 0))
                dst[a] = slice(max(s, 0), size - max(-s, 0))
            out[i] = fill[i]
            out[i][(slice(None), *dst)] = x[i][(slice(None), *src)]
        return out


class Cutout(Transform):
    """Fill one random box per sample (each side up to ``max_fraction`` of the size) with
    ``fill`` (default: the sample's minimum), with probability ``p``."""

    def __init__(self, max_fraction: float = 0.5, p: float = 1.0, fill: float | None = None) -> None:
        if not 0.0 < max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction}")
        self.max_fraction, self.p, self.fill = float(max_fraction), _check_p(p), fill

    def apply(self, x, generator):
        n = x.shape[0]
        sizes = torch.tensor(x.shape[2:], dtype=torch.float64)
        extent = torch.clamp(
            torch.round(
                torch.rand(n, 3, generator=generator, dtype=torch.float64) * self.max_fraction * sizes
            ),
            min=1,
        ).to(torch.int64)
        start = torch.floor(
            torch.rand(n, 3, generator=generator, dtype=torch.float64) * (sizes - extent + 1)
        ).to(torch.int64)
        hit = _rand(n, generator) < self.p
        fill = _fill_values(x, self.fill)
        out = x.clone()
        for i in range(n):
            if hit[i]:
                box = tuple(slice(int(a), int(a + e)) for a, e in zip(start[i], extent[i], strict=True))
                out[i][(slice(None), *box)] = fill[i]
        return out


class Compose(Transform):
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def apply(self, x, generator):
        for t in self.transforms:
            x = t(x, generator=generator)
        return x


def classic(p: float = 1 / 3, noise_variance: float | None = None) -> Compose:
    """King et al.'s baseline augmentation: translation (1/8), cutout (1/2), intensity
    scaling in [0.7, 1], each with probability ``p``; a left-right flip with
    probability 1/2; optional Gaussian noise of the given variance."""
    ts: list[Transform] = [
        RandomFlipLR(p=0.5),
        RandomTranslate(max_fraction=0.125, p=p),
        Cutout(max_fraction=0.5, p=p),
        RandomIntensityScale(0.7, 1.0, p=p),
    ]
    if noise_variance:
        ts.append(GaussianNoise(noise_variance))
    return Compose(ts)


def flip_lr(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional form of :class:`RandomFlipLR`."""
    return RandomFlipLR(p)(x, generator)


def scale_intensity(
    x: torch.Tensor, low: float = 0.7, high: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Functional form of :class:`RandomIntensityScale`."""
    return RandomIntensityScale(low, high)(x, generator)


def add_noise(x: torch.Tensor, variance: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Functional form of :class:`GaussianNoise`."""
    return GaussianNoise(variance)(x, generator)


def translate(
    x: torch.Tensor, max_fraction: float = 0.125, generator: torch.Generator | None = None, fill=None
) -> torch.Tensor:
    """Functional form of :class:`RandomTranslate`."""
    return RandomTranslate(max_fraction, fill=fill)(x, generator)


def cutout(
    x: torch.Tensor, max_fraction: float = 0.5, generator: torch.Generator | None = None, fill=None
) -> torch.Tensor:
    """Functional form of :class:`Cutout`."""
    return Cutout(max_fraction, fill=fill)(x, generator)
