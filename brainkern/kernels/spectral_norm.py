"""Triton kernels of the fused spectral-norm step (see :mod:`brainkern.ops.spectral_norm`).

Grouping: every layer goes through one launch of the main kernel and one launch
of the finalize kernel (two launches per call, whatever the number of layers).
Triton has no arrays of pointers, so each layer's ``W``, ``u`` and ``v`` are
addressed as element offsets from layer 0's tensors (``w_base + w_off``): the
tensors of one dtype share one flat address space on the device, and the
offsets are exact multiples of the element size (checked by
:func:`base_offsets_ok`). Per-layer sizes and per-program ``(layer, first row)``
pairs live in one small int64 tensor, cached by the layers' addresses and shapes
so that a training loop (parameters updated in place) uploads it once.

Main kernel, one program per (layer, block of ``BLOCK_R`` rows): the rows' dot
products ``d = W v`` over column tiles, then the rows' share of ``W^T d`` over
the same tiles (a re-read of the ``BLOCK_R`` rows the program just fetched,
which hits L2 on the GPU), added into a per-layer accumulator with
``tl.atomic_add``. Finalize kernel, one program per layer: the two norms, then
``u``, ``v`` and ``sigma``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl

_META = 8  # w_off, u_off, v_off, out, in, ld, work_off, unused
_BLOCK_R = 8
_BLOCK_C = 128
_BLOCK_F = 512
_CACHE: OrderedDict[tuple, tuple[torch.Tensor, int, int]] = OrderedDict()
_CACHE_SIZE = 8


@triton.jit
def _spectral_norm_fwd_kernel(
    w_base,  # layer 0's weight; layer l's W (out_l, in_l) starts at w_base + meta[l, 0]
    u_base,  # layer 0's u; layer l's u (out_l,) at u_base + meta[l, 1]; receives d = W v
    v_base,  # layer 0's v; layer l's v (in_l,) at v_base + meta[l, 2]
    work,  # (sum_l in_l,) zeroed accumulators of W^T d; layer l's at work + meta[l, 6]
    meta,  # (L, 8) int64: w_off, u_off, v_off, out, in, ld (row stride), work_off, unused
    prog_map,  # (P, 2) int64: layer and first row of each program
    ACC: tl.constexpr,  # accumulation dtype (the weights' dtype: float32 or float64)
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_C: tl.constexpr,  # columns per tile
):
    pid = tl.program_id(0)
    layer = tl.load(prog_map + 2 * pid)
    row0 = tl.load(prog_map + 2 * pid + 1)
    row_meta = meta + layer * 8
    w_off = tl.load(row_meta + 0)
    u_off = tl.load(row_meta + 1)
    v_off = tl.load(row_meta + 2)
    n_out = tl.load(row_meta + 3)
    n_in = tl.load(row_meta + 4)
    ld = tl.load(row_meta + 5)
    work_off = tl.load(row_meta + 6)

    rows = row0 + tl.arange(0, BLOCK_R)
    row_mask = rows < n_out
    w_rows = w_base + w_off + rows[:, None] * ld
    d = tl.zeros([BLOCK_R], dtype=ACC)
    c0 = n_in * 0  # while, not range(): the interpreter cannot range() over loaded bounds
    while c0 < n_in:
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < n_in
        tile = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        vv = tl.load(v_base + v_off + cols, mask=col_mask, other=0.0)
        d += tl.sum(tile.to(ACC) * vv.to(ACC)[None, :], axis=1)
        c0 += BLOCK_C
    tl.store(u_base + u_off + rows, d, mask=row_mask)
    c0 = n_in * 0
    while c0 < n_in:
        cols = c0 + tl.arange(0, BLOCK_C)
        col_mask = cols < n_in
        tile = tl.load(w_rows + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        part = tl.sum(tile.to(ACC) * d[:, None], axis=0)
        tl.atomic_add(work + work_off + cols, part, mask=col_mask)
        c0 += BLOCK_C


@triton.jit
def _spectral_norm_finalize_kernel(
    u_base,  # as above; holds d on entry, u = d / max(||d||, eps) on exit
    v_base,  # as above; receives v = W^T u / max(||W^T u||, eps)
    work,  # (sum_l in_l,) the accumulated W^T d
    meta,  # (L, 8) int64, as above
    sigma,  # (L,) output estimates
    ACC: tl.constexpr,  # float32 or float64
    EPS: tl.constexpr,  # the norm floor
    BLOCK: tl.constexpr,  # elements per tile
):
    layer = tl.program_id(0)
    row_meta = meta + layer * 8
    u_off = tl.load(row_meta + 1)
    v_off = tl.load(row_meta + 2)
    n_out = tl.load(row_meta + 3)
    n_in = tl.load(row_meta + 4)
    work_off = tl.load(row_meta + 6)
    offs = tl.arange(0, BLOCK)

    dd = tl.zeros([BLOCK], dtype=ACC)
    i0 = n_out * 0
    while i0 < n_out:
        x = tl.load(u_base + u_off + i0 + offs, mask=i0 + offs < n_out, other=0.0).to(ACC)
        dd += x * x
        i0 += BLOCK
    gg = tl.zeros([BLOCK], dtype=ACC)
    c0 = n_in * 0
    while c0 < n_in:
        g = tl.load(work + work_off + c0 + offs, mask=c0 + offs < n_in, other=0.0).to(ACC)
        gg += g * g
        c0 += BLOCK
    eps = tl.full([], EPS, ACC)
    n = tl.maximum(tl.sqrt(tl.sum(dd, axis=0)), eps)
    t = tl.sqrt(tl.sum(gg, axis=0)) / n
    tv = tl.maximum(t, eps)
    v_scale = 1.0 / (n * tv)
    i0 = n_out * 0
    while i0 < n_out:
        mask = i0 + offs < n_out
        x = tl.load(u_base + u_off + i0 + offs, mask=mask, other=0.0).to(ACC)
        tl.store(u_base + u_off + i0 + offs, x / n, mask=mask)
        i0 += BLOCK
    c0 = n_in * 0
    while c0 < n_in:
        mask = c0 + offs < n_in
        g = tl.load(work + work_off + c0 + offs, mask=mask, other=0.0).to(ACC)
        tl.store(v_base + v_off + c0 + offs, g * v_scale, mask=mask)
        c0 += BLOCK
    tl.store(sigma + layer, t * t / tv)


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


def _layout(weights, us, vs, device) -> tuple[torch.Tensor, int, int]:
    """Device int64 tensor [meta (L, 8); prog_map (P, 2)], P, and sum_l in_l."""
    layers = zip(weights, us, vs, strict=True)
    key = (
        device,
        weights[0].dtype,
        tuple((w.data_ptr(), *w.shape, w.stride(0), u.data_ptr(), v.data_ptr()) for w, u, v in layers),
    )
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    meta, prog = [], []
    work_off = 0
    for layer, (w, u, v) in enumerate(zip(weights, us, vs, strict=True)):
        out_f, in_f = w.shape
        meta.append(
            [
                _offset(w, weights[0]),
                _offset(u, us[0]),
                _offset(v, vs[0]),
                out_f,
                in_f,
                w.stride(0),
                work_off,
                0,
            ]
        )
        work_off += in_f
        prog.extend([layer, r] for r in range(0, out_f, _BLOCK_R))
    table = torch.tensor([x for row in meta + prog for x in row], dtype=torch.int64).to(device)
    entry = (table, len(prog), work_off)
    _CACHE[key] = entry
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry


def spectral_norm_step_triton(weights, us, vs, eps: float) -> torch.Tensor:
    """Launch the grouped step; same contract as :func:`brainkern.ops.spectral_norm_step`."""
    device = weights[0].device
    dtype = weights[0].dtype
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    table, programs, total_in = _layout(weights, us, vs, device)
    n_layers = len(weights)
    meta = table[: n_layers * _META]
    prog_map = table[n_layers * _META :]
    work = torch.zeros(total_in, dtype=dtype, device=device)
    sigma = torch.empty(n_layers, dtype=dtype, device=device)
    _spectral_norm_fwd_kernel[(programs,)](
        weights[0], us[0], vs[0], work, meta, prog_map, ACC=acc, BLOCK_R=_BLOCK_R, BLOCK_C=_BLOCK_C
    )
    _spectral_norm_finalize_kernel[(n_layers,)](
        us[0], vs[0], work, meta, sigma, ACC=acc, EPS=float(eps), BLOCK=_BLOCK_F
    )
    return sigma
