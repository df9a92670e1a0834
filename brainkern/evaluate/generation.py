"""Realism and diversity of generated volumes: Kwon et al.'s Table 1 metrics.

Kwon et al. (2019, seed 001, "Quantitative Results") judge a 3D brain generator by

- **batch MMD^2**: the biased linear-kernel estimate between ``B = 8`` real and
  ``B = 8`` generated volumes, averaged over 100 such tests (lower = the generated
  distribution is closer to the real one). The biased linear estimate is
  ``||mean(X) - mean(Y)||^2`` summed over voxels, so it grows with the grid;
  ``mmd2_per_voxel`` divides it by the voxel count to compare grids;
- **MS-SSIM diversity**: the mean 3D MS-SSIM over 1000 random pairs of generated
  volumes (lower = more diverse; a collapsed generator scores near 1), read next to
  the same figure for pairs of real volumes.

Every function takes volumes as torch tensors or numpy arrays (memory-mapped ones
included) of shape ``(N, 1, D, H, W)`` or ``(N, D, H, W)``. The inputs stay where
they are; only one chunk of tests or pairs is gathered, cast to float32 and moved to
``device`` at a time, so memory beyond the inputs is bounded whatever the counts.
All randomness comes from a ``torch.Generator`` seeded by the ``seed`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from brainkern.evaluate.ms_ssim import ms_ssim3d, number_of_scales

__all__ = ["batch_mmd2", "format_table", "generation_table", "matched_noise", "ms_ssim_diversity"]

VolumesLike = torch.Tensor | np.ndarray

# At most this many MMD tests are gathered at once, and fewer when one side of the
# chunk would exceed _CHUNK_BYTES (10 tests of 8 volumes of 128^3 are 670 MB a side).
_TESTS_PER_CHUNK = 10
_CHUNK_BYTES = 256 * 2**20
# MS-SSIM's default window; volumes smaller than this on a side cannot be compared.
_WIN_SIZE = 7

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


def _mmd_indices(
    n_real: int, n_fake: int, n_tests: int, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws of :func:`batch_mmd2`: two ``(n_tests, batch_size)`` int64 index tensors.

    Test ``t`` takes ``batch_size`` distinct real indices (a random permutation's
    head), then ``batch_size`` distinct fake indices, from one generator, so the
    draws of a test do not depend on how the tests are later chunked.
    """
    g = _generator(seed)
    real_idx = torch.empty(n_tests, batch_size, dtype=torch.int64)
    fake_idx = torch.empty(n_tests, batch_size, dtype=torch.int64)
    for t in range(n_tests):
        real_idx[t] = torch.randperm(n_real, generator=g)[:batch_size]
        fake_idx[t] = torch.randperm(n_fake, generator=g)[:batch_size]
    return real_idx, fake_idx


def _pair_indices(n: int, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws of :func:`ms_ssim_diversity`: ``(i, j)``, each ``(n_pairs,)``, uniform over ``i != j``.

    ``j`` is drawn from the ``n - 1`` indices other than ``i`` (shifting those at or
    above ``i`` up by one), so every ordered pair of distinct volumes is equally likely.
    """
    g = _generator(seed)
    i = torch.randint(n, (n_pairs,), generator=g)
    j = torch.randint(n - 1, (n_pairs,), generator=g)
    return i, j + (j >= i).long()


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _batch_mmd2(
    real: _Volumes,
    fake: _Volumes,
    n_tests: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    tick: _Tick = None,
) -> dict:
    from brainkern.ops import mmd2_batched  # noqa: PLC0415

    if real.grid != fake.grid:
        raise ValueError(
            f"{real.name} and {fake.name} have different grids: {real.grid} and {fake.grid}; "
            "resample them to one grid first"
        )
    for vols in (real, fake):
        if len(vols) < batch_size:
            raise ValueError(
                f"batch MMD^2 draws {batch_size} distinct volumes per test, but {vols.name} has only "
                f"{len(vols)}; lower batch_size or provide more volumes"
            )
    real_idx, fake_idx = _mmd_indices(len(real), len(fake), n_tests, batch_size, seed)
    per_chunk = max(1, min(_TESTS_PER_CHUNK, _CHUNK_BYTES // (batch_size * real.voxels * 4)))
    values = []
    with torch.no_grad():
        for start in range(0, n_tests, per_chunk):
            x = real.take(real_idx[start : start + per_chunk], device)
            y = fake.take(fake_idx[start : start + per_chunk], device)
            values.append(mmd2_batched(x, y, kernel="linear", estimator="biased").cpu())
            del x, y
            if tick is not None:
                tick()
    mean, std = _mean_std(values)
    return {
        "mmd2": mean,
        "mmd2_std": std,
        "mmd2_per_voxel": mean / real.voxels,
        "n_tests": n_tests,
        "batch_size": batch_size,
    }


def batch_mmd2(
    real: VolumesLike,
    fake: VolumesLike,
    *,
    n_tests: int = 100,
    batch_size: int = 8,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict:
    """Kwon et al.'s batch MMD^2: the biased linear estimate averaged over random tests.

    Each test draws ``batch_size`` distinct volumes from ``real`` and, independently,
    ``batch_size`` distinct volumes from ``fake``, and computes
    ``||mean(real batch) - mean(fake batch)||^2`` summed over voxels
    (:func:`brainkern.ops.mmd2_batched`, linear kernel, biased estimator).

    Args:
        real, fake: ``(N, 1, D, H, W)`` or ``(N, D, H, W)`` volumes on one grid
            (torch tensors or numpy arrays; any real dtype, computed in float32).
        n_tests: number of tests (Kwon et al.: 100).
        batch_size: volumes per side of a test (Kwon et al.: 8).
        seed: seeds the index draws; the same seed gives the same draws.
        device: where the arithmetic runs (default CPU).

    Returns:
        ``{"mmd2": mean over tests, "mmd2_std": population std over tests,
        "mmd2_per_voxel": mmd2 / (D*H*W), "n_tests": ..., "batch_size": ...}``.

    Raises:
        ValueError: different grids, a set with fewer than ``batch_size`` volumes,
            bad counts, bad shapes, or NaN/inf in a drawn volume.
        TypeError: inputs that are not real-valued tensors or arrays.
    """
    n_tests = _check_count("n_tests", n_tests)
    batch_size = _check_count("batch_size", batch_size)
    return _batch_mmd2(
        _Volumes(real, "real"), _Volumes(fake, "fake"), n_tests, batch_size, seed, _device(device)
    )


def _check_ms_ssim_grid(vols: _Volumes) -> None:
    if number_of_scales(vols.grid, _WIN_SIZE) == 0:
        raise ValueError(
            f"MS-SSIM needs volumes at least {_WIN_SIZE} voxels on every side (its Gaussian window), "
            f"but {vols.name} has grid {vols.grid}"
        )


def _ms_ssim_diversity(
    vols: _Volumes,
    n_pairs: int,
    data_range: float,
    low: float,
    seed: int,
    batch_size: int,
    device: torch.device,
    tick: _Tick = None,
) -> dict:
    if len(vols) < 2:
        raise ValueError(f"MS-SSIM diversity compares pairs of distinct volumes; {vols.name} has {len(vols)}")
    _check_ms_ssim_grid(vols)
    i, j = _pair_indices(len(vols), n_pairs, seed)
    values = []
    with torch.no_grad():
        for start in range(0, n_pairs, batch_size):
            a = vols.take(i[start : start + batch_size], device)
            b = vols.take(j[start : start + batch_size], device)
            if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
                raise ValueError(f"{vols.name} holds NaN or infinite values")
            values.append(ms_ssim3d(a, b, data_range, low=low).cpu())
            del a, b
            if tick is not None:
                tick()
    mean, std = _mean_std(values)
    return {"ms_ssim": mean, "ms_ssim_std": std, "n_pairs": n_pairs}


def ms_ssim_diversity(
    volumes: VolumesLike,
    *,
    n_pairs: int = 1000,
    data_range: float = 2.0,
    low: float = -1.0,
    seed: int = 0,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> dict:
    """Mean 3D MS-SSIM over random pairs of distinct volumes (Kwon et al.'s diversity score).

    Pairs ``(i, j)`` with ``i != j`` are drawn uniformly, with replacement across
    pairs. Lower means more diverse; a generator that always emits one volume scores 1.

    Args:
        volumes: ``(N, 1, D, H, W)`` or ``(N, D, H, W)``, ``N >= 2``, each side >= 7.
        n_pairs: number of pairs (Kwon et al.: 1000).
        data_range: intensity range of the data (2 for volumes scaled to [-1, 1]).
        low: the bottom of that range (-1 for [-1, 1]); see :func:`ms_ssim3d`.
        seed: seeds the pair draws.
        batch_size: pairs compared at once (bounds memory: ``2 * batch_size`` volumes).
        device: where the arithmetic runs (default CPU).

    Returns:
        ``{"ms_ssim": mean, "ms_ssim_std": population std over pairs, "n_pairs": ...}``.

    Raises:
        ValueError: fewer than 2 volumes, a grid smaller than the 7-voxel window on
            some side, bad counts or ``data_range``, bad shapes, NaN/inf in a volume.
        TypeError: inputs that are not real-valued tensors or arrays.
    """
    n_pairs = _check_count("n_pairs", n_pairs)
    batch_size = _check_count("batch_size", batch_size)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    vols = _Volumes(volumes, "volumes")
    return _ms_ssim_diversity(vols, n_pairs, float(data_range), float(low), seed, batch_size, _device(device))


def matched_noise(real: VolumesLike, n: int, *, seed: int = 0) -> torch.Tensor:
    """Gaussian noise volumes with the real set's global mean and standard deviation.

    A floor for the metrics: a trained generator should score a lower MMD^2 than
    this noise (which matches only the first two moments of the voxel histogram).

    Args:
        real: ``(N, 1, D, H, W)`` or ``(N, D, H, W)`` volumes; their mean and
            (population) std over every voxel are accumulated in float64, a few
            volumes at a time.
        n: number of noise volumes.
        seed: seeds the noise.

    Returns:
        ``(n, 1, D, H, W)`` float32 tensor on the CPU.

    Raises:
        ValueError: an empty ``real`` set, ``n < 1``, bad shapes.
    """
    n = _check_count("n", n)
    vols = _Volumes(real, "real")
    if len(vols) == 0:
        raise ValueError("real holds no volumes")
    # Chan et al.'s pairwise update of (count, mean, M2): stable for any set size.
    count, mean, m2 = 0, 0.0, 0.0
    step = max(1, _CHUNK_BYTES // (vols.voxels * 8))
    for start in range(0, len(vols), step):
        chunk = vols.take(torch.arange(start, min(start + step, len(vols))), torch.device("cpu")).double()
        c, mu = chunk.numel(), float(chunk.mean())
        cm2 = float(((chunk - mu) ** 2).sum())
        delta = mu - mean
        total = count + c
        mean += delta * c / total
        m2 += cm2 + delta**2 * count * c / total
        count = total
    std = math.sqrt(m2 / count)
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError("real holds NaN or infinite values")
    noise = torch.randn(n, 1, *vols.grid, generator=_generator(seed))
    return noise.mul_(std).add_(mean)


def _voxel_sd(vols: _Volumes) -> float:
    # Welford's per-voxel update in float64, a chunk of volumes at a time.
    count, mean, m2 = 0, None, None
    step = max(1, _CHUNK_BYTES // (vols.voxels * 8))
    for start in range(0, len(vols), step):
        chunk = vols.take(torch.arange(start, min(start + step, len(vols))), torch.device("cpu"))
        for x in chunk.double().flatten(1):
            count += 1
            if mean is None:
                mean, m2 = x.clone(), torch.zeros_like(x)
                continue
            delta = x - mean
            mean += delta / count
            m2 += delta * (x - mean)
    return float((m2 / count).sqrt().mean())


def voxel_sd(volumes: VolumesLike) -> float:
    """How much a set of volumes varies: the standard deviation across volumes at
    each voxel (population), averaged over voxels.

    A plainer diversity figure beside MS-SSIM: a collapsed generator scores 0, and
    a generator that varies as much as the real data scores what the real volumes
    do. Unlike MS-SSIM it does not reward unstructured noise less than structure.

    Raises:
        ValueError: fewer than 2 volumes, bad shapes.
    """
    vols = _Volumes(volumes, "volumes")
    if len(vols) < 2:
        raise ValueError(f"voxel_sd needs at least 2 volumes, got {len(vols)}")
    return _voxel_sd(vols)


def generation_table(
    real: VolumesLike,
    candidates: Mapping[str, VolumesLike],
    *,
    n_tests: int = 100,
    batch_size: int = 8,
    n_pairs: int = 1000,
    data_range: float = 2.0,
    low: float = -1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Kwon et al.'s Table 1 for several candidate sets of volumes, and the real row.

    Every candidate is compared with the same real draws (same ``seed``), so the
    differences between rows do not come from different real batches.

    Args:
        real: the real volumes, ``(N, 1, D, H, W)`` or ``(N, D, H, W)``.
        candidates: name -> generated volumes on the same grid (e.g. a model's
            samples, :func:`matched_noise`, a baseline).
        n_tests, batch_size: as :func:`batch_mmd2`.
        n_pairs, data_range, low: as :func:`ms_ssim_diversity`.
        seed: seeds every draw.
        device: where the arithmetic runs (default CPU).
        progress: show a tqdm bar (one step per chunk of tests or pairs).

    Returns:
        One dict per candidate, in order, then one for ``"real"``, each
        ``{"model", "mmd2", "mmd2_std", "mmd2_per_voxel", "ms_ssim", "ms_ssim_std", "voxel_sd"}``
        (``voxel_sd``: :func:`voxel_sd` of the set).
        The real row's MS-SSIM is over pairs of real volumes; its MMD fields compare
        two disjoint random halves of the real set (the MMD^2 two samples of the same
        distribution reach at this batch size), or are NaN when there are fewer than
        ``2 * batch_size`` real volumes.

    Raises:
        ValueError, TypeError: as :func:`batch_mmd2` and :func:`ms_ssim_diversity`,
            a candidate named ``"real"``, or no candidates and too few real volumes.
    """
    n_tests = _check_count("n_tests", n_tests)
    batch_size = _check_count("batch_size", batch_size)
    n_pairs = _check_count("n_pairs", n_pairs)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    if "real" in candidates:
        raise ValueError('"real" names the reference row of the table; rename that candidate')
    dev = _device(device)
    real_v = _Volumes(real, "real")
    cands = {name: _Volumes(v, f"candidate {name!r}") for name, v in candidates.items()}
    # Check everything cheap first, so a bad last candidate fails before minutes of work.
    _check_ms_ssim_grid(real_v)
    for v in cands.values():
        if v.grid != real_v.grid:
            raise ValueError(f"{v.name} has grid {v.grid}, the real volumes {real_v.grid}")
        for who in (real_v, v):
            if len(who) < batch_size:
                raise ValueError(f"{who.name} has {len(who)} volumes, fewer than batch_size={batch_size}")
        if len(v) < 2:
            raise ValueError(f"{v.name} has {len(v)} volume; MS-SSIM diversity needs at least 2")
    if len(real_v) < 2:
        raise ValueError(f"real has {len(real_v)} volume; MS-SSIM diversity needs at least 2")

    halves = len(real_v) >= 2 * batch_size
    mmd_chunks = math.ceil(
        n_tests / max(1, min(_TESTS_PER_CHUNK, _CHUNK_BYTES // (batch_size * real_v.voxels * 4)))
    )
    pair_chunks = math.ceil(n_pairs / 50)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        total = (len(cands) + 1) * pair_chunks + (len(cands) + halves) * mmd_chunks
        bar = tqdm(total=total, desc="generation metrics", unit="chunk")
    tick = bar.update if bar is not None else None

    def describe(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what)

    rows = []
    try:
        for name, vols in cands.items():
            describe(f"{name}: MMD^2")
            mmd = _batch_mmd2(real_v, vols, n_tests, batch_size, seed, dev, tick)
            describe(f"{name}: MS-SSIM")
            div = _ms_ssim_diversity(vols, n_pairs, data_range, low, seed, 50, dev, tick)
            rows.append(_row(name, mmd, div, _voxel_sd(vols)))
        describe("real: MS-SSIM")
        div = _ms_ssim_diversity(real_v, n_pairs, data_range, low, seed, 50, dev, tick)
        if halves:
            describe("real: MMD^2 of halves")
            perm = torch.randperm(len(real_v), generator=_generator(seed + 1)).numpy()
            half = len(real_v) // 2
            a = real_v.subset(perm[:half])
            b = real_v.subset(perm[half : 2 * half])
            a.name, b.name = "real half A", "real half B"
            mmd = _batch_mmd2(a, b, n_tests, batch_size, seed, dev, tick)
        else:
            nan = float("nan")
            mmd = {"mmd2": nan, "mmd2_std": nan, "mmd2_per_voxel": nan}
        rows.append(_row("real", mmd, div, _voxel_sd(real_v)))
    finally:
        if bar is not None:
            bar.close()
    return rows


def _row(name: str, mmd: dict, div: dict, sd: float) -> dict:
    return {
        "model": name,
        "mmd2": mmd["mmd2"],
        "mmd2_std": mmd["mmd2_std"],
        "mmd2_per_voxel": mmd["mmd2_per_voxel"],
        "ms_ssim": div["ms_ssim"],
        "ms_ssim_std": div["ms_ssim_std"],
        "voxel_sd": sd,
    }


def _fmt(value: float, std: float | None, spec: str) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = format(value, spec)
    if std is not None and math.isfinite(std):
        text += " ± " + format(std, spec)
    return text


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`generation_table` rows.

    Columns: model | MMD^2 (4 significant digits ± std over tests) | MMD^2/voxel
    (4 significant digits) | MS-SSIM (3 decimals ± std over pairs) | voxel SD
    (:func:`voxel_sd`, 3 decimals). Missing or NaN values print as ``n/a``.
    """
    lines = [
        "| model | MMD^2 | MMD^2/voxel | MS-SSIM | voxel SD |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.get('model', '?')} "
            f"| {_fmt(r.get('mmd2', math.nan), r.get('mmd2_std'), '.4g')} "
            f"| {_fmt(r.get('mmd2_per_voxel', math.nan), None, '.4g')} "
            f"| {_fmt(r.get('ms_ssim', math.nan), r.get('ms_ssim_std'), '.3f')} "
            f"| {_fmt(r.get('voxel_sd', math.nan), None, '.3f')} |"
        )
    return "\n".join(lines)
