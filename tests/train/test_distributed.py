"""One run on several processes: torchrun, 2 gloo processes on the CPU.

The end-to-end tests train Kwon et al.'s alpha-WGAN-GP (BatchNorm everywhere,
gradient penalties on both critics) at 16^3 in float64 with synchronised
BatchNorm and compare 2 processes with a global batch of 4 against 1 process
with a batch of 4: same weights, same optimiser states, same losses; a 2-process
run resumed on 2 and on 1 process matches the uninterrupted one; rank 0 alone
writes. The collectives (synchronised BatchNorm to second order, gradient
buckets, the loss window, rank-0-only work) are checked on 2 spawned processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brainkern.train import config, distributed
from brainkern.train.data import Batches
from brainkern.train.engine import Trainer, _Window

pytest.importorskip("nibabel")  # the data sets are NIfTI

REPO = Path(__file__).resolve().parents[2]

# A float64 2-process run against a 1-process run, after 2 to 4 iterations; each
# tensor's largest difference over max(1, its largest value). The runs differ by
# round-off only: each process averages its half and the halves are averaged (one
# mean over 4 in one process), BatchNorm statistics are combined per process. Weights
# move by Adam's normalised steps, which hide most of it: at most 3e-10 here. Adam's
# moments are the gradients themselves, whose cancelling terms (the penalty's second
# order, BatchNorm) leave up to 4e-8 of the discriminator's (1e5 in exp_avg_sq). A
# wrong slice, a missing gradient average or unsynchronised statistics changes the
# gradients at the percent level and the weights by about lr = 2e-4 times that.
WEIGHT_TOL = 1e-8
MOMENT_TOL = 1e-6
# Logged losses go through objectives that reduce in float32 (differences of O(1)
# means): their rounding, not the run, sets this bound.
LOSS_ATOL = 1e-6


def tiny_overrides(**train) -> list[str]:
    """``--set`` arguments of a float64, sync-BatchNorm alpha-WGAN-GP run at 16^3 (global batch 4)."""
    values = {
        "model.latent_dim": 8,
        "model.width": 4,
        "model.code_hidden": 16,
        "data.n_per_class": 3,
        "data.folds": "null",
        "data.shape": "[16,16,16]",
        "data.cohort_shape": "[16,16,16]",
        "train.batch_size": 4,
        "train.threads": 1,
        "train.gp_every": 1,
        "train.dtype": "float64",
        "train.sync_batchnorm": "true",
        "log.every": 1,
        "log.checkpoint_every": 2,
        "log.picture_every": 2,
        "log.n_samples": 1,
        **{f"train.{k}": v for k, v in train.items()},
    }
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]


def tiny_config(**train) -> dict:
    args = tiny_overrides(**train)
    return config.resolve("quick", [config.parse_override(a) for a in args[1::2]])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("BRAINKERN_CACHE", str(cache))


def torchrun(cwd: Path, cache: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node nproc -m brainkern.train ...``."""
    env = {**os.environ, "BRAINKERN_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "brainkern.train", "--quiet", "--no-evaluate", *args]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints of the same run at the same iteration agree (see WEIGHT_TOL)."""

    def close(x: torch.Tensor, y: torch.Tensor, tol: float, what: str) -> None:
        scale = max(1.0, float(x.abs().max()))
        torch.testing.assert_close(y, x, rtol=0, atol=tol * scale, msg=lambda m: f"{what}: {m}")

    assert a["iter"] == b["iter"]
    assert a["model"].keys() == b["model"].keys()
    for name, x in a["model"].items():
        if x.is_floating_point():
            close(x, b["model"][name], WEIGHT_TOL, name)
        else:
            assert torch.equal(x, b["model"][name]), name  # num_batches_tracked
    for net, opt in a["recipe"]["optimizers"].items():
        for key, state in opt["state"].items():
            other = b["recipe"]["optimizers"][net]["state"][key]
            assert torch.equal(state["step"], other["step"])
            for moment in ("exp_avg", "exp_avg_sq"):
                close(state[moment], other[moment], MOMENT_TOL, f"{net} {key} {moment}")
    # The global data order and random state are those of one process.
    assert torch.equal(a["batches"]["order"], b["batches"]["order"])
    assert a["batches"]["position"] == b["batches"]["position"]
    assert torch.equal(a["batches"]["generator"], b["batches"]["generator"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["best"]["iter"] == b["best"]["iter"]


def losses(run: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        r["iter"]: {k: v for k, v in r.items() if k.startswith(("loss", "gp"))} for r in rows if "loss_d" in r
    }


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------- end to end (torchrun)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """One process, global batch 4, 4 iterations (checkpoints at 2 -> previous.pt and 4 -> last.pt)."""
    run = tmp_path_factory.mktemp("one") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse fixture is not there yet
        mp.setenv("BRAINKERN_CACHE", str(cache))
        Trainer(tiny_config(iters=4), run, progress=False, log=None).fit()
    return run


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cache, reference) -> Path:  # noqa: ARG001  (cohort made first)
    """2 processes, global batch 4, stopped after 2 iterations; its run directory.

    Each process works in an empty folder of its own (``cwd0``, ``cwd1``) and is
    given a run directory of its own (``run0``, ``run1``): whatever rank 1 wrote
    would show.
    """
    root = tmp_path_factory.mktemp("two")
    _spawn(_train_worker, root, str(cache))
    return root / "run0"


def _train_worker(rank: int, port: int, root: Path, cache: str) -> None:
    from brainkern.experiment.kwon import RunReport

    _join(rank, port)
    os.environ["BRAINKERN_CACHE"] = cache
    (root / f"cwd{rank}").mkdir()
    os.chdir(root / f"cwd{rank}")
    try:
        report = RunReport(evaluate=False, progress=False)  # pictures at checks, as the command line
        Trainer(tiny_config(iters=2), root / f"run{rank}", progress=False, log=None, callbacks=[report]).fit()
    finally:
        distributed.shutdown()


def test_two_processes_train_as_one_with_the_global_batch(reference, two_processes):
    # Weights, BatchNorm statistics, Adam moments, data order, random state.
    assert_same_state(
        load(reference / "checkpoints" / "previous.pt"), load(two_processes / "checkpoints" / "last.pt")
    )
    ref, two = losses(reference), losses(two_processes)
    assert sorted(two) == [1, 2]
    for it in two:
        assert ref[it].keys() == two[it].keys()
        for key, value in two[it].items():
            assert value == pytest.approx(ref[it][key], abs=LOSS_ATOL), (it, key)
    assert all(two[it]["gp_d"] > 0 and two[it]["gp_c"] > 0 for it in two)  # the penalties ran


def test_only_rank_0_writes(two_processes):
    root = two_processes.parent
    assert sorted(p.name for p in root.iterdir()) == ["cwd0", "cwd1", "run0"]  # no run1
    assert not any((root / "cwd0").iterdir()) and not any((root / "cwd1").iterdir())
    assert files(two_processes) == {
        "config.yaml",
        "run.json",
        "split.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "samples/sample_000.nii.gz",
        "pictures/losses.png",
        "pictures/samples_0000002.png",
    }
    lines = [json.loads(x) for x in (two_processes / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines if "loss_d" in r] == [1, 2]
    assert [r["iter"] for r in lines if "check_mmd2" in r] == [2]
    info = json.loads((two_processes / "run.json").read_text())
    assert "resumes" not in info


def test_resume_on_two_and_on_one_process_matches_the_uninterrupted_run(
    reference, two_processes, cache, tmp_path
):
    on_two, on_one = tmp_path / "two" / "run", tmp_path / "one"
    shutil.copytree(two_processes, on_two)
    shutil.copytree(two_processes, on_one)
    uninterrupted = load(reference / "checkpoints" / "last.pt")
    torchrun(on_two.parent, cache, "--resume", "run", "--iters", "4")
    assert_same_state(uninterrupted, load(on_two / "checkpoints" / "last.pt"))
    assert sorted(losses(on_two)) == [1, 2, 3, 4]
    assert len(json.loads((on_two / "run.json").read_text())["resumes"]) == 1
    # The 2-process checkpoint continued by a single process.
    Trainer(tiny_config(iters=4), on_one, resume=True, progress=False, log=None).fit()
    assert_same_state(uninterrupted, load(on_one / "checkpoints" / "last.pt"))


# ---------------------------------------------------------------------- without processes


class _Items:
    """Six 4^3 volumes whose value is their index."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        ramp = torch.linspace(0, 0.1, 4).view(4, 1, 1)  # along the flipped axis
        return {"image": torch.full((1, 4, 4, 4), float(i)) + ramp, "label": i % 2, "index": i}


@pytest.mark.parametrize("world_size", [2, 3])
def test_batches_keep_their_slice_of_the_global_batch(world_size):
    batch = {2: 4, 3: 3}[world_size]  # 1 and 2 batches an epoch

    def make(rank: int, size: int) -> Batches:
        return Batches(_Items(), np.arange(6), batch, seed=5, rank=rank, world_size=size)

    one = make(0, 1)
    parts = [make(r, world_size) for r in range(world_size)]
    for _ in range(5):  # over epoch boundaries (a new permutation every 2 or 3 batches)
        whole = next(one)
        pieces = [next(p) for p in parts]
        assert all(p["image"].shape[0] == whole["image"].shape[0] // world_size for p in pieces)
        for key in whole:  # flips and intensity factors included
            assert torch.equal(torch.cat([p[key] for p in pieces]), whole[key]), key
    for p in parts:
        assert torch.equal(p.state_dict()["generator"], one.state_dict()["generator"])


def test_the_global_batch_must_divide_by_the_processes():
    with pytest.raises(
        ValueError, match=r"batch_size=6 is the global batch, split over 4 processes: .*multiple of 4"
    ):
        Batches(_Items(), np.arange(6), 6, seed=0, rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"e\.g\. 4 or 8"):
        distributed.local_batch(6, 4)
    with pytest.raises(ValueError, match="rank 2 must lie in 0 .. world_size - 1"):
        Batches(_Items(), np.arange(6), 4, seed=0, rank=2, world_size=2)
    assert distributed.World().shard(torch.arange(5)).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("rank", [0, 1])
def test_recipes_draw_for_the_global_batch_and_keep_their_slice(rank, monkeypatch):
    # Latents, the penalty's interpolation weights and VAE-GAN's noise of process
    # `rank` of 2 are its half of what one process draws for the global batch.
    from brainkern.models import build_model
    from brainkern.train import recipes

    model = build_model("vae-gan", shape=(16, 16, 16), latent_dim=8, width=4)
    cfg = tiny_config()["train"]

    def draws(recipe, n):
        seen = {}
        monkeypatch.setattr(recipes, "gradient_penalty", lambda *a, eps, **k: seen.setdefault("eps", eps))
        torch.manual_seed(7)
        z = recipe._latent(n)
        noise = recipe._noise(torch.zeros(n, 8, dtype=torch.float64))
        recipe._penalty(None, torch.zeros(n, 3), torch.zeros(n, 3, dtype=torch.float64))
        return z, noise, seen["eps"]

    mine = draws(recipes.make_recipe(model, cfg, "cpu", distributed.World(rank, 2)), 3)
    whole = draws(recipes.make_recipe(model, cfg, "cpu"), 6)
    for part, full in zip(mine, whole, strict=True):
        assert part.dtype == torch.float64 and torch.equal(part, full[3 * rank : 3 * rank + 3])


def _norm_model(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv3d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm3d(3),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 2 * 2, 5),
        nn.BatchNorm1d(5, momentum=None),  # the cumulative average too
        nn.Linear(5, 1),
    ).to(dtype)


def test_sync_batchnorm_on_one_process_is_batchnorm():
    plain, synced = _norm_model(), distributed.convert_sync_batchnorm(_norm_model())
    assert [type(m) for m in synced if isinstance(m, distributed.SyncBatchNorm)] == [
        distributed.SyncBatchNorm
    ] * 2
    assert synced.state_dict().keys() == plain.state_dict().keys()
    assert all(t.dtype == torch.float64 for t in synced.state_dict().values() if t.is_floating_point())
    x = torch.randn(4, 2, 3, 2, 2, dtype=torch.float64)
    for _ in range(2):
        a, b = plain(x), synced(x)
        assert torch.equal(a, b)
        a.sum().backward()
        b.sum().backward()
    for (name, p), q in zip(plain.named_parameters(), synced.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for (name, s), t in zip(plain.state_dict().items(), synced.state_dict().values(), strict=True):
        assert torch.equal(s, t), name
    plain.eval(), synced.eval()
    assert torch.equal(plain(x), synced(x))


# ---------------------------------------------------------------------- two spawned processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    """``fn(rank, *args)`` on 2 gloo processes (an assertion in either fails the test)."""
    torch.multiprocessing.spawn(fn, args=(_free_port(), *args), nprocs=2, join=True)


def _join(rank: int, port: int) -> distributed.World:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    world = distributed.setup()
    assert (world.rank, world.size, world.distributed) == (rank, 2, True)
    return world


def _sync_batchnorm_worker(rank: int, port: int) -> None:
    world = _join(rank, port)
    try:
        full, synced = _norm_model(), distributed.convert_sync_batchnorm(_norm_model())
        torch.manual_seed(2)
        x = torch.randn(6, 2, 3, 2, 2, dtype=torch.float64) * 3 + 5  # a large mean: no cancellation
        w = torch.randn(6, 1, dtype=torch.float64)
        mine = slice(3 * rank, 3 * rank + 3)
        # A gradient penalty's shape: the input gradient of the outputs, differentiated again.
        # Globally: sum over both processes' halves; each process holds its half of x.
        xa = x.clone().requires_grad_(True)
        (ga,) = torch.autograd.grad((full(xa) * w).sum(), xa, create_graph=True)
        (ga.square().sum() + full(xa).square().sum()).backward()
        xb = x[mine].clone().requires_grad_(True)
        out = synced(xb)
        torch.testing.assert_close(out, full(x)[mine].detach(), rtol=1e-12, atol=1e-12)
        (gb,) = torch.autograd.grad((synced(xb) * w[mine]).sum(), xb, create_graph=True)
        torch.testing.assert_close(gb, ga[mine], rtol=1e-12, atol=1e-12)  # sees the other half's outputs
        (gb.square().sum() + synced(xb).square().sum()).backward()
        for (name, p), q in zip(full.named_parameters(), synced.parameters(), strict=True):
            total = world.all_reduce_(q.grad.clone())  # the processes' parts of the gradient
            torch.testing.assert_close(
                total, p.grad, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}"
            )
        # Running statistics after 4 global batches (3 forwards above, one in no_grad mode).
        with torch.no_grad():
            full(x), synced(x[mine])
        for (name, s), t in zip(full.state_dict().items(), synced.state_dict().values(), strict=True):
            torch.testing.assert_close(t, s, rtol=1e-12, atol=1e-14, msg=lambda m, n=name: f"{n}: {m}")
        full.eval(), synced.eval()
        with distributed.local_only():  # eval mode never synchronises; this must not wait either
            synced.train()
            synced(x[mine])
    finally:
        distributed.shutdown()


def test_sync_batchnorm_matches_batchnorm_on_the_global_batch_to_second_order():
    _spawn(_sync_batchnorm_worker)


def _collectives_worker(rank: int, port: int) -> None:
    world = _join(rank, port)
    try:
        # Gradients: averaged, several buckets (a 64-byte limit), mixed dtypes, no gradient left alone.
        params = [nn.Parameter(torch.zeros(n, dtype=d)) for n, d in [(3, torch.float64), (20, torch.float64)]]
        params += [nn.Parameter(torch.zeros(2, dtype=torch.float32)), nn.Parameter(torch.zeros(4))]
        for i, p in enumerate(params[:3]):
            p.grad = torch.arange(p.numel(), dtype=p.dtype) * (rank + 1) + i
        distributed.reduce_gradients(params, world, bucket_bytes=64)
        for i, p in enumerate(params[:3]):
            torch.testing.assert_close(p.grad, torch.arange(p.numel(), dtype=p.dtype) * 1.5 + i)
        assert params[3].grad is None
        # The loss window: means over processes; a NaN on rank 1 only stops both at its iteration.
        window = _Window(("a", "b"), torch.device("cpu"), world)
        for it in (1, 2, 3):
            b = float("nan") if (rank == 1 and it == 2) else 1.0
            window.add({"a": torch.tensor(float(rank + it)), "b": torch.tensor(b)}, it)
        assert window.first_nonfinite() == (["b"], 2)
        assert window.first_nonfinite() == (["b"], 2)  # reading twice changes nothing
        assert window.means()["a"] == pytest.approx(2.5)  # (1+2+3 + 2+3+4) / 3 / 2
        # Work on rank 0 alone: its result everywhere, its random state everywhere, its failure everywhere.
        torch.manual_seed(rank)
        assert world.on_main(lambda: (torch.rand(1), world.rank)[1], sync_rng=True) == 0
        after = torch.rand(2)
        assert torch.equal(world.broadcast(after), after)
        assert world.any(rank == 1) and not world.any(False)

        def fails():
            raise KeyError("only on rank 0")

        with pytest.raises(KeyError if rank == 0 else distributed.RankFailed, match="only on rank 0"):
            world.on_main(fails)
        # The global batch decides before any data is read.
        with pytest.raises(ValueError, match="multiple of 2"):
            Trainer(tiny_config(batch_size=3), Path("unused"), progress=False, log=None)
    finally:
        distributed.shutdown()


def test_gradients_windows_and_rank_0_work_on_two_processes():
    _spawn(_collectives_worker)
