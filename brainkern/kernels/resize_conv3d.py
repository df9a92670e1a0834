"""Triton kernels of :func:`brainkern.ops.resize_conv3d` (nearest x2 upsample + 3x3x3 conv).

Both kernels are implicit GEMMs on the low-resolution grid over the folded 4x4x4 kernel
``K`` of the equivalent ``conv_transpose3d(x, K, stride=2, padding=1)``; the upsampled
tensor is never formed.

- ``_resize_conv3d_fwd_kernel``: one program per (tile of low-resolution voxels, tile of
  output channels, output phase). Rows are voxels ``(n, d, h, w)``, columns output
  channels; the reduction runs over the phase's 8 taps times ``C_in`` in one flat loop
  (so Triton's software pipelining spans taps as well as channel tiles), each step a
  ``tl.dot``; bias and activation are applied to the accumulator and the tile is stored
  straight into the interleaved output at ``(2d+a, 2h+b, 2w+c)``.
- ``_resize_conv3d_bwd_kernel``: the input gradient, the stride-2 convolution of the
  output gradient with ``K``: rows are low-resolution voxels, columns input channels,
  the reduction runs over the 64 taps of ``K`` times ``C_out``.

Precision. The operands reach ``tl.dot`` in the input's own dtype with the accumulator in
float32 (float64 for float64): bfloat16 and float16 run on tensor cores, the folded
weights having been rounded once to that dtype by the caller; float32 uses TF32 tensor
cores when ``torch.backends.cudnn.allow_tf32`` is set on a GPU (the switch torch's own
``conv3d`` obeys) and exact IEEE products otherwise; float64 is IEEE.

Weights. ``k4`` is the ``(C_in, C_out, 4, 4, 4)`` kernel stored as a contiguous
``(4, 4, 4, C_in, C_out)`` array (``k4.permute(2, 3, 4, 0, 1)`` is contiguous): for one
tap, a ``(C_in, C_out)`` row-major matrix, which is the GEMM's B operand in the forward
(rows ``C_in``, contiguous ``C_out``) and its transpose in the backward.

Layout. ``x`` and the output gradient are read through their strides. For tensor-core
dtypes the op hands them over channels-last (:func:`operand_memory_format`): a tile row is
then ``BLOCK_K`` consecutive channels, which Triton copies asynchronously as 16-byte
vectors (``cp.async``) into a 3-stage shared-memory pipeline; from NCDHW the same loads
are 2-byte gathers that cannot be copied asynchronously. Outputs are NCDHW-contiguous.

Indexing. Offsets are 32-bit: the launchers split the batch so that each launch's
tensors stay below 2^31 elements (one sample must fit; the op's dispatch sends larger
samples elsewhere).

Tiles per operand kind (``_TILES``: block_m, block_n cap, block_k cap, warps, stages) keep
every ``tl.dot`` dimension at 16 or more. Compiled ahead of time for sm_90 (Triton 3.6, no
GPU needed) as the launchers call them at Kwon et al.'s four layers (512->256 at 4^3,
256->128, 128->64, 64->1), registers per thread and the MMA instruction in the PTX:

====  =============================  =============================  ======
kind  forward: registers, MMA        backward: registers, MMA       spills
====  =============================  =============================  ======
bf16  114/114/98/47, wgmma k16 bf16  89/89/68/58, wgmma k16 bf16    none
fp16  114/114/98/47, wgmma k16 f16   89/89/68/58, wgmma k16 f16     none
tf32  115/115/112/48, wgmma k8 tf32  89/89/74/100, wgmma k8 tf32    none
fp32  79/79/78/48, FMA (IEEE)        96/96/96/125, FMA (IEEE)       none
fp64  116/116/116/70, mma.sync f64   110/110/112/115, mma.sync f64  none
====  =============================  =============================  ======

(Spills: none, forward and backward, at every layer. wgmma shapes m64n64, m64n16 at
C_out = 1. Odd channel counts, 37 -> 20, cost more registers, 232 at most, still without
spills.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

# Offsets inside the kernels are 32-bit; a launch covers at most this many elements per tensor.
_INDEX_LIMIT = 2**31 - 1


class _Tiles(NamedTuple):
    block_m: int  # low-resolution voxels per program (rows of the GEMM)
    block_n: int  # most channels per program (columns): C_out forward, C_in backward
    block_k: int  # most channels per reduction step: C_in forward, C_out backward
    num_warps: int
    num_stages: int


# Per operand kind (see _kind). Tensor cores: 128 x 64 tiles in two warp groups (wgmma works
# on 64-row slices; 4 warps for 128 rows needed ~165-255 registers a thread, 8 need about 120)
# with 64-deep steps for 16-bit operands (a 128-byte row per channel-last voxel) and 32-deep
# for TF32 (the same bytes). IEEE float32 and float64 run as FMA loops on CUDA cores, where
# the accumulator and both operands sit in registers, so their tiles are smaller.
_TILES: dict[str, _Tiles] = {
    "bf16": _Tiles(128, 64, 64, 8, 3),
    "fp16": _Tiles(128, 64, 64, 8, 3),
    "tf32": _Tiles(128, 64, 32, 8, 3),
    "fp32": _Tiles(64, 64, 16, 4, 3),
    "fp64": _Tiles(64, 32, 16, 4, 2),
}
_MIN_DOT = 16  # tl.dot needs at least 16 in every dimension


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
def _voxel_rows(pid_m, M, D, H, W, BLOCK_M: tl.constexpr):
    """Program ``pid_m``'s rows: low-resolution voxel indices, their mask and ``(n, d, h, w)``."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    vw = offs_m % W
    vh = (offs_m // W) % H
    vd = (offs_m // (W * H)) % D
    return offs_m, offs_m < M, offs_m // (D * H * W), vd, vh, vw


@triton.jit
def _resize_conv3d_fwd_kernel(
    x_ptr,  # (N, C_in, D, H, W), any strides (channels-last gives 16-byte channel vectors)
    w_ptr,  # (4, 4, 4, C_in, C_out) folded kernel K[i, o, p, q, r] at [p, q, r, i, o], contiguous, x's dtype
    b_ptr,  # (C_out,) bias; unused when HAS_BIAS is False
    y_ptr,  # (N, C_out, 2D, 2H, 2W) output, contiguous
    M,  # N * D * H * W low-resolution voxels
    D,
    H,
    W,
    sxn,  # x's strides, in elements (Triton specialises a stride of 1, so the unit-stride axis
    sxc,  # of either layout vectorises)
    sxd,
    sxh,
    sxw,
    slope,  # leaky_relu slope
    C_IN: tl.constexpr,  # channel counts are compile-time: a model has a handful of layers
    C_OUT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky_relu, 3 tanh
    ACC_DTYPE: tl.constexpr,  # float32, or float64 for float64 inputs
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee" or "tf32"
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

    offs_m, m_mask, vn, vd, vh, vw = _voxel_rows(pid_m, M, D, H, W, BLOCK_M)
    x_base = vn * sxn + vd * sxd + vh * sxh + vw * sxw
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_OUT
    arange_k = tl.arange(0, BLOCK_K)

    K_TILES: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    # Step kk: tap (t, u, v) of the phase's 2x2x2 filter, channels [k0, k0 + BLOCK_K).
    # Per axis, phase a's tap t reads low-resolution sample d + a - 1 + t with K's tap 3 - 2t - a.
    for kk in range(0, 8 * K_TILES):
        tap = kk // K_TILES
        k0 = (kk % K_TILES) * BLOCK_K
        td = tap // 4
        th = (tap // 2) % 2
        tw = tap % 2
        sd = pa - 1 + td
        sh = pb - 1 + th
        sw = pc - 1 + tw
        valid = (
            m_mask
            & (vd + sd >= 0)
            & (vd + sd < D)
            & (vh + sh >= 0)
            & (vh + sh < H)
            & (vw + sw >= 0)
            & (vw + sw < W)
        )
        offs_k = k0 + arange_k
        k_mask = offs_k < C_IN
        a = tl.load(
            x_ptr + (x_base + sd * sxd + sh * sxh + sw * sxw)[:, None] + offs_k[None, :] * sxc,
            mask=valid[:, None] & k_mask[None, :],
            other=0.0,
        )
        tap4 = ((3 - 2 * td - pa) * 4 + 3 - 2 * th - pb) * 4 + 3 - 2 * tw - pc
        b = tl.load(
            w_ptr + (tap4 * C_IN + offs_k[:, None]) * C_OUT + offs_n[None, :],
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(ACC_DTYPE)[None, :]
    acc = _apply_act(acc, slope, ACT)

    y_row = ((vn * (2 * C_OUT) * D + 2 * vd + pa) * 2 * H + 2 * vh + pb) * 2 * W + 2 * vw + pc
    y_off = y_row[:, None] + offs_n[None, :] * (8 * dhw)
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _resize_conv3d_bwd_kernel(
    g_ptr,  # (N, C_out, 2D, 2H, 2W) gradient before the activation, any strides
    w_ptr,  # (4, 4, 4, C_in, C_out) folded kernel K[i, o, p, q, r] at [p, q, r, i, o], contiguous, g's dtype
    gx_ptr,  # (N, C_in, D, H, W) input gradient, contiguous
    M,  # N * D * H * W low-resolution voxels
    D,
    H,
    W,
    sgn,  # g's strides, in elements
    sgc,
    sgd,
    sgh,
    sgw,
    C_IN: tl.constexpr,  # channel counts are compile-time: a model has a handful of layers
    C_OUT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # tile of input channels
    BLOCK_K: tl.constexpr,  # tile of output channels (the reduction)
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    dhw = D * H * W
    offs_m, m_mask, vn, vd, vh, vw = _voxel_rows(pid_m, M, D, H, W, BLOCK_M)
    # grad_x[d] = sum_p g[2d - 1 + p] K[p] per axis: the tap-(0, 0, 0) corner of each voxel.
    g_base = vn * sgn + (2 * vd - 1) * sgd + (2 * vh - 1) * sgh + (2 * vw - 1) * sgw
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C_IN
    arange_k = tl.arange(0, BLOCK_K)

    K_TILES: tl.constexpr = (C_OUT + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for kk in range(0, 64 * K_TILES):
        tap4 = kk // K_TILES
        k0 = (kk % K_TILES) * BLOCK_K
        p = tap4 // 16
        q = (tap4 // 4) % 4
        r = tap4 % 4
        valid = (
            m_mask
            & (2 * vd - 1 + p >= 0)
            & (2 * vd - 1 + p < 2 * D)
            & (2 * vh - 1 + q >= 0)
            & (2 * vh - 1 + q < 2 * H)
            & (2 * vw - 1 + r >= 0)
            & (2 * vw - 1 + r < 2 * W)
        )
        offs_k = k0 + arange_k
        k_mask = offs_k < C_OUT
        a = tl.load(
            g_ptr + (g_base + p * sgd + q * sgh + r * sgw)[:, None] + offs_k[None, :] * sgc,
            mask=valid[:, None] & k_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + (tap4 * C_IN + offs_n[None, :]) * C_OUT + offs_k[:, None],
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)

    gx_off = (vn * (C_IN * dhw) + offs_m % dhw)[:, None] + offs_n[None, :] * dhw
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def _block(c: int, cap: int) -> int:
    return max(_MIN_DOT, min(cap, triton.next_power_of_2(c)))


def _precision(t: torch.Tensor) -> str:
    # float32 follows PyTorch's own switch for convolutions (cuDNN's TF32), so that the fused op
    # and conv3d agree; the flag is ignored for the other dtypes.
    if t.dtype == torch.float32 and t.is_cuda and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def operand_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout in which the kernels read ``x`` and the output gradient fastest.

    Tensor-core dtypes (bfloat16, float16, TF32) want channels-last: a tile's row is then
    ``BLOCK_K`` consecutive channels, loaded as 16-byte vectors that Triton copies
    asynchronously into shared memory while the previous ``tl.dot`` runs. In NCDHW a row's
    channels are ``D * H * W`` apart and the loads are single elements (2 bytes for half
    types, too small for those asynchronous copies). IEEE float32 and float64 run on CUDA
    cores, where the gather costs less than a layout pass over ``x``.
    """
    if t.dtype in (torch.float16, torch.bfloat16) or _precision(t) == "tf32":
        return torch.channels_last_3d
    return torch.contiguous_format


def _kind(t: torch.Tensor) -> str:
    """The operand kind ``tl.dot`` sees: the key of ``_TILES``."""
    if t.dtype == torch.float32:
        return "tf32" if _precision(t) == "tf32" else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}[t.dtype]


def _acc_dtype(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def samples_per_launch(n: int, *per_sample: int) -> int:
    """How many samples one launch may cover so that no tensor passes 32-bit offsets.

    Args:
        n: the batch size.
        per_sample: elements per sample of each tensor the kernel indexes.

    Raises:
        ValueError: one sample alone has more than 2^31 - 1 elements.
    """
    largest = max(per_sample)
    if largest > _INDEX_LIMIT:
        raise ValueError(
            f"resize_conv3d (triton): one sample has {largest} elements, more than the kernels' "
            f"32-bit offsets allow ({_INDEX_LIMIT})"
        )
    return max(1, min(n, _INDEX_LIMIT // largest))


def _config(t: torch.Tensor, n: int, c_in: int, c_out: int, dhw: int, columns: int, reduction: int):
    """Samples per launch and the compile-time arguments both kernels share.

    ``columns`` / ``reduction``: the channel counts tiled by ``BLOCK_N`` / ``BLOCK_K``
    (C_out / C_in forward, C_in / C_out backward).
    """
    tiles = _TILES[_kind(t)]
    step = samples_per_launch(n, c_in * dhw, c_out * 8 * dhw, 64 * c_in * c_out)
    meta = dict(
        C_IN=c_in,
        C_OUT=c_out,
        ACC_DTYPE=_acc_dtype(t),
        PRECISION=_precision(t),
        BLOCK_M=tiles.block_m,
        BLOCK_N=_block(columns, tiles.block_n),
        BLOCK_K=_block(reduction, tiles.block_k),
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return step, meta


def resize_conv3d_fwd(
    x: torch.Tensor, k4: torch.Tensor, bias: torch.Tensor | None, act: int, slope: float
) -> torch.Tensor:
    """``act(conv_transpose3d(x, k4, bias, stride=2, padding=1))`` in one pass.

    Args:
        x: ``(N, C_in, D, H, W)``, contiguous in :func:`operand_memory_format` (any layout
            works; that one loads fastest).
        k4: ``(C_in, C_out, 4, 4, 4)`` in ``x``'s dtype with ``k4.permute(2, 3, 4, 0, 1)``
            contiguous (see the module docstring).
        bias: ``(C_out,)`` in ``x``'s dtype, or ``None``.
        act: 0 none, 1 relu, 2 leaky_relu, 3 tanh.
        slope: leaky_relu's negative slope.

    Returns:
        ``(N, C_out, 2D, 2H, 2W)``, contiguous, in ``x``'s dtype.
    """
    n, c_in, d, h, w = x.shape
    c_out = k4.shape[1]
    y = torch.empty((n, c_out, 2 * d, 2 * h, 2 * w), dtype=x.dtype, device=x.device)
    step, meta = _config(x, n, c_in, c_out, d * h * w, columns=c_out, reduction=c_in)
    for s in range(0, n, step):
        xs, ys = x[s : s + step], y[s : s + step]  # slices along the batch keep their layout
        m = xs.shape[0] * d * h * w
        grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c_out, meta["BLOCK_N"]), 8)
        _resize_conv3d_fwd_kernel[grid](
            xs,
            k4,
            bias if bias is not None else k4,
            ys,
            m,
            d,
            h,
            w,
            *xs.stride(),
            float(slope),
            HAS_BIAS=bias is not None,
            ACT=int(act),
            **meta,
        )
    return y


def resize_conv3d_bwd_input(g: torch.Tensor, k4: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """Input gradient ``(N, C_in, D, H, W)`` from ``g`` = grad_y * act'(y).

    Args:
        g: ``(N, C_out, 2D, 2H, 2W)``, contiguous in :func:`operand_memory_format`.
        k4: as in :func:`resize_conv3d_fwd`, in ``g``'s dtype.
        x_shape: ``(N, C_in, D, H, W)``.
    """
    n, c_in, d, h, w = x_shape
    c_out = k4.shape[1]
    gx = torch.empty(tuple(x_shape), dtype=g.dtype, device=g.device)
    step, meta = _config(g, n, c_in, c_out, d * h * w, columns=c_in, reduction=c_out)
    for s in range(0, n, step):
        gs, gxs = g[s : s + step], gx[s : s + step]
        m = gs.shape[0] * d * h * w
        grid = (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c_in, meta["BLOCK_N"]))
        _resize_conv3d_bwd_kernel[grid](gs, k4, gxs, m, d, h, w, *gs.stride(), **meta)
    return gx
