"""DiffAugment-3D: random differentiable augmentation of every discriminator input.

King et al. (2024) apply DiffAugment (Zhao et al. 2020), adapted to 3D, to the
discriminator's real and generated inputs: each of translation (up to 1/8 of each
axis), cutout (a box of at most half of each side) and intensity (a factor in
``[0.7, 1]``) is applied with probability 1/3 per sample. :class:`DiffAugment3d`
draws those parameters per sample (:meth:`DiffAugment3d.draw`) and applies them
with the fused op :func:`brainkern.ops.diff_augment3d` (:meth:`DiffAugment3d.apply`),
so gradients reach the generator through the augmentation.

brainkern's choices where the paper leaves room:

- everything is relative to a ``background`` value (``-1`` for data in ``[-1, 1]``
  as in King et al., ``0`` for ``[0, 1]``): the translation fills with background,
  the cutout sets background, and the intensity scales the distance to background
  (so background stays background);
- translation: per axis, an integer shift uniform in ``[-T, T]`` with
  ``T = floor(translation * size + 0.5)`` (rounded half up), drawn independently per axis;
- cutout: per axis, a side uniform in ``[1, max(1, floor(cutout * size))]``, then a
  position uniform among those that keep the whole box inside the volume (so the
  box always removes exactly its volume; Zhao et al. centre a fixed-size box
  anywhere and clip it at the border);
- intensity: a factor uniform in ``[intensity[0], intensity[1]]``, one per sample;
- each policy element is drawn independently per sample with probability ``p``;
  the RNG is consumed the same way whatever the policy, so one seed gives the same
  translation draw with or without cutout in the policy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from brainkern.ops import diff_augment3d

__all__ = ["POLICIES", "AugmentParams", "DiffAugment3d", "diff_augment"]

POLICIES: tuple[str, ...] = ("translation", "cutout", "intensity")


@dataclass
class AugmentParams:
    """One draw of DiffAugment-3D parameters for a batch of ``n`` samples.

    Attributes:
        shift: ``(n, 3)`` int64, translation in voxels along ``(D, H, W)``
            (``y[p] = x[p - shift]``); zeros where translation was not drawn.
        lo, hi: ``(n, 3)`` int64, the cutout box ``[lo, hi)`` per axis; ``lo == hi == 0``
            (an empty box) where cutout was not drawn.
        scale: ``(n,)`` float32, the intensity factor; 1 where intensity was not drawn.
    """

    shift: Tensor
    lo: Tensor
    hi: Tensor
    scale: Tensor

    def __len__(self) -> int:
        return self.shift.shape[0]

    def to(self, device: torch.device | str) -> AugmentParams:
        """The same parameters on ``device`` (non-blocking where the source is pinned)."""
        return AugmentParams(
            *(t.to(device, non_blocking=True) for t in (self.shift, self.lo, self.hi, self.scale))
        )

    def select(self, index: int | slice | Tensor) -> AugmentParams:
        """The parameters of some samples (``index`` as for a tensor's first axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return AugmentParams(self.shift[index], self.lo[index], self.hi[index], self.scale[index])


def _check_fraction(name: str, value: object, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"DiffAugment3d: {name} must be a finite number, got {value!r}")
    ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"DiffAugment3d: {name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _check_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
    names = policy.split(",") if isinstance(policy, str) else list(policy)
    names = [name.strip() for name in names if name.strip()]
    bad = [name for name in names if name not in POLICIES]
    if bad:
        raise ValueError(f"DiffAugment3d: unknown policy {bad}; choose from {POLICIES}")
    if len(set(names)) != len(names):
        raise ValueError(f"DiffAugment3d: policy {names} names an element twice")
    return tuple(names)


def _uniform_int(u: Tensor, low: int, high: int | Tensor) -> Tensor:
    """Integers uniform in ``[low, high]`` (inclusive; ``high`` may vary) from ``u`` in ``[0, 1)``.

    Python-number bounds keep the draw free of host-to-device copies.
    """
    span = high - low + 1
    k = torch.floor(u * span).to(torch.int64)
    # u * span can round up to span for u just below 1.
    k = torch.minimum(k, span - 1) if isinstance(span, Tensor) else k.clamp_max(span - 1)
    return k + low


class DiffAugment3d(nn.Module):
    """King et al. (2024)'s differentiable 3D augmentation (DiffAugment-3D) of discriminator inputs.

    Args:
        policy: the elements to draw, a subset of :data:`POLICIES` (a sequence or a
            comma-separated string); empty gives the identity.
        p: probability with which each element is drawn, independently per sample,
            in ``[0, 1]``; King et al. use 1/3.
        translation: largest shift as a fraction of each axis, in ``[0, 1]`` (1/8).
        cutout: largest box side as a fraction of each axis, in ``(0, 1]`` (1/2).
        intensity: ``(low, high)`` range of the factor, ``0 <= low <= high``; ``(0.7, 1.0)``.
        background: the value of empty space (``-1`` for data in ``[-1, 1]``).

    Raises:
        ValueError: an unknown policy element (the message lists :data:`POLICIES`), or a
            value out of its range.
    """

    def __init__(
        self,
        policy: str | Sequence[str] = POLICIES,
        p: float = 1 / 3,
        translation: float = 0.125,
        cutout: float = 0.5,
        intensity: tuple[float, float] = (0.7, 1.0),
        background: float = -1.0,
    ) -> None:
        super().__init__()
        self.policy = _check_policy(policy)
        self.p = _check_fraction("p", p, 0.0, 1.0)
        self.translation = _check_fraction("translation", translation, 0.0, 1.0)
        self.cutout = _check_fraction("cutout", cutout, 0.0, 1.0, open_low=True)
        if not isinstance(intensity, Sequence) or len(intensity) != 2:
            raise ValueError(f"DiffAugment3d: intensity must be a (low, high) pair, got {intensity!r}")
        low = _check_fraction("intensity[0]", intensity[0], 0.0, math.inf)
        high = _check_fraction("intensity[1]", intensity[1], 0.0, math.inf)
        if low > high:
            raise ValueError(f"DiffAugment3d: intensity must have low <= high, got {intensity!r}")
        self.intensity = (low, high)
        if isinstance(background, bool) or not isinstance(background, numbers.Real):
            raise ValueError(f"DiffAugment3d: background must be a number, got {background!r}")
        self.background = float(background)

    def extra_repr(self) -> str:
        return (
            f"policy={self.policy}, p={self.p:.4g}, translation={self.translation}, cutout={self.cutout}, "
            f"intensity={self.intensity}, background={self.background}"
        )

    def _shift_limits(self, sizes: Sequence[int]) -> list[int]:
        """The largest shift per axis, ``floor(translation * size + 0.5)``."""
        return [math.floor(self.translation * s + 0.5) for s in sizes]

    def _cutout_limits(self, sizes: Sequence[int]) -> list[int]:
        """The largest cutout side per axis, ``max(1, floor(cutout * size))``."""
        return [max(1, math.floor(self.cutout * s)) for s in sizes]

    @property
    def is_identity(self) -> bool:
        """True when no element can ever be drawn (``p == 0`` or an empty policy)."""
        return self.p == 0.0 or not self.policy

    def draw(
        self,
        n: int,
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> AugmentParams:
        """Draw the parameters for ``n`` samples of spatial size ``shape``.

        Args:
            n: the number of samples.
            shape: ``(D, H, W)``, or a full ``(N, C, D, H, W)`` shape (its last three sizes).
            device: where the returned tensors live (default: the generator's device, else the CPU).
            generator: the random source; without one, the global RNG of ``device``. The
                same generator state gives the same draw.

        Returns:
            :class:`AugmentParams` on ``device``.

        Raises:
            ValueError: ``n < 0`` or ``shape`` has no three positive spatial sizes.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"DiffAugment3d.draw: n must be an int >= 0, got {n!r}")
        sizes = tuple(int(s) for s in shape)[-3:]
        if len(sizes) != 3 or min(sizes) < 1:
            raise ValueError(f"DiffAugment3d.draw: shape must end in three sizes >= 1, got {tuple(shape)}")
        target = torch.device(device) if device is not None else None
        source = generator.device if generator is not None else (target or torch.device("cpu"))
        kw = {"device": source, "generator": generator}
        # Always the same five draws, in this order, whatever the policy.
        gate = torch.rand(n, 3, dtype=torch.float64, **kw) < self.p  # (n, 3): translation, cutout, intensity
        u_shift = torch.rand(n, 3, dtype=torch.float64, **kw)
        u_side = torch.rand(n, 3, dtype=torch.float64, **kw)
        u_pos = torch.rand(n, 3, dtype=torch.float64, **kw)
        u_scale = torch.rand(n, dtype=torch.float64, **kw)
        shift = torch.stack(
            [_uniform_int(u_shift[:, k], -t, t) for k, t in enumerate(self._shift_limits(sizes))], dim=1
        )
        shift = torch.where(gate[:, :1] & ("translation" in self.policy), shift, 0)

        side = torch.stack(
            [_uniform_int(u_side[:, k], 1, m) for k, m in enumerate(self._cutout_limits(sizes))], dim=1
        )
        lo = torch.stack([_uniform_int(u_pos[:, k], 0, s - side[:, k]) for k, s in enumerate(sizes)], dim=1)
        cut = gate[:, 1:2] & ("cutout" in self.policy)
        lo = torch.where(cut, lo, 0)
        hi = torch.where(cut, lo + side, 0)

        low, high = self.intensity
        scale = (low + (high - low) * u_scale).to(torch.float32)
        scale = torch.where(gate[:, 2] & ("intensity" in self.policy), scale, 1.0)

        params = AugmentParams(shift, lo, hi, scale)
        if target is not None and target != source:
            if source.type == "cpu" and target.type == "cuda":
                params = AugmentParams(*(t.pin_memory() for t in (shift, lo, hi, scale)))
            params = params.to(target)
        return params

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply a drawn ``params`` to ``x`` ``(N, C, D, H, W)`` (``N == len(params)``), differentiably.

        Raises:
            ValueError: the batch sizes differ (or the op's own checks fail).
        """
        if x.dim() != 5:
            raise ValueError(f"DiffAugment3d: x must be 5-d (N, C, D, H, W), got shape {tuple(x.shape)}")
        if len(params) != x.shape[0]:
            raise ValueError(f"DiffAugment3d: params are for {len(params)} samples but x has {x.shape[0]}")
        if params.shift.device != x.device:
            params = params.to(x.device)
        return diff_augment3d(x, params.shift, params.lo, params.hi, params.scale, self.background)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment each sample of ``x`` ``(N, C, D, H, W)`` with its own draw.

        Real and generated volumes concatenated into one batch get independent draws
        per sample. With ``p == 0`` or an empty policy ``x`` itself is returned.
        """
        if self.is_identity:
            return x
        params = self.draw(x.shape[0], x.shape, device=x.device, generator=generator)
        return self.apply(x, params)


def diff_augment(
    x: Tensor,
    policy: str | Sequence[str] = POLICIES,
    p: float = 1 / 3,
    generator: torch.Generator | None = None,
    background: float = -1.0,
) -> Tensor:
    """Functional DiffAugment-3D with King et al.'s ranges.

    The same as ``DiffAugment3d(policy, p, background=background)(x, generator)``: ``x``
    ``(N, C, D, H, W)`` augmented with one draw per sample; ``x`` itself when ``p == 0``.
    """
    return DiffAugment3d(policy, p, background=background)(x, generator=generator)
