"""Sub-pixel convolution layers for 3D volumes, and the ICNR initialiser.

``PixelShuffle3d`` after a ``Conv3d`` with ``C*r^3`` output channels is a learned
``r``-times upsampling (Shi et al. 2016, in 3D). Initialised with :func:`icnr_`
it starts out as nearest-neighbour upsampling, which removes the checkerboard
artefacts a random start leaves (Aitken et al. 2017, the remedy King et al.
point to for 3D brain-image generators).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from brainkern.ops.pixel_shuffle3d import _check_factor, pixel_shuffle3d, pixel_unshuffle3d

__all__ = ["PixelShuffle3d", "PixelUnshuffle3d", "icnr_"]


class PixelShuffle3d(nn.Module):
    """``(N, C*r^3, D, H, W) -> (N, C, r*D, r*H, r*W)``; see :func:`brainkern.ops.pixel_shuffle3d`.

    Args:
        upscale_factor: ``r``, an int ``>= 1``.

    Raises:
        TypeError, ValueError: for a bad factor (at construction) or input (at call).
    """

    def __init__(self, upscale_factor: int) -> None:
        super().__init__()
        self.upscale_factor = _check_factor(upscale_factor, "upscale_factor", "PixelShuffle3d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle3d(x, self.upscale_factor)

    def extra_repr(self) -> str:
        return f"upscale_factor={self.upscale_factor}"


class PixelUnshuffle3d(nn.Module):
    """``(N, C, r*D, r*H, r*W) -> (N, C*r^3, D, H, W)``; see :func:`brainkern.ops.pixel_unshuffle3d`.

    Args:
        downscale_factor: ``r``, an int ``>= 1``.

    Raises:
        TypeError, ValueError: for a bad factor (at construction) or input (at call).
    """

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.downscale_factor = _check_factor(downscale_factor, "downscale_factor", "PixelUnshuffle3d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_unshuffle3d(x, self.downscale_factor)

    def extra_repr(self) -> str:
        return f"downscale_factor={self.downscale_factor}"


def icnr_(
    weight: torch.Tensor,
    upscale_factor: int,
    initializer: Callable[[torch.Tensor], object] = nn.init.kaiming_normal_,
) -> torch.Tensor:
    """ICNR initialisation (Aitken et al. 2017) of a conv weight that feeds :class:`PixelShuffle3d`.

    Draws a kernel for ``C = C_out / r^3`` output channels with ``initializer`` and
    copies it to the ``r^3`` channels ``c*r^3 + s`` (``s < r^3``) that the shuffle
    scatters into one ``r x r x r`` block. Then ``pixel_shuffle3d(conv3d(x, weight), r)``
    equals nearest-neighbour ``r``-times upsampling of ``conv3d(x, weight_C)``: every
    output block is constant, so the layer starts free of checkerboard artefacts.
    The initializer sees a ``(C, C_in, k, k, k)`` tensor, which has the fan-in of the
    full weight. A bias, if any, must also be equal within each block (zero, or
    ``bias_C.repeat_interleave(r**3)``) for the property to hold.

    Args:
        weight: ``(C*r^3, C_in, kD, kH, kW)`` conv weight, filled in place.
        upscale_factor: ``r``, an int ``>= 1``.
        initializer: fills a ``(C, C_in, kD, kH, kW)`` tensor in place.

    Returns:
        ``weight``.

    Raises:
        TypeError: ``upscale_factor`` is not an int.
        ValueError: ``weight`` is not 5-d, ``upscale_factor < 1``, or ``weight.shape[0]`` is
            not divisible by ``upscale_factor**3``.
    """
    upscale_factor = _check_factor(upscale_factor, "upscale_factor", "icnr_")
    if weight.dim() != 5:
        raise ValueError(
            f"icnr_: expected a Conv3d weight (C_out, C_in, kD, kH, kW), got shape {tuple(weight.shape)}"
        )
    block = upscale_factor**3
    out_channels = weight.shape[0]
    if out_channels % block != 0:
        raise ValueError(
            f"icnr_: the weight's output channels ({out_channels}) must be divisible by "
            f"upscale_factor**3 ({upscale_factor}**3={block}) to feed pixel_shuffle3d"
        )
    sub = torch.empty((out_channels // block, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    initializer(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(block, dim=0))
    return weight
