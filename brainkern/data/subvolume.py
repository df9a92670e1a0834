"""Sub-volume sampling for hierarchical training (HA-GAN; King et al., seed 003).

The high-resolution path of HA-GAN sees a random slab of the volume along its
first spatial axis (8 x 64 x 64 of a 64^3 volume in King et al., i.e. depth
``D / 8``) together with the slab's position; the low-resolution path sees the
whole volume average-pooled by 4 (16^3). At inference the generator produces the
full volume slab by slab, which :func:`assemble_slabs` puts back together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sample_subvolumes(
    volumes: torch.Tensor,
    depth: int | None = None,
    factor: int = 4,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random slab of each volume plus the whole volume at low resolution.

    Args:
        volumes: ``(N, C, D, H, W)``.
        depth: slab depth along ``D`` (default ``D // 8``, at least 1).
        factor: average-pooling factor of the low-resolution copy (1 keeps it).
        generator: a CPU ``torch.Generator`` for the slab starts (seeded runs are
            deterministic).

    Returns:
        ``slabs`` ``(N, C, depth, H, W)``, ``starts`` ``(N,)`` int64 (slab ``n`` is
        ``volumes[n, :, starts[n]:starts[n] + depth]``), and ``low_res``
        ``(N, C, D // factor, H // factor, W // factor)``.

    Raises:
        ValueError: not 5D, ``depth`` outside ``[1, D]``, or ``D, H, W`` not divisible by ``factor``.
    """
    if volumes.dim() != 5:
        raise ValueError(f"sample_subvolumes expects (N, C, D, H, W), got shape {tuple(volumes.shape)}")
    n, _, d, h, w = volumes.shape
    depth = max(d // 8, 1) if depth is None else int(depth)
    if not 1 <= depth <= d:
        raise ValueError(f"depth must be in [1, {d}] for a volume of depth {d}, got {depth}")
    factor = int(factor)
    if factor < 1 or d % factor or h % factor or w % factor:
        raise ValueError(f"volume size {(d, h, w)} must be divisible by factor={factor}")
    starts = torch.randint(0, d - depth + 1, (n,), generator=generator, dtype=torch.int64)
    index = (starts.view(n, 1) + torch.arange(depth).view(1, depth)).to(volumes.device)
    index = index.view(n, 1, depth, 1, 1).expand(n, volumes.shape[1], depth, h, w)
    slabs = torch.gather(volumes, 2, index)
    low_res = F.avg_pool3d(volumes, kernel_size=factor) if factor > 1 else volumes
    return slabs, starts, low_res


def slab_starts(depth_total: int, depth: int) -> list[int]:
    """Starts of slabs of ``depth`` that tile ``depth_total`` (the last one flush with the end)."""
    if not 1 <= depth <= depth_total:
        raise ValueError(f"depth must be in [1, {depth_total}], got {depth}")
    starts = list(range(0, depth_total - depth + 1, depth))
    if starts[-1] + depth < depth_total:
        starts.append(depth_total - depth)
    return starts


def assemble_slabs(
    slabs: Sequence[torch.Tensor], starts: Sequence[int] | torch.Tensor, depth_total: int
) -> torch.Tensor:
    """Put slabs back into full volumes; overlapping planes are averaged.

    Args:
        slabs: ``K`` tensors ``(N, C, d_k, H, W)``.
        starts: ``K`` starts, each an int (all samples) or an ``(N,)`` tensor (one
            per sample, as :func:`sample_subvolumes` returns).
        depth_total: ``D`` of the assembled volume.

    Returns:
        ``(N, C, depth_total, H, W)``.

    Raises:
        ValueError: no slabs, mismatched shapes, a slab outside ``[0, depth_total)``,
            or a plane no slab covers.
    """
    if len(slabs) == 0:
        raise ValueError("assemble_slabs needs at least one slab")
    if len(starts) != len(slabs):
        raise ValueError(f"got {len(slabs)} slabs but {len(starts)} starts")
    n, c, _, h, w = slabs[0].shape
    ref = slabs[0]
    acc = torch.zeros(n, c, depth_total, h, w, dtype=ref.dtype, device=ref.device)
    cover = torch.zeros(n, depth_total, dtype=ref.dtype, device=ref.device)
    for k, (slab, start) in enumerate(zip(slabs, starts, strict=True)):
        if slab.dim() != 5 or (slab.shape[0], slab.shape[1], slab.shape[3], slab.shape[4]) != (n, c, h, w):
            raise ValueError(f"slab {k} has shape {tuple(slab.shape)}, expected ({n}, {c}, d, {h}, {w})")
        d = slab.shape[2]
        s = torch.as_tensor(start, dtype=torch.int64).reshape(-1).cpu()
        if s.numel() == 1:
            s = s.expand(n)
        if s.numel() != n:
            raise ValueError(f"starts[{k}] has {s.numel()} entries for a batch of {n}")
        if int(s.min()) < 0 or int(s.max()) + d > depth_total:
            raise ValueError(f"slab {k} (depth {d}, starts {s.tolist()}) falls outside depth {depth_total}")
        for i in range(n):
            a = int(s[i])
            acc[i, :, a : a + d] += slab[i]
            cover[i, a : a + d] += 1
    if bool((cover == 0).any()):
        missing = sorted({int(j) for j in torch.nonzero(cover == 0)[:, 1].tolist()})
        raise ValueError(f"planes {missing[:10]}{'...' if len(missing) > 10 else ''} are covered by no slab")
    return acc / cover.view(n, 1, depth_total, 1, 1)
