"""Triton kernels of :func:`brainkern.ops.resize_conv3d` (nearest x2 upsample + 3x3x3 conv).

Both kernels are implicit GEMMs on the low-resolution grid; the upsampled tensor is
never formed.

- ``_resize_conv3d_fwd_kernel``: one program per (tile of low-resolution voxels, tile
  of output channels, output phase). Rows are voxels ``(n, d, h, w)``, columns output
  channels, the reduction runs over the 8 taps of the phase's 2x2x2 filter times
  ``C_in`` through ``tl.dot``; bias and activation are applied to the accumulator and
  the tile is stored straight into the interleaved output at ``(2d+a, 2h+b, 2w+c)``.
- ``_resize_conv3d_bwd_kernel``: the input gradient, the adjoint of the above: rows are
  low-resolution voxels, columns input channels, the reduction runs over the 64
  (phase, tap) pairs times ``C_out``, reading the output gradient at the high-resolution
  voxel each pair touches.

Folded weights ``w8`` are ``(2, 2, 2, C_out, C_in, 2, 2, 2)`` contiguous, read as
``[phase, o, i, tap]`` (see :func:`brainkern.ops.fold_resize_conv_weight`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _apply_act(v, slope, ACT: tl.constexpr):
    if ACT == 1:
        v = tl.where(v > 0, v, 0.0)
    elif ACT == 2:
        v = tl.where(v > 0, v, v * slope)
    elif ACT == 3:
        # tanh from exp: saturates to +-1 without overflow trouble (exp -> inf gives 1).
        v = 1.0 - 2.0 / (tl.exp(2.0 * v) + 1.0)
    return v


@triton.jit
def _resize_conv3d_fwd_kernel(
    x_ptr,  # (N, C_in, D, H, W) contiguous
    w_ptr,  # (8, C_out, C_in, 8) folded phase filters [phase, o, i, tap], contiguous (float32 for half x)
    b_ptr,  # (C_out,) bias; unused when HAS_BIAS is False
    y_ptr,  # (N, C_out, 2D, 2H, 2W) output, contiguous
    M,  # N * D * H * W low-resolution voxels
    C_IN: tl.constexpr,  # channel counts are compile-time: a model has a handful of layers
    C_OUT: tl.constexpr,
    D,
    H,
    W,
    slope,  # leaky_relu slope
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu, 3 tanh
    ACC_DTYPE: tl.constexpr,  # float32, or float64 for float64 inputs
    PRECISION: tl.constexpr,  # tl.dot input precision: "ieee" or "tf32"
    UPCAST: tl.constexpr,  # half-precision x with float32 weights: multiply in float32
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    pa = phase // 4
    pb = (phase // 2) % 2
    pc = phase % 2
    dhw = D * H * W

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    vw = offs_m % W
    vh = (offs_m // W) % H
    vd = (offs_m // (W * H)) % D
    vn = offs_m // dhw
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_OUT

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for tap in tl.static_range(8):
        it = vd + pa - 1 + tap // 4
        iu = vh + pb - 1 + (tap // 2) % 2
        iv = vw + pc - 1 + tap % 2
        valid = m_mask & (it >= 0) & (it < D) & (iu >= 0) & (iu < H) & (iv >= 0) & (iv < W)
        x_row = vn * C_IN * dhw + (it * H + iu) * W + iv
        for k0 in range(0, C_IN, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < C_IN
            a = tl.load(
                x_ptr + x_row[:, None] + offs_k[None, :] * dhw,
                mask=valid[:, None] & k_mask[None, :],
                other=0.0,
            )
            b = tl.load(
                w_ptr + ((phase * C_OUT + offs_n[None, :]) * C_IN + offs_k[:, None]) * 8 + tap,
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    acc = _apply_act(acc, slope, ACT)

    od = 2 * vd + pa
    oh = 2 * vh + pb
    ow = 2 * vw + pc
    y_row = ((vn * C_OUT * 2 * D + od) * 2 * H + oh) * 2 * W + ow
    y_off = y_row[:, None] + offs_n[None, :] * (8 * dhw)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _resize_conv3d_bwd_kernel(
    g_ptr,  # (N, C_out, 2D, 2H, 2W) gradient before the activation, contiguous
    w_ptr,  # (8, C_out, C_in, 8) folded phase filters [phase, o, i, tap], contiguous
    gx_ptr,  # (N, C_in, D, H, W) input gradient, contiguous
    M,  # N * D * H * W low-resolution voxels
    C_IN: tl.constexpr,  # channel counts are compile-time: a model has a handful of layers
    C_OUT: tl.constexpr,
    D,
    H,
    W,
    ACC_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tile of input channels
    BLOCK_K: tl.constexpr,  # tile of output channels (the reduction)
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    dhw = D * H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    vw = offs_m % W
    vh = (offs_m // W) % H
    vd = (offs_m // (W * H)) % D
    vn = offs_m // dhw
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_IN

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Pair (phase, tap) per axis: input voxel d is read by the output of phase a at
    # low-resolution position d - a + 1 - t, i.e. high-resolution voxel 2(d - a + 1 - t) + a.
    for pt in range(64):
        phase = pt // 8
        tap = pt % 8
        pa = phase // 4
        pb = (phase // 2) % 2
        pc = phase % 2
        sd = vd - pa + 1 - tap // 4
        sh = vh - pb + 1 - (tap // 2) % 2
        sw = vw - pc + 1 - tap % 2
        valid = m_mask & (sd >= 0) & (sd < D) & (sh >= 0) & (sh < H) & (sw >= 0) & (sw < W)
        g_row = ((vn * C_OUT * 2 * D + 2 * sd + pa) * 2 * H + 2 * sh + pb) * 2 * W + 2 * sw + pc
        for k0 in range(0, C_OUT, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < C_OUT
            a = tl.load(
                g_ptr + g_row[:, None] + offs_k[None, :] * (8 * dhw),
                mask=valid[:, None] & k_mask[None, :],
                other=0.0,
            )
            b = tl.load(
                w_ptr + ((phase * C_OUT + offs_k[:, None]) * C_IN + offs_n[None, :]) * 8 + tap,
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    gx_off = (vn * C_IN * dhw + offs_m % dhw)[:, None] + offs_n[None, :] * dhw
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _block(c: int, lo: int = 16, hi: int = 64) -> int:
    return max(lo, min(hi, triton.next_power_of_2(c)))


def _precision(t: torch.Tensor) -> str:
    # Follow PyTorch's own switch for convolutions, so that fp32 matches cuDNN's behaviour.
    if t.dtype == torch.float32 and t.is_cuda and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"  # half inputs too: float32 weights, exact products


def _upcast(t: torch.Tensor) -> bool:
    # Half-precision inputs come with float32 folded weights (sums of up to 8 weights, which
    # rounding to half would spoil), so their tiles are multiplied in float32.
    return t.dtype in (torch.float16, torch.bfloat16)


def _acc_dtype(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def resize_conv3d_fwd(
    x: torch.Tensor, w8: torch.Tensor, bias: torch.Tensor | None, act: int, slope: float
) -> torch.Tensor:
    """``act(phase_conv(x, w8) + bias)``: ``(N, C_in, D, H, W)`` -> ``(N, C_out, 2D, 2H, 2W)``.

    ``x`` and ``w8`` (``(2, 2, 2, C_out, C_in, 2, 2, 2)``) must be contiguous.
    """
    n, c_in, d, h, w = x.shape
    c_out = w8.shape[3]
    y = torch.empty((n, c_out, 2 * d, 2 * h, 2 * w), dtype=x.dtype, device=x.device)
    m = n * d * h * w
    block_m, block_n, block_k = 64, _block(c_out), _block(c_in, hi=32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(c_out, block_n), 8)
    _resize_conv3d_fwd_kernel[grid](
        x,
        w8,
        bias if bias is not None else w8,
        y,
        m,
        c_in,
        c_out,
        d,
        h,
        w,
        float(slope),
        HAS_BIAS=bias is not None,
        ACT=int(act),
        ACC_DTYPE=_acc_dtype(x),
        PRECISION=_precision(x),
        UPCAST=_upcast(x),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return y


def resize_conv3d_bwd_input(g: torch.Tensor, w8: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """Input gradient ``(N, C_in, D, H, W)`` from ``g`` = grad_y * act'(y), ``(N, C_out, 2D, 2H, 2W)``.

    ``g`` and ``w8`` must be contiguous.
    """
    n, c_in, d, h, w = x_shape
    c_out = w8.shape[3]
    gx = torch.empty(tuple(x_shape), dtype=g.dtype, device=g.device)
    m = n * d * h * w
    block_m, block_n, block_k = 64, _block(c_in), _block(c_out, hi=32)
    grid = (triton.cdiv(m, block_m), triton.cdiv(c_in, block_n))
    _resize_conv3d_bwd_kernel[grid](
        g,
        w8,
        gx,
        m,
        c_in,
        c_out,
        d,
        h,
        w,
        ACC_DTYPE=_acc_dtype(g),
        PRECISION=_precision(g),
        UPCAST=_upcast(g),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
    )
    return gx
