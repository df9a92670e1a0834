"""Convolution layers whose backward cooperates with the gradient penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainkern.ops.conv3d_gradfix import conv3d_gradfix

__all__ = ["Conv3d"]


class Conv3d(nn.Conv3d):
    """Drop-in :class:`torch.nn.Conv3d` that convolves with :func:`brainkern.ops.conv3d_gradfix`.

    Same constructor, parameters and state dict as ``nn.Conv3d`` (a checkpoint
    loads into either). Inside :func:`brainkern.ops.no_weight_gradients` (which
    :func:`brainkern.ops.gradient_penalty` opens around its first backward) the
    layer's backward computes input gradients only; second-order weight
    gradients stay exact. Works with parametrisations of ``weight`` (spectral
    norm) and every ``padding_mode``.

    Shapes: (N, C_in, D, H, W) -> (N, C_out, D', H', W'), as ``nn.Conv3d``.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv3d_gradfix(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv3d_gradfix(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
