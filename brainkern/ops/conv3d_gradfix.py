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
``torch.compile``: the convolution and its backward are ``torch.library`` custom ops
(``brainkern::conv3d_gradfix``, ``brainkern::conv3d_gradfix_backward``), so the
switch is read when the backward runs, never frozen into a traced graph. In eager
mode skipped gradients are ``None`` (a parameter receives nothing); a compiled
backward cannot know in advance, and its skipped gradients are zeros. (A compiled
graph cannot be differentiated twice, so a penalty's first backward, the case the
switch is for, runs eagerly anyway.)
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


def _conv(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


# The op the compiler sees: opaque, so whether weight gradients are skipped is read
# when the backward runs, not when the graph is traced.
@torch.library.custom_op("brainkern::conv3d_gradfix", mutates_args=())
def _conv_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """``F.conv3d`` of (N, C_in, D, H, W) with (C_out, C_in / groups, kD, kH, kW): (N, C_out, D', H', W')."""
    return _conv(x, weight, bias, stride, padding, dilation, groups)


_conv_op.register_fake(_conv)  # ATen's meta kernels give the shapes and strides


def _grads(grad_out, x, weight, stride, padding, dilation, groups, needs) -> tuple:
    """``aten.convolution_backward``: (grad_x, grad_weight, grad_bias), ``None`` where not asked for."""
    return torch.ops.aten.convolution_backward(
        grad_out,
        x,
        weight,
        [weight.shape[0]] if needs[2] else None,
        stride,
        padding,
        dilation,
        False,
        [0, 0, 0],
        groups,
        list(needs),
    )


def _filled(x: torch.Tensor, grads: tuple) -> tuple[torch.Tensor, ...]:
    # A custom op returns tensors: an empty one (each its own: outputs may not alias) for None.
    return tuple(x.new_empty(0) if g is None else g for g in grads)


def _skipped(grad_out, x, weight, stride, padding, dilation, groups, need_weight, need_bias):
    """Zeros for skipped weight and bias gradients, in the strides the fake kernel gives them.

    The strides come from the same ATen call on fake tensors (as in the fake kernel; the
    meta device's kernel can differ), so no convolution runs.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: PLC0415

    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in (grad_out, x, weight)]
        needs = (False, need_weight, need_bias)
        _, gw, gb = _grads(*fakes, stride, padding, dilation, groups, needs)

    def zeros(g):
        return None if g is None else weight.new_empty_strided(g.shape, g.stride(), dtype=g.dtype).zero_()

    return zeros(gw), zeros(gb)


@torch.library.custom_op("brainkern::conv3d_gradfix_backward", mutates_args=())
def _conv_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias) of the convolution; empty (0,) where not asked for.

    Inside :func:`no_weight_gradients` (read now, when the backward runs) the weight
    and bias gradients asked for are zeros, and no convolution computes them.
    """
    if weight_gradients_disabled():
        gx, _, _ = _grads(grad_out, x, weight, stride, padding, dilation, groups, (need_x, False, False))
        gw, gb = _skipped(grad_out, x, weight, stride, padding, dilation, groups, need_weight, need_bias)
    else:
        needs = (need_x, need_weight, need_bias)
        gx, gw, gb = _grads(grad_out, x, weight, stride, padding, dilation, groups, needs)
    return _filled(x, (gx, gw, gb))


@_conv_backward_op.register_fake
def _conv_backward_fake(
    grad_out, x, weight, stride, padding, dilation, groups, need_x, need_weight, need_bias
):
    needs = (need_x, need_weight, need_bias)
    return _filled(x, _grads(grad_out, x, weight, stride, padding, dilation, groups, needs))


def _conv_setup(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (stride, padding, dilation, groups, bias is not None)


def _conv_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    stride, padding, dilation, groups, has_bias = ctx.conf
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and has_bias
    if weight_gradients_disabled() and not torch.compiler.is_compiling():
        # Eager: skipped outright, so the parameters receive no gradient at all. A traced
        # backward cannot know this yet: there the op reads the switch and gives zeros.
        need_w = need_b = False
    if not (need_x or need_w or need_b):
        return (None,) * 7
    gx, gw, gb = _conv_backward_op(
        grad_out, x, weight, stride, padding, dilation, groups, need_x, need_w, need_b
    )
    return (gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None, None, None)


def _conv_backward_setup(ctx, inputs, output) -> None:
    grad_out, x, weight, stride, padding, dilation, groups, need_x, need_w, need_b = inputs
    ctx.save_for_backward(grad_out, x, weight)
    ctx.conf = (stride, padding, dilation, groups, need_x, need_w, need_b)


def _conv_backward_backward(ctx, gg_x, gg_w, gg_b):
    """The backward is bilinear in (grad_out, x) and (grad_out, weight); its own backward, in
    differentiable torch ops, is exact to any order and gives the second backward every
    weight gradient (through grad_x's dependence on the weight)."""
    grad_out, x, weight = ctx.saved_tensors
    stride, padding, dilation, groups, need_x, need_w, need_b = ctx.conf
    d_grad_out = d_x = d_w = None
    if ctx.needs_input_grad[0]:
        d_grad_out = torch.zeros_like(grad_out)
        if need_x:  # grad_x is the transposed convolution of grad_out: its adjoint convolves
            d_grad_out = d_grad_out + _conv(gg_x, weight, None, stride, padding, dilation, groups)
        if need_w:
            d_grad_out = d_grad_out + _conv(x, gg_w, None, stride, padding, dilation, groups)
        if need_b:
            d_grad_out = d_grad_out + gg_b.reshape(1, -1, 1, 1, 1)
    if ctx.needs_input_grad[1] and need_w:
        d_x = _grads(grad_out, x, gg_w, stride, padding, dilation, groups, (True, False, False))[0]
    if ctx.needs_input_grad[2] and need_x:
        d_w = _grads(grad_out, gg_x, weight, stride, padding, dilation, groups, (False, True, False))[1]
    return (d_grad_out, d_x, d_w) + (None,) * 7


_conv_op.register_autograd(_conv_backward, setup_context=_conv_setup)
_conv_backward_op.register_autograd(_conv_backward_backward, setup_context=_conv_backward_setup)


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
        out = _conv_op(input, weight, bias, list(stride_t), list(padding_t), list(dilation_t), groups)
    return out.squeeze(0) if unbatched else out
