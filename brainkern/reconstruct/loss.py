"""Seeliger et al.'s (2018, seed 004) image-space loss between shown and reconstructed images.

Section 2.3, equations 2-5: the reconstruction ``y = G(z)`` is compared with the shown image
``x`` by a weighted sum ``10 l_px + 50 l_fp + 1 l_fm`` of

- :func:`pixel_loss` (eq. 2): squared error after shrinking both images by 10% (against
  the blur a pixel loss favours);
- :func:`presence_loss` (eq. 3): cross-entropy between which feature-map elements exceed a
  threshold (1.0) in ``x`` and in ``y``;
- :func:`magnitude_loss` (eq. 4): squared error of the feature maps on the elements where
  ``x``'s map exceeds the threshold;

on the conv1 and conv2 maps of a classifier trained on the stimulus domain, taken before
their nonlinearity (:class:`~brainkern.reconstruct.features.FeatureNet`), and on conv1's
negative side too (its activations below ``-threshold``).

How the sums are reduced is brainkern's choice (eq. 2 and 4 write a squared norm per image,
a sum over elements, averaged over the batch, while the text calls both "mean squared
error"): the pixel and presence terms are means over elements and images; the magnitude
term is a mean over the *active* elements only (those where the shown image's map exceeds
the threshold), pooled over the batch; the feature terms add one such mean per map (conv1
positive, conv1 negative, conv2 positive). With sums the weights 10 / 50 / 1 could not
balance (at 64x64 the pixel term would sum 58^2 = 3364 elements, conv1 alone 131072). With
these means they do. Measured by brainkern on 64 held-out 64x64 digits with a FeatureNet
trained on 1500 others (4 epochs, 99% validation accuracy); weighted terms
``10 px / 50 fp / 1 fm``:

=============================  ======  ======  =====
reconstruction                 10 px   50 fp   1 fm
=============================  ======  ======  =====
untrained DCGAN output [#]_    6.9    56.4    5.3
flat grey (0)                   7.5    57.5    5.8
another digit                   2.8    51.0    2.0
the digit shifted by 3 px       0.8    47.8    0.35
the digit blurred (7x7 box)     0.1    46.9    0.09
the digit itself                0      46.5    0
=============================  ======  ======  =====

.. [#] :class:`~brainkern.models.DCGANGenerator2d` (64x64, tanh, width 32), random weights,
   BatchNorm on batch statistics, ``z`` on the unit sphere: pixels in about [-0.8, 0.5].

Each term moves by 5 to 10 between a random and a perfect reconstruction. A mean of the
magnitude term over *all* elements would be about 20 times smaller (only 4-12% of conv1's
and conv2's elements are active) and leave it no say. The presence term does not reach 0
for a perfect reconstruction (46.5 above): the sigmoid of ``phi - t`` is not 0 or 1 at the
shown image's own values, so it rewards features stronger (and non-features weaker) than
the shown image's; the magnitude term holds the active elements at their values.

Where the paper binarises both maps (a step with no gradient),
brainkern keeps ``y``'s side continuous: ``sigmoid(phi(y) - t)`` is the predicted
probability that an element is "present", scored by binary cross-entropy against ``x``'s
binary map (:func:`torch.nn.functional.binary_cross_entropy_with_logits`).

A feature net is anything with ``features(x) -> dict[str, Tensor]`` holding at least the
maps named in ``layers``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ReconstructionLoss",
    "magnitude_loss",
    "pixel_loss",
    "presence_loss",
    "shrink",
]

PIXELS = "pixels"  # the key of the shrunk shown images in ReconstructionLoss.targets


def _members(x: Tensor, y: Tensor) -> int:
    """How many reconstructions ``y`` there are per shown image ``x`` (``E`` of ``y = (E * N, ...)``)."""
    n, m = x.shape[0], y.shape[0]
    if n == 0 or m % n or x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"reconstructions {tuple(y.shape)} must be E >= 1 copies of the shown images' shape "
            f"{tuple(x.shape)} (ensemble member-major: y[e * N + i] is compared with x[i])"
        )
    return m // n


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``x (N, ...)``, ``y (E * N, ...)`` as ``(1, N, ...)``, ``(E, N, ...)``: broadcastable, no copy."""
    e = _members(x, y)
    return x.unsqueeze(0), y.reshape(e, *x.shape)


def shrink(x: Tensor, scale: float = 0.9) -> Tensor:
    """``(N, C, S, S)`` images resized to ``round(scale * S)`` a side: bilinear with antialiasing.

    ``scale = 1`` returns ``x`` unchanged.
    """
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"pixel scale must be in (0, 1], got {scale}")
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, S, S) images, got shape {tuple(x.shape)}")
    side = max(1, round(scale * x.shape[-1]))
    if scale == 1.0 or side == x.shape[-1]:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


def pixel_loss(x: Tensor, y: Tensor, *, scale: float = 0.9) -> Tensor:
    """Eq. 2: mean squared pixel error after shrinking both images by ``1 - scale``.

    Args:
        x: shown images ``(N, 1, S, S)``.
        y: reconstructions ``(N, 1, S, S)``, or ``(E * N, 1, S, S)`` for an ensemble of ``E``
            (``y[e * N + i]`` against ``x[i]``).
        scale: the side kept (Seeliger et al.: 0.9, "reduced in size by 10%").

    Returns:
        A scalar: the mean over images and pixels of the squared difference (brainkern reads
        eq. 2's per-image squared norm as a mean over pixels; see the module docstring).
    """
    _members(x, y)
    return _squared_error(shrink(x, scale), shrink(y, scale))


def _squared_error(xs: Tensor, ys: Tensor) -> Tensor:
    """Mean squared difference of ``xs (N, ...)`` and ``ys (E * N, ...)`` (``xs`` broadcast over E)."""
    xs, ys = _pair(xs, ys)
    return (xs - ys).square().mean()


def _terms(layers: Sequence[str], negative: Sequence[str]) -> list[tuple[str, float]]:
    """(map name, sign): ``+1`` for every layer, ``-1`` for the negative side of those in ``negative``."""
    if not layers:
        raise ValueError("give at least one feature map in layers (Seeliger et al.: conv1, conv2)")
    unknown = sorted(set(negative) - set(layers))
    if unknown:
        raise ValueError(f"negative layers {unknown} must also be in layers {list(layers)}")
    return [(name, 1.0) for name in layers] + [(name, -1.0) for name in negative]


def _sides(
    fx: Mapping[str, Tensor],
    fy: Mapping[str, Tensor],
    threshold: float,
    layers: Sequence[str],
    negative: Sequence[str],
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Per term (each layer, then the negative side of those in ``negative``): the shown and the
    reconstructed map as ``(1, N, ...)`` and ``(E, N, ...)``, both multiplied by the side's sign
    (+1 or -1), and the shown map's binary mask ``1[sign * phi(x) > t]`` (``(1, N, ...)``)."""
    for name, sign in _terms(layers, negative):
        if name not in fx or name not in fy:
            raise ValueError(f"feature map {name!r} missing: the feature net gave {sorted(fy)}")
        px, py = _pair(sign * fx[name], sign * fy[name])
        yield px, py, (px > threshold).to(py.dtype)


def presence_loss(
    fx: Mapping[str, Tensor],
    fy: Mapping[str, Tensor],
    *,
    threshold: float = 1.0,
    layers: Sequence[str] = ("conv1", "conv2"),
    negative: Sequence[str] = ("conv1",),
) -> Tensor:
    """Eq. 3, feature presence: binary cross-entropy of "is this element above threshold".

    For each map ``phi`` in ``layers``, the target is ``b = 1[phi(x) > t]`` and the logit
    ``phi(y) - t`` (brainkern's differentiable reading: the paper binarises ``phi(y)`` too);
    for each map in ``negative`` also the negative side, target ``1[-phi(x) > t]`` and logit
    ``-phi(y) - t`` (Seeliger et al. do this for conv1). Each term is a mean over the map's
    elements and the images; the terms are summed.

    Args:
        fx: the shown images' maps, ``name -> (N, C, H, W)`` (pre-nonlinearity).
        fy: the reconstructions' maps, ``(N, C, H, W)`` or ``(E * N, C, H, W)``.
        threshold: ``t`` (Seeliger et al.: 1.0).
        layers: the maps compared (Seeliger et al.: conv1 and conv2).
        negative: the maps also compared on their negative side (Seeliger et al.: conv1).

    Returns:
        A scalar.
    """
    return sum(
        F.binary_cross_entropy_with_logits(py - threshold, mask.expand_as(py))
        for _, py, mask in _sides(fx, fy, threshold, layers, negative)
    )


def magnitude_loss(
    fx: Mapping[str, Tensor],
    fy: Mapping[str, Tensor],
    *,
    threshold: float = 1.0,
    layers: Sequence[str] = ("conv1", "conv2"),
    negative: Sequence[str] = ("conv1",),
) -> Tensor:
    """Eq. 4, feature magnitude: squared error of the maps where the *shown* image's map is active.

    For each map, the mean of ``(phi(x) - phi(y)) ** 2`` over the elements where
    ``b(x) = 1[phi(x) > t]`` (for the negative side of the maps in ``negative``,
    ``1[-phi(x) > t]``), pooled over the batch: the sum of the masked squared errors divided
    by the number of active elements (a map with none adds 0); the terms are summed.

    This is the text's "mean squared error ... on feature map elements that met the
    binarization threshold" read literally (a mean over those elements). brainkern's choices:
    (1) not a mean over *all* elements: on 64x64 digits only about 4% of conv1's elements
    exceed 1, so that mean is some 20 times smaller and ``lambda_fm = 1`` would make the term
    negligible next to the other two (see the module docstring for the measurement);
    (2) the shown image's mask on both maps, as the text says; eq. 4 as printed masks each map
    by its own binarisation, which gives no gradient where ``y`` lacks a feature ``x`` has.

    Args and return as :func:`presence_loss`.
    """
    # sign * phi on both sides leaves the squared difference as it is; the mask is broadcast
    # over the E members, so each active element counts E times
    return sum(
        ((px - py) * mask).square().sum() / (mask.sum() * py.shape[0]).clamp(min=1)
        for px, py, mask in _sides(fx, fy, threshold, layers, negative)
    )


class ReconstructionLoss(nn.Module):
    """Eq. 5: ``lambda_px * pixel + lambda_fp * presence + lambda_fm * magnitude``.

    The feature net is frozen here (eval mode, ``requires_grad_(False)``, in place, and kept
    in eval mode by :meth:`train`): gradients reach ``y`` through it but none of its
    parameters. The shown images' side needs no gradient: :meth:`targets` computes it once
    (shrunk pixels and feature maps, each with a leading ``N``, so a caller may slice it by
    batch with ``{k: v[idx] for k, v in targets.items()}``), and ``forward(None, y,
    targets=...)`` reuses it every epoch.

    An ensemble of ``E`` reconstructions per image is passed as ``y`` of ``(E * N, 1, S, S)``,
    member-major (``y[e * N + i]`` reconstructs ``x[i]``, what ``torch.cat`` of the members
    gives); the shown side is broadcast, not copied, and each term averages over all ``E * N``
    reconstructions (so the loss is the mean of the members' losses).

    Args:
        features: the feature net (``features(x) -> dict``), e.g. a trained
            :class:`~brainkern.reconstruct.features.FeatureNet`.
        lambda_px, lambda_fp, lambda_fm: the weights (Seeliger et al.: 10, 50, 1, tuned on
            their BRAINS training set and used for all three data sets).
        threshold: the binarisation threshold (Seeliger et al.: 1.0).
        pixel_scale: the side kept for the pixel loss (Seeliger et al.: 0.9).
        layers, negative: the maps matched, and those also matched on their negative side
            (Seeliger et al.: conv1 and conv2; conv1).
    """

    def __init__(
        self,
        features: nn.Module,
        *,
        lambda_px: float = 10.0,
        lambda_fp: float = 50.0,
        lambda_fm: float = 1.0,
        threshold: float = 1.0,
        pixel_scale: float = 0.9,
        layers: Sequence[str] = ("conv1", "conv2"),
        negative: Sequence[str] = ("conv1",),
    ) -> None:
        super().__init__()
        if not callable(getattr(features, "features", None)):
            raise ValueError("features must have a features(x) -> dict method (e.g. a FeatureNet)")
        _terms(layers, negative)
        shrink(torch.zeros(1, 1, 4, 4), pixel_scale)  # checks the scale
        self.features = features.eval().requires_grad_(False)
        self.lambda_px, self.lambda_fp, self.lambda_fm = float(lambda_px), float(lambda_fp), float(lambda_fm)
        self.threshold, self.pixel_scale = float(threshold), float(pixel_scale)
        self.layers, self.negative = tuple(layers), tuple(negative)

    def train(self, mode: bool = True) -> ReconstructionLoss:
        super().train(mode)
        self.features.eval()
        return self

    def _maps(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.features.features(x)
        missing = [name for name in self.layers if name not in maps]
        if missing:
            raise ValueError(f"the feature net gives maps {sorted(maps)}, not {missing}")
        return {name: maps[name] for name in self.layers}

    @torch.no_grad()
    def targets(self, x: Tensor) -> dict[str, Tensor]:
        """What :meth:`forward` needs of the shown images ``x (N, 1, S, S)``: ``{"pixels":
        (N, 1, s, s) shrunk images, "conv1": ..., "conv2": ...}`` (no gradient)."""
        x = x.detach()
        return {PIXELS: shrink(x, self.pixel_scale), **self._maps(x)}

    def forward(
        self, x: Tensor | None, y: Tensor, targets: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """The loss of reconstructions ``y`` against shown images ``x``.

        Args:
            x: shown images ``(N, 1, S, S)``; may be ``None`` when ``targets`` is given.
            y: reconstructions ``(N, 1, S, S)`` or ``(E * N, 1, S, S)``.
            targets: :meth:`targets` of ``x`` (computed here when ``None``).

        Returns:
            ``{"loss": weighted sum (with gradient), "pixel", "presence", "magnitude"}``: the
            three unweighted terms, detached, for logging.
        """
        if targets is None:
            if x is None:
                raise ValueError("give the shown images x or their targets(x)")
            targets = self.targets(x)
        fy = self._maps(y)
        kw = {"threshold": self.threshold, "layers": self.layers, "negative": self.negative}
        pixel = _squared_error(targets[PIXELS], shrink(y, self.pixel_scale))
        presence = presence_loss(targets, fy, **kw)
        magnitude = magnitude_loss(targets, fy, **kw)
        loss = self.lambda_px * pixel + self.lambda_fp * presence + self.lambda_fm * magnitude
        return {
            "loss": loss,
            "pixel": pixel.detach(),
            "presence": presence.detach(),
            "magnitude": magnitude.detach(),
        }
