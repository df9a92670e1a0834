"""A 3D convolution whose first backward can skip the weight gradient.

A gradient penalty differentiates the discriminator with respect to its input
(``torch.autograd.grad(D(x).sum(), x, create_graph=True)``) and then
backpropagates through that gradient. The first backward needs only the
gradient of each convolution with respect to its *input*; its weight gradient is
thrown away. :func:`conv3d_gradfix` is ``F.conv3d`` with an explicit backward
that, inside :func:`no_weight_gradients`, computes only the input gradient
(and records it differentiably), so the penalty's graph carries no weight-gradient
convolutions; the second backward still reaches every weight exactly, through the
recorded input-gradient convolution. This is the idea of StyleGAN2/3's
``conv2d_gradfix``, written for 3D volumes.

Native ``F.conv3d`` already prunes the weight gradient when ``autograd.grad`` is
asked for the input only (the autograd engine knows which edges a call needs),
so the context matters for this op, whose backward is a Python function, and for
code that calls ``.backward()`` or asks for several inputs at once.
``brainkern.ops.gradient_penalty`` enters the context around its first backward,
so a discriminator built with :class:`brainkern.nn.Conv3d` gets it for free.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["conv3d_gradfix", "no_weight_gradients", "weight_gradients_disabled"]

# A process-wide count, not a thread-local or context variable: on CUDA the
# autograd engine runs backward functions on its own device threads, which would
# not see a thread-local flag set by the caller.
_disabled_depth = 0


@contextlib.contextmanager
def no_weight_gradients(disable: bool = True) -> Iterator[None]:
    """Inside the block, backward passes of :func:`conv3d_gradfix` skip weight and bias gradients.

    Use it around a ``torch.autograd.grad`` call that asks for input gradients
    only (a gradient penalty); the weight gradients of a later backward through
    that graph (``penalty.backward()``) stay exact. Nests; process-wide (see the
    module docstring), so do not run an ordinary backward concurrently in
    another thread while the block is open.

    Args:
        disable: ``False`` makes the block a no-op (handy for switches).
    """
    global _disabled_depth
    if not disable:
        yield
        return
    _disabled_depth += 1
    try:
        yield
    finally:
        _disabled_depth -= 1


def weight_gradients_disabled() -> bool:
    """Whether a :func:`no_weight_gradients` block is open."""
    return _disabled_depth > 0


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * 3  # type: ignore[return-value]
    if len(value) != 3:
        raise ValueError(f"conv3d_gradfix: {name} must be an int or 3 ints, got {value}")
    return value  # type: ignore[return-value]


class _Conv3dGradfix(torch.autograd.Function):
    """``F.conv3d`` whose backward honours :func:`no_weight_gradients`.

    The backward calls ``aten.convolution_backward`` (cuDNN / oneDNN underneath),
    which autograd knows how to differentiate again, so gradients of gradients
    w.r.t. the input, the weight and the upstream gradient are all exact.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, None if bias is None else bias.shape)
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_shape = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if weight_gradients_disabled():
            need_w = need_b = False
        if not (need_x or need_w or need_b):
            return (None,) * 7
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out,
            x,
            weight,
            None if bias_shape is None else list(bias_shape),
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0, 0],
            groups,
            [need_x, need_w, need_b and bias_shape is not None],
        )
        return (
            grad_x if need_x else None,
            grad_w if need_w else None,
            grad_b if need_b and bias_shape is not None else None,
            None,
            None,
            None,
            None,
        )


def conv3d_gradfix(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | str = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv3d`` with a backward that can skip weight gradients (:func:`no_weight_gradients`).

    Same arguments and result as :func:`torch.nn.functional.conv3d`, including
    ``padding="same"`` / ``"valid"``, unbatched (C, D, H, W) input and bf16/fp16
    autocast (the inputs are cast the way autocast casts ``conv3d``).

    Args:
        input: (N, C_in, D, H, W) or (C_in, D, H, W).
        weight: (C_out, C_in / groups, kD, kH, kW).
        bias: (C_out,) or ``None``.

    Returns:
        (N, C_out, D', H', W') (or unbatched), as ``F.conv3d``.

    Raises:
        ValueError: bad ``stride`` / ``padding`` / ``dilation`` or input rank.
    """
    if input.dim() not in (4, 5):
        raise ValueError(
            f"conv3d_gradfix: input must be (N, C, D, H, W) or (C, D, H, W), got shape {tuple(input.shape)}"
        )
    if weight.dim() != 5:
        raise ValueError(
            f"conv3d_gradfix: weight must be (C_out, C_in/groups, kD, kH, kW), got {tuple(weight.shape)}"
        )
    stride_t = _triple(stride, "stride")
    dilation_t = _triple(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding_t = (0, 0, 0)
        elif padding == "same":
            if any(s != 1 for s in stride_t):
                raise ValueError("conv3d_gradfix: padding='same' needs stride 1, as F.conv3d")
            total = [d * (k - 1) for d, k in zip(dilation_t, weight.shape[2:], strict=True)]
            padding_t = tuple(t // 2 for t in total)
            extra = [t - 2 * (t // 2) for t in total]  # odd totals: one more on the far side, as PyTorch
            if any(extra):
                input = F.pad(input, (0, extra[2], 0, extra[1], 0, extra[0]))
        else:
            raise ValueError(f"conv3d_gradfix: padding must be 'same', 'valid' or ints, got {padding!r}")
    else:
        padding_t = _triple(padding, "padding")
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        input = input.to(dtype)
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    unbatched = input.dim() == 4
    if unbatched:
        input = input.unsqueeze(0)
    with torch.autocast(device_type, enabled=False):
        out = _Conv3dGradfix.apply(input, weight, bias, stride_t, padding_t, dilation_t, groups)
    return out.squeeze(0) if unbatched else out
