"""Paper-level experiments: each reproduces a result of a paper, by name.

The last layer of brainkern: an experiment may use everything above it (data,
ops, nn, models, the training engine, the metrics of :mod:`brainkern.evaluate`),
and nothing imports it except the command lines. Run one with

    python -m brainkern.experiment --list
    python -m brainkern.experiment NAME [its arguments]      # NAME --help shows them

Registered here (:mod:`brainkern.experiment.registry`):

- ``kwon2019-table1``: Kwon et al. (2019)'s Table 1 for a training run
  (:mod:`brainkern.experiment.kwon`: :func:`evaluate_run`, :func:`evaluate_model`,
  :func:`write_report`, and :class:`RunReport`, the training engine's callback
  that draws pictures during a run and evaluates it at its end).

Submodules load on first use, so ``import brainkern.experiment`` (and the
command line's ``--list`` and ``--help``) needs no torch.
"""

from __future__ import annotations

from brainkern._lazy import lazy_exports
from brainkern.experiment.registry import (
    Experiment,
    experiment_names,
    experiments,
    get_experiment,
    register_experiment,
    unregister_experiment,
)

_EXPORTS = {
    "RunReport": "kwon",
    "evaluate_model": "kwon",
    "evaluate_run": "kwon",
    "write_report": "kwon",
}

__all__ = [
    "Experiment",
    "RunReport",
    "evaluate_model",
    "evaluate_run",
    "experiment_names",
    "experiments",
    "get_experiment",
    "register_experiment",
    "unregister_experiment",
    "write_report",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
