"""Small argument types shared by the command lines (standard library only, so ``--help`` is fast)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def subcommand_parser(prog: str, command: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``<prog> <command>`` (e.g. ``python -m brainkern.evaluate turing``), showing
    defaults in ``--help``."""
    return argparse.ArgumentParser(
        prog=f"{prog} {command}",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
