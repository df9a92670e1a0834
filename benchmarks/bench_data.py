"""Data-layer throughput: volumes per second loaded cold (NIfTI + preprocessing) vs
from the memory-mapped cache, and the embedded cohorts' generation rate.

Inputs are the simulated sMRI cohort written at 1.25x the training grid (int16
``.nii.gz``, as scanners write them), preprocessed with the default settings
(RAS, trim, resize to the grid, quantile clip, [-1, 1]) and read item by item as
a training loop would. Smoke mode (``--benchmark-disable``) uses a few 16^3
volumes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from benchmarks._util import record
from brainkern.data import VolumeDataset, cohorts, read_table

SIZES = {"64": (64, 16), "128": (128, 8)}  # grid edge, number of volumes


def _timed(fn, durations):
    def run():
        t0 = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - t0)

    return run


@pytest.fixture(scope="module")
def cohort_tables(tmp_path_factory):
    made = {}

    def get(edge: int, n: int):
        if (edge, n) not in made:
            folder = tmp_path_factory.mktemp(f"bench_{edge}")
            src = int(round(edge * 1.25))
            made[(edge, n)] = cohorts.smri(folder, n_per_class=max(n // 2, 1), shape=(src,) * 3, seed=0)
        return made[(edge, n)]

    return get


def _load_all(table, edge, cache_dir):
    ds = VolumeDataset.from_table(table, shape=(edge,) * 3, cache_dir=cache_dir)
    for i in range(len(ds)):
        ds[i]
    return ds


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("provider", ["cold", "cached"])
def test_load(benchmark, smoke, cohort_tables, tmp_path, size, provider):
    edge, n = (16, 4) if smoke else SIZES[size]
    table = cohort_tables(edge, n)
    cache = tmp_path / "cache"
    if provider == "cached":
        warm = _load_all(table, edge, cache)  # fill the cache once, outside the timing
        n_vol = len(warm)
        fn = lambda: _load_all(table, edge, cache)  # noqa: E731
    else:
        n_vol = len(read_table(table))
        fn = lambda: _load_all(table, edge, None)  # noqa: E731
    record(
        benchmark,
        group=f"data-load-{size}",
        provider=provider,
        device=torch.device("cpu"),
        volumes=n_vol,
        grid=edge,
    )
    durations: list[float] = []
    benchmark.pedantic(_timed(fn, durations), rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info["volumes_per_s"] = n_vol / float(np.median(durations))
    ds = _load_all(table, edge, cache if provider == "cached" else None)
    assert ds.shape == (edge,) * 3 and ds.cache_hit == (provider == "cached")


@pytest.mark.parametrize("kind", ["smri", "fmri"])
def test_cohort_generation(benchmark, smoke, tmp_path, kind):
    n_per_class = 2 if smoke else 25
    if kind == "smri":
        shape = (16, 16, 16) if smoke else (64, 64, 64)
        make = lambda: cohorts.smri(tmp_path / "c", n_per_class=n_per_class, shape=shape)  # noqa: E731
        n_vol = 2 * n_per_class
    else:
        shape = (16, 16, 16) if smoke else cohorts.FMRI_SHAPE
        make = lambda: cohorts.fmri(tmp_path / "c", n_per_class=n_per_class, shape=shape)  # noqa: E731
        n_vol = 4 * n_per_class
    make()  # templates resampled once per process (cached), outside the timing
    record(
        benchmark,
        group="cohort-generation",
        provider=kind,
        device=torch.device("cpu"),
        volumes=n_vol,
        grid="x".join(map(str, shape)),
    )
    durations: list[float] = []
    benchmark.pedantic(_timed(make, durations), rounds=1 if smoke else 3, iterations=1)
    benchmark.extra_info["volumes_per_s"] = n_vol / float(np.median(durations))
