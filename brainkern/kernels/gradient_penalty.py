"""Triton kernels of the fused gradient-penalty pieces (see ``brainkern.ops.gradient_penalty``).

Every tensor is a batch of flattened samples, (B, N) contiguous. The elementwise
kernels run on a 2D grid (tiles of one sample, samples), so the per-sample
interpolation weight or penalty factor is loaded once per program. The norm is a
deterministic two-stage reduction: partial sums of squares per (sample, chunk),
then one program that finishes the norms and the penalty.

Accumulation is in float32, float64 for float64 inputs. ``weight`` and
``center`` are kernel arguments annotated ``tl.float64`` (a plain Python float
argument would be rounded to float32, which float64 results would show) and are
turned into the accumulation dtype inside the kernel; no parameter tensor is
built from host data, so a call only queues work (no blocking host-to-device copy).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tile sizes, read at every launch (tests shrink them to force many tiles and chunks).
_BLOCK = 1024  # elements per program of the elementwise kernels
_NORM_CHUNK = 8192  # elements per partial sum, a multiple of _BLOCK; as kNormChunk in gradient_penalty.h
_FINISH_B = 32  # samples per step of the finishing reduction
_FINISH_C = 64  # chunks per step of the finishing reduction
MAX_BATCH = 65535  # CUDA's limit on the grid's second dimension

TWO_SIDED, ONE_SIDED, R1 = 0, 1, 2


@triton.jit
def _acc_scalar(value, IS_FP64: tl.constexpr):
    """A ``tl.float64`` argument as a 0-d value of the accumulation dtype.

    ``tl.full`` with a float64 dtype keeps every bit of the value, also in the CPU
    interpreter (where the argument arrives as a Python float and arithmetic with it
    would round it to float32 first).
    """
    x = tl.full((), value, tl.float64)
    if not IS_FP64:
        x = x.to(tl.float32)
    return x


@triton.jit
def _gradient_penalty_interp_fwd_kernel(
    real_ptr,  # (B, N) contiguous
    fake_ptr,  # (B, N) contiguous
    eps_ptr,  # (B,)
    out_ptr,  # (B, N) output
    N,  # elements per sample
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    base = b * N
    if IS_FP64:
        w = tl.load(eps_ptr + b).to(tl.float64)
        r = tl.load(real_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
        f = tl.load(fake_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
    else:
        w = tl.load(eps_ptr + b).to(tl.float32)
        r = tl.load(real_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        f = tl.load(fake_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    out = w * r + (1.0 - w) * f
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gradient_penalty_interp_bwd_kernel(
    g_ptr,  # (B, N) gradient of the interpolation's output
    eps_ptr,  # (B,)
    grad_real_ptr,  # (B, N) output: eps * g
    grad_fake_ptr,  # (B, N) output: (1 - eps) * g
    N,  # elements per sample
    IS_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    base = b * N
    if IS_FP64:
        w = tl.load(eps_ptr + b).to(tl.float64)
        g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
    else:
        w = tl.load(eps_ptr + b).to(tl.float32)
        g = tl.load(g_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(grad_real_ptr + base + offs, (w * g).to(grad_real_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_fake_ptr + base + offs, ((1.0 - w) * g).to(grad_fake_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gradient_penalty_norm_fwd_kernel(
    grad_ptr,  # (B, N) gradient of the discriminator w.r.t. its input
    partial_ptr,  # (B, CHUNKS) output: sums of squares per chunk, accumulation dtype
    N,  # elements per sample
    CHUNKS,  # chunks per sample, cdiv(N, CHUNK)
    IS_FP64: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    base = b * N
    if IS_FP64:
        acc = tl.zeros((BLOCK,), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, CHUNK, BLOCK):
        offs = c * CHUNK + start + tl.arange(0, BLOCK)
        v = tl.load(grad_ptr + base + offs, mask=offs < N, other=0.0).to(acc.dtype)
        acc += v * v
    tl.store(partial_ptr + b * CHUNKS + c, tl.sum(acc, axis=0))


@triton.jit
def _gradient_penalty_norm_finish_kernel(
    partial_ptr,  # (B, CHUNKS) sums of squares per chunk
    norms_ptr,  # (B,) output: per-sample L2 norms
    penalty_ptr,  # () output: weight * mean_b f(norms[b]), in grad's dtype
    weight_arg: tl.float64,  # lambda
    center_arg: tl.float64,  # the target norm
    B,  # batch size
    CHUNKS,  # chunks per sample
    IS_FP64: tl.constexpr,  # accumulate in float64 (else float32)
    MODE: tl.constexpr,  # 0 two-sided, 1 one-sided, 2 r1
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    weight = _acc_scalar(weight_arg, IS_FP64)
    center = _acc_scalar(center_arg, IS_FP64)
    terms = tl.zeros((BLOCK_B,), dtype=weight.dtype)
    # while loops, not range(): runtime loop bounds must also run in Triton's CPU interpreter.
    b0 = 0
    while b0 < B:
        rows = b0 + tl.arange(0, BLOCK_B)
        row_mask = rows < B
        sums = tl.zeros((BLOCK_B,), dtype=weight.dtype)
        c0 = 0
        while c0 < CHUNKS:
            cols = c0 + tl.arange(0, BLOCK_C)
            tile = tl.load(
                partial_ptr + rows[:, None] * CHUNKS + cols[None, :],
                mask=row_mask[:, None] & (cols[None, :] < CHUNKS),
                other=0.0,
            )
            sums += tl.sum(tile, axis=1)
            c0 += BLOCK_C
        n = tl.sqrt(sums)
        tl.store(norms_ptr + rows, n, mask=row_mask)
        if MODE == 2:
            t = n * n
        else:
            d = n - center
            if MODE == 1:
                d = tl.where(d < 0.0, 0.0, d)  # NaN < 0 is false: a NaN norm stays NaN
            t = d * d
        terms += tl.where(row_mask, t, 0.0)
        b0 += BLOCK_B
    total = tl.sum(terms, axis=0)
    tl.store(penalty_ptr, (weight * total / B).to(penalty_ptr.dtype.element_ty))


@triton.jit
def _gradient_penalty_norm_bwd_kernel(
    dpen_ptr,  # () gradient of the loss w.r.t. the penalty, grad's dtype
    grad_ptr,  # (B, N) gradient of the discriminator w.r.t. its input
    norms_ptr,  # (B,) per-sample norms from the forward, accumulation dtype
    dgrad_ptr,  # (B, N) output: d penalty / d grad
    weight_arg: tl.float64,  # lambda
    center_arg: tl.float64,  # the target norm
    B,  # batch size
    N,  # elements per sample
    IS_FP64: tl.constexpr,  # accumulate in float64 (else float32)
    MODE: tl.constexpr,  # 0 two-sided, 1 one-sided, 2 r1
    BLOCK: tl.constexpr,
):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    base = b * N
    weight = _acc_scalar(weight_arg, IS_FP64)
    center = _acc_scalar(center_arg, IS_FP64)
    n = tl.load(norms_ptr + b)
    scale = tl.load(dpen_ptr).to(weight.dtype) * weight / B
    if MODE == 2:
        k = 2.0
    else:
        d = n - center
        if MODE == 1:
            d = tl.where(d < 0.0, 0.0, d)
        # f'(n) / n, with 0 at n == 0 (grad[b] is all zero there); NaN propagates.
        k = tl.where(n == 0.0, 0.0, 2.0 * d / tl.where(n == 0.0, 1.0, n))
    g = tl.load(grad_ptr + base + offs, mask=mask, other=0.0).to(weight.dtype)
    tl.store(dgrad_ptr + base + offs, (scale * k * g).to(dgrad_ptr.dtype.element_ty), mask=mask)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def interp(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``eps[b] * real[b] + (1 - eps[b]) * fake[b]`` for contiguous (B, ...) inputs, eps (B,)."""
    B = real.shape[0]
    N = real.numel() // B
    out = torch.empty_like(real)
    grid = (triton.cdiv(N, _BLOCK), B)
    _gradient_penalty_interp_fwd_kernel[grid](
        real, fake, eps, out, N, IS_FP64=real.dtype == torch.float64, BLOCK=_BLOCK
    )
    return out


def interp_backward(g: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps[b] * g[b], (1 - eps[b]) * g[b])`` for a contiguous (B, ...) ``g``, eps (B,)."""
    B = g.shape[0]
    N = g.numel() // B
    grad_real = torch.empty_like(g)
    grad_fake = torch.empty_like(g)
    grid = (triton.cdiv(N, _BLOCK), B)
    _gradient_penalty_interp_bwd_kernel[grid](
        g, eps, grad_real, grad_fake, N, IS_FP64=g.dtype == torch.float64, BLOCK=_BLOCK
    )
    return grad_real, grad_fake


def norm(grad: torch.Tensor, weight: float, center: float, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The penalty (0-d, grad's dtype) and the per-sample norms (B,) of a contiguous (B, ...) ``grad``."""
    B = grad.shape[0]
    N = grad.numel() // B
    chunks = max(triton.cdiv(N, _NORM_CHUNK), 1)
    acc = _acc_dtype(grad.dtype)
    partial = torch.empty((B, chunks), dtype=acc, device=grad.device)
    norms = torch.empty((B,), dtype=acc, device=grad.device)
    penalty = torch.empty((), dtype=grad.dtype, device=grad.device)
    _gradient_penalty_norm_fwd_kernel[(chunks, B)](
        grad, partial, N, chunks, IS_FP64=grad.dtype == torch.float64, CHUNK=_NORM_CHUNK, BLOCK=_BLOCK
    )
    _gradient_penalty_norm_finish_kernel[(1,)](
        partial,
        norms,
        penalty,
        weight,
        center,
        B,
        chunks,
        IS_FP64=grad.dtype == torch.float64,
        MODE=mode,
        BLOCK_B=_FINISH_B,
        BLOCK_C=_FINISH_C,
    )
    return penalty, norms


def norm_backward(
    dpen: torch.Tensor, grad: torch.Tensor, norms: torch.Tensor, weight: float, center: float, mode: int
) -> torch.Tensor:
    """d penalty / d grad (B, ...) given the upstream 0-d ``dpen`` and the forward's ``norms``."""
    B = grad.shape[0]
    N = grad.numel() // B
    dgrad = torch.empty_like(grad)
    grid = (triton.cdiv(N, _BLOCK), B)
    _gradient_penalty_norm_bwd_kernel[grid](
        dpen,
        grad,
        norms,
        dgrad,
        weight,
        center,
        B,
        N,
        IS_FP64=grad.dtype == torch.float64,
        MODE=mode,
        BLOCK=_BLOCK,
    )
    return dgrad
