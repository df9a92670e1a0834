"""``python -m brainkern.evaluate RUN_DIR``: Kwon et al.'s Table 1 for a training run.

Batch MMD^2 (linear kernel, the mean of ``evaluate.mmd_tests`` tests of B real vs B
generated volumes) and MS-SSIM diversity (the mean over ``evaluate.ms_ssim_pairs``
random pairs of generated volumes, with real pairs beside it), for the trained
generator and for two baselines (its untrained initialisation and matched noise).
Prints the table and writes ``evaluation.json`` and ``report.md`` in the run folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainkern._cli import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainkern.evaluate",
        description="Evaluate a training run: batch MMD^2 and MS-SSIM diversity (Kwon et al. 2019, Table 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run directory written by python -m brainkern.train")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint")
    parser.add_argument(
        "--n-generated", type=positive_int, help="generated volumes (default: the run's config)"
    )
    parser.add_argument("--mmd-tests", type=positive_int, help="MMD tests (default: the run's config, 100)")
    parser.add_argument("--pairs", type=positive_int, help="MS-SSIM pairs (default: the run's config, 1000)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from brainkern.evaluate.generation import format_table
    from brainkern.evaluate.run import evaluate_model, real_volumes, write_report
    from brainkern.train.data import load_dataset, training_indices
    from brainkern.train.engine import load_run

    try:
        model, cfg, ckpt = load_run(args.run_dir, args.checkpoint, args.device)
        for key, value in (
            ("n_generated", args.n_generated),
            ("mmd_tests", args.mmd_tests),
            ("ms_ssim_pairs", args.pairs),
        ):
            if value is not None:
                cfg["evaluate"][key] = value
        dataset = load_dataset(cfg["data"], progress=not args.quiet)
        indices = training_indices(dataset, cfg["data"]["classes"])
        real = real_volumes(dataset, indices)
        device = next(model.parameters()).device
        rows = evaluate_model(model, real, cfg, device=device, progress=not args.quiet)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = {
        "model": model.name,
        "preset": cfg.get("preset"),
        "iterations": int(ckpt["iter"]),
        "checkpoint": args.checkpoint,
        "train_seconds": round(float(ckpt.get("elapsed", 0.0)), 1),
        "grid": list(dataset.shape),
        "n_real": int(len(indices)),
        "n_generated": int(cfg["evaluate"]["n_generated"]),
    }
    path = write_report(Path(args.run_dir), rows, info)
    print(format_table(rows))
    print(f"written: {path} and {path.with_name('evaluation.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
