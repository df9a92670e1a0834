"""Triton kernel of :func:`brainkern.ops.diff_augment3d` (DiffAugment-3D in one pass).

``_diff_augment3d_fwd_kernel`` fills a tile of ``BLOCK_R`` rows x ``BLOCK_E``
elements of the contiguous output (a row is the W axis). Per row it works out
``(n, c, d, h)``, gathers sample ``n``'s shift, cutout box, scale ``s`` and constant
``(1 - s) * background`` (computed by the launcher with torch, in the compute dtype,
exactly as the reference does), and whether the source row ``(d, h) - shift`` lies
inside the volume. Per element it loads ``x`` at ``w - shift_w`` through the strides
where the source is inside and outside the box, and writes ``s * x + const`` there
and ``background`` elsewhere. The backward is the same kernel on the gradient (see
the op). Products and sums are compiled without fused multiply-add
(``enable_fp_fusion=False``), so the result has the reference's bits; bfloat16
outputs are rounded from float32 on the bits (nearest, ties to even, as torch
rounds), since the interpreter's cast truncates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TILE = 2048  # output elements per program


@triton.jit
def _diff_augment3d_fwd_kernel(
    x_ptr,  # (N, C, D, H, W) float16/bfloat16/float32/float64, strides (sn, sc, sd, sh, sw)
    y_ptr,  # (N, C, D, H, W) same dtype, contiguous
    shift_ptr,  # (N, 3) int64, contiguous
    lo_ptr,  # (N, 3) int64, contiguous
    hi_ptr,  # (N, 3) int64, contiguous
    scale_ptr,  # (N,) compute dtype: s
    const_ptr,  # (N,) compute dtype: (1 - s) * background
    bg_ptr,  # (1,) compute dtype: background
    rows,  # N * C * D * H: rows of y
    c_size,  # C
    d_size,  # D
    h_size,  # H
    w_size,  # W: row length
    sn,
    sc,
    sd,
    sh,
    sw,  # strides of x, in elements
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_E: tl.constexpr,  # elements per row per program
    BF16_BITS: tl.constexpr,  # y is bfloat16 seen as int16: round float32 to it by hand
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # (BLOCK_R,)
    w = tl.program_id(1).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)  # (BLOCK_E,)
    live = row < rows
    h = row % h_size
    t = row // h_size
    d = t % d_size
    t = t // d_size
    c = t % c_size
    n = t // c_size
    p3 = n * 3
    src_d = d - tl.load(shift_ptr + p3, mask=live, other=0)
    src_h = h - tl.load(shift_ptr + p3 + 1, mask=live, other=0)
    shift_w = tl.load(shift_ptr + p3 + 2, mask=live, other=0)
    row_valid = live & (src_d >= 0) & (src_d < d_size) & (src_h >= 0) & (src_h < h_size)
    lo_d = tl.load(lo_ptr + p3, mask=live, other=0)
    hi_d = tl.load(hi_ptr + p3, mask=live, other=0)
    lo_h = tl.load(lo_ptr + p3 + 1, mask=live, other=0)
    hi_h = tl.load(hi_ptr + p3 + 1, mask=live, other=0)
    lo_w = tl.load(lo_ptr + p3 + 2, mask=live, other=0)
    hi_w = tl.load(hi_ptr + p3 + 2, mask=live, other=0)
    row_in_box = (lo_d <= d) & (d < hi_d) & (lo_h <= h) & (h < hi_h)  # (BLOCK_R,)
    s = tl.load(scale_ptr + n, mask=live, other=1)
    cst = tl.load(const_ptr + n, mask=live, other=0)
    bg = tl.load(bg_ptr)

    src_w = w[None, :] - shift_w[:, None]  # (BLOCK_R, BLOCK_E)
    in_box = row_in_box[:, None] & (lo_w[:, None] <= w[None, :]) & (w[None, :] < hi_w[:, None])
    keep = row_valid[:, None] & (src_w >= 0) & (src_w < w_size) & ~in_box
    base = n * sn + c * sc + src_d * sd + src_h * sh  # (BLOCK_R,)
    vals = tl.load(x_ptr + base[:, None] + src_w * sw, mask=keep, other=0)
    out = s[:, None] * vals.to(s.dtype) + cst[:, None]
    out = tl.where(keep, out, bg)
    store = live[:, None] & (w < w_size)[None, :]
    if BF16_BITS:
        # Round to nearest, ties to even, on the bits (the interpreter's cast truncates).
        bits = out.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        out = tl.where(out != out, 0x7FC0, rounded).to(tl.int16)  # NaN stays a quiet NaN
    tl.store(y_ptr + row[:, None] * w_size + w[None, :], out.to(y_ptr.dtype.element_ty), mask=store)


def diff_augment3d(
    x: torch.Tensor,
    shift: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: torch.Tensor,
    background: float,
) -> torch.Tensor:
    """``y`` of :func:`brainkern.ops.diff_augment3d`; arguments validated by the caller, x any strides."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = scale.to(acc).contiguous()
    bg = torch.full((1,), background, dtype=acc, device=x.device)
    cst = (1 - s) * bg  # the reference's (1 - s) * background, rounded the same way
    n, c, d, h, w = x.shape
    rows = n * c * d * h
    block_e = min(triton.next_power_of_2(w), _TILE)
    block_r = max(1, _TILE // block_e)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(w, block_e))
    bf16 = x.dtype == torch.bfloat16
    _diff_augment3d_fwd_kernel[grid](
        x,
        y.view(torch.int16) if bf16 else y,
        shift.contiguous(),
        lo.contiguous(),
        hi.contiguous(),
        s,
        cst,
        bg,
        rows,
        c,
        d,
        h,
        w,
        *x.stride(),
        BLOCK_R=block_r,
        BLOCK_E=block_e,
        BF16_BITS=bf16,
        enable_fp_fusion=False,
    )
    return y
