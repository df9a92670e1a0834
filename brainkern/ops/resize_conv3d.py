"""Nearest x2 upsampling followed by a 3x3x3 convolution, without the upsampled tensor.

Kwon et al. (seed 001, "Generation of 3D brain MRI using auto-encoding generative
adversarial networks") build their 64^3 generator from blocks of nearest-neighbour
x2 upsampling followed by a 3x3x3 convolution (a "resize convolution", which avoids
the checkerboard artefacts of strided transposed convolutions): 512 -> 256 -> 128 ->
64 -> 1 channels from 4^3 to 64^3, batch 4. Done literally, the upsampled tensor is 8x
the input and the convolution runs 27 taps per output voxel.

Along one axis, output ``2d + a`` (phase ``a`` in {0, 1}) of the 3-tap convolution of
the upsampled signal reads only two low-resolution samples:

- phase 0: ``x[d-1] * w0 + x[d] * (w1 + w2)``
- phase 1: ``x[d] * (w0 + w1) + x[d+1] * w2``

so the 27 taps fold into 8 phase filters of 2x2x2 that run on the low-resolution
input (27/8 fewer multiply-adds, and no 8x upsampled activation to store or save for
backward). :func:`fold_resize_conv_weight` computes them. Equivalently the op is
``conv_transpose3d(x, K, stride=2, padding=1)`` with a folded 4x4x4 kernel ``K``
(:func:`fold_resize_conv_weight_transposed`; per axis ``K = [w2, w1 + w2, w0 + w1, w0]``).

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
  kernel; the weight gradient uses ATen (cuDNN on a GPU). For tensor-core dtypes
  (bfloat16, float16, TF32) x is copied channels-last once (the copy is what autograd
  keeps) and the backward writes the activation's derivative channels-last, so that
  tiles load as 16-byte vectors (:mod:`brainkern.kernels.resize_conv3d`).
- ``cuda``: the extension's kernels (``torch.ops.brainkern.resize_conv3d_fwd/bwd``):
  tensor-core implicit GEMMs (bfloat16 / float16 operands, and TF32 under
  ``cudnn.allow_tf32``, with the folded weights rounded once to the operand type, as
  the other paths do), SIMT float32 / float64 otherwise, a per-voxel kernel for
  ``C_out < 16``; int64 sample offsets, so any size runs; bias and activation in the
  epilogue; the activation's derivative applied while the input-gradient GEMM stages
  ``grad_y``; the weight gradient through ATen (cuDNN). Half types need compute
  capability 8.0 or later (declined below, with the reason).

On a GPU there are three implementations, ``triton``, ``cuda`` (the extension kernel)
and ``cudnn``: ATen's ``conv_transpose3d(x, K, bias, stride=2, padding=1)`` (cuDNN) with
the activation applied in place on its output (and the 1-byte mask for relu /
leaky_relu), backward through ATen's ``convolution_backward`` (cuDNN). ``cudnn`` needs
nothing but a CUDA build of torch, so it also serves when the extension is not built.

Automatic choice. On the CPU: ``cpu`` then ``reference``, for every shape (for a forward
and backward on a 2-core x86 CPU the cpu backend was 3.0x faster than the reference at
N=2, 64 -> 32 channels, 16^3 and at N=4, 256 -> 128, 8^3, and 1.4x at N=4, 512 -> 256,
4^3). On a GPU, :func:`resize_conv3d_impl_order` ranks the three implementations per
shape and dtype and the first that can run the input is used:

===================================  ===================  =======================================
input on CUDA                        order                why
===================================  ===================  =======================================
bfloat16 / float16, C_out >= 16      triton, cudnn, cuda  tensor cores, fused epilogue (1)
float32, TF32 allowed, C_out >= 16   triton, cudnn, cuda  TF32 tensor cores, fused epilogue (1)
float32, TF32 off                    cudnn, triton, cuda  CUDA cores on every path (2)
C_out < 16 (Kwon's last, 64 -> 1)    cuda, cudnn, triton  tl.dot tiles would be padding (3)
float64 (checks, not training)       cuda, triton, cudnn  no tensor cores; fused epilogue kept
one sample > 2^31 - 1 elements       as above, no triton  Triton's 32-bit offsets (4)
===================================  ===================  =======================================

"TF32 allowed" is ``torch.backends.cudnn.allow_tf32`` (torch's default), the switch
``conv3d`` obeys. (1) ``tl.dot`` on bfloat16 / float16 / TF32 operands with float32
accumulation, and bias + activation applied to the accumulator: the output is written
once, where the cudnn path writes it, adds the bias and applies the activation in three
passes over the largest tensor. (2) IEEE float32 products run on CUDA cores everywhere,
and cuDNN chooses among tuned algorithms per shape (searching them under
``cudnn.benchmark``). (3) A ``tl.dot`` tile (and a tensor-core fragment) has at least 16
output columns, so at C_out = 1 fifteen sixteenths of it is padding; the extension has a
direct kernel for such thin outputs (one thread per low-resolution voxel computing every
phase of a few channels, epilogue fused); without it cuDNN, whose extra epilogue passes
cost least where y has one channel. (4) Triton splits
larger batches between samples, so only a single sample past the limit leaves it; the
extension kernel takes any size.

The order is a prior from how the paths work, not a measurement: no GPU was at hand
when it was written. ``benchmarks/bench_resize_conv3d.py`` times the three side by side
(providers ``triton``, ``cuda``, ``cudnn``) at Kwon et al.'s layer shapes in bfloat16 and
float32, forward and forward + backward; change :func:`resize_conv3d_impl_order` to
what it measures. Where the preferred implementation is missing (the extension not
built, Triton not installed) the next one runs; ``cudnn`` runs every non-empty input, so
no size goes to the reference on a GPU.

Overrides. ``use_backend(...)`` / ``BRAINKERN_BACKEND`` force a backend as for every op
(``cuda`` there means the extension kernel). When the backend is chosen automatically,
``with use_resize_conv_impl("cudnn"):`` or ``BRAINKERN_RESIZE_CONV_IMPL=triton|cuda|cudnn``
(the context manager wins) replaces the table above by one implementation, on any
device it can run on (``cudnn`` and ``triton`` also run on the CPU: oneDNN, and
Triton's interpreter under ``TRITON_INTERPRET=1``); if it cannot run the input,
:class:`~brainkern.ops.BackendError` says why.

Memory: autograd keeps ``x`` and the weight (no copy: the caller holds both), plus,
for the activation's derivative, a 1-byte mask ``y > 0`` (relu, leaky_relu) or the
output ``y`` (tanh), on every implementation, the reference included. The backward
folds the weight again (slices and sums of the small weight) and, for Triton's
tensor-core dtypes, lays ``x`` out channels-last again when it is not already.

Half precision (float16, bfloat16): the weights are folded in float32 (each folded
weight is a sum of up to 8 weights). ``triton`` and ``cudnn`` round the folded weights
once to the input's dtype, the operand type of tensor cores, and accumulate in float32;
``cuda`` reads them in float32; the ``cpu`` backend runs the whole op in float32. The
output is rounded once.

No host synchronisation: the folding is slicing and adding on the weights' device (no
tensor is built from host data), and neither direction reads a device value on the host
(no ``.item()``, no data-dependent shapes), so a GPU step only queues work.

Gradients: every backend differentiates with respect to ``x``, ``weight`` and
``bias``. The first-order backward uses the backend's fast path; when the backward is
itself recorded (``create_graph=True``, e.g. under a gradient penalty) it is computed
with differentiable PyTorch ops instead (the activation derivative from the saved
output, and ATen's ``convolution_backward`` on the folded kernel, which has its own
derivative), so double backward is exact on every backend. (``relu`` / ``leaky_relu``
derivatives are piecewise constant, so the saved mask serves the double backward too.)

``torch.compile``: the op is a ``torch.library.custom_op``
(``brainkern::resize_conv3d_dispatch``, its backward
``brainkern::resize_conv3d_dispatch_backward``) that chooses the implementation when
it runs and returns its code for the backward (see :mod:`brainkern.ops._backend`);
the compiler sees fake kernels that give the shapes, so a generator block traces
with ``fullgraph=True`` and no choice is baked into the graph.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from brainkern import _ext
from brainkern.ops._backend import (
    AUTO,
    BackendError,
    OpDispatch,
    extension_fake,
    fake_backend_code,
    forced_backend,
)

__all__ = [
    "ACTIVATIONS",
    "IMPLS",
    "IMPL_ENV_VAR",
    "fold_resize_conv_weight",
    "fold_resize_conv_weight_transposed",
    "resize_conv3d",
    "resize_conv3d_impl_order",
    "resize_conv3d_reference",
    "use_resize_conv_impl",
]

ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "leaky_relu", "tanh")
_ACT_CODE = {None: 0, "relu": 1, "leaky_relu": 2, "tanh": 3}
_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_HALF = (torch.float16, torch.bfloat16)

# The implementations automatic dispatch chooses among on a GPU (see the module docstring).
IMPLS: tuple[str, ...] = ("triton", "cuda", "cudnn")
IMPL_ENV_VAR = "BRAINKERN_RESIZE_CONV_IMPL"
_forced_impl: contextvars.ContextVar[str | None] = contextvars.ContextVar("resize_conv_impl", default=None)

# Fewer output channels than the narrowest tl.dot tile (16 columns).
_THIN_C_OUT = 16
# Triton's offsets within a sample are 32-bit (batches are split between samples).
_INT32 = 2**31 - 1


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


def _fold_taps(w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Per axis in ``dims``, the 3 taps ``[w0, w1, w2]`` -> the 4 taps ``[w2, w1 + w2, w0 + w1, w0]``.

    Slices and sums on ``w``'s device (no tensor from host data, so nothing waits for a
    copy); differentiable. The result is contiguous in ``w``'s logical order.
    """
    for dim in dims:
        w0, w1, w2 = (w.narrow(dim, k, 1) for k in range(3))
        w = torch.cat((w2, w1 + w2, w0 + w1, w0), dim)
    return w


def fold_resize_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """Fold a 3x3x3 kernel into the 8 phase filters of 2x2x2 on the low-resolution input.

    Args:
        weight: ``(C_out, C_in, 3, 3, 3)``.

    Returns:
        ``(2, 2, 2, C_out, C_in, 2, 2, 2)``, contiguous: ``[a, b, c, o, i, t, u, v]`` is
        the weight with which output phase ``(a, b, c)`` (output voxel ``(2d+a, 2h+b,
        2w+c)``) reads input voxel ``(d+a-1+t, h+b-1+u, w+c-1+v)``. Viewed as
        ``(8 * C_out, C_in, 2, 2, 2)`` it is the weight of ``conv3d(x, ., padding=1)``
        whose output channel ``p * C_out + o`` at ``(d+a, h+b, w+c)`` is phase ``p``'s value.
        Differentiable (a fixed linear map of ``weight``).

    Raises:
        ValueError: ``weight`` is not ``(C_out, C_in, 3, 3, 3)``.
    """
    return _transposed_to_phase(fold_resize_conv_weight_transposed(weight)).contiguous()


def fold_resize_conv_weight_transposed(weight: torch.Tensor) -> torch.Tensor:
    """Fold a 3x3x3 kernel into the 4x4x4 kernel of the equivalent transposed convolution.

    ``conv_transpose3d(x, fold_resize_conv_weight_transposed(w), stride=2, padding=1)``
    equals ``conv3d(interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)``.

    Args:
        weight: ``(C_out, C_in, 3, 3, 3)``.

    Returns:
        ``(C_in, C_out, 4, 4, 4)``, contiguous (the layout ``conv_transpose3d`` expects).
        Differentiable.

    Raises:
        ValueError: ``weight`` is not ``(C_out, C_in, 3, 3, 3)``.
    """
    _check_weight(weight)
    return _fold_taps(weight.transpose(0, 1), (2, 3, 4))


def _fold_for_triton(weight: torch.Tensor) -> torch.Tensor:
    """The ``(C_in, C_out, 4, 4, 4)`` kernel stored as contiguous ``(4, 4, 4, C_in, C_out)``.

    One tap is then a row-major ``(C_in, C_out)`` matrix, the GEMM operand the Triton
    kernels load (see :mod:`brainkern.kernels.resize_conv3d`).
    """
    return _fold_taps(weight.permute(2, 3, 4, 1, 0), (0, 1, 2)).permute(3, 4, 0, 1, 2)


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


def _check_common(x: torch.Tensor) -> str | None:
    if x.dtype not in _FLOATS:
        return f"dtype {x.dtype} is not supported (float32, float64, bfloat16, float16)"
    if x.shape[0] == 0:
        return "empty batch"
    return None


def _check_cpu(x, weight, bias, activation, negative_slope):
    return _check_common(x)


def _check_triton(x, weight, bias, activation, negative_slope):
    why = _check_common(x)
    if why is None:
        c_out, c_in = weight.shape[:2]
        voxels = math.prod(x.shape[2:])
        per_sample = max(c_in * voxels, 8 * c_out * voxels, 64 * c_in * c_out)
        if per_sample > _INT32:
            why = (
                f"one sample of x or y, or the folded weight, has {per_sample} elements, past the "
                "kernels' 32-bit offsets (batches are split only between samples)"
            )
    return why


def _check_cuda(x, weight, bias, activation, negative_slope):
    why = _check_common(x)
    if why is None and x.dtype in (torch.float16, torch.bfloat16) and weight.shape[0] >= _THIN_C_OUT:
        major = torch.cuda.get_device_capability(x.device)[0] if x.device.type == "cuda" else 8
        if major < 8:
            why = f"{x.dtype} runs on tensor cores, which need compute capability 8.0; this GPU has {major}.x"
    return why


_DISPATCH = OpDispatch(
    "resize_conv3d",
    checks={"cpu": _check_cpu, "cuda": _check_cuda, "triton": _check_triton},
)


@contextlib.contextmanager
def use_resize_conv_impl(name: str | None) -> Iterator[None]:
    """Run :func:`resize_conv3d` inside the block with one implementation, when dispatch is automatic.

    Args:
        name: ``"triton"``, ``"cuda"`` (the extension kernel) or ``"cudnn"`` (ATen's
            ``conv_transpose3d`` and ``convolution_backward``); ``None`` or ``"auto"``
            restores the per-shape choice (also over ``BRAINKERN_RESIZE_CONV_IMPL``).
            A backend forced with ``use_backend`` / ``BRAINKERN_BACKEND`` takes precedence.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in (None, "auto"):
        _impl_name(name, "use_resize_conv_impl()")
    token = _forced_impl.set("auto" if name is None else name)
    try:
        yield
    finally:
        _forced_impl.reset(token)


def _impl_name(name: str, source: str) -> str:
    if name not in IMPLS:
        raise ValueError(
            f"resize_conv3d: unknown implementation {name!r} from {source}; choose one of {IMPLS}"
        )
    return name


def forced_resize_conv_impl() -> str | None:
    """The implementation set by :func:`use_resize_conv_impl` or ``BRAINKERN_RESIZE_CONV_IMPL``, if any."""
    name = _forced_impl.get()
    if name is None:
        name = os.environ.get(IMPL_ENV_VAR, "").strip().lower() or "auto"
        if name != "auto":
            _impl_name(name, f"${IMPL_ENV_VAR}")
    return None if name == "auto" else name


def resize_conv3d_impl_order(x: torch.Tensor, weight: torch.Tensor) -> tuple[str, ...]:
    """The implementations automatic dispatch tries for a CUDA input, best first.

    The table in the module docstring, as code: a prior, to be replaced by what
    ``benchmarks/bench_resize_conv3d.py`` measures on the GPU.

    Args:
        x: ``(N, C_in, D, H, W)``.
        weight: ``(C_out, C_in, 3, 3, 3)``.
    """
    if x.dtype == torch.float64:
        return ("cuda", "triton", "cudnn")
    if weight.shape[0] < _THIN_C_OUT:
        return ("cuda", "cudnn", "triton")
    if x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return ("cudnn", "triton", "cuda")
    return ("triton", "cudnn", "cuda")


def _impl_reason(impl: str, x, weight, bias, activation, negative_slope) -> str | None:
    """Why ``impl`` cannot run this call, or ``None``."""
    if impl == "cudnn":
        if x.device.type not in ("cuda", "cpu"):
            return f"declined: the input is on {x.device}; ATen's convolutions run it on CUDA (or the CPU)"
        why = _check_common(x)
        return None if why is None else f"declined: {why}"
    return _DISPATCH.reason(impl, x.device, x, weight, bias, activation, negative_slope)


def _impl_report(forced: str, args: tuple) -> str:
    lines = [f"brainkern.ops.resize_conv3d: implementation {forced!r} was forced, but on {args[0].device}:"]
    lines += [f"  {impl}: {_impl_reason(impl, *args) or 'can run it'}" for impl in IMPLS]
    lines.append(f"Choose another with use_resize_conv_impl(name) or {IMPL_ENV_VAR}.")
    return "\n".join(lines)


def _select(x, weight, bias, activation, negative_slope) -> str:
    """``"reference"``, ``"cpu"``, ``"triton"``, ``"cuda"`` or ``"cudnn"`` for this call.

    Raises:
        BackendError: a forced backend or implementation cannot run the input.
    """
    args = (x, weight, bias, activation, negative_slope)
    if forced_backend() is None:
        forced = forced_resize_conv_impl()
        if forced is not None or x.device.type == "cuda":
            order = (forced,) if forced is not None else resize_conv3d_impl_order(x, weight)
            for impl in order:
                if _impl_reason(impl, *args) is None:
                    return impl
            if forced is not None:
                raise BackendError(_impl_report(forced, args))
            # Only an empty batch gets here (cudnn runs every other CUDA input): the backends decide.
    return _DISPATCH.select(x.device, *args)


def _act_grad(grad_y: torch.Tensor, y: torch.Tensor | None, act: int, slope: float) -> torch.Tensor:
    """The gradient before the activation, from its output ``y`` (differentiable).

    For relu and leaky_relu, ``y`` may be the bool mask ``y > 0``: their derivative is
    piecewise constant, so the mask serves double backward as well.
    """
    if act == 0:
        return grad_y
    if act in (1, 2):
        pos = y if y.dtype == torch.bool else y > 0
        return torch.where(pos, grad_y, grad_y * slope if act == 2 else 0.0)
    return grad_y * (1 - y * y)


def _act_grad_into(
    grad_y: torch.Tensor, y: torch.Tensor | None, act: int, slope: float, memory_format: torch.memory_format
) -> torch.Tensor:
    """:func:`_act_grad` for the fast backward, written into a fresh tensor in ``memory_format``.

    The layout change rides on the pass that applies the derivative (no copy after it);
    ``y`` is the bool mask for relu / leaky_relu, the output for tanh.
    """
    if act == 0:
        return grad_y.contiguous(memory_format=memory_format)
    g = torch.empty_like(grad_y, memory_format=memory_format)
    if act == 3:
        return torch.ops.aten.tanh_backward.grad_input(grad_y, y, grad_input=g)
    if act == 1:
        g.zero_()
    else:
        torch.mul(grad_y, slope, out=g)
    return torch.where(y, grad_y, g, out=g)


def _cpu_half(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in _HALF


def _activate_(y: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    """The activation in place on a fresh output (no second output tensor)."""
    if act == 1:
        y.relu_()
    elif act == 2:
        F.leaky_relu_(y, slope)
    elif act == 3:
        y.tanh_()
    return y


def _conv_grads(g: torch.Tensor, x: torch.Tensor, wf: torch.Tensor, need_x: bool, need_w: bool):
    """Input and folded-weight gradients of the folded convolution (differentiable ATen ops).

    ``wf``: the phase filters ``(2,2,2, C_out, C_in, 2,2,2)`` or the transposed kernel
    ``(C_in, C_out, 4,4,4)`` (any strides); the weight gradient comes back in the same
    shape and dtype.
    """
    phase = wf.dim() == 8
    out_dtype = x.dtype
    if _cpu_half(x):  # see _forward: the CPU computes half in float32, rounding the results once
        g, x = g.float(), x.float()
    k4 = (_phase_to_transposed(wf) if phase else wf).to(g.dtype)  # float32 weights of half x: cast
    gx, gk, _ = torch.ops.aten.convolution_backward(
        g, x, k4, None, [2, 2, 2], [1, 1, 1], [1, 1, 1], True, [0, 0, 0], 1, [need_x, need_w, False]
    )
    gx = gx.to(out_dtype) if gx is not None else None
    if not need_w:
        return gx, None
    return gx, (_transposed_to_phase(gk) if phase else gk).to(wf.dtype)


def _forward(impl: str, x, wf, bias, act: int, slope: float):
    """``(y, mask)``: mask = ``y > 0`` (bool) for relu / leaky_relu, else unused."""
    if impl in ("cpu", "cuda"):
        return _ext.op("resize_conv3d_fwd")(x, wf, bias, act, slope)
    if impl == "triton":
        from brainkern.kernels.resize_conv3d import resize_conv3d_fwd  # noqa: PLC0415

        y = resize_conv3d_fwd(x, wf, bias, act, slope)
    elif _cpu_half(x):
        # ATen's CPU half convolutions round partial sums to half on CPUs without native
        # half arithmetic (2.1e-3 against eager's 4.2e-4 on an AVX2 EPYC, over the 2x
        # bound): compute in float32 with float32 folded weights, as a GPU's tensor cores
        # accumulate, and round the output once.
        b32 = None if bias is None else bias.float()
        y = F.conv_transpose3d(x.float(), wf.float(), b32, stride=2, padding=1).contiguous()
        y = _activate_(y, act, slope).to(x.dtype)
    else:  # cudnn: oneDNN on the CPU may hand back another memory format
        y = _activate_(F.conv_transpose3d(x, wf, bias, stride=2, padding=1).contiguous(), act, slope)
    return y, (y > 0 if act in (1, 2) else None)


def _fast_backward(impl: str, grad_y, y, x, wf, act, slope, need_x, need_w, need_b):
    if impl in ("cpu", "cuda"):
        gx, gw, gb = _ext.op("resize_conv3d_bwd")(grad_y, y, x, wf, act, slope, need_x, need_w, need_b)
        return (gx if need_x else None), (gw if need_w else None), (gb if need_b else None)
    gx = gw = None
    if impl == "triton":
        from brainkern.kernels.resize_conv3d import operand_memory_format, resize_conv3d_bwd_input  # noqa: PLC0415

        # The layout the kernel loads fastest, which is x's too (cuDNN's weight gradient then
        # converts neither).
        g = _act_grad_into(grad_y, y, act, slope, operand_memory_format(grad_y))
        gx = resize_conv3d_bwd_input(g, wf, x.shape) if need_x else None
        if need_w:
            gw = _conv_grads(g, x, wf, False, True)[1]
    else:  # cudnn
        g = _act_grad_into(grad_y, y, act, slope, torch.contiguous_format)
        if need_x or need_w:
            gx, gw = _conv_grads(g, x, wf, need_x, need_w)
    gb = g.sum((0, 2, 3, 4)) if need_b else None
    return gx, gw, gb


def _fold_for(impl: str, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The folded weights in the layout and dtype ``impl`` reads (differentiable in ``weight``).

    Half-precision weights are folded in float32 (sums of up to 8 weights). The cpu
    backend and the extension take them so; triton and cudnn feed tensor cores, which
    multiply in the input's dtype, so the sums are rounded once to it.
    """
    w = weight.float() if dtype in _HALF else weight
    if impl == "cpu":
        # The transposed form, folded straight into its kernel (an 8-D permutation of phase
        # filters per call cost as much as the convolution's backward at 256 -> 128 channels).
        return fold_resize_conv_weight_transposed(w)
    if impl == "cuda":
        return fold_resize_conv_weight(w)
    k4 = _fold_for_triton(w) if impl == "triton" else fold_resize_conv_weight_transposed(w)
    if impl == "cudnn" and weight.device.type == "cpu":
        return k4  # the CPU computes half inputs in float32 (see _forward)
    return k4.to(dtype)  # keeps the strides: the Triton layout survives the cast


def _unfold_grad(gk: torch.Tensor) -> torch.Tensor:
    """The adjoint of the fold: ``(C_in, C_out, 4,4,4)`` folded-kernel gradient -> ``(C_out, C_in, 3,3,3)``.

    Per axis the fold maps ``[w0, w1, w2]`` to ``[w2, w1 + w2, w0 + w1, w0]``, so tap
    gradients ``[g0, g1, g2, g3]`` give ``[g2 + g3, g1 + g2, g0 + g1]``. Slices and sums
    (differentiable).
    """
    for dim in (2, 3, 4):
        g0, g1, g2, g3 = (gk.narrow(dim, k, 1) for k in range(4))
        gk = torch.cat((g2 + g3, g1 + g2, g0 + g1), dim)
    return gk.transpose(0, 1)


def _impl_layout(impl: str, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout ``impl`` reads: channels-last for Triton's tensor-core dtypes, else NCDHW."""
    if impl == "triton":
        from brainkern.kernels.resize_conv3d import operand_memory_format  # noqa: PLC0415

        return x.contiguous(memory_format=operand_memory_format(x))
    return x.contiguous()


# The implementations a backend code names: BACKENDS' order, then cudnn.
_IMPL_CODES: tuple[str, ...] = ("reference", "cpu", "cuda", "triton", "cudnn")


def _reference_backward(g, x, weight, need_x, need_w, need_b):
    """Gradients of the reference (the upsampled convolution) from ``g`` = dL/d(pre-activation)."""
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    gup, gw, _ = torch.ops.aten.convolution_backward(
        g, up, weight, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1, [need_x, need_w, False]
    )
    gx = None
    if need_x:  # the adjoint of nearest x2 upsampling sums each 2x2x2 block
        n, c, d, h, w = x.shape
        gx = gup.reshape(n, c, d, 2, h, 2, w, 2).sum((3, 5, 7))
    return gx, gw, (g.sum((0, 2, 3, 4)) if need_b else None)


# The ops the compiler sees: opaque, so the implementation is chosen when the graph runs.
@torch.library.custom_op("brainkern::resize_conv3d_dispatch", mutates_args=())
def _resize_conv_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: int, slope: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(y (N, C_out, 2D, 2H, 2W) contiguous, the bool mask y > 0 (relu / leaky_relu; else (0,)), the code).

    The code indexes ``_IMPL_CODES``: which implementation ran, for the backward.
    """
    impl = _select(x, weight, bias, ACTIVATIONS[act], slope)
    if impl == "reference":
        y = resize_conv3d_reference(x, weight, bias, ACTIVATIONS[act], slope).contiguous()
        mask = y > 0 if act in (1, 2) else None
    else:
        x = _impl_layout(impl, x)
        b = None if bias is None else bias.contiguous()
        y, mask = _forward(impl, x, _fold_for(impl, weight, x.dtype), b, act, slope)
    if act not in (1, 2):
        mask = y.new_empty(0, dtype=torch.bool)
    return y, mask, _IMPL_CODES.index(impl)


@_resize_conv_op.register_fake
def _resize_conv_fake(x, weight, bias, act, slope):
    n, _, d, h, w = x.shape
    y = x.new_empty((n, weight.shape[0], 2 * d, 2 * h, 2 * w))
    mask = y.new_empty(y.shape if act in (1, 2) else (0,), dtype=torch.bool)
    return y, mask, fake_backend_code(len(_IMPL_CODES))


@torch.library.custom_op("brainkern::resize_conv3d_dispatch_backward", mutates_args=())
def _resize_conv_backward_op(
    grad_y: torch.Tensor,
    saved: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    act: int,
    slope: float,
    impl: int,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight (C_out, C_in, 3,3,3), grad_bias), contiguous; empty (0,) where not asked for.

    On the forward's implementation (code ``impl``); ``saved`` is the bool mask for relu /
    leaky_relu, the output for tanh.
    """
    name = _select(x, weight, None, ACTIVATIONS[act], slope) if impl == AUTO else _IMPL_CODES[impl]
    if name == "reference":
        g = _act_grad(grad_y, saved, act, slope)
        gx, gw, gb = _reference_backward(g, x, weight, need_x, need_weight, need_bias)
    else:
        x = _impl_layout(name, x)
        gx, gk, gb = _fast_backward(
            name,
            grad_y.contiguous() if name == "cuda" else grad_y,
            saved,
            x,
            _fold_for(name, weight, x.dtype),
            act,
            slope,
            need_x,
            need_weight,
            need_bias,
        )
        gw = None if gk is None else _unfold_grad(_phase_to_transposed(gk) if gk.dim() == 8 else gk)
    gw = None if gw is None else gw.to(weight.dtype)
    # A custom op returns tensors: an empty one (each its own: outputs may not alias) for None.
    return tuple(x.new_empty(0) if t is None else t.contiguous() for t in (gx, gw, gb))


@_resize_conv_backward_op.register_fake
def _resize_conv_backward_fake(grad_y, saved, x, weight, act, slope, impl, need_x, need_weight, need_bias):
    return (
        x.new_empty(x.shape if need_x else (0,)),
        weight.new_empty(weight.shape) if need_weight else x.new_empty(0),
        x.new_empty((weight.shape[0],) if need_bias else (0,)),
    )


def _resize_conv_setup(ctx, inputs, output) -> None:
    x, weight, bias, act, slope = inputs
    y, mask, impl = output
    # relu / leaky_relu need only the sign of y: keep the 1-byte mask instead of the output
    # (a quarter of float32, an eighth of float64); tanh' = 1 - y^2 needs y itself.
    ctx.save_for_backward(x, weight, None if act == 0 else (y if act == 3 else mask))
    ctx.conf = (act, slope, impl, bias is not None)
    ctx.mark_non_differentiable(mask)


def _resize_conv_backward(ctx, grad_y, _grad_mask, _code):
    x, weight, saved = ctx.saved_tensors
    act, slope, impl, has_bias = ctx.conf
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and has_bias
    if not (need_x or need_w or need_b):
        return None, None, None, None, None
    if torch.is_grad_enabled():
        # The backward is being recorded (double backward): differentiable ops only, on the
        # folded kernel as a differentiable function of the weight.
        g = _act_grad(grad_y, saved, act, slope)
        k4 = fold_resize_conv_weight_transposed(weight.float() if weight.dtype in _HALF else weight)
        gx, gk = _conv_grads(g, x, k4, need_x, need_w) if (need_x or need_w) else (None, None)
        gw = None if gk is None else _unfold_grad(gk).to(weight.dtype)
        gb = g.sum((0, 2, 3, 4)) if need_b else None
    else:
        gx, gw, gb = _resize_conv_backward_op(
            grad_y, saved, x, weight, act, slope, impl, need_x, need_w, need_b
        )
    return (gx if need_x else None), (gw if need_w else None), (gb if need_b else None), None, None


_resize_conv_op.register_autograd(_resize_conv_backward, setup_context=_resize_conv_setup)


# Fake kernels of the extension's ops: shapes, dtypes and strides as the C++ returns them.
@extension_fake("resize_conv3d_fwd")
def _extension_fwd_fake(x, w8, bias, act, slope):
    n, _, d, h, w = x.shape
    c_out = w8.shape[3] if w8.dim() == 8 else w8.shape[1]
    y = x.new_empty((n, c_out, 2 * d, 2 * h, 2 * w))
    return y, y.new_empty(y.shape if act in (1, 2) else (0,), dtype=torch.bool)


@extension_fake("resize_conv3d_bwd")
def _extension_bwd_fake(grad_y, y, x, w8, act, slope, need_x, need_w, need_b):
    c_out = w8.shape[3] if w8.dim() == 8 else w8.shape[1]
    # Outputs not asked for are empty. The CPU computes half types in float32 and casts the
    # weight gradient to the folded weights' dtype, asked for or not; CUDA leaves an unasked
    # one in x's dtype.
    unasked_w = w8.dtype if x.device.type == "cpu" else x.dtype
    return (
        x.new_empty(x.shape if need_x else (0,)),
        w8.new_empty(w8.shape) if need_w else x.new_empty(0, dtype=unasked_w),
        x.new_empty((c_out,) if need_b else (0,)),
    )


def resize_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """Nearest x2 upsampling, 3x3x3 convolution (padding 1), bias and activation, fused.

    Equal to :func:`resize_conv3d_reference` (Kwon et al., seed 001, generator
    blocks) without materialising the upsampled tensor. The implementation is chosen
    per call (module docstring: backends, the GPU table, overrides).

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
            sizes), unknown activation, negative slope, devices that differ, an
            unknown ``BRAINKERN_RESIZE_CONV_IMPL``.
        TypeError: non-floating or mismatched dtypes.
        BackendError: the forced backend or implementation cannot run this input.
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
    return _resize_conv_op(x, weight, bias, _ACT_CODE[activation], float(negative_slope))[0]
