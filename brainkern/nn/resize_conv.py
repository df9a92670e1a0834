"""Resize-convolution upsampling layer (nearest x2 upsample + 3x3x3 conv), fused.

Kwon et al. (seed 001) build their 64^3 generator from such blocks; the layer runs
:func:`brainkern.ops.resize_conv3d`, which never forms the upsampled tensor and chooses
its implementation per call (on a GPU per shape and dtype among Triton, the extension's
CUDA kernel and cuDNN; see :mod:`brainkern.ops.resize_conv3d` for the table and the
``use_resize_conv_impl`` / ``BRAINKERN_RESIZE_CONV_IMPL`` override).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from brainkern.ops.resize_conv3d import ACTIVATIONS, resize_conv3d


class ResizeConv3d(nn.Module):
    """``act(conv3d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1))``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        bias: learn a bias of ``(C_out,)``.
        activation: ``None``, ``"relu"``, ``"leaky_relu"`` or ``"tanh"``, fused into the op.
        negative_slope: slope of ``"leaky_relu"`` for negative inputs.

    Shape:
        input ``(N, C_in, D, H, W)``, output ``(N, C_out, 2D, 2H, 2W)``.

    The weight ``(C_out, C_in, 3, 3, 3)`` and bias are initialised as in
    :class:`torch.nn.Conv3d`.

    Raises:
        ValueError: non-positive channel counts or an unknown activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str | None = None,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(
                f"ResizeConv3d: channel counts must be positive, got {in_channels} -> {out_channels}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"ResizeConv3d: unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.negative_slope = negative_slope
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform weight and uniform bias, exactly like ``nn.Conv3d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_channels * 27)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, activation: str | None = None, negative_slope: float = 0.2):
        """A layer that shares nothing with ``conv`` but starts from copies of its parameters.

        Args:
            conv: an ``nn.Conv3d`` with kernel 3, stride 1, padding 1, dilation 1,
                groups 1 and zero padding (the conv that followed a nearest x2 upsample).

        Raises:
            ValueError: ``conv`` is not such a convolution.
        """
        if not isinstance(conv, nn.Conv3d):
            raise ValueError(f"ResizeConv3d.from_conv needs an nn.Conv3d, got {type(conv).__name__}")
        spec = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
        if spec != ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, "zeros"):
            raise ValueError(
                "ResizeConv3d.from_conv needs kernel_size=3, stride=1, padding=1, dilation=1, groups=1, "
                f"padding_mode='zeros'; got kernel_size={conv.kernel_size}, stride={conv.stride}, "
                f"padding={conv.padding}, dilation={conv.dilation}, groups={conv.groups}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        layer = cls(conv.in_channels, conv.out_channels, conv.bias is not None, activation, negative_slope)
        layer = layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_conv3d(x, self.weight, self.bias, self.activation, self.negative_slope)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, bias={self.bias is not None}"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                s += f", negative_slope={self.negative_slope}"
        return s
