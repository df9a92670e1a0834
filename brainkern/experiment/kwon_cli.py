"""Command line of experiment ``kwon2019-table1``: Kwon et al. (2019)'s Table 1 for a training run.

    python -m brainkern.experiment kwon2019-table1 RUN_DIR [--checkpoint best] [--pairs 200]
    python -m brainkern.evaluate RUN_DIR               # the same command, kept as a shortcut

Batch MMD^2 (linear kernel, the mean of ``evaluate.mmd_tests`` tests of B real vs B
generated volumes) and MS-SSIM diversity (the mean over ``evaluate.ms_ssim_pairs``
random pairs of generated volumes, with real pairs beside it), for the trained
generator and for two baselines (its untrained initialisation and matched noise).
Prints the table and writes ``evaluation.json`` and ``report.md`` in the run folder.

Standard library only at the top: torch loads after the arguments are parsed, so
``--help`` answers at once. The work is :func:`brainkern.experiment.kwon.evaluate_run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainkern._cli import positive_int

PROG = "python -m brainkern.experiment kwon2019-table1"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a training run: Kwon et al.'s (2019) Table 1 (batch MMD^2, MS-SSIM diversity) "
        "beside trivial baselines (mean volume, per-voxel Gaussian, training copies), unbiased RBF MMD^2 "
        "and a memorisation check.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run directory written by python -m brainkern.train")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint")
    parser.add_argument(
        "--n-generated", type=positive_int, help="generated volumes (default: the run's config)"
    )
    parser.add_argument("--mmd-tests", type=positive_int, help="MMD tests (default: the run's config, 100)")
    parser.add_argument("--pairs", type=positive_int, help="MS-SSIM pairs (default: the run's config, 1000)")
    parser.add_argument(
        "--ms-ssim",
        choices=("standard", "kwon2019"),
        help="MS-SSIM convention: the standard definition, or what Kwon et al.'s code computes for their "
        "Table 1 (default: the run's config, standard)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the experiment; returns the exit status (0, or 2 with a one-line error)."""
    args = build_parser(prog).parse_args(argv)

    from brainkern.evaluate.generation import format_table
    from brainkern.experiment.kwon import evaluate_run, verdict_lines

    try:
        rows, path = evaluate_run(
            args.run_dir,
            checkpoint=args.checkpoint,
            device=args.device,
            n_generated=args.n_generated,
            mmd_tests=args.mmd_tests,
            ms_ssim_pairs=args.pairs,
            ms_ssim=args.ms_ssim,
            progress=not args.quiet,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print("\n".join(verdict_lines(rows)))
    print(f"written: {path} and {path.with_name('evaluation.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
