"""``python -m brainkern.reconstruct``: Seeliger et al.'s (2018) reconstruction of seen images
from brain responses through a fixed GAN's latent space.

    python -m brainkern.reconstruct [--preset quick] [--set key=value ...] [--out DIR]
    python -m brainkern.reconstruct human RUN/snr-1 [--repeats 5] [--port 8000]
    python -m brainkern.reconstruct human-report SESSION
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from brainkern.reconstruct.pipeline import preset_names

    p = argparse.ArgumentParser(
        prog="python -m brainkern.reconstruct",
        description="Reconstruct seen images from (simulated or your) brain responses through a fixed "
        "DCGAN's latent space (Seeliger et al. 2018): train the image prior and a feature network on "
        "the stimulus domain, regress z from PCA-reduced responses, judge by pairwise identification. "
        "Subcommands: 'human RUN_DIR' (the human pairwise test on the Turing page), "
        "'human-report SESSION'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help=f"one of {preset_names()} (default: quick)")
    src.add_argument("--config", default=None, help="a YAML file (e.g. a run's config.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. responses.snr=[0.5] or prior.run=runs/prior",
    )
    p.add_argument("--prior", default=None, help="a trained prior's run directory (prior.run)")
    p.add_argument(
        "--responses", default=None, help="your responses: NIfTI 4D, .npy or .csv (responses.path)"
    )
    p.add_argument("--table", default=None, help="their stimulus table: stimulus, part[, repeat]")
    p.add_argument("--out", default=None, help="output folder (default: runs/reconstruct-<preset>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "human":
        from brainkern.reconstruct.human import human_main

        return human_main(argv[1:])
    if argv and argv[0] == "human-report":
        from brainkern.reconstruct.human import human_report_main

        return human_report_main(argv[1:])
    args = _parser().parse_args(argv)
    from brainkern.reconstruct.pipeline import load_config, run

    sets = list(args.set)
    for key, value in (
        ("prior.run", args.prior),
        ("responses.path", args.responses),
        ("responses.table", args.table),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    try:
        preset = args.preset if (args.preset or args.config) else "quick"
        cfg = load_config(preset, args.config, sets)
        out = (
            Path(args.out)
            if args.out
            else Path("runs")
            / (f"reconstruct-{cfg.get('preset') or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        summary = run(cfg, out, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\noutput: {summary['out']}  ({summary['timings']['total']:.0f} s)")
    for name in ("report.md", "identification.png", "prior_samples.png"):
        if (Path(summary["out"]) / name).is_file():
            print(f"  {Path(summary['out']) / name}")
    for e in summary["experiments"]:
        print(f"  {Path(summary['out']) / e['name'] / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
