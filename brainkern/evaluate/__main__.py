"""``python -m brainkern.evaluate RUN_DIR``: Kwon et al.'s Table 1 for a training run.

A shortcut, kept for existing scripts, for the experiment
``python -m brainkern.experiment kwon2019-table1 RUN_DIR``: the same arguments,
the same output (the table, ``evaluation.json`` and ``report.md`` in the run
folder). Like every ``__main__`` it is an entry point that wires layers together,
so it may reach down to :mod:`brainkern.experiment`; the library modules of
:mod:`brainkern.evaluate` do not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainkern.experiment import kwon_cli

PROG = "python -m brainkern.evaluate"


def build_parser() -> argparse.ArgumentParser:
    return kwon_cli.build_parser(PROG)


def main(argv: Sequence[str] | None = None) -> int:
    return kwon_cli.main(argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
