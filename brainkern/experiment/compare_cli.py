"""Command line of experiment ``compare``: King et al. (2024)'s comparison of generator architectures.

    python -m brainkern.experiment compare --preset quick                      # <= 15 min on a 2-core CPU
    python -m brainkern.experiment compare --preset king2024-architectures --out runs/compare
    python -m brainkern.experiment compare --set sets=5 --set architectures.sn-gan.set={train.iters: 500}
    python -m brainkern.experiment compare --extractor-weights resnet_50.pth   # MedicalNet's features

Generator presets trained on the training subjects of one split, ten synthetic sets each,
scored by FID, precision, recall and MMD^2 on 3D features against the held-out subjects,
beside the trivial baselines; mean and 95% CI per architecture, ANOVA and post-hoc tests.
Run the same command again to resume an interrupted experiment.

Standard library only at the top, so ``--help`` answers at once; the work is
:func:`brainkern.experiment.compare.run_compare`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

PROG = "python -m brainkern.experiment compare"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="King et al. (2024) Fig. 2: generator architectures trained on one split's training "
        "subjects, ten synthetic sets each, FID / precision / recall / MMD^2 on 3D features against "
        "held-out subjects, beside the trivial baselines. Writes results.csv, summary.csv, table.md, "
        "splits.json, metrics.png and pca.png; resumes where it stopped.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        default="king2024-architectures",
        help="experiment preset (quick, king2024-architectures) or a YAML file",
    )
    parser.add_argument("--out", help="experiment folder (default: runs/compare-<preset>)")
    parser.add_argument(
        "--data",
        help="a labels table (CSV/TSV: path, label, subject) or a folder of class folders; "
        "default: the preset's embedded smri cohort",
    )
    parser.add_argument(
        "--extractor-weights",
        metavar="PATH",
        help="a MedicalNet resnet_50.pth: features from MedicalNet's 3D ResNet-50 instead of the "
        "autoencoder-3d trained on the training volumes",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the experiment config (YAML value), e.g. sets=5, split.folds=3, "
        "architectures.sn-gan.set={train.iters: 500}",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, ... (default: the preset's, auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the experiment; returns the exit status (0, or 2 with a one-line error)."""
    from pathlib import Path

    from brainkern.experiment.zhuang_cli import run_experiment

    args = build_parser(prog).parse_args(argv)
    extra = []
    if args.extractor_weights:
        weights = str(Path(args.extractor_weights).expanduser().resolve())
        extra.append({"extractor": {"name": "medicalnet-resnet50", "weights": weights}})
    return run_experiment(args, "compare", "brainkern.experiment.compare", extra)


if __name__ == "__main__":
    sys.exit(main())
