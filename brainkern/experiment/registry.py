"""The experiment registry: a name for each paper-level experiment and its command line.

An experiment is a command, ``main(argv, prog) -> exit status``, that reproduces a
result of a paper (a table, a figure) from runs, presets or data sets. The
registry maps its name to that command as a ``"module:function"`` string that is
imported only when the experiment runs, so listing the experiments and asking
one for ``--help`` needs neither torch nor anything else heavy. Standard library
only.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "Command",
    "Experiment",
    "experiment_names",
    "experiments",
    "get_experiment",
    "register_experiment",
    "unregister_experiment",
]

# ``main(argv, prog)``: the experiment's own arguments, the program name its usage shows.
Command = Callable[[Sequence[str], str], int]

PROG = "python -m brainkern.experiment"

# Paper, year, what: "kwon2019-table1". No leading dash (it would read as an option
# on the command line) and no spaces or capitals (one spelling per experiment).
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass(frozen=True)
class Experiment:
    """One registered experiment.

    Attributes:
        name: what ``python -m brainkern.experiment NAME`` runs.
        summary: one line for ``--list``.
        command: the command itself, or ``"package.module:function"`` naming it
            (imported on first use).
    """

    name: str
    summary: str
    command: Command | str

    def load(self) -> Command:
        """The command, imported now if it was registered by name.

        Raises:
            ImportError: the module cannot be imported.
            AttributeError: the module has no such function.
        """
        if not isinstance(self.command, str):
            return self.command
        module, _, function = self.command.partition(":")
        return getattr(importlib.import_module(module), function)

    def run(self, argv: Sequence[str] = (), prog: str | None = None) -> int:
        """Run the experiment with its own arguments; returns its exit status."""
        return self.load()(list(argv), prog or f"{PROG} {self.name}")


_REGISTRY: dict[str, Experiment] = {}


def register_experiment(name: str, command: Command | str, summary: str) -> Experiment:
    """Register ``command`` as the experiment ``name``; returns the entry.

    Args:
        name: lower case letters, digits, ``.``, ``_`` and ``-``, starting with a
            letter or digit (by convention paper, year and result: ``kwon2019-table1``).
        command: ``main(argv, prog) -> int``, or ``"package.module:function"``
            naming it so that it is imported only when the experiment runs (keep
            that module free of heavy imports at its top: its ``--help`` then
            answers at once).
        summary: one line for ``python -m brainkern.experiment --list``.

    Raises:
        ValueError: a malformed or already registered name, a command string that
            is not ``module:function``, or an empty or multi-line summary.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"register_experiment: name must be lower case letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (e.g. 'kwon2019-table1'), got {name!r}"
        )
    if name in _REGISTRY:
        raise ValueError(f"register_experiment: an experiment named {name!r} is already registered")
    if isinstance(command, str):
        module, sep, function = command.partition(":")
        if not (sep and module and function.isidentifier()):
            raise ValueError(
                f"register_experiment({name!r}): command must be a callable or 'package.module:function', "
                f"got {command!r}"
            )
    elif not callable(command):
        raise ValueError(f"register_experiment({name!r}): command must be callable, got {command!r}")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
        raise ValueError(
            f"register_experiment({name!r}): summary must be one non-empty line, got {summary!r}"
        )
    entry = Experiment(name, summary.strip(), command)
    _REGISTRY[name] = entry
    return entry


def unregister_experiment(name: str) -> None:
    """Remove ``name`` from the registry (tests register throwaway experiments).

    Raises:
        ValueError: no such experiment.
    """
    get_experiment(name)
    del _REGISTRY[name]


def experiment_names() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def experiments() -> list[Experiment]:
    """The registered experiments, sorted by name."""
    return [_REGISTRY[name] for name in experiment_names()]


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``.

    Raises:
        ValueError: no such experiment; the message lists the registered ones.
    """
    if name not in _REGISTRY:
        known = ", ".join(experiment_names()) or "(none)"
        raise ValueError(f"no experiment named {name!r}; registered experiments: {known}")
    return _REGISTRY[name]


# The experiments that ship with brainkern. Each command lives in a module without
# torch at its top (``*_cli``), next to the module that does the work.
register_experiment(
    "kwon2019-table1",
    "brainkern.experiment.kwon_cli:main",
    "Kwon et al. (2019) Table 1 for a training run: batch MMD^2 and MS-SSIM diversity of its "
    "generator against its untrained initialisation and matched noise",
)
register_experiment(
    "augmentation",
    "brainkern.experiment.zhuang_cli:main",
    "Zhuang et al. (2019) Tables 1 and 3: SVM and 3D DNN on Real, Real+noise and Real+Synth. "
    "(GMM, CVAE, ICW-GAN trained inside each fold), cross-validated, tested on real maps",
)
register_experiment(
    "diagnosis",
    "brainkern.experiment.king_cli:main",
    "King et al. (2024) Table 1 and Fig. 6: a 3D VGG-like diagnosis classifier trained on Real, "
    "Augmented, Mixed, Synthetic and Infinite sets (a conditional GAN trained inside each fold), "
    "tested on real volumes",
)
register_experiment(
    "compare",
    "brainkern.experiment.compare_cli:main",
    "King et al. (2024) Fig. 2: generator architectures compared by FID, precision, recall and MMD^2 "
    "on 3D features over ten synthetic sets each, with the trivial baselines",
)
