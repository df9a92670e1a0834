"""Multi-scale structural similarity (MS-SSIM) for 3D volumes.

Wang, Simoncelli and Bovik's MS-SSIM (2003) carried to three dimensions, as Kwon
et al. (seed 001) and King et al. (seed 003) use it to measure the diversity of
generated volumes (lower mean MS-SSIM between random pairs = more diverse).

At every scale j the contrast-structure term ``cs_j`` is computed; the luminance
term ``l`` only at the coarsest scale M; the index is
``l_M ** w_M * prod_j cs_j ** w_j`` with each scale's exponent applied exactly
once. (Some public 3D ports raise the last scale's term to a further power; this
one does not.) Between scales the volumes are halved by 2x2x2 average pooling.

The default Gaussian window (7 voxels, sigma 1.5) is smaller than the 2D default
(11) so that 64^3 volumes get four scales; the number of scales is the largest
(at most five) for which the coarsest volume still holds one whole window, and
the standard five weights are truncated to that many and renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Wang et al.'s exponents for five scales, finest first.
DEFAULT_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of (N, C, D, H, W), channel by channel."""
    c, k = x.shape[1], g.numel()
    for shape in ((k, 1, 1), (1, k, 1), (1, 1, k)):
        x = F.conv3d(x, g.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def _terms(a: torch.Tensor, b: torch.Tensor, g: torch.Tensor, c1: float, c2: float):
    """Per-sample mean luminance and contrast-structure terms, each (N,)."""
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a**2
    var_b = _blur(b * b, g) - mu_b**2
    cov = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return lum.flatten(1).mean(1), cs.flatten(1).mean(1)


def number_of_scales(shape: Sequence[int], win_size: int = 7, max_scales: int = 5) -> int:
    """How many scales fit a volume of spatial ``shape`` with a ``win_size`` window."""
    scales, sizes = 0, list(shape)
    while scales < max_scales and min(sizes) >= win_size:
        scales += 1
        sizes = [s // 2 for s in sizes]
    return scales


def ms_ssim3d(
    a: torch.Tensor,
    b: torch.Tensor,
    data_range: float,
    *,
    low: float = 0.0,
    win_size: int = 7,
    sigma: float = 1.5,
    weights: Sequence[float] | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """3D MS-SSIM between two batches of volumes.

    Args:
        a, b: (N, C, D, H, W) volumes (C is usually 1); computed in float32, or
            float64 if either input is float64.
        data_range: the intensity range of the data (2 for [-1, 1], 1 for [0, 1]).
        low: the bottom of that range; inputs are shifted by ``-low`` first, because
            SSIM's luminance term ``(2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)`` assumes
            non-negative intensities (for [-1, 1] data it turns negative wherever the
            local means differ in sign, at every tissue boundary). Pass ``low=-1`` for
            volumes scaled to [-1, 1].
        win_size: side of the Gaussian window (odd).
        sigma: its standard deviation in voxels.
        weights: exponents per scale, finest first. ``None``: Wang et al.'s five,
            truncated to the scales that fit and renormalised to sum to one.
        k1, k2: the SSIM stabilisers (``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``).

    Returns:
        (N,) MS-SSIM per pair, 1 for identical volumes. Negative
        contrast-structure means (strongly anti-correlated volumes) are clamped to
        zero before the fractional powers, which are undefined for them.

    Raises:
        ValueError: mismatched or non-5D inputs, an even window, or a volume too
            small for the window (or for the number of ``weights`` given).
    """
    if a.shape != b.shape or a.dim() != 5:
        raise ValueError(
            f"ms_ssim3d expects two (N, C, D, H, W) tensors of one shape, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    if win_size % 2 == 0 or win_size < 1:
        raise ValueError(f"win_size must be a positive odd number, got {win_size}")
    fit = number_of_scales(a.shape[2:], win_size)
    if weights is None:
        if fit == 0:
            raise ValueError(
                f"volumes of spatial size {tuple(a.shape[2:])} are smaller than the {win_size}-voxel window"
            )
        chosen = DEFAULT_WEIGHTS[:fit]
        total = sum(chosen)
        weights = [w / total for w in chosen]
    elif len(weights) > fit:
        raise ValueError(
            f"{len(weights)} scales were asked for, but volumes of spatial size {tuple(a.shape[2:])} "
            f"hold a {win_size}-voxel window at only {fit} scales"
        )
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.to(dtype) - low, b.to(dtype) - low
    g = _gaussian(win_size, sigma, dtype, a.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    result = torch.ones(a.shape[0], dtype=dtype, device=a.device)
    for j, w in enumerate(weights):
        lum, cs = _terms(a, b, g, c1, c2)
        result = result * cs.clamp_min(0) ** w
        if j == len(weights) - 1:
            result = result * lum.clamp_min(0) ** w
        else:
            a, b = F.avg_pool3d(a, 2), F.avg_pool3d(b, 2)
    return result
