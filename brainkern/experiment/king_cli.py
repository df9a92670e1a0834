"""Command line of experiment ``diagnosis``: King et al. (2024)'s diagnosis classifier experiment.

    python -m brainkern.experiment diagnosis --preset quick       # <= 30 min on a 2-core CPU
    python -m brainkern.experiment diagnosis --preset king2024 --out runs/king
    python -m brainkern.experiment diagnosis --set sets=[real,synthetic-large] --set cv.folds=3

A VGG-like 3D CNN trained to tell patients from controls on Real, Augmented, Mixed,
Synthetic (small and large) and Infinite training sets, the class-conditional generator
trained inside each fold of a stratified 5-fold cross-validation grouped by subject (on
that fold's training subjects only); validated and tested on real volumes. Run the same
command again to resume an interrupted experiment.

Standard library only at the top, so ``--help`` answers at once; the work is
:func:`brainkern.experiment.king.run_diagnosis`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m brainkern.experiment diagnosis"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The experiment's options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="King et al. (2024)'s diagnosis experiment (Table 1, Fig. 6, Fig. S11): a 3D CNN "
        "trained on real, augmented, mixed, synthetic and infinite sets (a conditional GAN trained "
        "inside each fold), tested on real volumes. Writes results.csv, table.md, splits.json, "
        "figure6.png and figureS11.png; resumes where it stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="king2024", help="experiment preset (quick, king2024) or a YAML file"
    )
    parser.add_argument("--out", help="experiment folder (default: runs/diagnosis-<preset>)")
    parser.add_argument(
        "--data",
        help="a labels table (CSV/TSV: path, label, subject) or a folder of class folders with two "
        "classes; default: the preset's embedded smri cohort",
    )
    parser.add_argument(
        "--positive", help="the class name whose recall is the sensitivity (default: patient)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the experiment config (YAML value), e.g. cv.folds=3, "
        "train.infinite_iterations=500, classifiers.vgg3d={epochs: 20}",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, ... (default: the preset's, auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the experiment; returns the exit status (0, or 2 with a one-line error)."""
    from brainkern.experiment.zhuang_cli import run_experiment

    args = build_parser(prog).parse_args(argv)
    extra = [{"positive": args.positive}] if args.positive is not None else []
    return run_experiment(args, "diagnosis", "brainkern.experiment.king", extra)


if __name__ == "__main__":
    sys.exit(main())
