"""Triton kernels of :func:`brainkern.ops.pixel_shuffle3d` and its inverse.

``_pixel_shuffle3d_fwd_kernel`` is the shuffle, ``_pixel_shuffle3d_bwd_kernel`` the
unshuffle (also the shuffle's backward). Each program fills a tile of
``BLOCK_R`` rows x ``BLOCK_E`` elements of the contiguous output (a row is the
last dimension). The source offset of a row's first element is computed once per
row (int64, so any size works); element ``e`` then reads

- shuffle:   ``base + (e // r) * stride_W + (e % r) * stride_C`` (the ``r`` input
  channels ``k`` of one low-resolution voxel are consecutive outputs);
- unshuffle: ``base + e * r * stride_W``.

Stores are contiguous along the tile's rows; loads go through the input's
strides, so no contiguous copy of the input is made. The kernels move raw
integer words of the element's size (the launcher reinterprets the tensors),
which makes them bit-exact for every float dtype, float16 and bfloat16 included.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Integer dtype of the same size as each float dtype the kernels move.
_WORDS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_TILE = 2048  # output elements per program


@triton.jit
def _pixel_shuffle3d_fwd_kernel(
    x_ptr,  # (N, C*r^3, D, H, W) words, strides (sn, sc, sd, sh, sw)
    y_ptr,  # (N, C, r*D, r*H, r*W) words, contiguous
    rows,  # N * C * r*D * r*H: rows of y
    row_len,  # r*W
    c_out,  # C
    d_out,  # r*D
    h_out,  # r*H
    r,  # upscale factor
    sn,
    sc,
    sd,
    sh,
    sw,  # strides of x, in elements
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_E: tl.constexpr,  # elements per row per program
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # (BLOCK_R,)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,)
    oh = row % h_out
    t = row // h_out
    od = t % d_out
    t = t // d_out
    c = t % c_out
    n = t // c_out
    d = od // r
    i = od % r
    h = oh // r
    j = oh % r
    base = n * sn + ((c * r + i) * r + j) * r * sc + d * sd + h * sh  # (BLOCK_R,) int64
    inner = (e // r).to(tl.int64) * sw + (e % r).to(tl.int64) * sc  # (BLOCK_E,)
    mask = (row < rows)[:, None] & (e < row_len)[None, :]
    vals = tl.load(x_ptr + base[:, None] + inner[None, :], mask=mask)
    tl.store(y_ptr + row[:, None] * row_len + e[None, :], vals, mask=mask)


@triton.jit
def _pixel_shuffle3d_bwd_kernel(
    x_ptr,  # (N, C, r*D, r*H, r*W) words, strides (sn, sc, sd, sh, sw)
    y_ptr,  # (N, C*r^3, D, H, W) words, contiguous
    rows,  # N * C*r^3 * D * H: rows of y
    row_len,  # W
    c_out,  # C*r^3
    d_out,  # D
    h_out,  # H
    r,  # downscale factor
    sn,
    sc,
    sd,
    sh,
    sw,  # strides of x, in elements
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_E: tl.constexpr,  # elements per row per program
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # (BLOCK_R,)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,)
    oh = row % h_out
    t = row // h_out
    od = t % d_out
    t = t // d_out
    oc = t % c_out
    n = t // c_out
    # oc = c*r^3 + i*r^2 + j*r + k reads x at (c, od*r + i, oh*r + j, w*r + k)
    k = oc % r
    t = oc // r
    j = t % r
    t = t // r
    i = t % r
    c = t // r
    base = n * sn + c * sc + (od * r + i) * sd + (oh * r + j) * sh + k * sw  # (BLOCK_R,) int64
    inner = e.to(tl.int64) * r * sw  # (BLOCK_E,)
    mask = (row < rows)[:, None] & (e < row_len)[None, :]
    vals = tl.load(x_ptr + base[:, None] + inner[None, :], mask=mask)
    tl.store(y_ptr + row[:, None] * row_len + e[None, :], vals, mask=mask)


def _launch(x: torch.Tensor, r: int, shuffle: bool) -> torch.Tensor:
    n, c, d, h, w = x.shape
    if shuffle:
        out_shape = (n, c // r**3, d * r, h * r, w * r)
    else:
        out_shape = (n, c * r**3, d // r, h // r, w // r)
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    word = _WORDS[x.element_size()]
    rows = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]
    row_len = out_shape[4]
    block_e = min(triton.next_power_of_2(row_len), _TILE)
    block_r = max(1, _TILE // block_e)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(row_len, block_e))
    kernel = _pixel_shuffle3d_fwd_kernel if shuffle else _pixel_shuffle3d_bwd_kernel
    kernel[grid](
        x.view(word),
        y.view(word),
        rows,
        row_len,
        out_shape[1],
        out_shape[2],
        out_shape[3],
        r,
        *x.stride(),
        BLOCK_R=block_r,
        BLOCK_E=block_e,
    )
    return y


def pixel_shuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(N, C*r^3, D, H, W) -> (N, C, r*D, r*H, r*W)``; x validated by the caller, any strides."""
    return _launch(x, r, shuffle=True)


def pixel_unshuffle3d(x: torch.Tensor, r: int) -> torch.Tensor:
    """``(N, C, r*D, r*H, r*W) -> (N, C*r^3, D, H, W)``; x validated by the caller, any strides."""
    return _launch(x, r, shuffle=False)
