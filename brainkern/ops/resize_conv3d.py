"""Nearest x2 upsampling followed by a 3x3x3 convolution, without the upsampled tensor.

Kwon et al. (seed 001, "Generation of 3D brain MRI using auto-encoding generative
adversarial networks") build their 64^3 generator from blocks of nearest-neighbour
x2 upsampling followed by a 3x3x3 convolution (a "resize convolution", which avoids
the checkerboard artefacts of strided transposed convolutions). Done literally, the
upsampled tensor is 8x the input and the convolution runs 27 taps per output voxel.

Along one axis, output ``2d + a`` (phase ``a`` in {0, 1}) of the 3-tap convolution of
the upsampled signal reads only two low-resolution samples:

- phase 0: ``x[d-1] * w0 + x[d] * (w1 + w2)``
- phase 1: ``x[d] * (w0 + w1) + x[d+1] * w2``

so the 27 taps fold into 8 phase filters of 2x2x2 that run on the low-resolution
input (27/8 fewer multiply-adds, and no 8x upsampled activation to store or save for
backward). :func:`fold_resize_conv_weight` computes them. Equivalently the op is
``conv_transpose3d(x, K, stride=2, padding=1)`` with a folded 4x4x4 kernel ``K``
(:func:`fold_resize_conv_weight_transposed`).

Backends (see :mod:`brainkern.ops._backend`):

- ``reference``: ``act(conv3d(interpolate(x, 2, "nearest"), w, b, padding=1))``.
- ``cpu``: the folded convolution through ATen (oneDNN) as the stride-2 transposed
  convolution with the folded 4x4x4 kernel (which writes the interleaved output itself),
  the bias fused by oneDNN, then the activation in place and, for relu / leaky_relu, the
  1-byte mask the backward keeps. Backward: the activation derivative from that mask (or
  from y for tanh) and ATen's transposed-convolution backward. Measured on a 2-core x86
  CPU, the phase form (``conv3d(x, W8, padding=1)`` with ``8 * C_out`` outputs, then our
  own crop + interleave + bias + activation pass in C++) was 1.1-1.6x slower than the
  transposed form at every Kwon et al. shape tried, channels-last activations were no
  faster, and our scalar activation passes lost to ATen's vectorised kernels; so the C++
  side orchestrates oneDNN and ATen instead of running its own loops.
- ``triton``: an implicit-GEMM kernel per (phase, tile of low-resolution voxels, tile
  of output channels) with the reduction over ``8 * C_in`` taps in ``tl.dot`` and the
  bias and activation in the epilogue, writing the interleaved output directly; the
  input gradient is a second implicit GEMM over the 64 taps of the folded 4x4x4
  kernel; the weight gradient uses ATen.
- ``cuda``: a shared-memory tiled direct phase convolution with the fused epilogue, a
  matching input-gradient kernel, the weight gradient through ATen (cuDNN).

``auto`` picks ``cpu`` then ``reference`` on the CPU, for every shape: for a forward and
backward on a 2-core x86 CPU the cpu backend was 3.0x faster than the reference at
N=2, 64 -> 32 channels, 16^3 and at N=4, 256 -> 128, 8^3, and 1.4x at N=4, 512 -> 256,
4^3 (where the weights, not the activations, dominate). On a GPU it picks ``cuda``,
``triton``, ``reference`` in that order: that order is not measured yet (no GPU was at
hand when this was written), and cuDNN's transposed convolution may well beat both
kernels; ``benchmarks/bench_resize_conv3d.py`` is the place to settle it.

Memory: autograd keeps ``x`` and the folded weights, plus, for the activation's
derivative, a 1-byte mask ``y > 0`` (relu, leaky_relu) or the output ``y`` (tanh);
the reference keeps the 8x upsampled input and the pre-activation output.

Half precision (float16, bfloat16): the folded weights stay float32 (each is a sum of
up to 8 weights; rounding them to half would add error eager PyTorch does not make);
products and sums run in float32 and the output is rounded once. The cpu backend
runs the whole op in float32 for half inputs.

Gradients: every backend differentiates with respect to ``x``, ``weight`` and
``bias``. The first-order backward uses the backend's fast path; when the backward is
itself recorded (``create_graph=True``, e.g. under a gradient penalty) it is computed
with differentiable PyTorch ops instead (the activation derivative from the saved
output, and ATen's ``convolution_backward`` on the folded kernel, which has its own
derivative), so double backward is exact on every backend. (``relu`` / ``leaky_relu``
derivatives are piecewise constant, so the saved mask serves the double backward too.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainkern import _ext
from brainkern.ops._backend import OpDispatch

__all__ = [
    "ACTIVATIONS",
    "fold_resize_conv_weight",
    "fold_resize_conv_weight_transposed",
    "resize_conv3d",
    "resize_conv3d_reference",
]

ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "leaky_relu", "tanh")
_ACT_CODE = {None: 0, "relu": 1, "leaky_relu": 2, "tanh": 3}

# Per axis, phase a and tap t read low-res sample d + a - 1 + t with weight sum_k P[a, t, k] w[k].
_PHASE_FOLD = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))
# Per axis, the 4 taps of conv_transpose(k=4, s=2, p=1): K = [w2, w1 + w2, w0 + w1, w0].
_TRANSPOSED_FOLD = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def _apply_activation(y: torch.Tensor, activation: str | None, negative_slope: float) -> torch.Tensor:
    if activation is None:
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, negative_slope)
    return torch.tanh(y)


def resize_conv3d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """``act(conv3d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1))``.

    The plain-PyTorch oracle of :func:`resize_conv3d` (it materialises the
    upsampled tensor). Shapes as in :func:`resize_conv3d`.
    """
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    return _apply_activation(F.conv3d(up, weight, bias, padding=1), activation, negative_slope)


def _check_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(
            f"resize_conv3d: weight must have shape (C_out, C_in, 3, 3, 3), got {tuple(weight.shape)}"
        )


def fold_resize_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Fold a 3x3x3 kernel into the 8 phase filters of 2x2x2 on the low-resolution input.

    Args:
        weight: ``(C_out, C_in, 3, 3, 3)``.

    Returns:
        ``(2, 2, 2, C_out, C_in, 2, 2, 2)``: ``[a, b, c, o, i, t, u, v]`` is the weight
        with which output phase ``(a, b, c)`` (output voxel ``(2d+a, 2h+b, 2w+c)``) reads
        input voxel ``(d+a-1+t, h+b-1+u, w+c-1+v)``. Viewed as
        ``(8 * C_out, C_in, 2, 2, 2)`` it is the weight of ``conv3d(x, ., padding=1)``
        whose output channel ``p * C_out + o`` at ``(d+a, h+b, w+c)`` is phase ``p``'s value.
        Differentiable (a fixed linear map of ``weight``).

    Raises:
        ValueError: ``weight`` is not ``(C_out, C_in, 3, 3, 3)``.
    """
    _check_weight(weight)
    p = torch.tensor(_PHASE_FOLD, dtype=weight.dtype, device=weight.device)
    return torch.einsum("atk,bul,cvm,oiklm->abcoituv", p, p, p, weight)


def fold_resize_conv_weight_transposed(weight: torch.Tensor) -> torch.Tensor:
    """Fold a 3x3x3 kernel into the 4x4x4 kernel of the equivalent transposed convolution.

    ``conv_transpose3d(x, fold_resize_conv_weight_transposed(w), stride=2, padding=1)``
    equals ``conv3d(interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)``.

    Args:
        weight: ``(C_out, C_in, 3, 3, 3)``.

    Returns:
        ``(C_in, C_out, 4, 4, 4)`` (the layout ``conv_transpose3d`` expects).

    Raises:
        ValueError: ``weight`` is not ``(C_out, C_in, 3, 3, 3)``.
    """
    _check_weight(weight)
    g = torch.tensor(_TRANSPOSED_FOLD, dtype=weight.dtype, device=weight.device)
    return torch.einsum("pk,ql,rm,oiklm->iopqr", g, g, g, weight)


def _phase_to_transposed(w8: torch.Tensor) -> torch.Tensor:
    """``(2,2,2, C_out, C_in, 2,2,2)`` phase filters -> ``(C_in, C_out, 4,4,4)`` kernel.

    Per axis the transposed kernel's tap ``k = 3 - (2t + a)`` holds phase ``a``'s tap ``t``.
    """
    c_out, c_in = w8.shape[3], w8.shape[4]
    k = w8.permute(4, 3, 5, 0, 6, 1, 7, 2).reshape(c_in, c_out, 4, 4, 4)
    # Contiguous: ATen picks the convolution's memory format from the weight's strides too.
    return k.flip(2, 3, 4).contiguous()


def _transposed_to_phase(k4: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_phase_to_transposed` (a permutation of the entries)."""
    c_in, c_out = k4.shape[0], k4.shape[1]
    k = k4.flip(2, 3, 4).reshape(c_in, c_out, 2, 2, 2, 2, 2, 2)
    return k.permute(3, 5, 7, 1, 0, 2, 4, 6)


def _validate(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation, negative_slope
) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("resize_conv3d: x and weight must be tensors")
    if x.dim() != 5:
        raise ValueError(f"resize_conv3d: x must have shape (N, C_in, D, H, W), got {tuple(x.shape)}")
    _check_weight(weight)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"resize_conv3d: weight expects C_in={weight.shape[1]} input channels but x has "
            f"{x.shape[1]} (x {tuple(x.shape)}, weight {tuple(weight.shape)})"
        )
    if min(x.shape[1:]) == 0 or weight.shape[0] == 0:
        raise ValueError(f"resize_conv3d: empty channel or spatial size: x {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"resize_conv3d: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if activation not in _ACT_CODE:
        raise ValueError(f"resize_conv3d: unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    if activation == "leaky_relu" and not negative_slope >= 0:
        raise ValueError(f"resize_conv3d: negative_slope must be >= 0, got {negative_slope}")
    tensors = [weight] + ([bias] if bias is not None else [])
    for t in tensors:
        if t.dtype != x.dtype:
            raise TypeError(f"resize_conv3d: x is {x.dtype} but a parameter is {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"resize_conv3d: x is on {x.device} but a parameter is on {t.device}")
    if not x.is_floating_point():
        raise TypeError(f"resize_conv3d: x must be floating point, got {x.dtype}")


_INT32 = 2**31 - 1


def _out_numel(x: torch.Tensor, weight: torch.Tensor) -> int:
    n, _, d, h, w = x.shape
    return n * weight.shape[0] * 8 * d * h * w


def _check_cpu(x, weight, bias, activation, negative_slope):
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return f"dtype {x.dtype} is not supported (float32, float64, bfloat16, float16)"
    if x.shape[0] == 0:
        return "empty batch"
    return None


def _check_triton(x, weight, bias, activation, negative_slope):
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return f"dtype {x.dtype} is not supported (float32, float64, bfloat16, float16)"
    if x.shape[0] == 0:
        return "empty batch"
    if _out_numel(x, weight) > _INT32 or x.numel() > _INT32:
        return "more than 2^31 - 1 elements (32-bit indexing)"
    return None


_check_cuda = _check_triton

_DISPATCH = OpDispatch(
    "resize_conv3d",
    checks={"cpu": _check_cpu, "cuda": _check_cuda, "triton": _check_triton},
)


def _act_grad(grad_y: torch.Tensor, y: torch.Tensor | None, act: int, slope: float) -> torch.Tensor:
    """The gradient before the activation, from its output ``y`` (differentiable).

    For relu and leaky_relu, ``y`` may be the bool mask ``y > 0``: their derivative is
    piecewise constant, so the mask serves double backward as well.
    """
    if act == 0:
        return grad_y
    if act in (1, 2):
        pos = y if y.dtype == torch.bool else y > 0
        return torch.where(pos, grad_y, grad_y * slope if act == 2 else torch.zeros_like(grad_y))
    return grad_y * (1 - y * y)


def _conv_grads(g: torch.Tensor, x: torch.Tensor, wf: torch.Tensor, need_x: bool, need_w: bool):
    """Input and folded-weight gradients of the folded convolution (differentiable ATen ops).

    ``wf``: the phase filters ``(2,2,2, C_out, C_in, 2,2,2)`` or the transposed kernel
    ``(C_in, C_out, 4,4,4)``; the weight gradient comes back in the same layout.
    """
    phase = wf.dim() == 8
    k4 = (_phase_to_transposed(wf) if phase else wf).to(g.dtype)  # float32 weights of half x: cast
    gx, gk, _ = torch.ops.aten.convolution_backward(
        g, x, k4, None, [2, 2, 2], [1, 1, 1], [1, 1, 1], True, [0, 0, 0], 1, [need_x, need_w, False]
    )
    if not need_w:
        return gx, None
    return gx, (_transposed_to_phase(gk) if phase else gk).to(wf.dtype)


def _forward(backend: str, x, w8, bias, act: int, slope: float):
    """``(y, mask)``: mask = ``y > 0`` (bool) for relu / leaky_relu, else unused."""
    if backend == "triton":
        from brainkern.kernels.resize_conv3d import resize_conv3d_fwd  # noqa: PLC0415

        y = resize_conv3d_fwd(x, w8, bias, act, slope)
        return y, (y > 0 if act in (1, 2) else None)
    return _ext.op("resize_conv3d_fwd")(x, w8, bias, act, slope)


def _fast_backward(backend: str, grad_y, y, x, w8, act, slope, need_x, need_w, need_b):
    if backend in ("cpu", "cuda"):
        gx, gw, gb = _ext.op("resize_conv3d_bwd")(grad_y, y, x, w8, act, slope, need_x, need_w, need_b)
        return (gx if need_x else None), (gw if need_w else None), (gb if need_b else None)
    from brainkern.kernels.resize_conv3d import resize_conv3d_bwd_input  # noqa: PLC0415

    g = _act_grad(grad_y, y, act, slope).contiguous()
    gx = resize_conv3d_bwd_input(g, w8, x.shape) if need_x else None
    gw = _conv_grads(g, x, w8, False, True)[1] if need_w else None
    gb = g.sum((0, 2, 3, 4)) if need_b else None
    return gx, gw, gb


class _ResizeConv3dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w8, bias, act: int, slope: float, backend: str):
        # w8: folded weights, phase filters (triton, cuda) or the transposed kernel (cpu).
        y, mask = _forward(backend, x, w8, bias, act, slope)
        # relu / leaky_relu need only the sign of y: keep a 1-byte mask instead of the output
        # (a quarter of float32, an eighth of float64); tanh' = 1 - y^2 needs y itself.
        saved = None if act == 0 else (y if act == 3 else mask)
        ctx.save_for_backward(x, w8, saved)
        ctx.act, ctx.slope, ctx.backend, ctx.has_bias = act, slope, backend, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w8, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        if torch.is_grad_enabled():
            # The backward is being recorded (double backward): differentiable ops only.
            g = _act_grad(grad_y, y, ctx.act, ctx.slope)
            gx, gw = _conv_grads(g, x, w8, need_x, need_w) if (need_x or need_w) else (None, None)
            gb = g.sum((0, 2, 3, 4)) if need_b else None
        else:
            gx, gw, gb = _fast_backward(
                ctx.backend,
                grad_y if ctx.backend == "cpu" else grad_y.contiguous(),
                y,
                x,
                w8,
                ctx.act,
                ctx.slope,
                need_x,
                need_w,
                need_b,
            )
        return gx, gw, gb, None, None, None


def resize_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """Nearest x2 upsampling, 3x3x3 convolution (padding 1), bias and activation, fused.

    Equal to :func:`resize_conv3d_reference` (Kwon et al., seed 001, generator
    blocks) without materialising the upsampled tensor.

    Args:
        x: ``(N, C_in, D, H, W)``.
        weight: ``(C_out, C_in, 3, 3, 3)``.
        bias: ``(C_out,)`` or ``None``.
        activation: ``None``, ``"relu"``, ``"leaky_relu"`` or ``"tanh"``.
        negative_slope: slope of ``"leaky_relu"`` for negative inputs (``>= 0``).

    Returns:
        ``(N, C_out, 2D, 2H, 2W)``, contiguous, in ``x``'s dtype (under autocast: in
        the autocast dtype, inputs and parameters cast to it as for ``conv3d``).

    Raises:
        ValueError: bad shapes (kernel not 3x3x3, channel mismatch, bias size, empty
            sizes), unknown activation, negative slope, devices that differ.
        TypeError: non-floating or mismatched dtypes.
        BackendError: the forced backend cannot run this input.
    """
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    if torch.is_autocast_enabled(device_type):
        # Under autocast, cast the way autocast casts conv3d (a lower-precision op), then
        # run with autocast off so the reference path does not cast a second time.
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return resize_conv3d(x, weight, bias, activation, negative_slope)
    _validate(x, weight, bias, activation, negative_slope)
    backend = _DISPATCH.select(x.device, x, weight, bias, activation, negative_slope)
    if backend == "reference":
        return resize_conv3d_reference(x, weight, bias, activation, negative_slope)
    # Half-precision inputs get float32 folded weights: each is a sum of up to 8 weights,
    # and rounding it to half would add an error eager PyTorch does not make.
    half = x.dtype in (torch.float16, torch.bfloat16)
    weight = weight.float() if half else weight
    if backend == "cpu":
        # The CPU path runs the transposed form: fold straight into its kernel (one small GEMM;
        # an 8-D permutation of the phase filters per call cost as much as the convolution's
        # backward at 256 -> 128 channels).
        wf = fold_resize_conv_weight_transposed(weight).contiguous()
    else:
        wf = fold_resize_conv_weight(weight).contiguous()
    return _ResizeConv3dFn.apply(
        x.contiguous(),
        wf,
        None if bias is None else bias.contiguous(),
        _ACT_CODE[activation],
        float(negative_slope),
        backend,
    )
