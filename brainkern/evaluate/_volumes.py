"""Sets of volumes as the evaluation reads them: chunk by chunk, never whole.

:class:`_Volumes` wraps a tensor or (memory-mapped) array of ``(N, 1, D, H, W)`` or
``(N, D, H, W)`` volumes and gathers float32 chunks on a device; the helpers here
are shared by the metric modules of :mod:`brainkern.evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

VolumesLike = torch.Tensor | np.ndarray

# At most this many MMD tests are gathered at once, and fewer when one side of the
# chunk would exceed _CHUNK_BYTES (10 tests of 8 volumes of 128^3 are 670 MB a side).
_TESTS_PER_CHUNK = 10
_CHUNK_BYTES = 256 * 2**20

_Tick = Callable[[], Any] | None


class _Volumes:
    """A read-only view of a set of volumes, optionally through an index map.

    Gathers chunks as float32 ``(k, 1, D, H, W)`` tensors on a device without ever
    copying or converting the whole set.
    """

    def __init__(self, data: VolumesLike, name: str, index: np.ndarray | None = None):
        if not isinstance(data, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(data).__name__}")
        if data.ndim not in (4, 5) or (data.ndim == 5 and data.shape[1] != 1):
            raise ValueError(
                f"{name}: expected volumes of shape (N, 1, D, H, W) or (N, D, H, W), got {tuple(data.shape)}"
            )
        if isinstance(data, torch.Tensor):
            real_valued = not (data.dtype.is_complex or data.dtype == torch.bool)
        else:
            real_valued = data.dtype.kind in "fiu"
        if not real_valued:
            raise TypeError(f"{name}: expected real-valued volumes, got dtype {data.dtype}")
        self.data, self.name, self.index = data, name, index
        self.grid: tuple[int, int, int] = tuple(int(s) for s in data.shape[-3:])  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else int(self.data.shape[0])

    @property
    def voxels(self) -> int:
        return math.prod(self.grid)

    def subset(self, rows: torch.Tensor | np.ndarray) -> _Volumes:
        rows = np.asarray(rows, dtype=np.int64)
        index = rows if self.index is None else self.index[rows]
        return _Volumes(self.data, self.name, index)

    def take(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Volumes ``rows`` (any shape ``S`` of indices) as float32 ``(*S, 1, D, H, W)`` on ``device``."""
        flat = rows.reshape(-1).cpu().numpy().astype(np.int64)
        if self.index is not None:
            flat = self.index[flat]
        if isinstance(self.data, torch.Tensor):
            picked = self.data.detach()[torch.as_tensor(flat, device=self.data.device)]
        else:
            # Fancy indexing reads only these rows, also from a np.memmap.
            picked = torch.from_numpy(np.ascontiguousarray(self.data[flat]))
        picked = picked.to(device=device, dtype=torch.float32)
        return picked.reshape(*rows.shape, 1, *self.grid)


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _mean_std(values: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of the concatenated values, in float64."""
    v = torch.cat(values).double()
    return float(v.mean()), float(v.std(correction=0))


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def voxel_moments(vols: _Volumes) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel mean and population standard deviation of a set, each ``(D, H, W)`` float64.

    Chan et al.'s pairwise update of (count, mean, M2), a chunk of volumes at a time,
    so the set is never held whole in float64.

    Raises:
        ValueError: an empty set, NaN or infinite values.
    """
    if len(vols) == 0:
        raise ValueError(f"{vols.name} holds no volumes")
    count, mean, m2 = 0, None, None
    step = max(1, _CHUNK_BYTES // (vols.voxels * 8))
    for start in range(0, len(vols), step):
        chunk = vols.take(torch.arange(start, min(start + step, len(vols))), torch.device("cpu"))
        chunk = chunk.double().flatten(1)
        c, mu = chunk.shape[0], chunk.mean(0)
        cm2 = ((chunk - mu) ** 2).sum(0)
        if mean is None:
            count, mean, m2 = c, mu, cm2
            continue
        delta = mu - mean
        total = count + c
        mean = mean + delta * (c / total)
        m2 = m2 + cm2 + delta**2 * (count * c / total)
        count = total
    sd = (m2 / count).sqrt()
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(sd).all())):
        raise ValueError(f"{vols.name} holds NaN or infinite values")
    return mean.reshape(vols.grid), sd.reshape(vols.grid)


def _paired_chunks(
    a: _Volumes,
    a_rows: torch.Tensor,
    b: _Volumes,
    b_rows: torch.Tensor,
    per_chunk: int,
    device: torch.device,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    tick: _Tick = None,
) -> tuple[float, float]:
    """Mean and population std of ``fn(a[a_rows[k]], b[b_rows[k]])`` over the leading index ``k``
    of ``a_rows`` / ``b_rows``, gathered ``per_chunk`` at a time (no gradients)."""
    values = []
    with torch.no_grad():
        for start in range(0, len(a_rows), per_chunk):
            x = a.take(a_rows[start : start + per_chunk], device)
            y = b.take(b_rows[start : start + per_chunk], device)
            values.append(fn(x, y).cpu())
            del x, y
            if tick is not None:
                tick()
    return _mean_std(values)
