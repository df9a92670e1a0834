"""Benchmark: the memory of one training iteration, per model, size and memory technique.

One iteration is the recipe's ``step`` (:mod:`brainkern.train.recipes`): what
``python -m brainkern.train`` runs per iteration, every network's update in it.
Each configuration (a preset at a grid size and batch, built as the training
command builds it) runs in four variants:

- ``plain``: the fused ops on their automatic backends, float32;
- ``checkpoint``: the same model built with ``checkpoint=True`` (gradient
  checkpointing of the generator and discriminator blocks);
- ``bf16``: ``train.amp = "bf16"`` (bf16 autocast around every forward);
- ``reference-ops``: every brainkern op forced to its plain-PyTorch reference
  backend (``use_backend("reference")``), float32, the same networks otherwise.
  The op stays a custom autograd op that saves what the fused one saves, so this
  variant differs in time, not in saved bytes;
- ``eager-ops``: each fused op that the models and recipes call replaced by its
  plain-PyTorch composition under ordinary autograd (``resize_conv3d_reference``:
  interpolate + conv3d; ``pixel_shuffle3d_reference``; ``gradient_penalty_reference``:
  ``autograd.grad`` arithmetic), float32: what a model written without brainkern's
  ops keeps for backward, the baseline of the fused ops' memory factor.

Measured per configuration and variant (a "cell"):

- saved activations: the peak of the bytes autograd holds for backward during
  the iteration, counted with ``torch.autograd.graph.saved_tensors_hooks``
  (:class:`benchmarks._util.SavedTensorMeter`: each storage once while any saved
  tensor refers to it, parameters left out). The same on any device, so the CPU
  counts it at every size. With checkpointing, what a block recomputes during its
  backward is not seen (only the block inputs it keeps are): peak memory shows it;
- weights + gradients + Adam moments of every trained network (4 x 4 bytes per
  float32 parameter);
- peak memory of an iteration after a warm-up iteration (Adam's state exists): on
  CUDA ``max_memory_allocated`` above what was allocated before; on the CPU the
  growth of the process's peak resident set (a lower bound: memory the allocator
  already holds is reused unseen), each cell in a fresh process;
- the wall time of that iteration.

Configurations (batch 1 unless named): Kwon et al.'s alpha-WGAN-GP at 64^3 and
128^3 (the kwon2019 preset's width 64, latent 1000; batch 2, the smallest its code
discriminator's BatchNorm1d trains on), King et al.'s SN-GAN at 64^3 (width 32,
latent 1000), HA-GAN at 64^3 (King et al.'s preset), 128^3 and 256^3 (Sun et al.'s
presets), and as extra rows (``--configs``) the presets' batch 4 for alpha-WGAN-GP and
SN-GAN at 64^3 and HA-GAN at 256^3.

Runs:

- ``pytest benchmarks/bench_memory.py`` (smoke mode, CI): every cell at 16^3 (HA-GAN: 64^3) with
  tiny layers, and per configuration the first iteration's losses of ``plain``,
  ``checkpoint`` and ``reference-ops`` from the same start must match;
- ``./dev bench`` / ``gpu.sh`` on a GPU: every cell at full size, in process;
- ``python -m benchmarks.bench_memory [--out results.json]``: the full table on this
  machine, each cell in a fresh process (``--help`` for the options); ``--table
  results.json`` prints the Markdown table of saved results.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks._util import (
    ROOT,
    SavedTensorMeter,
    _rss_field,
    adam_state_bytes,
    assert_matches,
    bench_device,
    cpu_model,
    peak_memory,
    record,
    sync,
    timed,
)

DEVICE = bench_device()
VARIANTS = ("plain", "checkpoint", "bf16", "reference-ops", "eager-ops")
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Config:
    """One row group of the table: a preset at a grid size and batch.

    ``model`` overrides the preset's ``model`` section; ``smoke`` is the model
    section's override in smoke mode (at grid ``smoke_size``) (keys the model does not take are left out, as
    the training command does). ``extra`` rows are left out of the default table run;
    smoke mode skips a configuration whose tiny model is ``smoke_same_as``'s.
    """

    name: str
    preset: str
    size: int
    batch: int = 1
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    smoke: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: bool = False
    smoke_size: int = 16
    smoke_same_as: str | None = None


_TINY = {"width": 4, "latent_dim": 8, "code_hidden": 16}
_TINY_HA = {"width": 4, "latent_dim": 8, "sub_depth": 8}
CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config("alpha-wgan-gp-64", "kwon2019-alpha-wgan-gp", 64, batch=2, smoke=_TINY),
        Config(
            "alpha-wgan-gp-128",
            "kwon2019-alpha-wgan-gp",
            128,
            batch=2,
            smoke=_TINY,
            smoke_same_as="alpha-wgan-gp-64",
        ),
        Config("sn-gan-64", "king2024-sn-gan", 64, smoke=_TINY),
        # HA-GAN's grid sides are multiples of 64 (its low resolution is a quarter of the grid).
        Config("ha-gan-64", "king2024-ha-gan", 64, smoke=_TINY_HA, smoke_size=64),
        Config(
            "ha-gan-128", "sun2022-ha-gan-128", 128, smoke=_TINY_HA, smoke_size=64, smoke_same_as="ha-gan-64"
        ),
        Config(
            "ha-gan-256", "sun2022-ha-gan-256", 256, smoke=_TINY_HA, smoke_size=64, smoke_same_as="ha-gan-64"
        ),
        Config(
            "alpha-wgan-gp-64-b4",
            "kwon2019-alpha-wgan-gp",
            64,
            4,
            smoke=_TINY,
            extra=True,
            smoke_same_as="alpha-wgan-gp-64",
        ),
        Config(
            "ha-gan-256-b4",
            "sun2022-ha-gan-256",
            256,
            4,
            smoke=_TINY_HA,
            extra=True,
            smoke_size=64,
            smoke_same_as="ha-gan-64",
        ),
        Config("sn-gan-64-b4", "king2024-sn-gan", 64, 4, smoke=_TINY, extra=True, smoke_same_as="sn-gan-64"),
    )
}
# Smoke batches have two volumes: at 16^3 the last BatchNorm of Kwon et al.'s networks
# sees a 1^3 map, which needs more than one sample.
SMOKE_BATCH = 2


def missing(config: Config) -> str | None:
    """Why ``config`` cannot be built here (its preset or model is not there yet), or ``None``."""
    from brainkern.models import model_names
    from brainkern.train.config import load_preset

    try:
        preset = load_preset(config.preset)
    except FileNotFoundError:
        return f"no preset {config.preset!r}"
    name = {**preset.get("model", {}), **config.model}.get("name")
    if name not in model_names():
        return f"model {name!r} is not registered"
    return None


def run_config(config: Config, variant: str, smoke: bool) -> dict[str, Any]:
    """The resolved run configuration of one cell (what ``python -m brainkern.train`` would use).

    Raises:
        ValueError: an unknown variant.
    """
    from brainkern.train.config import resolve

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    size = config.smoke_size if smoke else config.size
    model = {**config.model, **(config.smoke if smoke else {})}
    overrides = [
        {"data": {"shape": [size] * 3}},
        {"model": model},
        {"train": {"batch_size": max(config.batch, SMOKE_BATCH) if smoke else config.batch}},
        {"train": {"checkpoint": variant == "checkpoint", "amp": "bf16" if variant == "bf16" else "off"}},
    ]
    return resolve(config.preset, overrides)


def build_cell(
    config: Config, variant: str, smoke: bool, device: torch.device = DEVICE
) -> tuple[Callable[[], dict[str, torch.Tensor]], Any]:
    """One cell's iteration (a closure returning the step's losses) and its recipe.

    The model's weights come from the run's seed, the batch (uniform in [-1, 1],
    ``(batch, 1, S, S, S)``) from seed 0; the discriminators' fresh batch is the same one.
    """
    from brainkern.ops import use_backend
    from brainkern.train.engine import build_run_model
    from brainkern.train.recipes import make_recipe

    cfg = run_config(config, variant, smoke)
    model = build_run_model(cfg, device)
    recipe = make_recipe(model, cfg["train"], device)
    gen = torch.Generator().manual_seed(0)
    n = max(config.batch, SMOKE_BATCH) if smoke else config.batch
    image = (torch.rand(n, 1, *cfg["data"]["shape"], generator=gen) * 2 - 1).to(device)
    batch = {"image": image}
    recipe.draw = lambda: batch

    def iteration() -> dict[str, torch.Tensor]:
        if variant == "reference-ops":
            context = use_backend("reference")
        elif variant == "eager-ops":
            context = eager_ops()
        else:
            context = contextlib.nullcontext()
        with context:
            return recipe.step(batch)

    return iteration, recipe


def _eager_pairs() -> list[tuple[Callable, Callable]]:
    # The op modules (brainkern.ops re-exports functions under the same names).
    resize_conv3d, pixel_shuffle3d, gradient_penalty = (
        importlib.import_module(f"brainkern.ops.{name}")
        for name in ("resize_conv3d", "pixel_shuffle3d", "gradient_penalty")
    )
    return [
        (resize_conv3d.resize_conv3d, resize_conv3d.resize_conv3d_reference),
        (pixel_shuffle3d.pixel_shuffle3d, pixel_shuffle3d.pixel_shuffle3d_reference),
        (pixel_shuffle3d.pixel_unshuffle3d, pixel_shuffle3d.pixel_unshuffle3d_reference),
        (gradient_penalty.gradient_penalty, gradient_penalty.gradient_penalty_reference),
    ]


@contextlib.contextmanager
def eager_ops():
    """Inside the block, every ``brainkern`` module outside ``brainkern.ops`` that imported a
    fused op (resize-convolution, pixel (un)shuffle, gradient penalty) calls its
    plain-PyTorch reference instead (same signature and result, ordinary autograd)."""
    pairs = {id(fused): reference for fused, reference in _eager_pairs()}
    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("brainkern.") or name.startswith("brainkern.ops"):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in pairs:
                patched.append((module, attr, value))
                setattr(module, attr, pairs[id(value)])
    try:
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)


def trained_parameters(recipe) -> list[torch.Tensor]:
    """The parameters of every network the recipe's optimisers update."""
    return [p for opt in recipe.optimizers.values() for g in opt.param_groups for p in g["params"]]


def measure(
    config: Config, variant: str, *, smoke: bool, device: torch.device = DEVICE, repeat: bool = True
) -> dict[str, Any]:
    """One cell's figures (bytes, seconds) as a dict.

    The first iteration (seed 1) is counted by a :class:`SavedTensorMeter`; with
    ``repeat`` a second one is timed and its peak memory taken (Adam's state then
    exists, as in a running training). Without ``repeat`` the time and peak memory are
    the first iteration's (which also creates Adam's state and runs the meter's hooks).
    """
    torch.manual_seed(0)
    iteration, recipe = build_cell(config, variant, smoke, device)
    params = trained_parameters(recipe)
    meter = SavedTensorMeter(exclude=list(recipe.model.parameters()))
    torch.manual_seed(1)
    out: dict[str, torch.Tensor] = {}

    def first() -> None:
        with meter:
            out.update(iteration())

    sync(device)
    start = time.perf_counter()
    peak = peak_memory(first, device)
    seconds = time.perf_counter() - start
    row = {
        "config": config.name,
        "variant": variant,
        "device": device.type,
        "saved_bytes": meter.peak,
        "saved_total_bytes": meter.total,
        "state_bytes": adam_state_bytes(params),
        "params": sum(p.numel() for p in params),
        "first_seconds": seconds,
        "first_peak_bytes": peak,
        "losses": {k: float(v) for k, v in out.items()},
        "repeat": repeat,
    }
    if repeat:
        sync(device)
        start = time.perf_counter()
        peak = peak_memory(iteration, device)
        seconds = time.perf_counter() - start
    row.update(seconds=seconds, peak_bytes=peak)
    if device.type == "cpu":
        row["process_peak_rss_bytes"] = _rss_field("VmHWM")
    return row


def first_losses(config: Config, variant: str, device: torch.device = DEVICE) -> dict[str, torch.Tensor]:
    """The losses of a cell's first iteration at smoke size, from the fixed start."""
    torch.manual_seed(0)
    iteration, _ = build_cell(config, variant, True, device)
    torch.manual_seed(1)
    return iteration()


# ------------------------------------------------------------------ pytest


@pytest.fixture(autouse=True)
def _one_thread_in_smoke(smoke):
    """Smoke cells on one thread: tiny ops on two threads of a busy CPU spin (30x slower here)."""
    if not smoke:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _need(config: Config, smoke: bool) -> None:
    why = missing(config)
    if why:
        pytest.skip(f"{config.name}: {why}")
    if smoke and config.smoke_same_as:
        pytest.skip(f"{config.name}: at smoke size the same model as {config.smoke_same_as}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_result(name):
    """Fused ops and checkpointing give the reference ops' first-iteration losses (smoke size)."""
    config = CONFIGS[name]
    _need(config, smoke=True)
    want = first_losses(config, "reference-ops")
    for variant in ("plain", "checkpoint", "eager-ops"):
        got = first_losses(config, variant)
        assert list(got) == list(want), f"{name}, {variant}: losses {list(got)}, reference {list(want)}"
        assert_matches(got, want, what=f"{name} first-iteration losses, {variant}", rtol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_memory_iteration(benchmark, smoke, name, variant):
    config = CONFIGS[name]
    _need(config, smoke)
    if not smoke and DEVICE.type == "cpu":
        pytest.skip(
            "full-size memory cells on the CPU run one per process: python -m benchmarks.bench_memory"
        )
    row = measure(config, variant, smoke=smoke, repeat=not smoke)
    assert row["saved_bytes"] > 0 and row["state_bytes"] > 0, row
    iteration, _ = build_cell(config, variant, smoke)
    record(
        benchmark,
        group=f"memory-{name}",
        provider=variant,
        device=DEVICE,
        peak_bytes=row["peak_bytes"],
        saved_bytes=row["saved_bytes"],
        state_bytes=row["state_bytes"],
        shape=f"{max(config.batch, SMOKE_BATCH) if smoke else config.batch}x1x"
        f"{config.smoke_size if smoke else config.size}^3",
        mode="one training iteration",
    )
    fn = timed(iteration, DEVICE)
    if smoke:
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)


# ------------------------------------------------------------------ the table


def _mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MIB:,.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of measured cells: one row per configuration and variant.

    Columns: saved activations, weights + gradients + Adam, their sum, peak memory
    (RSS growth on the CPU, allocated on CUDA), time, and per configuration the
    saved-bytes factors against ``plain``: variant / plain on the reference-ops and
    eager-ops rows (what the fused ops save), plain / variant on the checkpoint and
    bf16 rows (what those save). A cell measured without a warm-up iteration
    marks its peak and time with ``*``.
    """
    by_cell = {(r["config"], r["variant"]): r for r in rows}
    lines = [
        "| configuration | variant | saved activations (MiB) | weights+grads+Adam (MiB) | sum (MiB) "
        "| peak (MiB) | time (s) | variant / plain | plain / variant |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {name: i for i, name in enumerate(CONFIGS)}
    for r in sorted(rows, key=lambda r: (order.get(r["config"], 99), VARIANTS.index(r["variant"]))):
        plain = by_cell.get((r["config"], "plain"))
        factor_ref = factor_ckpt = ""
        if plain and r["variant"] in ("reference-ops", "eager-ops"):
            factor_ref = f"{r['saved_bytes'] / plain['saved_bytes']:.2f}x"
        if plain and r["variant"] in ("checkpoint", "bf16"):
            factor_ckpt = f"{plain['saved_bytes'] / r['saved_bytes']:.2f}x"
        mark = "" if r.get("repeat", True) else "*"
        seconds = r.get("seconds")
        lines.append(
            f"| {r['config']} | {r['variant']} | {_mib(r['saved_bytes'])} | {_mib(r['state_bytes'])} | "
            f"{_mib(r['saved_bytes'] + r['state_bytes'])} | {_mib(r.get('peak_bytes'))}{mark} | "
            f"{'-' if seconds is None else f'{seconds:.2f}'}{mark} | {factor_ref} | {factor_ckpt} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the table was measured: device, threads, versions, date, commit."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "device": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
    }


def _cell_in_process(args) -> int:
    config = CONFIGS[args.cell[0]]
    why = missing(config)
    if why:
        raise SystemExit(f"bench_memory: {config.name}: {why}")
    row = measure(config, args.cell[1], smoke=args.smoke, repeat=not _single(*args.cell, args))
    print(json.dumps(row))
    return 0


def _single(name: str, variant: str, args) -> bool:
    return f"{name}:{variant}" in args.single or name in args.single


def _run_cell(name: str, variant: str, args) -> dict[str, Any] | None:
    """One cell in a fresh process (peaks of earlier cells cannot hide its own)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--cell", name, variant]
    cmd += ["--threads", str(args.threads)] + (["--smoke"] if args.smoke else [])
    if _single(name, variant, args):
        cmd += ["--single", f"{name}:{variant}"]
    env = dict(os.environ, BRAINKERN_BENCH_DEVICE=str(DEVICE))
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.cell_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        print(f"{name} {variant}: over {args.cell_timeout} s, left out", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"{name} {variant}: exit {done.returncode}\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_memory",
        description="The memory table of one training iteration (see the module docstring).",
    )
    parser.add_argument("--configs", default=",".join(n for n, c in CONFIGS.items() if not c.extra))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (16^3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per cell (default 2)")
    parser.add_argument(
        "--single",
        default="",
        help="comma list of CONFIG or CONFIG:VARIANT measured on one iteration (no warm-up)",
    )
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell")
    parser.add_argument("--out", type=Path, help="JSON file for the results (rewritten after each cell)")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results file and stop")
    parser.add_argument("--cell", nargs=2, metavar=("CONFIG", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.single = {s for s in args.single.split(",") if s}
    if args.table:
        doc = json.loads(args.table.read_text())
        print(json.dumps(doc["environment"]))
        print(markdown_table(doc["rows"]))
        return 0
    if args.cell:
        return _cell_in_process(args)
    names = [n for n in args.configs.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    for bad in [n for n in names if n not in CONFIGS] + [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown configuration or variant {bad!r}: {', '.join(CONFIGS)}; {', '.join(VARIANTS)}")
    doc = {"environment": environment(), "rows": []}
    for name in names:
        why = missing(CONFIGS[name])
        if why:
            print(f"{name}: {why}; left out", file=sys.stderr)
            continue
        for variant in variants:
            if DEVICE.type == "cpu":
                row = _run_cell(name, variant, args)
            else:
                repeat = not _single(name, variant, args)
                row = measure(CONFIGS[name], variant, smoke=args.smoke, repeat=repeat)
            if row is None:
                continue
            doc["rows"].append(row)
            print(
                f"{name} {variant}: saved {_mib(row['saved_bytes'])} MiB, "
                f"state {_mib(row['state_bytes'])} MiB, peak {_mib(row['peak_bytes'])} MiB, "
                f"{row['seconds']:.2f} s",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(doc, indent=1))
    print(markdown_table(doc["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
