"""Synthetic data at scale: volumes per second that ``python -m brainkern.sample`` writes, per format.

The model is a freshly built (untrained: the speed does not depend on the weights)
alpha-WGAN-GP of the quick preset (Kwon et al. 2019, width 16, latent 32) at 64^3,
saved as a run directory with the engine's checkpoint format; smoke mode uses a
16^3 one at width 4. Each round samples ``n`` volumes into a fresh folder through
:func:`brainkern.sample.sample_run` (loading the run, generating in batches,
writing, the shard markers and the table). Providers:

- ``generate-only``: :func:`brainkern.sample.sample_batches` with nothing written
  (the generator's own rate: the ceiling of the others);
- ``nifti-gz``: one ``.nii.gz`` per volume (the default format);
- ``nifti``: one uncompressed ``.nii`` per volume;
- ``memmap``: one float32 ``volumes.npy`` written in place.

``extra_info`` holds volumes/s and MB/s (float32 volume bytes per second).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks._util import record
from brainkern import sample
from brainkern.data import load_volume
from brainkern.train import config
from brainkern.train.engine import build_run_model, load_run
from brainkern.train.state import save_checkpoint

PROVIDERS = {"generate-only": None, "nifti-gz": "nifti", "nifti": "nii", "memmap": "memmap"}


def _sizes(smoke: bool) -> dict:
    if smoke:
        return dict(edge=16, width=4, latent_dim=8, code_hidden=16, n=4, batch=2)
    return dict(edge=64, width=16, latent_dim=32, code_hidden=512, n=64, batch=8)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory):
    made: dict[bool, Path] = {}

    def get(smoke: bool) -> Path:
        if smoke not in made:
            s = _sizes(smoke)
            model = {"width": s["width"], "latent_dim": s["latent_dim"], "code_hidden": s["code_hidden"]}
            cfg = config.resolve("quick", [{"model": model, "data": {"shape": [s["edge"]] * 3}}])
            run = tmp_path_factory.mktemp("bench_sample") / "run"
            net = build_run_model(cfg, torch.device("cpu"))
            affine = np.diag([1.5, 1.5, 1.5, 1.0])
            save_checkpoint(
                {"config": cfg, "model": net.state_dict(), "affine": affine, "iter": 0},
                run / "checkpoints" / "last.pt",
            )
            (run / "config.yaml").write_text(config.dump(cfg))
            made[smoke] = run
        return made[smoke]

    return get


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_sample(benchmark, smoke, make_run, tmp_path, provider):
    s = _sizes(smoke)
    run = make_run(smoke)
    fmt = PROVIDERS[provider]
    rounds = iter(range(1000))

    def once() -> None:
        if fmt is None:
            model, _, _ = load_run(run, "last", "cpu")
            for _ in sample.sample_batches(model, s["n"], batch_size=s["batch"]):
                pass
            return
        out = tmp_path / f"out{next(rounds)}"
        sample.sample_run(run, s["n"], out, batch_size=s["batch"], format=fmt, device="cpu", progress=False)

    durations: list[float] = []

    def timed() -> None:
        t0 = time.perf_counter()
        once()
        durations.append(time.perf_counter() - t0)

    record(
        benchmark,
        group="sample",
        provider=provider,
        device=torch.device("cpu"),
        volumes=s["n"],
        grid=s["edge"],
        batch=s["batch"],
    )
    benchmark.pedantic(timed, rounds=1 if smoke else 3, iterations=1)
    seconds = float(np.median(durations))
    megabytes = s["n"] * math.prod([s["edge"]] * 3) * 4 / 1e6
    benchmark.extra_info["volumes_per_s"] = s["n"] / seconds
    benchmark.extra_info["MB_per_s"] = megabytes / seconds
    if fmt is not None:  # what was written is the run's volumes, in any format
        out = tmp_path / "out0"
        model, _, _ = load_run(run, "last", "cpu")
        first = next(sample.sample_batches(model, s["n"], batch_size=s["batch"]))[1][0, 0].numpy()
        if fmt == "memmap":
            written = np.load(out / "volumes.npy", mmap_mode="r")
            assert written.shape == (s["n"], *[s["edge"]] * 3)
            got = written[0]
        else:
            suffix = ".nii.gz" if fmt == "nifti" else ".nii"
            assert len(list(out.glob(f"sample_*{suffix}"))) == s["n"]
            got = load_volume(out / f"sample_00000{suffix}").data
        np.testing.assert_array_equal(got, first)
