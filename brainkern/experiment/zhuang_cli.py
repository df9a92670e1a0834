"""Command line of experiment ``augmentation``: Zhuang et al. (2019)'s augmentation experiment.

    python -m brainkern.experiment augmentation --preset quick              # ~20 min on a laptop CPU
    python -m brainkern.experiment augmentation --preset zhuang2019 --out runs/zhuang
    python -m brainkern.experiment augmentation --data labels.csv --set augment.k=20
    python -m brainkern.experiment augmentation --data neurovault/collection_2138 --label-field task

Classifiers (a linear SVM on masked voxels, a 3D CNN) trained on real maps, on real maps
plus noisy copies, and on real maps plus class-conditional samples of each generator
(GMM, CVAE, ICW-GAN), each generator trained inside each fold on that fold's training
subjects; tested on held-out real maps; stratified k-fold grouped by subject, repeated.
Run the same command again to resume an interrupted experiment.

Standard library only at the top, so ``--help`` answers at once; the work is
:func:`brainkern.experiment.zhuang.run_augmentation`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m brainkern.experiment augmentation"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Zhuang et al. (2019)'s augmentation experiment: SVM and 3D DNN classifiers on Real, "
        "Real+noise and Real+Synth. (GMM, CVAE, ICW-GAN) training sets, generators trained inside each "
        "fold, tested on held-out real maps. Writes results.csv, summary.csv, table.md, splits.json, "
        "bars.png and figure2.png; resumes where it stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="zhuang2019", help="experiment preset (quick, zhuang2019) or a YAML file"
    )
    parser.add_argument("--out", help="experiment folder (default: runs/augmentation-<preset>)")
    parser.add_argument(
        "--data",
        help="a labels table (CSV/TSV: path, label, subject), a folder of class folders, or a Neurovault "
        "download folder (with --label-field); default: the preset's embedded fmri cohort",
    )
    parser.add_argument("--label-field", help="Neurovault metadata field holding the label")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the experiment config (YAML value), e.g. cv.repeats=1, augment.k=20, "
        "generators.icw-gan.set={train.iters: 500}",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, ... (default: the preset's, auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run_experiment(args: argparse.Namespace, name: str, module: str, extra: Sequence[dict] = ()) -> int:
    """The common part of an experiment's command line: ``--set`` overrides, ``--data`` (a labels
    table or folder in place of the embedded cohort), ``extra`` overrides and ``--device`` laid
    over ``--preset``; then ``module``'s ``<name>_config`` and ``run_<name>`` (imported here, so
    ``--help`` needs no torch) write to ``--out`` (default ``runs/<name>-<preset>``).

    Returns:
        0, or 2 after printing a one-line error (a missing file, an unknown key, a bad value).
    """
    import importlib
    from pathlib import Path

    from brainkern.train.config import parse_override

    try:
        overrides = [parse_override(text) for text in args.overrides]
        if args.data:
            overrides.append({"data": {"cohort": None, "table": str(Path(args.data).expanduser().resolve())}})
        overrides += list(extra)
        if args.device:
            overrides.append({"device": args.device})
        work = importlib.import_module(module)
        cfg = getattr(work, f"{name}_config")(args.preset, overrides)
        out = Path(args.out) if args.out else Path("runs") / f"{name}-{cfg['preset']}"
        getattr(work, f"run_{name}")(cfg, out, progress=not args.quiet)
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the experiment; returns the exit status (0, or 2 with a one-line error)."""
    args = build_parser(prog).parse_args(argv)
    extra = [{"label_field": args.label_field}] if args.label_field else []
    return run_experiment(args, "augmentation", "brainkern.experiment.zhuang", extra)


if __name__ == "__main__":
    sys.exit(main())
