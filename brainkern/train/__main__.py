"""``python -m brainkern.train``: train a 3D generator of brain volumes (or a 2D one of slices).

    python -m brainkern.train                          # the quick preset on the embedded cohort
    python -m brainkern.train --preset kwon2019-alpha-wgan-gp --data labels.csv
    python -m brainkern.train --preset quick --model wgan-gp --iters 200 --set train.lr=1e-4
    python -m brainkern.train --resume runs/quick-alpha-wgan-gp-20261123-101500
    torchrun --standalone --nproc_per_node 4 -m brainkern.train --preset kwon2019-alpha-wgan-gp

Torch and the rest load inside :func:`main`, after argument parsing, so ``--help``
answers at once. This entry point wires the engine (``brainkern.train``) to the
run report (``brainkern.experiment.kwon``: pictures and the end-of-run evaluation).
Under ``torchrun`` every process runs this command; rank 0 resolves the
configuration and the run directory and hands them to the others
(:mod:`brainkern.train.distributed`), and only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from brainkern._cli import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainkern.train",
        description="Train a 3D generative model of brain volumes (Kwon et al. 2019 family) and write a "
        "run directory with checkpoints, NIfTI samples, pictures and an evaluation table. With no "
        "arguments: the 'quick' preset on the embedded structural cohort (a few minutes on a CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", help="a preset in brainkern/configs/ (quick, kwon2019-alpha-wgan-gp, ...); default quick"
    )
    which.add_argument("--config", help="a YAML config file (e.g. a run's config.yaml)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--data", help="a labels table (CSV/TSV: path,label[,subject]) or a folder of class folders"
    )
    data.add_argument("--cohort", choices=("smri", "fmri"), help="an embedded simulated cohort")
    parser.add_argument(
        "--model", help="registered model name, e.g. alpha-wgan-gp, sn-gan, ha-gan (--list shows them all)"
    )
    parser.add_argument("--iters", type=positive_int, help="training iterations (>= 1)")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size (>= 1)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", help="run directory (default: runs/<preset>-<model>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR where it stopped")
    parser.add_argument(
        "--resume-from",
        choices=("last", "previous"),
        default="last",
        help="with --resume: the checkpoint to continue from (previous: the one before last.pt)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-4 or data.shape=[32,32,32] (repeatable)",
    )
    parser.add_argument("--no-evaluate", action="store_true", help="skip the end-of-run evaluation")
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the registered models and classifiers and the presets, then exit",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _flag_overrides(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if args.data is not None:
        out.append({"data": {"table": args.data, "cohort": None}})
    if args.cohort is not None:
        out.append({"data": {"cohort": args.cohort, "table": None}})
        if args.cohort == "fmri":  # the 53x63x46 grid, resized to sides divisible by 16
            out.append({"data": {"shape": [48, 64, 48], "cohort_shape": None}})
    if args.model is not None:
        out.append({"model": {"name": args.model}})
    for key, section, field in (
        ("iters", "train", "iters"),
        ("batch_size", "train", "batch_size"),
        ("device", "train", "device"),
    ):
        value = getattr(args, key)
        if value is not None:
            out.append({section: {field: value}})
    if args.no_evaluate:
        out.append({"evaluate": {"enabled": False}})
    return out


def listing() -> str:
    """Every registered model and classifier with a line about it, and the presets."""
    from brainkern.models import model_summaries
    from brainkern.train.config import preset_names
    from brainkern.train.recipes import RECIPES

    rows = model_summaries()
    width = max(len(name) for name, _, _ in rows)
    lines = []
    for kind in ("generative", "classifier"):
        lines.append(f"{kind} models:")
        mine = [(n, d) for n, k, d in rows if k == kind]
        lines += [f"  {n:<{width}}  {d}" for n, d in mine] or ["  (none registered yet)"]
    lines.append(f"training recipes (model families): {', '.join(sorted(RECIPES))}")
    lines.append(f"presets: {', '.join(preset_names())}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0

    from brainkern.train import distributed

    world = distributed.setup()
    try:
        # Rank 0 alone reads the files and picks the run directory's name (its clock):
        # every process then trains the same configuration into the same run.
        cfg, run_dir = world.on_main(lambda: _resolve(parser, args))
        return _train(args, cfg, run_dir, world)
    finally:
        distributed.shutdown()


def _resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The run's configuration and run directory (``parser.error`` on a bad one)."""
    from brainkern.train import config as config_mod

    try:
        overrides = _flag_overrides(args) + [config_mod.parse_override(s) for s in args.overrides]
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                parser.error(f"--resume: {run_dir} has no config.yaml (not a brainkern run directory)")
            if args.preset or args.config or args.data or args.cohort or args.model:
                parser.error(
                    "--resume continues a run as configured; only --iters, --device and --set may change"
                )
            cfg = config_mod.resolve(run_dir / "config.yaml", overrides)
        else:
            cfg = config_mod.resolve(args.config or args.preset or "quick", overrides)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = (
                Path(args.out)
                if args.out
                else Path("runs") / f"{cfg['preset']}-{cfg['model']['name']}-{stamp}"
            )
            if (run_dir / "checkpoints" / "last.pt").exists():
                parser.error(f"{run_dir} already holds a run: pass --resume {run_dir} or another --out")
    except (ValueError, KeyError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return cfg, run_dir


def _train(args: argparse.Namespace, cfg: dict[str, Any], run_dir: Path, world) -> int:
    from brainkern.experiment.han import SliceReport
    from brainkern.experiment.kwon import RunReport
    from brainkern.train.data import is_2d
    from brainkern.train.distributed import RankFailed
    from brainkern.train.engine import Diverged, Interrupted, Trainer
    from brainkern.train.state import CheckpointError

    # What every process meets alike is said once, by rank 0.
    def say(text: str) -> None:
        if world.is_main:
            print(text, file=sys.stderr)

    wall = time.perf_counter()
    try:
        trainer = Trainer(
            cfg,
            run_dir,
            resume=args.resume_from if args.resume else False,
            progress=not args.quiet,
            # 2D slice runs (Han et al.) get their own pictures and machine-observer report.
            callbacks=[
                (SliceReport if is_2d(cfg["data"]) else RunReport)(
                    evaluate=cfg["evaluate"]["enabled"], progress=not args.quiet
                )
            ],
        )
        trainer.fit()
    except Interrupted as exc:
        say(f"\n{exc}")
        return 130
    except Diverged as exc:
        say(f"\ntraining diverged: {exc}")
        return 1
    except RankFailed:  # rank 0 has said why
        return 2
    except (ValueError, FileNotFoundError, CheckpointError) as exc:
        where = "" if world.is_main else f"rank {world.rank}: "  # may concern this process alone
        print(f"{where}error: {exc}", file=sys.stderr)
        return 2
    if not world.is_main:
        return 0
    print(f"\nrun directory: {run_dir}  ({time.perf_counter() - wall:.0f} s wall)")
    kind = "samples (PNG)" if is_2d(cfg["data"]) else "samples (NIfTI)"
    for what, sub in ((kind, "samples"), ("pictures (PNG)", "pictures")):
        if (run_dir / sub).is_dir():
            print(f"  {what:16s} {run_dir / sub}")
    if (run_dir / "report.md").is_file():
        print(f"  {'report':16s} {run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
