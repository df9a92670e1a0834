"""Triton kernels of the fused spectral-norm step (see :mod:`brainkern.ops.spectral_norm`).

Three launches per call, whatever the number of layers, and no atomics: every
sum has one fixed order, so repeated calls give bit-identical results, and
float32 weights are accumulated in float64 (as the CPU backend does).

1. ``_spectral_norm_fwd_kernel``, one program per (layer, block of ``BLOCK_R``
   rows): ``d = W v`` for its rows over column tiles, then, re-reading the same
   tiles, its rows' share of ``W^T d``, written as one row of a partial-sum
   workspace ``(row blocks, in)`` (no accumulation in global memory), plus the
   sum of its ``d_i^2``.
2. ``_spectral_norm_reduce_kernel``, one program per (layer, chunk of
   ``BLOCK_G`` columns): ``g = W^T d`` as the sum of the layer's partial rows in
   block order, and the chunk's sum of ``g^2``.
3. ``_spectral_norm_finalize_kernel``, one program per (layer, chunk): both norms
   from the per-block and per-chunk sums (the same order in every program of a
   layer, so they all agree bit for bit), then ``v`` for the chunk and, in
   chunk 0, ``u`` and ``sigma``.

Row blocks: a program reads ``BLOCK_R`` full rows and writes ``in`` float64
partials (read back once by the reduce kernel), ``8 / (BLOCK_R * itemsize)`` of
the weight bytes each way (25 % for float32 at 8 rows), while the number of
programs, which is what keeps a GPU's memory system busy, is ``out / BLOCK_R``.
A 3D discriminator's weights are short and wide (16 x 64 to 512 x 16384, a
Linear head 1 x 32768; 11 M weights for channels 64 to 512 at 64^3): 8 rows give
about one program per SM of a 132-SM device for the whole network; 16 would
halve that. Each program streams ``BLOCK_R x BLOCK_C`` tiles (32 KiB of
float32 at 8 x 1024), enough bytes in flight per SM without software pipelining
(the loops are ``while`` loops: Triton's interpreter cannot ``range()`` over
bounds loaded from memory), with 16-byte loads when every layer's rows allow
them (``VEC``). The second pass re-reads the tiles last first, so that the most
recently streamed ones, the likeliest still cached, come first; still, when the
weights of one call approach the L2 size (44 MB of float32 for that network,
50 MB of L2 on an H100), part of that re-read comes from DRAM.

Triton has no arrays of pointers, so each layer's ``W``, ``u`` and ``v`` are
addressed as element offsets from layer 0's tensors (``w_base + w_off``): the
offsets are exact multiples of the element size (checked by
:func:`base_offsets_ok`). Per-layer sizes and offsets and the two program maps
live in one small int64 tensor per call pattern, built once (uploaded from
pinned memory without blocking the host) and kept in an LRU cache keyed by the
layers' addresses, shapes and strides, large enough that every call of a
training loop hits it (see :func:`layout_cache_info`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl

_META = 16  # int64 columns per layer in the layout table (13 used; see _layout)
_BLOCK_R = 8  # rows per main-kernel program
_BLOCK_C = 1024  # columns per main-kernel tile
_BLOCK_B = 16  # partial rows per reduce-kernel tile
_BLOCK_G = 256  # columns per reduce/finalize program
_BLOCK_F = 256  # elements per tile of the finalize kernel's loops
_NUM_WARPS = 8  # main kernel; the others use 4
_CACHE_SIZE = 512  # layouts kept; a network needs one per distinct call (per layer and grouped)


class LayoutCacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    capacity: int


_CACHE: OrderedDict[tuple, tuple] = OrderedDict()
_STATS = {"hits": 0, "misses": 0}


@triton.jit
def _program_entry(program_map, meta):
    """This program's id, its (layer, index within the layer) from the map, and the layer's meta row."""
    pid = tl.program_id(0)
    layer = tl.load(program_map + 2 * pid)
    return pid, layer, tl.load(program_map + 2 * pid + 1), meta + layer * 16


@triton.jit
def _spectral_norm_fwd_kernel(
    w_base,  # layer 0's weight; layer l's W (out_l, in_l), row stride ld_l, at w_base + meta[l, 0]
    v_base,  # layer 0's v; layer l's v (in_l,) at v_base + meta[l, 2]
    d_work,  # (sum_l out_l,) float64: d = W v; layer l's at meta[l, 6]
    partials,  # (sum_l blocks_l * in_l,) float64: one row of W^T d per row block; layer l's at meta[l, 7]
    d_sq,  # (P,) float64: sum of d_i^2 over each program's rows
    meta,  # (L, 16) int64 layer table (see _layout)
    blocks,  # (P, 2) int64: layer and row-block index of each program
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_C: tl.constexpr,  # columns per tile
    VEC: tl.constexpr,  # every offset, row stride and width is a multiple of VEC (16-byte loads)
):
    pid, layer, blk, row_meta = _program_entry(blocks, meta)
    w_off = tl.multiple_of(tl.load(row_meta + 0), VEC)
    v_off = tl.multiple_of(tl.load(row_meta + 2), VEC)
    n_out = tl.load(row_meta + 3)
    n_in = tl.multiple_of(tl.load(row_meta + 4), VEC)
    ld = tl.multiple_of(tl.load(row_meta + 5), VEC)
    d_off = tl.load(row_meta + 6)
    p_off = tl.load(row_meta + 7)

    rows = blk * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < n_out
    w_rows = w_base + w_off + rows[:, None] * ld
    v_row = v_base + v_off
    d = tl.zeros([BLOCK_R], dtype=tl.float64)
    c0 = n_in * 0  # while, not range(): the interpreter cannot range() over loaded bounds
    while c0 < n_in:
        cols = tl.multiple_of(c0, BLOCK_C) + tl.arange(0, BLOCK_C)
        col_mask = cols < n_in
        tile = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        vv = tl.load(v_row + cols, mask=col_mask, other=0.0)
        d += tl.sum(tile.to(tl.float64) * vv.to(tl.float64)[None, :], axis=1)
        c0 += BLOCK_C
    tl.store(d_work + d_off + rows, d, mask=row_mask)
    tl.store(d_sq + pid, tl.sum(d * d, axis=0))

    # The same tiles again, weighted by d, last tile first: the tiles streamed last
    # are the likeliest still in L1/L2. Each column's sum is within one tile, so the
    # tile order changes no result.
    part_row = partials + p_off + blk * n_in
    c0 = (n_in - 1) // BLOCK_C * BLOCK_C
    while c0 >= 0:
        cols = tl.multiple_of(c0, BLOCK_C) + tl.arange(0, BLOCK_C)
        col_mask = cols < n_in
        tile = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        tl.store(part_row + cols, tl.sum(tile.to(tl.float64) * d[:, None], axis=0), mask=col_mask)
        c0 -= BLOCK_C


@triton.jit
def _spectral_norm_reduce_kernel(
    partials,  # (sum_l blocks_l * in_l,) float64, as written by the main kernel
    g_work,  # (sum_l in_l,) float64: receives g = W^T d; layer l's at meta[l, 8]
    g_sq,  # (Q,) float64: receives the sum of g_c^2 over each program's columns
    meta,  # (L, 16) int64 layer table
    chunks,  # (Q, 2) int64: layer and column-chunk index of each program
    BLOCK_B: tl.constexpr,  # partial rows per tile
    BLOCK_G: tl.constexpr,  # columns per program
):
    pid, layer, chunk, row_meta = _program_entry(chunks, meta)
    n_in = tl.load(row_meta + 4)
    p_off = tl.load(row_meta + 7)
    g_off = tl.load(row_meta + 8)
    n_blk = tl.load(row_meta + 10)

    cols = chunk * BLOCK_G + tl.arange(0, BLOCK_G)
    col_mask = cols < n_in
    g = tl.zeros([BLOCK_G], dtype=tl.float64)
    b0 = n_blk * 0
    while b0 < n_blk:
        bs = b0 + tl.arange(0, BLOCK_B)
        mask = (bs < n_blk)[:, None] & col_mask[None, :]
        tile = tl.load(partials + p_off + bs[:, None] * n_in + cols[None, :], mask=mask, other=0.0)
        g += tl.sum(tile, axis=0)
        b0 += BLOCK_B
    tl.store(g_work + g_off + cols, g, mask=col_mask)
    tl.store(g_sq + pid, tl.sum(g * g, axis=0))


@triton.jit
def _spectral_norm_finalize_kernel(
    u_base,  # layer 0's u; layer l's u (out_l,) at u_base + meta[l, 1]; receives d / max(||d||, eps)
    v_base,  # layer 0's v; layer l's v (in_l,) at v_base + meta[l, 2]; receives g / max(||g||, eps)
    d_work,  # (sum_l out_l,) float64 d
    g_work,  # (sum_l in_l,) float64 g
    d_sq,  # (P,) float64 per-row-block sums of d^2
    g_sq,  # (Q,) float64 per-chunk sums of g^2
    meta,  # (L, 16) int64 layer table
    chunks,  # (Q, 2) int64: layer and column-chunk index of each program
    sigma,  # (L,) output estimates, in the weights' dtype
    EPS: tl.constexpr,  # the norm floor
    BLOCK_G: tl.constexpr,  # columns per program (as in the reduce kernel)
    BLOCK_F: tl.constexpr,  # elements per tile of the loops
):
    pid, layer, chunk, row_meta = _program_entry(chunks, meta)
    u_off = tl.load(row_meta + 1)
    v_off = tl.load(row_meta + 2)
    n_out = tl.load(row_meta + 3)
    n_in = tl.load(row_meta + 4)
    d_off = tl.load(row_meta + 6)
    g_off = tl.load(row_meta + 8)
    blk0 = tl.load(row_meta + 9)
    n_blk = tl.load(row_meta + 10)
    chk0 = tl.load(row_meta + 11)
    n_chk = tl.load(row_meta + 12)
    offs = tl.arange(0, BLOCK_F)

    # Every program of the layer sums the same values in the same order: equal norms.
    dd = tl.zeros([BLOCK_F], dtype=tl.float64)
    i0 = n_blk * 0
    while i0 < n_blk:
        dd += tl.load(d_sq + blk0 + i0 + offs, mask=i0 + offs < n_blk, other=0.0)
        i0 += BLOCK_F
    gg = tl.zeros([BLOCK_F], dtype=tl.float64)
    i0 = n_chk * 0
    while i0 < n_chk:
        gg += tl.load(g_sq + chk0 + i0 + offs, mask=i0 + offs < n_chk, other=0.0)
        i0 += BLOCK_F
    eps = tl.full([], EPS, tl.float64)
    n = tl.maximum(tl.sqrt(tl.sum(dd, axis=0)), eps)
    t = tl.sqrt(tl.sum(gg, axis=0)) / n
    tv = tl.maximum(t, eps)
    v_scale = 1.0 / (n * tv)

    cols = chunk * BLOCK_G + tl.arange(0, BLOCK_G)
    col_mask = cols < n_in
    g = tl.load(g_work + g_off + cols, mask=col_mask, other=0.0)
    tl.store(v_base + v_off + cols, (g * v_scale).to(v_base.dtype.element_ty), mask=col_mask)

    # Chunk 0 writes u and sigma (the other programs skip the loop: zero bound).
    u_end = tl.where(chunk == 0, n_out, 0)
    i0 = n_out * 0
    while i0 < u_end:
        mask = i0 + offs < n_out
        x = tl.load(d_work + d_off + i0 + offs, mask=mask, other=0.0)
        tl.store(u_base + u_off + i0 + offs, (x / n).to(u_base.dtype.element_ty), mask=mask)
        i0 += BLOCK_F
    tl.store(sigma + layer, (t * t / tv).to(sigma.dtype.element_ty), mask=chunk == 0)


def _offset(t: torch.Tensor, base: torch.Tensor) -> int:
    return (t.data_ptr() - base.data_ptr()) // t.element_size()


def base_offsets_ok(weights, us, vs) -> str | None:
    """``None`` when every tensor is addressable from layer 0's, else why not."""
    for seq, name in ((weights, "weight"), (us, "u"), (vs, "v")):
        base = seq[0].data_ptr()
        size = seq[0].element_size()
        for i, t in enumerate(seq):
            if (t.data_ptr() - base) % size:
                return f"layer {i}'s {name} is not element-aligned with layer 0's"
    return None


def layout_cache_info() -> LayoutCacheInfo:
    """Hits and misses of the layout cache since the last :func:`layout_cache_clear`."""
    return LayoutCacheInfo(_STATS["hits"], _STATS["misses"], len(_CACHE), _CACHE_SIZE)


def layout_cache_clear() -> None:
    """Empty the layout cache and zero its counters."""
    _CACHE.clear()
    _STATS["hits"] = _STATS["misses"] = 0


def _vector_width(weights, vs) -> int:
    """Elements per 16-byte load when every row start, width and ``v`` allows it, else 1."""
    item = weights[0].element_size()
    vec = 16 // item
    for w, v in zip(weights, vs, strict=True):
        if w.data_ptr() % 16 or v.data_ptr() % 16 or w.stride(0) % vec or w.shape[1] % vec:
            return 1
    return vec


def _upload(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A pageable host-to-device copy blocks the host until the GPU has caught up;
    # from pinned memory with non_blocking it is queued on the stream like a
    # kernel (the pinned block is not reused until the copy has run).
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _layout(weights, us, vs, device) -> tuple:
    """The call's layout: (table, programs P, chunks Q, d, partial and g sizes, VEC).

    ``table`` (int64, on the device) holds ``meta`` (L, 16), then the main
    kernel's program map (P, 2), then the chunk map (Q, 2). Columns of ``meta``:
    0 w_off, 1 u_off, 2 v_off (element offsets from layer 0's tensors), 3 out,
    4 in, 5 ld (row stride), 6 d_off, 7 p_off, 8 g_off (offsets into the float64
    workspaces), 9 first program, 10 row blocks, 11 first chunk, 12 chunks.
    """
    key = (
        device,
        weights[0].dtype,
        _BLOCK_R,
        _BLOCK_G,
        tuple(
            (w.data_ptr(), *w.shape, w.stride(0), u.data_ptr(), v.data_ptr())
            for w, u, v in zip(weights, us, vs, strict=True)
        ),
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _STATS["hits"] += 1
        _CACHE.move_to_end(key)
        return hit
    _STATS["misses"] += 1
    meta, prog, chunks = [], [], []
    d_total = p_total = g_total = 0
    for layer, (w, u, v) in enumerate(zip(weights, us, vs, strict=True)):
        out_f, in_f = w.shape
        n_blk = -(-out_f // _BLOCK_R)
        n_chk = -(-in_f // _BLOCK_G)
        meta.append(
            [_offset(w, weights[0]), _offset(u, us[0]), _offset(v, vs[0]), out_f, in_f, w.stride(0)]
            + [d_total, p_total, g_total, len(prog), n_blk, len(chunks), n_chk]
            + [0] * (_META - 13)
        )
        d_total += out_f
        p_total += n_blk * in_f
        g_total += in_f
        prog.extend([layer, b] for b in range(n_blk))
        chunks.extend([layer, c] for c in range(n_chk))
    host = torch.tensor([x for row in meta + prog + chunks for x in row], dtype=torch.int64)
    entry = (
        _upload(host, device),
        len(prog),
        len(chunks),
        d_total,
        p_total,
        g_total,
        _vector_width(weights, vs),
    )
    _CACHE[key] = entry
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def spectral_norm_step_triton(weights, us, vs, eps: float) -> torch.Tensor:
    """Launch the grouped step; same contract as :func:`brainkern.ops.spectral_norm_step`.

    Args:
        weights: L matrices (out_l, in_l), unit column stride, float32 or float64.
        us: L contiguous vectors (out_l,), overwritten with the new ``u``.
        vs: L contiguous vectors (in_l,), overwritten with the new ``v``.
        eps: the norm floor.

    Returns:
        sigma (L,) in the weights' dtype.
    """
    device = weights[0].device
    table, programs, n_chunks, d_total, p_total, g_total, vec = _layout(weights, us, vs, device)
    n_layers = len(weights)
    meta = table[: n_layers * _META]
    prog_map = table[n_layers * _META : n_layers * _META + 2 * programs]
    chunk_map = table[n_layers * _META + 2 * programs :]
    f64 = dict(dtype=torch.float64, device=device)
    # Every workspace element is written before it is read: no zero fill.
    d_work = torch.empty(d_total, **f64)
    partials = torch.empty(p_total, **f64)
    g_work = torch.empty(g_total, **f64)
    d_sq = torch.empty(programs, **f64)
    g_sq = torch.empty(n_chunks, **f64)
    sigma = torch.empty(n_layers, dtype=weights[0].dtype, device=device)
    _spectral_norm_fwd_kernel[(programs,)](
        weights[0],
        vs[0],
        d_work,
        partials,
        d_sq,
        meta,
        prog_map,
        BLOCK_R=_BLOCK_R,
        BLOCK_C=_BLOCK_C,
        VEC=vec,
        num_warps=_NUM_WARPS,
    )
    _spectral_norm_reduce_kernel[(n_chunks,)](
        partials, g_work, g_sq, meta, chunk_map, BLOCK_B=_BLOCK_B, BLOCK_G=_BLOCK_G
    )
    _spectral_norm_finalize_kernel[(n_chunks,)](
        us[0],
        vs[0],
        d_work,
        g_work,
        d_sq,
        g_sq,
        meta,
        chunk_map,
        sigma,
        EPS=float(eps),
        BLOCK_G=_BLOCK_G,
        BLOCK_F=_BLOCK_F,
    )
    return sigma
