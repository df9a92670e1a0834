"""Training engine: objectives, recipes, loops, run directories, checkpoints and resume.

- :class:`Trainer`, :func:`load_run`, :class:`Callback` (``engine``);
- :func:`resolve` and the presets in ``brainkern/configs/`` (``config``);
- ``recipes`` (one step of each model family), ``objectives`` (adversarial losses),
  ``state`` (atomic checkpoints, random state), ``data`` (batches of a run);
- ``python -m brainkern.train`` on the command line.

Submodules load on first use, so ``python -m brainkern.train --help`` answers at once.
"""

from __future__ import annotations

from brainkern._lazy import lazy_exports

_EXPORTS = {
    "Callback": "engine",
    "Diverged": "engine",
    "Interrupted": "engine",
    "Trainer": "engine",
    "load_run": "engine",
    "resolve": "config",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
