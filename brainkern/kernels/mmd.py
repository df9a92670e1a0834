"""Triton kernels of the batch MMD^2 statistics (see :mod:`brainkern.ops.mmd`).

Shapes: ``x`` (T, m, D), ``y`` (T, n, D), contiguous. Each program of the forward
kernels owns one test and one part of D and writes its partial sums; the
launcher adds the parts in float64. Sums inside a program are accumulated in
float32 (float64 for float64 inputs) over at most ``_LANE_TERMS`` terms per lane.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Terms each lane of a program accumulates before the float64 sum of the parts.
_LANE_TERMS = 64
# Programs to aim for in a launch (enough to fill a large GPU).
_TARGET_PROGRAMS = 1024


@triton.jit
def _mmd_linear_fwd_kernel(
    x_ptr,  # (T, m, D) samples X of every test
    y_ptr,  # (T, n, D) samples Y of every test
    part_ptr,  # (T, P, 3) out: [S, V_x, V_y] of each (test, part); float32 or float64
    m,  # samples in X
    n,  # samples in Y
    dim,  # D, features per sample
    parts,  # P
    BLOCK_M: tl.constexpr,  # >= m, a power of two
    BLOCK_N: tl.constexpr,  # >= n, a power of two
    BLOCK_D: tl.constexpr,  # features per step
    STEPS: tl.constexpr,  # steps per part (a constant: the interpreter needs static loop bounds)
):
    p = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    acc_ty = part_ptr.dtype.element_ty
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    x_base = x_ptr + t * m * dim + rm.to(tl.int64)[:, None] * dim
    y_base = y_ptr + t * n * dim + rn.to(tl.int64)[:, None] * dim
    start = p * (STEPS * BLOCK_D)
    acc_s = tl.zeros([BLOCK_D], dtype=acc_ty)
    acc_x = tl.zeros([BLOCK_D], dtype=acc_ty)
    acc_y = tl.zeros([BLOCK_D], dtype=acc_ty)
    for step in range(0, STEPS):
        cols = start + step * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < dim
        xmask = (rm[:, None] < m) & cmask[None, :]
        ymask = (rn[:, None] < n) & cmask[None, :]
        xv = tl.load(x_base + cols[None, :], mask=xmask, other=0.0).to(acc_ty)
        yv = tl.load(y_base + cols[None, :], mask=ymask, other=0.0).to(acc_ty)
        mx = tl.sum(xv, axis=0) / m
        my = tl.sum(yv, axis=0) / n
        cx = tl.where(xmask, xv - mx[None, :], 0.0)
        cy = tl.where(ymask, yv - my[None, :], 0.0)
        acc_s += (mx - my) * (mx - my)
        acc_x += tl.sum(cx * cx, axis=0)
        acc_y += tl.sum(cy * cy, axis=0)
    out = part_ptr + (t * parts + p) * 3
    tl.store(out, tl.sum(acc_s, axis=0))
    tl.store(out + 1, tl.sum(acc_x, axis=0))
    tl.store(out + 2, tl.sum(acc_y, axis=0))


@triton.jit
def _mmd_linear_bwd_kernel(
    x_ptr,  # (T, m, D) samples X
    y_ptr,  # (T, n, D) samples Y
    coef_ptr,  # (T, 3) dL/d[S, V_x, V_y] per test, in the compute dtype
    gx_ptr,  # (T, m, D) out: dL/dX
    gy_ptr,  # (T, n, D) out: dL/dY
    m,  # samples in X
    n,  # samples in Y
    dim,  # D
    BLOCK_M: tl.constexpr,  # >= m, a power of two
    BLOCK_N: tl.constexpr,  # >= n, a power of two
    BLOCK_D: tl.constexpr,  # features per program
):
    pd = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    acc_ty = coef_ptr.dtype.element_ty
    a = tl.load(coef_ptr + t * 3)
    b = tl.load(coef_ptr + t * 3 + 1)
    c = tl.load(coef_ptr + t * 3 + 2)
    rm = tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    cols = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < dim
    xmask = (rm[:, None] < m) & cmask[None, :]
    ymask = (rn[:, None] < n) & cmask[None, :]
    x_off = t * m * dim + rm.to(tl.int64)[:, None] * dim + cols[None, :]
    y_off = t * n * dim + rn.to(tl.int64)[:, None] * dim + cols[None, :]
    xv = tl.load(x_ptr + x_off, mask=xmask, other=0.0).to(acc_ty)
    yv = tl.load(y_ptr + y_off, mask=ymask, other=0.0).to(acc_ty)
    mx = tl.sum(xv, axis=0) / m
    my = tl.sum(yv, axis=0) / n
    diff = (mx - my)[None, :]
    gx = (2.0 * a / m) * diff + (2.0 * b) * (xv - mx[None, :])
    gy = (-2.0 * a / n) * diff + (2.0 * c) * (yv - my[None, :])
    tl.store(gx_ptr + x_off, gx.to(gx_ptr.dtype.element_ty), mask=xmask)
    tl.store(gy_ptr + y_off, gy.to(gy_ptr.dtype.element_ty), mask=ymask)


@triton.jit
def _mmd_gram_fwd_kernel(
    x_ptr,  # (T, m, D) samples X
    y_ptr,  # (T, n, D) samples Y
    part_ptr,  # (T, P, N, N) out: Gram matrix of Z = [X; Y] over each part; N = m + n
    m,  # samples in X
    n,  # samples in Y
    dim,  # D
    parts,  # P
    BLOCK_R: tl.constexpr,  # >= N, a power of two >= 16
    BLOCK_D: tl.constexpr,  # features per step
    STEPS: tl.constexpr,  # steps per part
    USE_DOT: tl.constexpr,  # tl.dot in IEEE float32; else a broadcast product (float64)
):
    p = tl.program_id(0)
    t = tl.program_id(1).to(tl.int64)
    acc_ty = part_ptr.dtype.element_ty
    rows = m + n
    r = tl.arange(0, BLOCK_R)
    in_x = r < m
    in_y = (r >= m) & (r < rows)
    # Clamped row indices keep every address in range; the masks zero the rest.
    xr = tl.minimum(r, m - 1).to(tl.int64)
    yr = tl.minimum(tl.maximum(r - m, 0), n - 1).to(tl.int64)
    x_base = x_ptr + t * m * dim + xr[:, None] * dim
    y_base = y_ptr + t * n * dim + yr[:, None] * dim
    start = p * (STEPS * BLOCK_D)
    acc = tl.zeros([BLOCK_R, BLOCK_R], dtype=acc_ty)
    for step in range(0, STEPS):
        cols = start + step * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = (cols < dim)[None, :]
        zx = tl.load(x_base + cols[None, :], mask=in_x[:, None] & cmask, other=0.0).to(acc_ty)
        zy = tl.load(y_base + cols[None, :], mask=in_y[:, None] & cmask, other=0.0).to(acc_ty)
        z = zx + zy
        if USE_DOT:
            acc += tl.dot(z, tl.trans(z), input_precision="ieee")
        else:
            acc += tl.sum(z[:, None, :] * z[None, :, :], axis=2)
    out = part_ptr + (t * parts + p) * rows * rows + r[:, None] * rows + r[None, :]
    valid = (r[:, None] < rows) & (r[None, :] < rows)
    tl.store(out, acc, mask=valid)


def _pow2(v: int, low: int = 1) -> int:
    return max(low, triton.next_power_of_2(v))


def _split(tests: int, dim: int, block_d: int) -> tuple[int, int]:
    """(parts, features per part): enough programs, at most _LANE_TERMS steps each."""
    steps = triton.cdiv(dim, block_d)
    want = max(triton.cdiv(_TARGET_PROGRAMS, tests), triton.cdiv(steps, _LANE_TERMS))
    per = triton.cdiv(steps, min(want, steps))
    return triton.cdiv(steps, per), per * block_d


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def linear_stats(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, 3) float64 ``[S, V_x, V_y]`` of x (T, m, D) and y (T, n, D); see ``csrc/mmd/mmd.h``."""
    tests, m, dim = x.shape
    n = y.shape[1]
    block_m, block_n = _pow2(m), _pow2(n)
    block_d = min(1024, _pow2(4096 // max(block_m, block_n), 16))
    parts, per = _split(tests, dim, block_d)
    part = torch.empty(tests, parts, 3, device=x.device, dtype=_acc_dtype(x))
    _mmd_linear_fwd_kernel[(parts, tests)](
        x, y, part, m, n, dim, parts, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, STEPS=per // block_d
    )
    return part.to(torch.float64).sum(dim=1)


def linear_backward(
    x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (T, m, D), (T, n, D) of ``sum_t coef[t] . [S, V_x, V_y]_t``."""
    tests, m, dim = x.shape
    n = y.shape[1]
    block_m, block_n = _pow2(m), _pow2(n)
    block_d = min(1024, _pow2(4096 // max(block_m, block_n), 16))
    gx, gy = torch.empty_like(x), torch.empty_like(y)
    coef = coef.to(_acc_dtype(x)).contiguous()
    grid = (triton.cdiv(dim, block_d), tests)
    _mmd_linear_bwd_kernel[grid](
        x, y, coef, gx, gy, m, n, dim, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return gx, gy


def gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(T, N, N) float64 Gram matrices of ``[x[t]; y[t]]``, N = m + n <= 64."""
    tests, m, dim = x.shape
    n = y.shape[1]
    rows = m + n
    use_dot = x.dtype != torch.float64
    block_r = _pow2(rows, 16)
    block_d = 64 if use_dot else 16
    parts, per = _split(tests, dim, block_d)
    part = torch.empty(tests, parts, rows, rows, device=x.device, dtype=_acc_dtype(x))
    _mmd_gram_fwd_kernel[(parts, tests)](
        x, y, part, m, n, dim, parts, BLOCK_R=block_r, BLOCK_D=block_d, STEPS=per // block_d, USE_DOT=use_dot
    )
    return part.to(torch.float64).sum(dim=1)
