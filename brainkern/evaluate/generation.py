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

Both can be won by a generator that learned nothing: the linear batch MMD^2 falls
with the generated set's own variance (the mean training volume beats real data
on it), and MS-SSIM rewards any set of the right similarity. So
:func:`generation_table` sets beside them the unbiased RBF MMD^2 on voxels and on
4^3 blocks and the memorisation check (:mod:`brainkern.evaluate.distribution`), and
a table is read against the trivial generators of
:mod:`brainkern.evaluate.baselines`; :func:`verdict` says which of them a model beats.

Every function takes volumes as torch tensors or numpy arrays (memory-mapped ones
included) of shape ``(N, 1, D, H, W)`` or ``(N, D, H, W)``. The inputs stay where
they are; only one chunk of tests or pairs is gathered, cast to float32 and moved to
``device`` at a time, so memory beyond the inputs is bounded whatever the counts.
All randomness comes from a ``torch.Generator`` seeded by the ``seed`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from brainkern.evaluate._volumes import (
    _CHUNK_BYTES,
    _TESTS_PER_CHUNK,
    VolumesLike,
    _check_count,
    _device,
    _generator,
    _paired_chunks,
    _Tick,
    _Volumes,
    voxel_moments,
)
from brainkern.evaluate.distribution import KERNEL_COLUMNS, _kernel_mmd2, _memorisation, rbf_bandwidths
from brainkern.evaluate.ms_ssim import minimum_side, ms_ssim3d

__all__ = ["batch_mmd2", "format_table", "generation_table", "matched_noise", "ms_ssim_diversity", "voxel_sd"]

# MS-SSIM's default window; volumes smaller than this on a side cannot be compared.
_WIN_SIZE = 7


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

    def linear(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd2_batched(x, y, kernel="linear", estimator="biased")

    mean, std = _paired_chunks(real, real_idx, fake, fake_idx, per_chunk, device, linear, tick)
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


def _check_ms_ssim_grid(vols: _Volumes, convention: str = "standard") -> None:
    side = minimum_side(convention, _WIN_SIZE)
    if min(vols.grid) < side:
        why = "its Gaussian window" if convention == "standard" else "Kwon et al.'s five scales"
        raise ValueError(
            f"MS-SSIM ({convention}) needs volumes at least {side} voxels on every side ({why}), "
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
    convention: str = "standard",
) -> dict:
    if len(vols) < 2:
        raise ValueError(f"MS-SSIM diversity compares pairs of distinct volumes; {vols.name} has {len(vols)}")
    _check_ms_ssim_grid(vols, convention)
    if convention == "standard":

        def pair(a, b):
            return ms_ssim3d(a, b, data_range, low=low)
    else:  # Kwon et al.'s code fixes its own constants, window and scales

        def pair(a, b):
            return ms_ssim3d(a, b, convention=convention)

    i, j = _pair_indices(len(vols), n_pairs, seed)

    def checked(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise ValueError(f"{vols.name} holds NaN or infinite values")
        return pair(a, b)

    mean, std = _paired_chunks(vols, i, vols, j, batch_size, device, checked, tick)
    return {"ms_ssim": mean, "ms_ssim_std": std, "n_pairs": n_pairs, "ms_ssim_convention": convention}


def ms_ssim_diversity(
    volumes: VolumesLike,
    *,
    n_pairs: int = 1000,
    data_range: float = 2.0,
    low: float = -1.0,
    seed: int = 0,
    batch_size: int = 50,
    device: torch.device | str | None = None,
    convention: str = "standard",
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
        convention: ``"standard"`` (Wang et al.'s definition, the default) or
            ``"kwon2019"`` (the variant of Kwon et al.'s code, whose numbers Table 1
            reports; it ignores ``data_range`` and ``low``): see
            :func:`brainkern.evaluate.ms_ssim3d`.

    Returns:
        ``{"ms_ssim": mean, "ms_ssim_std": population std over pairs, "n_pairs": ...,
        "ms_ssim_convention": ...}``.

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
    return _ms_ssim_diversity(
        vols, n_pairs, float(data_range), float(low), seed, batch_size, _device(device), None, convention
    )


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
    return float(voxel_moments(vols)[1].mean())


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


# Columns of a generation table where lower is better, and those read against the real row.
LOWER_IS_BETTER = ("mmd2", *KERNEL_COLUMNS)
CLOSER_TO_REAL = ("ms_ssim", "voxel_sd")


def generation_table(
    real: VolumesLike,
    candidates: Mapping[str, VolumesLike],
    *,
    train: VolumesLike | None = None,
    real_is_train: bool = False,
    n_tests: int = 100,
    batch_size: int = 8,
    n_pairs: int = 1000,
    data_range: float = 2.0,
    low: float = -1.0,
    ms_ssim: str = "standard",
    kernel_columns: tuple[str, ...] = ("mmd2_rbf", "mmd2_rbf4"),
    n_subsets: int = 20,
    subset_size: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[dict]:
    """Kwon et al.'s Table 1 for several candidate sets of volumes, with the metrics a
    trivial generator cannot win beside it, and the real row.

    Every candidate is compared with the same real draws (same ``seed``) and the same
    kernel, so the differences between rows do not come from different real batches.

    Args:
        real: the real volumes the candidates are compared with, ``(N, 1, D, H, W)`` or
            ``(N, D, H, W)``: held-out subjects where there are some.
        candidates: name -> generated volumes on the same grid (a model's samples,
            :mod:`brainkern.evaluate.baselines`, :func:`matched_noise`, ...).
        train: the generator's training volumes, for the memorisation check
            (:func:`brainkern.evaluate.memorisation`; ``real`` is its reference).
            ``None``: no memorisation columns.
        real_is_train: ``real`` are the training volumes themselves (a run without a
            held-out part): the memorisation reference is then each training volume's
            nearest other one, and the training copies match ``real`` by construction.
        n_tests, batch_size: as :func:`batch_mmd2`.
        n_pairs, data_range, low: as :func:`ms_ssim_diversity`.
        ms_ssim: MS-SSIM convention, ``"standard"`` or ``"kwon2019"``.
        kernel_columns: unbiased kernel MMD^2 columns
            (:func:`brainkern.evaluate.kernel_mmd2`), from
            :data:`brainkern.evaluate.distribution.KERNEL_COLUMNS`: ``mmd2_rbf`` (RBF on
            voxels), ``mmd2_rbf2`` / ``mmd2_rbf4`` (RBF on volumes averaged over 2^3 / 4^3
            blocks: spatial structure, which independent voxel noise lacks), ``kid`` (KID's
            cubic kernel on voxels). RBF bandwidths come from ``real``, one set per scale.
        n_subsets, subset_size: the kernel MMD^2's subsets.
        seed: seeds every draw.
        device: where the arithmetic runs (default CPU).
        progress: show a tqdm bar (one step per chunk of work).

    Returns:
        One dict per candidate, in order, then one for ``"real"``, each with
        ``model``, ``mmd2``, ``mmd2_std``, ``mmd2_per_voxel``, ``ms_ssim``,
        ``ms_ssim_std``, ``ms_ssim_convention``, ``voxel_sd`` (:func:`voxel_sd`),
        each of ``kernel_columns`` (and its ``_std``), and with ``train``:
        ``nn_ratio``, ``copy_rate``, ``memorisation`` (the full dict).
        The real row's MS-SSIM is over pairs of real volumes; its MMD fields compare
        two disjoint random halves of the real set (what two samples of the same
        distribution reach), or are NaN when there are fewer than ``2 * batch_size``
        real volumes; its memorisation fields are NaN (it is the reference).

    Raises:
        ValueError, TypeError: as :func:`batch_mmd2` and :func:`ms_ssim_diversity`,
            a candidate named ``"real"``, an unknown kernel, or no candidates and too
            few real volumes.
    """
    n_tests = _check_count("n_tests", n_tests)
    batch_size = _check_count("batch_size", batch_size)
    n_pairs = _check_count("n_pairs", n_pairs)
    n_subsets = _check_count("n_subsets", n_subsets)
    subset_size = _check_count("subset_size", subset_size, 2)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    if "real" in candidates:
        raise ValueError('"real" names the reference row of the table; rename that candidate')
    unknown = [k for k in kernel_columns if k not in KERNEL_COLUMNS]
    if unknown:
        raise ValueError(f"unknown kernel column(s) {unknown}; choose from {tuple(KERNEL_COLUMNS)}")
    dev = _device(device)
    real_v = _Volumes(real, "real")
    train_v = None if train is None else _Volumes(train, "train")
    cands = {name: _Volumes(v, f"candidate {name!r}") for name, v in candidates.items()}
    # Check everything cheap first, so a bad last candidate fails before minutes of work.
    _check_ms_ssim_grid(real_v, ms_ssim)
    for v in [*cands.values(), *([train_v] if train_v is not None else [])]:
        if v.grid != real_v.grid:
            raise ValueError(f"{v.name} has grid {v.grid}, the real volumes {real_v.grid}")
    for v in cands.values():
        for who in (real_v, v):
            if len(who) < batch_size:
                raise ValueError(f"{who.name} has {len(who)} volumes, fewer than batch_size={batch_size}")
        if len(v) < 2:
            raise ValueError(f"{v.name} has {len(v)} volume; MS-SSIM diversity needs at least 2")
    if len(real_v) < 2:
        raise ValueError(f"real has {len(real_v)} volume; MS-SSIM diversity needs at least 2")
    bandwidths = {
        col: rbf_bandwidths(real, pool=KERNEL_COLUMNS[col][1], seed=seed, device=dev)
        for col in kernel_columns
        if KERNEL_COLUMNS[col][0] == "rbf"
    }
    reference = None if real_is_train else real_v

    halves = len(real_v) >= 2 * batch_size
    mmd_chunks = math.ceil(
        n_tests / max(1, min(_TESTS_PER_CHUNK, _CHUNK_BYTES // (batch_size * real_v.voxels * 4)))
    )
    kernel_chunks = len(kernel_columns) * math.ceil(
        n_subsets / max(1, _CHUNK_BYTES // (subset_size * real_v.voxels * 4))
    )
    pair_chunks = math.ceil(n_pairs / 50)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        total = (len(cands) + 1) * pair_chunks + (len(cands) + halves) * (mmd_chunks + kernel_chunks)
        bar = tqdm(total=total, desc="generation metrics", unit="chunk")
    tick = bar.update if bar is not None else None

    def describe(what: str) -> None:
        if bar is not None:
            bar.set_postfix_str(what)

    def distances(a: _Volumes, b: _Volumes, name: str) -> dict:
        describe(f"{name}: MMD^2")
        out = {"linear": _batch_mmd2(a, b, n_tests, batch_size, seed, dev, tick)}
        for col in kernel_columns:
            describe(f"{name}: {col}")
            kernel, pool = KERNEL_COLUMNS[col]
            bw = bandwidths.get(col)
            out[col] = _kernel_mmd2(a, b, kernel, n_subsets, subset_size, bw, seed, dev, tick, pool)
        return out

    rows = []
    try:
        for name, vols in cands.items():
            mmd = distances(real_v, vols, name)
            describe(f"{name}: MS-SSIM")
            div = _ms_ssim_diversity(vols, n_pairs, data_range, low, seed, 50, dev, tick, ms_ssim)
            memo = None
            if train_v is not None:
                describe(f"{name}: memorisation")
                memo = _memorisation(vols, train_v, reference, 0.05, dev)
            rows.append(_row(name, mmd, div, _voxel_sd(vols), memo))
        describe("real: MS-SSIM")
        div = _ms_ssim_diversity(real_v, n_pairs, data_range, low, seed, 50, dev, tick, ms_ssim)
        if halves:
            perm = torch.randperm(len(real_v), generator=_generator(seed + 1)).numpy()
            half = len(real_v) // 2
            a = real_v.subset(perm[:half])
            b = real_v.subset(perm[half : 2 * half])
            a.name, b.name = "real half A", "real half B"
            mmd = distances(a, b, "real halves")
        else:
            mmd = None
        rows.append(_row("real", mmd, div, _voxel_sd(real_v), None))
    finally:
        if bar is not None:
            bar.close()
    if train_v is None:
        for r in rows:
            for key in ("nn_ratio", "copy_rate", "memorisation"):
                r.pop(key)
    return rows


def _row(name: str, mmd: dict | None, div: dict, sd: float, memo: dict | None) -> dict:
    nan = float("nan")
    linear = (mmd or {}).get("linear", {})
    row = {
        "model": name,
        "mmd2": linear.get("mmd2", nan),
        "mmd2_std": linear.get("mmd2_std", nan),
        "mmd2_per_voxel": linear.get("mmd2_per_voxel", nan),
    }
    for col, k in (mmd or {}).items():
        if col != "linear":
            row[col], row[f"{col}_std"] = k["mmd2"], k["mmd2_std"]
    row.update(
        ms_ssim=div["ms_ssim"],
        ms_ssim_std=div["ms_ssim_std"],
        ms_ssim_convention=div["ms_ssim_convention"],
        voxel_sd=sd,
        nn_ratio=(memo or {}).get("nn_ratio", nan),
        copy_rate=(memo or {}).get("copy_rate", nan),
        memorisation=memo,
    )
    return row


def _fmt(value: float, std: float | None, spec: str) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = format(value, spec)
    if std is not None and math.isfinite(std):
        text += " ± " + format(std, spec)
    return text


# (column, header, format, has a spread) in table order; a column shows when a row has it.
_COLUMNS = (
    ("mmd2", "MMD^2 (Kwon, linear)", ".4g", True),
    ("mmd2_rbf", "MMD^2 (RBF, voxels)", ".3g", True),
    ("mmd2_rbf2", "MMD^2 (RBF, 2^3 blocks)", ".3g", True),
    ("mmd2_rbf4", "MMD^2 (RBF, 4^3 blocks)", ".3g", True),
    ("kid", "KID (voxels)", ".3g", True),
    ("ms_ssim", "MS-SSIM", ".3f", True),
    ("voxel_sd", "voxel SD", ".3f", False),
    ("nn_ratio", "NN ratio", ".2f", False),
    ("copy_rate", "near copies", ".0%", False),
)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of :func:`generation_table` rows.

    Columns (those the rows have): model | Kwon et al.'s linear batch MMD^2 (± std over
    tests) | RBF MMD^2 | KID on voxels (± std over subsets) | MS-SSIM (± std over pairs;
    the header names the convention when it is Kwon et al.'s) | voxel SD | NN ratio
    (memorisation: median nearest-training distance of the samples over that of the
    reference real volumes) | near copies (share of samples nearer to a training
    volume than 95% of the real reference volumes are). Missing or NaN values print as ``n/a``.
    """
    cols = [c for c in _COLUMNS if any(c[0] in r for r in rows)]
    conv = next((r.get("ms_ssim_convention") for r in rows if r.get("ms_ssim_convention")), "standard")
    suffix = " (Kwon conv.)" if conv == "kwon2019" else ""
    headers = [h + (suffix if key == "ms_ssim" else "") for key, h, _, _ in cols]
    lines = ["| model | " + " | ".join(headers) + " |", "| --- |" + " ---: |" * len(cols)]
    for r in rows:
        cells = [
            _fmt(r.get(key, math.nan), r.get(f"{key}_std") if spread else None, spec)
            for key, _, spec, spread in cols
        ]
        lines.append(f"| {r.get('model', '?')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[dict], model: str, baselines: list[str]) -> dict[str, dict[str, list[str]]]:
    """Which baselines ``model`` beats on each distribution metric of a table, and which not.

    Lower is better for the MMD^2 columns; MS-SSIM and voxel SD are better the closer
    they are to the real row's. A tie is not a win, and a comparison with a NaN on
    either side is left out. A metric counts as "better" only where ``model`` beats
    every baseline: ``{metric: {"beats": [...], "loses": [...]}}``. The memorisation
    columns are a check, not a ranking (noise is far from every training volume), so
    they are not compared here: read them with :func:`memorisation_verdict`.

    Raises:
        KeyError: ``model`` or a baseline is not a row of the table.
    """
    by_name = {r["model"]: r for r in rows}
    for name in (model, *baselines):
        if name not in by_name:
            raise KeyError(f"{name!r} is not a row of the table (rows: {list(by_name)})")
    real = by_name.get("real", {})

    def score(row: dict, key: str) -> float:
        value = row.get(key, math.nan)
        return abs(value - real.get(key, math.nan)) if key in CLOSER_TO_REAL else value

    out: dict[str, dict[str, list[str]]] = {}
    for key, *_ in _COLUMNS:
        if key not in (*LOWER_IS_BETTER, *CLOSER_TO_REAL) or key not in by_name[model]:
            continue
        mine = score(by_name[model], key)
        if not math.isfinite(mine):
            continue
        beats, loses = [], []
        for b in baselines:
            theirs = score(by_name[b], key)
            if math.isfinite(theirs):
                (beats if mine < theirs else loses).append(b)
        out[key] = {"beats": beats, "loses": loses}
    return out


def memorisation_verdict(row: dict, *, ratio: float = 0.9, tolerance: float = 2.0) -> bool | None:
    """Whether a row's samples look memorised: a median nearest-training distance below
    ``ratio`` times the real reference's, or a share of near copies above ``tolerance``
    times the share real reference volumes have by construction (the quantile).
    ``None`` when the row has no memorisation figures."""
    memo = row.get("memorisation")
    if not memo:
        return None
    return bool(memo["nn_ratio"] < ratio or memo["copy_rate"] > tolerance * memo["quantile"])


def column_name(key: str) -> str:
    """The table header of a row key (``"mmd2_rbf4"`` -> ``"MMD^2 (RBF, 4^3 blocks)"``)."""
    return next((h for k, h, _, _ in _COLUMNS if k == key), key)
