"""Triton kernels of the batch MMD^2 statistics (see :mod:`brainkern.ops.mmd`).

Shapes: ``x`` (T, m, D), ``y`` (T, n, D), contiguous. The forward kernels run on
a (D-part, test) grid: each program walks ``STEPS`` tiles of ``BLOCK_D`` features
of its part and writes partial sums; the launcher adds the parts in float64.
Sums inside a program are accumulated in float32 (float64 for float64 inputs)
over at most ``_LANE_TERMS`` terms per lane.

Every kernel loops over tests with a stride of the grid's second dimension,
which CUDA caps at 65,535 (``_MAX_GRID_Y``), so any number of tests runs in one
launch. Register use does not grow with ``m`` or ``n``: the linear kernels stream
the samples in tiles of ``_ROWS`` rows, and the Gram kernel holds at most 64 rows
of ``[X; Y]`` (the op's dispatch limit). ``tests/ops/test_mmd.py`` monkeypatches
the constants below to make every loop run several rounds on tiny inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Terms each lane of a program accumulates before the float64 sum of the parts.
_LANE_TERMS = 64
# Programs to aim for in a launch (enough to fill a large GPU).
_TARGET_PROGRAMS = 1024
# CUDA's limit on grid dimensions 1 and 2; programs beyond it loop over tests instead.
_MAX_GRID_Y = 65535
# Linear kernels: samples (rows) per tile, and features per tile. 8 rows cover the
# usual batch of 8 in one tile; 8 x 256 values keep every configuration (float64
# included) well under 255 registers per thread at 4 warps, without spills.
_ROWS = 8
_LINEAR_BLOCK_D = 256
_LINEAR_WARPS = 4
# Gram kernel: features per tile (tl.dot's smallest K), and warps per padded row
# count: the float32 IEEE dot runs on FMA units with each thread holding K values
# of its rows and columns, so 64 rows take 8 warps to stay under 255 registers.
_GRAM_BLOCK_D = 16
_GRAM_WARPS = {16: 4, 32: 4, 64: 8}


@triton.jit
def _column_moments(
    base,  # pointer to element (0, 0) of a (rows, dim) slab; columns start at the part's offset
    rows,  # samples in the slab
    dim,  # D, the row stride
    cols,  # (BLOCK_D,) int32 column offsets from base
    cmask,  # (BLOCK_D,) which columns are inside D
    ROWS: tl.constexpr,  # rows per tile
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,  # accumulation dtype
):
    """(mean, centred sum of squares) of each column over all rows, each (BLOCK_D,).

    Each tile's mean and centred sum are exact two-pass values; tiles are merged
    with Chan et al.'s pairwise update, so no sum of raw squares can cancel.
    """
    r = tl.arange(0, ROWS)
    mean = tl.zeros([BLOCK_D], dtype=ACC)
    m2 = tl.zeros([BLOCK_D], dtype=ACC)
    r0 = 0
    while r0 < rows:
        ri = r0 + r
        mask = (ri < rows)[:, None] & cmask[None, :]
        v = tl.load(base + ri.to(tl.int64)[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(ACC)
        cnt = tl.minimum(rows - r0, ROWS).to(ACC)
        total = (r0 + tl.minimum(rows - r0, ROWS)).to(ACC)
        tile_mean = tl.sum(v, axis=0) / cnt
        dev = tl.where(mask, v - tile_mean[None, :], 0.0)
        delta = tile_mean - mean
        w = cnt / total
        mean += delta * w
        m2 += tl.sum(dev * dev, axis=0) + delta * delta * ((total - cnt) * w)
        r0 += ROWS
    return mean, m2


@triton.jit
def _column_mean(
    base,  # as _column_moments
    rows,
    dim,
    cols,
    cmask,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,
):
    """(BLOCK_D,) mean of each column over all rows."""
    r = tl.arange(0, ROWS)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    r0 = 0
    while r0 < rows:
        ri = r0 + r
        mask = (ri < rows)[:, None] & cmask[None, :]
        v = tl.load(base + ri.to(tl.int64)[:, None] * dim + cols[None, :], mask=mask, other=0.0)
        acc += tl.sum(v.to(ACC), axis=0)
        r0 += ROWS
    return acc / rows


@triton.jit
def _write_linear_grad(
    src,  # pointer to element (0, 0) of the (rows, dim) samples, at the program's first column
    dst,  # the same element of the gradient
    rows,  # samples
    dim,  # D, the row stride
    cols,  # (BLOCK_D,) int32 column offsets
    cmask,  # (BLOCK_D,) which columns are inside D
    shift,  # (BLOCK_D,) the part of the gradient shared by every row
    scale,  # scalar factor of the centred value
    mean,  # (BLOCK_D,) column means
    ROWS: tl.constexpr,
    ACC: tl.constexpr,
):
    """dst[i, c] = shift[c] + scale * (src[i, c] - mean[c]) for every row i."""
    r = tl.arange(0, ROWS)
    r0 = 0
    while r0 < rows:
        ri = r0 + r
        mask = (ri < rows)[:, None] & cmask[None, :]
        offs = ri.to(tl.int64)[:, None] * dim + cols[None, :]
        v = tl.load(src + offs, mask=mask, other=0.0).to(ACC)
        g = shift[None, :] + scale * (v - mean[None, :])
        tl.store(dst + offs, g.to(dst.dtype.element_ty), mask=mask)
        r0 += ROWS


@triton.jit
def _mmd_linear_fwd_kernel(
    x_ptr,  # (T, m, D) samples X of every test
    y_ptr,  # (T, n, D) samples Y of every test
    part_ptr,  # (T, P, 3) out: [S, V_x, V_y] of each (test, part); float32 or float64
    tests,  # T
    m,  # samples in X
    n,  # samples in Y
    dim,  # D, features per sample
    parts,  # P
    ROWS: tl.constexpr,  # samples per tile, a power of two
    BLOCK_D: tl.constexpr,  # features per step
    STEPS: tl.constexpr,  # steps per part (a constant: the interpreter needs static loop bounds)
):
    p = tl.program_id(0)
    acc_ty = part_ptr.dtype.element_ty
    start = p.to(tl.int64) * (STEPS * BLOCK_D)
    # Columns left in this part, small enough for int32 offsets from the part's start.
    left = tl.minimum(dim - start, STEPS * BLOCK_D).to(tl.int32)
    t = tl.program_id(1)
    while t < tests:
        t64 = t.to(tl.int64)
        x_t = x_ptr + t64 * m * dim + start
        y_t = y_ptr + t64 * n * dim + start
        acc_s = tl.zeros([BLOCK_D], dtype=acc_ty)
        acc_x = tl.zeros([BLOCK_D], dtype=acc_ty)
        acc_y = tl.zeros([BLOCK_D], dtype=acc_ty)
        for step in range(0, STEPS):
            cols = step * BLOCK_D + tl.arange(0, BLOCK_D)
            cmask = cols < left
            mx, vx = _column_moments(x_t, m, dim, cols, cmask, ROWS, BLOCK_D, acc_ty)
            my, vy = _column_moments(y_t, n, dim, cols, cmask, ROWS, BLOCK_D, acc_ty)
            acc_s += (mx - my) * (mx - my)
            acc_x += vx
            acc_y += vy
        # One block-wide reduction of a (BLOCK_D, 2, 2) stack instead of three: each
        # reduction holds its own lane predicates, which spilled across the loops.
        # tl.join adds a last axis, so sums[i, j] is [S, V_x, V_y, 0][i + 2 j].
        sums = tl.sum(tl.join(tl.join(acc_s, acc_x), tl.join(acc_y, tl.zeros_like(acc_y))), axis=0)
        q = tl.arange(0, 2)
        which = q[:, None] + 2 * q[None, :]
        tl.store(part_ptr + (t64 * parts + p) * 3 + which, sums, mask=which < 3)
        t += tl.num_programs(1)


@triton.jit
def _mmd_linear_bwd_kernel(
    x_ptr,  # (T, m, D) samples X
    y_ptr,  # (T, n, D) samples Y
    coef_ptr,  # (T, 3) dL/d[S, V_x, V_y] per test, in the compute dtype
    gx_ptr,  # (T, m, D) out: dL/dX
    gy_ptr,  # (T, n, D) out: dL/dY
    tests,  # T
    m,  # samples in X
    n,  # samples in Y
    dim,  # D
    ROWS: tl.constexpr,  # samples per tile, a power of two
    BLOCK_D: tl.constexpr,  # features per program
):
    acc_ty = coef_ptr.dtype.element_ty
    start = tl.program_id(0).to(tl.int64) * BLOCK_D
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < tl.minimum(dim - start, BLOCK_D).to(tl.int32)
    t = tl.program_id(1)
    while t < tests:
        t64 = t.to(tl.int64)
        a = tl.load(coef_ptr + t64 * 3)
        b = tl.load(coef_ptr + t64 * 3 + 1)
        c = tl.load(coef_ptr + t64 * 3 + 2)
        x_off = t64 * m * dim + start
        y_off = t64 * n * dim + start
        mx = _column_mean(x_ptr + x_off, m, dim, cols, cmask, ROWS, BLOCK_D, acc_ty)
        my = _column_mean(y_ptr + y_off, n, dim, cols, cmask, ROWS, BLOCK_D, acc_ty)
        diff = mx - my
        _write_linear_grad(
            x_ptr + x_off,
            gx_ptr + x_off,
            m,
            dim,
            cols,
            cmask,
            (2.0 * a / m) * diff,
            2.0 * b,
            mx,
            ROWS,
            acc_ty,
        )
        _write_linear_grad(
            y_ptr + y_off,
            gy_ptr + y_off,
            n,
            dim,
            cols,
            cmask,
            (-2.0 * a / n) * diff,
            2.0 * c,
            my,
            ROWS,
            acc_ty,
        )
        t += tl.num_programs(1)


@triton.jit
def _mmd_gram_fwd_kernel(
    x_ptr,  # (T, m, D) samples X
    y_ptr,  # (T, n, D) samples Y
    part_ptr,  # (T, P, BLOCK_R, BLOCK_R) out: Gram matrix of Z = [X; Y] (zero-padded) over each part
    tests,  # T
    m,  # samples in X
    n,  # samples in Y
    dim,  # D
    parts,  # P
    BLOCK_R: tl.constexpr,  # >= N, a power of two >= 16 (tl.dot's smallest tile)
    BLOCK_D: tl.constexpr,  # features per step
    STEPS: tl.constexpr,  # steps per part
):
    p = tl.program_id(0)
    acc_ty = part_ptr.dtype.element_ty
    rows = m + n
    r = tl.arange(0, BLOCK_R)
    in_x = r < m
    row_ok = r < rows
    # Clamped row indices keep every address in range; the mask zeroes the padding.
    xr = tl.minimum(r, m - 1).to(tl.int64)
    yr = tl.minimum(tl.maximum(r - m, 0), n - 1).to(tl.int64)
    start = p.to(tl.int64) * (STEPS * BLOCK_D)
    left = tl.minimum(dim - start, STEPS * BLOCK_D).to(tl.int32)
    t = tl.program_id(1)
    while t < tests:
        t64 = t.to(tl.int64)
        x_rows = x_ptr + t64 * m * dim + start + xr * dim
        y_rows = y_ptr + t64 * n * dim + start + yr * dim
        # Row r of Z is row r of X or row r - m of Y: one load per tile, not two.
        z_rows = tl.where(in_x, x_rows, y_rows)
        acc = tl.zeros([BLOCK_R, BLOCK_R], dtype=acc_ty)
        for step in range(0, STEPS):
            cols = step * BLOCK_D + tl.arange(0, BLOCK_D)
            mask = row_ok[:, None] & (cols < left)[None, :]
            z = tl.load(z_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(acc_ty)
            # IEEE float32 (or float64) products: TF32 would round the inputs to 10
            # mantissa bits, and the RBF distances G_ii + G_jj - 2 G_ij cancel.
            acc += tl.dot(z, tl.trans(z), input_precision="ieee")
        # The whole padded tile, unmasked: a store mask and offsets of the (BLOCK_R,
        # BLOCK_R) tile would be hoisted out of the test loop and held in registers.
        out = part_ptr + (t64 * parts + p) * (BLOCK_R * BLOCK_R)
        tl.store(out + r[:, None] * BLOCK_R + r[None, :], acc)
        t += tl.num_programs(1)


def _pow2(v: int, low: int = 1) -> int:
    return max(low, triton.next_power_of_2(v))


def _split(tests: int, dim: int, block_d: int) -> tuple[int, int]:
    """(parts, steps per part): enough programs, at most _LANE_TERMS steps each."""
    steps = triton.cdiv(dim, block_d)
    want = max(triton.cdiv(_TARGET_PROGRAMS, tests), triton.cdiv(steps, _LANE_TERMS))
    per = triton.cdiv(steps, min(want, steps))
    return triton.cdiv(steps, per), per


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _linear_rows(m: int, n: int) -> int:
    return min(_ROWS, _pow2(max(m, n)))


def linear_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, 3) float64 ``[S, V_x, V_y]`` of x (T, m, D) and y (T, n, D); see ``csrc/mmd/mmd.h``."""
    tests, m, dim = x.shape
    n = y.shape[1]
    parts, steps = _split(tests, dim, _LINEAR_BLOCK_D)
    part = torch.empty(tests, parts, 3, device=x.device, dtype=_acc_dtype(x))
    grid = (parts, min(tests, _MAX_GRID_Y))
    _mmd_linear_fwd_kernel[grid](
        x,
        y,
        part,
        tests,
        m,
        n,
        dim,
        parts,
        ROWS=_linear_rows(m, n),
        BLOCK_D=_LINEAR_BLOCK_D,
        STEPS=steps,
        num_warps=_LINEAR_WARPS,
    )
    return part.to(torch.float64).sum(dim=1)


def linear_backward(
    x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (T, m, D), (T, n, D) of ``sum_t coef[t] . [S, V_x, V_y]_t``."""
    tests, m, dim = x.shape
    n = y.shape[1]
    gx, gy = torch.empty_like(x), torch.empty_like(y)
    coef = coef.to(_acc_dtype(x)).contiguous()
    grid = (triton.cdiv(dim, _LINEAR_BLOCK_D), min(tests, _MAX_GRID_Y))
    _mmd_linear_bwd_kernel[grid](
        x,
        y,
        coef,
        gx,
        gy,
        tests,
        m,
        n,
        dim,
        ROWS=_linear_rows(m, n),
        BLOCK_D=_LINEAR_BLOCK_D,
        num_warps=_LINEAR_WARPS,
    )
    return gx, gy


def gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, N, N) float64 Gram matrices of ``[x[t]; y[t]]``, N = m + n <= 64."""
    tests, m, dim = x.shape
    n = y.shape[1]
    rows = m + n
    acc = _acc_dtype(x)
    block_r = _pow2(rows, 16)
    parts, steps = _split(tests, dim, _GRAM_BLOCK_D)
    part = torch.empty(tests, parts, block_r, block_r, device=x.device, dtype=acc)
    grid = (parts, min(tests, _MAX_GRID_Y))
    _mmd_gram_fwd_kernel[grid](
        x,
        y,
        part,
        tests,
        m,
        n,
        dim,
        parts,
        BLOCK_R=block_r,
        BLOCK_D=_GRAM_BLOCK_D,
        STEPS=steps,
        num_warps=_GRAM_WARPS[block_r],
    )
    return part[:, :, :rows, :rows].to(torch.float64).sum(dim=1)
