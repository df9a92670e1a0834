"""``python -m brainkern.data``: data-layer commands.

    python -m brainkern.data make-cohort smri --out data/smri --n-per-class 40
    python -m brainkern.data make-cohort smri --out data/mr4 --sequences t1 t1c t2 flair --lesions 0.5
    python -m brainkern.data make-cohort fmri --out data/fmri --n-per-class 40 --n-classes 4

Heavy modules (nibabel, nilearn, scipy) load only inside the command, so
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
import time

from brainkern._cli import positive_int


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m brainkern.data", description="brainkern data tools")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser(
        "make-cohort",
        help="write an embedded cohort (simulated from templates shipped with nilearn)",
        description="Write a labelled NIfTI cohort simulated from the MNI152 templates that ship with "
        "nilearn (no download): 'smri' (control vs patient T1 volumes) or 'fmri' (task maps on the "
        "53x63x46, 3 mm grid). Prints the path of the labels table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    make.add_argument("kind", choices=("smri", "fmri"), help="which cohort")
    make.add_argument("--out", required=True, help="output folder (created)")
    make.add_argument("--n-per-class", type=positive_int, default=40, help="subjects per class (>= 1)")
    make.add_argument(
        "--shape",
        type=positive_int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=None,
        help="output grid (default: 64 64 64 for smri, 53 63 46 for fmri)",
    )
    make.add_argument("--seed", type=int, default=0, help="random seed")
    make.add_argument(
        "--effect",
        type=_non_negative_float,
        default=None,
        help="smri only: patient effect size (>= 0; default 1.0, the calibrated size)",
    )
    make.add_argument(
        "--sequences",
        nargs="+",
        choices=("t1", "t1c", "t2", "flair"),
        default=None,
        metavar="SEQ",
        help="smri only: MR sequences to simulate, from t1 t1c t2 flair (T1 is always written, as "
        "labels.csv; each other one gets labels_<SEQ>.csv; default: t1)",
    )
    make.add_argument(
        "--lesions",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="smri only: fraction of subjects in [0, 1] with a simulated tumour-like lesion "
        "(label maps in masks/; default 0)",
    )
    make.add_argument(
        "--n-classes", type=int, default=None, help="fmri only: number of classes, 2 to 7 (default 4)"
    )
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def make_cohort(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brainkern.data import cohorts

    start = time.perf_counter()
    progress = not args.quiet
    if args.kind == "smri":
        if args.n_classes is not None:
            parser.error("--n-classes applies to the fmri cohort only")
        table = cohorts.smri(
            args.out,
            n_per_class=args.n_per_class,
            shape=tuple(args.shape) if args.shape else (64, 64, 64),
            effect=1.0 if args.effect is None else args.effect,
            seed=args.seed,
            progress=progress,
            sequences=tuple(args.sequences) if args.sequences else ("t1",),
            lesions=0.0 if args.lesions is None else args.lesions,
        )
    else:
        for flag, value in (
            ("--effect", args.effect),
            ("--sequences", args.sequences),
            ("--lesions", args.lesions),
        ):
            if value is not None:
                parser.error(f"{flag} applies to the smri cohort only")
        table = cohorts.fmri(
            args.out,
            n_per_class=args.n_per_class,
            n_classes=4 if args.n_classes is None else args.n_classes,
            shape=tuple(args.shape) if args.shape else cohorts.FMRI_SHAPE,
            seed=args.seed,
            progress=progress,
        )
    print(f"wrote {table} ({time.perf_counter() - start:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "make-cohort":
        try:
            return make_cohort(args, parser)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
