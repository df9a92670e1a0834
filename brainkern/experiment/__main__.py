"""``python -m brainkern.experiment NAME [args]``: run a paper-level experiment by name.

    python -m brainkern.experiment --list                      # the experiments, a line each
    python -m brainkern.experiment kwon2019-table1 --help      # one experiment's own arguments
    python -m brainkern.experiment kwon2019-table1 runs/mine   # Kwon et al.'s Table 1 for a run

Everything after NAME is the experiment's own (its ``--help`` included). Standard
library only here: an experiment imports torch when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainkern.experiment.registry import PROG, experiments, get_experiment


def listing() -> str:
    """Every registered experiment with its one-line summary."""
    rows = experiments()
    if not rows:
        return "(no experiments registered)"
    width = max(len(e.name) for e in rows)
    return "\n".join(f"  {e.name:<{width}}  {e.summary}" for e in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a paper-level experiment by name. Each experiment takes its own arguments "
        f"after its name: {PROG} NAME --help shows them.",
        epilog="experiments:\n" + listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--list", action="store_true", help="list the experiments, a line each, then exit")
    parser.add_argument("name", nargs="?", metavar="NAME", help="the experiment to run (see --list)")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the experiment's arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only what precedes NAME is ours; the rest, options and --help included, goes to
    # the experiment untouched (argparse would otherwise claim a --help after NAME).
    cut = next((i + 1 for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    if args.list:
        print(listing())
        return 0
    if args.name is None:
        parser.error(f"name an experiment (one of: {', '.join(e.name for e in experiments())})")
    try:
        experiment = get_experiment(args.name)
    except ValueError as exc:
        parser.error(str(exc))
    return experiment.run(argv[cut:])


if __name__ == "__main__":
    sys.exit(main())
