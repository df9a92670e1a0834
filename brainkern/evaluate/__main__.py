"""``python -m brainkern.evaluate``: Kwon et al.'s Table 1 for a run, and Han et al.'s Visual Turing Test.

- ``python -m brainkern.evaluate RUN_DIR``: a shortcut, kept for existing scripts, for the
  experiment ``python -m brainkern.experiment kwon2019-table1 RUN_DIR`` (the same arguments
  and output: the table, ``evaluation.json`` and ``report.md`` in the run folder);
- ``python -m brainkern.evaluate turing SOURCE``: prepare a Visual Turing Test session from a
  run directory or a folder of synthetic images (with ``--real DIR``) and serve its page;
  ``turing --session DIR`` serves an existing session again;
- ``python -m brainkern.evaluate turing-report SESSION``: Han et al.'s Table 1 for the
  session's raters, beside the machine observer (C2ST).

Like every ``__main__`` it is an entry point that wires layers together, so it may reach
down to :mod:`brainkern.experiment`; the library modules of :mod:`brainkern.evaluate` do not.
Heavy imports happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from brainkern._cli import positive_int, subcommand_parser
from brainkern.experiment import kwon_cli

PROG = "python -m brainkern.evaluate"
COMMANDS = ("turing", "turing-report")


def build_parser() -> argparse.ArgumentParser:
    parser = kwon_cli.build_parser(PROG)
    parser.add_argument(
        "--permutations",
        type=positive_int,
        default=20,
        help="2D runs only: permutations of each classifier two-sample test's p-value",
    )
    parser.epilog = (
        "A 2D run (Han et al.'s slice models) gets its machine-observer table instead (classifier "
        f"two-sample tests and baselines). Also: '{PROG} turing SOURCE' (a Visual Turing Test page, "
        f"Han et al. 2018) and '{PROG} turing-report SESSION' (its table); each has --help."
    )
    return parser


def _subparser(command: str, description: str) -> argparse.ArgumentParser:
    return subcommand_parser(PROG, command, description)


def build_turing_parser() -> argparse.ArgumentParser:
    parser = _subparser(
        "turing",
        "Han et al.'s (2018) Visual Turing Test: prepare a session of n real and n synthetic "
        "images in a seeded random order and serve a local page where a rater calls each one real or "
        "synthetic. Answers are saved on disk as they are given; reopen the page with the same name to "
        "resume.",
    )
    parser.add_argument(
        "source",
        nargs="?",
        help="a run directory (config.yaml + checkpoints/last.pt) or a folder of synthetic images "
        "(.nii, .nii.gz, .png; then --real is required); leave out to serve --session again",
    )
    parser.add_argument("--real", help="folder of real images (with a folder SOURCE)")
    parser.add_argument("--n", type=positive_int, default=50, help="images shown per set (real, synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the picks and the order (>= 0)")
    parser.add_argument(
        "--pool",
        type=positive_int,
        default=200,
        help="images per set kept for the machine observer (at least n; a run samples this many)",
    )
    parser.add_argument("--session", help="session folder (default: turing-<source>-<time> beside SOURCE)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 opens it to the network)"
    )
    parser.add_argument("--no-serve", action="store_true", help="only prepare the session")
    parser.add_argument(
        "--view",
        choices=("slice", "triplanar"),
        default="slice",
        help="3D images: central sagittal slice or 3 planes",
    )
    parser.add_argument(
        "--channels",
        choices=("split", "panel"),
        default="split",
        help="multi-channel 2D images: one channel per trial, cycling in equal proportion (Han et al.'s "
        "Concat protocol), or all channels side by side",
    )
    return parser


def build_report_parser() -> argparse.ArgumentParser:
    parser = _subparser(
        "turing-report",
        "Han et al.'s (2018) Table 1 for a Visual Turing Test session: per rater (and pooled) "
        "accuracy with its exact 95% CI and binomial test against 50%, the four cells, unreadable counts, "
        "and a classifier two-sample test (machine observer) on the session's images; written to "
        "SESSION/report.md and report.json.",
    )
    parser.add_argument("session", help="a session folder written by 'turing'")
    parser.add_argument("--rater", help="only this rater")
    parser.add_argument("--permutations", type=int, default=100, help="the machine observer's permutations")
    parser.add_argument("--no-machine", action="store_true", help="leave out the machine observer")
    return parser


def _prepare(args: argparse.Namespace) -> Path:
    from brainkern.evaluate import turing

    source = Path(args.source)
    count = max(args.n, args.pool)
    if (source / "config.yaml").is_file():
        if args.real:
            raise ValueError("--real is for a folder SOURCE; a run's real images are its held-out data")
        real, synthetic, facts = turing.run_images(source, count, args.seed)
        names, window, groups = facts["names"], facts["window"], facts["groups"]
        notes = {"real_images": facts["real"], "model": facts["model"]}
    elif not args.real:
        raise ValueError(f"{source} is not a run directory (no config.yaml): give --real DIR for a folder")
    else:
        real, real_files = turing.folder_images(args.real, count, args.seed)
        synthetic, _ = turing.folder_images(source, count, args.seed + 1)
        names, window, groups = None, "percentile", None
        notes = {"real_images": f"{len(real_files)} images of {Path(args.real).resolve()}"}
    return turing.prepare_session(
        real,
        synthetic,
        Path(args.session) if args.session else turing.default_session_dir(source),
        n=args.n,
        seed=args.seed,
        channels=args.channels,
        names=names,
        source=str(source.resolve()),
        view=args.view,
        window=window,
        pool=args.pool,
        notes=notes,
        real_groups=groups,
    )


def turing_main(argv: Sequence[str]) -> int:
    """``turing``: prepare and/or serve a session; returns the exit status."""
    args = build_turing_parser().parse_args(argv)
    if args.source is None and not args.session:
        print("error: give a SOURCE to prepare, or --session DIR to serve a session again", file=sys.stderr)
        return 2
    from brainkern.evaluate import turing

    try:
        if args.source is not None:
            session = _prepare(args)
            print(f"session prepared: {session}", flush=True)
        else:
            session = Path(args.session)
        if args.no_serve:
            return 0
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return turing.serve_until_stopped(session, args.host, args.port, title="Visual Turing Test")


def report_main(argv: Sequence[str]) -> int:
    """``turing-report``: print and write the session's table; returns the exit status."""
    args = build_report_parser().parse_args(argv)
    from brainkern.evaluate import turing

    try:
        text, _ = turing.write_report(
            args.session, args.rater, machine=not args.no_machine, permutations=args.permutations
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"written: {Path(args.session) / 'report.md'} and report.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "turing":
        return turing_main(argv[1:])
    if argv and argv[0] == "turing-report":
        return report_main(argv[1:])
    args = build_parser().parse_args(argv)  # --help shows the turing commands too
    if _is_slice_run(Path(args.run_dir)):
        return _slice_table(args)
    if "--permutations" in argv:
        print(
            "error: --permutations is for 2D runs (Kwon et al.'s table runs no permutation test)",
            file=sys.stderr,
        )
        return 2
    return kwon_cli.main(argv, PROG)


def _is_slice_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a 2D run (``data.slices``: Han et al.'s slice models;
    ``data.images``: a stimulus domain's image prior)."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False  # Kwon's path says what is wrong with the folder
    from brainkern.train.data import is_2d

    return bool(isinstance(cfg, dict) and is_2d(cfg.get("data") or {}))


def _slice_table(args: argparse.Namespace) -> int:
    """A 2D run's machine-observer table (its classifier two-sample tests and baselines)."""
    from brainkern.experiment.han import evaluate_slice_run, format_slice_table, verdict

    try:
        rows, path = evaluate_slice_run(
            args.run_dir,
            checkpoint=args.checkpoint,
            device=args.device,
            n_generated=args.n_generated,
            permutations=args.permutations,
            progress=not args.quiet,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_slice_table(rows))
    print("\n".join(verdict(rows)))
    print(f"written: {path} and {path.with_name('evaluation.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
