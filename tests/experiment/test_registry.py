"""The experiment registry and ``python -m brainkern.experiment``: names, arguments, errors, speed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from brainkern.experiment import registry
from brainkern.experiment.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=False)


@pytest.fixture
def probe():
    """A throwaway experiment that records what it was called with."""
    calls: list[tuple[list[str], str]] = []

    def command(argv, prog):
        calls.append((list(argv), prog))
        return 7

    registry.register_experiment("probe-exp", command, "records its arguments")
    try:
        yield calls
    finally:
        registry.unregister_experiment("probe-exp")


def test_list_and_help_are_fast_and_import_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from brainkern.experiment.__main__ import main\n"
        "assert main(['--list']) == 0\n"
        "for argv in (['--help'], ['kwon2019-table1', '--help'], ['augmentation', '--help'],\n"
        "             ['diagnosis', '--help'], ['compare', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as stop:\n"
        "            assert stop.code == 0, stop.code\n"
        "    assert 'usage:' in out.getvalue()\n"
        "import brainkern.evaluate.__main__\n"
        "assert 'torch' not in sys.modules, 'torch imported by --list or --help'\n"
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert "kwon2019-table1" in done.stdout
    start = time.perf_counter()
    out = _python("-m", "brainkern.experiment", "--list")
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - start < 10
    lines = out.stdout.splitlines()
    assert len(lines) == len(registry.experiment_names())
    listed = dict(line.split(maxsplit=1) for line in lines)
    assert "Table 1" in listed["kwon2019-table1"] and "Zhuang" in listed["augmentation"]
    assert "King" in listed["diagnosis"] and "King" in listed["compare"]


def test_everything_after_the_name_goes_to_the_experiment(probe):
    assert main(["probe-exp", "runs/a", "--preset", "quick", "--help"]) == 7
    assert probe == [(["runs/a", "--preset", "quick", "--help"], "python -m brainkern.experiment probe-exp")]
    assert main(["probe-exp"]) == 7 and probe[-1][0] == []


def test_list_shows_every_registered_experiment(probe, capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "probe-exp" in out and "records its arguments" in out and "kwon2019-table1" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "name an experiment (one of: "),
        (["no-such-thing"], "no experiment named 'no-such-thing'; registered experiments: augmentation, "),
        (["--frobnicate", "kwon2019-table1"], "unrecognized arguments: --frobnicate"),
    ],
    ids=["no-name", "unknown-name", "unknown-option"],
)
def test_command_line_errors_name_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_registered_by_name_loads_on_first_use():
    from brainkern.experiment import kwon_cli

    entry = registry.get_experiment("kwon2019-table1")
    assert entry.command == "brainkern.experiment.kwon_cli:main"
    assert entry.load() is kwon_cli.main


@pytest.mark.parametrize(
    "name, command, summary, message",
    [
        ("", "m:f", "s", "name must be lower case"),
        ("Kwon2019", "m:f", "s", "name must be lower case"),
        ("-x", "m:f", "s", "name must be lower case"),
        ("a b", "m:f", "s", "name must be lower case"),
        ("kwon2019-table1", "m:f", "s", "already registered"),
        ("fresh", "module_only", "s", "'package.module:function'"),
        ("fresh", ":f", "s", "'package.module:function'"),
        ("fresh", "m:not-a-name", "s", "'package.module:function'"),
        ("fresh", 3, "s", "must be callable"),
        ("fresh", "m:f", "", "one non-empty line"),
        ("fresh", "m:f", "two\nlines", "one non-empty line"),
    ],
)
def test_register_rejects_what_it_cannot_run(name, command, summary, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        registry.register_experiment(name, command, summary)
    assert "fresh" not in registry.experiment_names()


def test_unknown_names_list_the_registered_ones():
    listed = "registered experiments: augmentation, compare, diagnosis, kwon2019-table1"
    with pytest.raises(ValueError, match=listed):
        registry.get_experiment("kwon2019-table2")
    with pytest.raises(ValueError, match="no experiment named"):
        registry.unregister_experiment("kwon2019-table2")
