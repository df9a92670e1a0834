"""Training engine: objectives, recipes, loops, run directories, checkpoints and resume.

- :class:`Trainer`, :func:`load_run`, :class:`Callback` (``engine``);
- :func:`resolve` and the presets in ``configs/`` (``config``);
- ``recipes`` (one step of each model family), ``objectives`` (adversarial losses),
  ``state`` (atomic checkpoints, random state), ``data`` (batches of a run);
- ``python -m brainkern.train`` on the command line.

Submodules load on first use, so ``python -m brainkern.train --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Callback": "engine",
    "Diverged": "engine",
    "Interrupted": "engine",
    "Trainer": "engine",
    "load_run": "engine",
    "resolve": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"brainkern.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'brainkern.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
