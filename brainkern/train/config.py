"""Run configuration: defaults, presets (YAML files in ``configs/``), overrides.

A configuration is a nested dict with the sections below. A preset is a partial
configuration in ``configs/<name>.yaml`` (or any YAML file given by path) laid over
:data:`DEFAULTS`; ``--set section.key=value`` overrides come last, their values
parsed as YAML (``--set train.iters=50``, ``--set data.shape=[32,32,32]``). The
resolved configuration is written to the run directory, so a run can be
reproduced from its own ``config.yaml``.

Keys of the ``model`` section other than ``name`` go to
:func:`brainkern.models.build_model` (which rejects unknown ones); the training
grid comes from ``data.shape``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    "model": {
        "name": "alpha-wgan-gp",
        "latent_dim": 1000,
        "width": 64,
    },
    "data": {
        # An embedded cohort ("smri" or "fmri"), made on first use in the cache ...
        "cohort": "smri",
        "n_per_class": 40,
        "effect": 1.0,
        "cohort_seed": 0,
        "cohort_shape": None,  # grid the cohort is simulated on (default: data.shape)
        # ... or a labels table (CSV/TSV) or a folder of class folders.
        "table": None,
        "classes": None,  # train on these class names only (default: all)
        # Train on one fold of a subject-grouped, stratified split (the rest held out):
        # folds >= 2 and fold in 0 .. folds-1; or an explicit split file (JSON with
        # subject ids per part: {"train": [...], "test": [...]}). None: train on all.
        "folds": None,
        "fold": 0,
        "split_seed": 0,
        "split_file": None,
        "shape": [64, 64, 64],
        "clip": [0.01, 0.99],
        "trim": True,
        "cache_dir": None,  # default: $BRAINKERN_CACHE or ~/.cache/brainkern
        # Kwon et al.'s augmentation: left-right flips and intensity randomisation.
        "flip": True,
        "intensity": [0.9, 1.0],
    },
    "train": {
        "iters": 1000,
        "batch_size": 4,
        "lr": 2.0e-4,
        "betas": [0.9, 0.999],
        # Per-network optimiser settings over lr/betas, e.g. {"discriminator": {"lr": 4e-4}}
        # (two time-scale updates); the recipe rejects a network it does not train.
        "optim": {},
        "loss": None,  # default: the model's own ("wgan-gp", "standard" or "hinge")
        "g_updates": 2,  # generator (encoder-generator) updates per iteration
        "d_updates": 1,  # discriminator updates per iteration
        "lambda_gp": 10.0,
        "lambda_rec": 10.0,
        "lambda_kl": 1.0,
        "checkpoint": False,  # gradient checkpointing of generator and discriminator blocks
        "gradfix": False,  # skip weight gradients inside the penalty's first backward
        "amp": "auto",  # "auto" (bf16 on CUDA), "bf16" or "off"
        "device": "auto",
        "threads": None,  # CPU threads for torch (default: torch's choice)
    },
    "log": {
        "every": 10,
        "checkpoint_every": 250,
        "picture_every": 500,
        "n_pictures": 6,
        "n_samples": 8,  # NIfTI sample volumes written at the end
    },
    "evaluate": {
        "enabled": True,
        "n_generated": 512,
        "mmd_tests": 100,
        "mmd_batch": 8,
        "ms_ssim_pairs": 1000,
    },
}

_CHOICES = {
    ("train", "amp"): ("auto", "bf16", "off"),
    ("train", "loss"): (None, "wgan-gp", "standard", "hinge"),
    ("data", "cohort"): (None, "smri", "fmri"),
}
# Keys whose values stay text even when they look like numbers.
_TEXT_KEYS = {"name", "cohort", "table", "cache_dir", "device", "amp", "loss", "split_file"}
_POSITIVE = {
    ("train", "iters"),
    ("train", "batch_size"),
    ("train", "g_updates"),
    ("train", "d_updates"),
    ("log", "every"),
    ("log", "checkpoint_every"),
    ("log", "picture_every"),
    ("evaluate", "mmd_tests"),
    ("evaluate", "mmd_batch"),
    ("evaluate", "ms_ssim_pairs"),
}


# Sections whose keys others check: the model registry (model.*), the recipe (train.optim.*).
_OPEN_SECTIONS = ("model", "train.optim")


def configs_dir() -> Path:
    """The folder of preset files, ``brainkern/configs/``.

    The presets ship inside the package (as package data), so an installed
    brainkern finds them from any working directory, without the repository.
    """
    return Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    """Names of the preset files in :func:`configs_dir`."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def cache_root() -> Path:
    """Where cohorts and preprocessed data sets are cached (``$BRAINKERN_CACHE``,
    else ``$XDG_CACHE_HOME/brainkern``, else ``~/.cache/brainkern``)."""
    if os.environ.get("BRAINKERN_CACHE"):
        return Path(os.environ["BRAINKERN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "brainkern"


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got a {type(data).__name__}")
    return data


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A preset's partial configuration, by name (``configs/<name>.yaml``) or path.

    Raises:
        FileNotFoundError: no such preset; the message lists the known ones.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        candidate = configs_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            if path.suffix in (".yaml", ".yml"):
                raise FileNotFoundError(f"no config file at {path}")
            raise FileNotFoundError(
                f"no preset {str(name_or_path)!r}; known presets: {', '.join(preset_names())}"
            )
        path = candidate
    data = _read_yaml(path)
    data.setdefault("preset", path.stem)
    for section in data.values():
        if isinstance(section, dict):
            section.update({k: _numbers(v) for k, v in section.items() if k not in _TEXT_KEYS})
    return data


def merge(base: dict[str, Any], update: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """``base`` updated by ``update`` section by section (a new dict).

    Raises:
        KeyError: a key of ``update`` that ``base`` does not have (the ``model``
            and ``train.optim`` sections take any key: the model registry and the
            recipe check those).
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if key not in out and where not in _OPEN_SECTIONS:
            known = ", ".join(sorted(out))
            raise KeyError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where=path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``5e-4`` (no dot) as a string; a number is what was meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _TEXT_KEYS else _numbers(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> dict[str, Any]:
    """``"train.iters=50"`` -> ``{"train": {"iters": 50}}`` (the value parsed as YAML)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"an override looks like section.key=value, got {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = key.strip().split(".")
    out: dict[str, Any] = value if parts[-1] in _TEXT_KEYS else _numbers(value)
    for part in reversed(parts):
        out = {part: out}
    return out


def resolve(
    preset: str | os.PathLike | None = None, overrides: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Defaults, then the preset, then each override; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        cfg = merge(cfg, load_preset(preset))
    for update in overrides or []:
        cfg = merge(cfg, update)
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Check the values the engine relies on.

    Raises:
        ValueError: a value out of range, naming its key.
    """
    for (section, key), choices in _CHOICES.items():
        if cfg[section][key] not in choices:
            raise ValueError(f"{section}.{key} must be one of {choices}, got {cfg[section][key]!r}")
    for section, key in _POSITIVE:
        value = cfg[section][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{section}.{key} must be an integer >= 1, got {value!r}")
    data = cfg["data"]
    shape = data["shape"]
    if not (
        isinstance(shape, list | tuple)
        and len(shape) == 3
        and all(isinstance(s, int) and s > 0 for s in shape)
    ):
        raise ValueError(f"data.shape must be three positive integers, got {shape!r}")
    if data["folds"] is not None:
        folds, fold = data["folds"], data["fold"]
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise ValueError(f"data.folds must be an integer >= 2 (or null: no split), got {folds!r}")
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
            raise ValueError(
                f"data.fold must be an integer in 0 .. {folds - 1} (data.folds={folds}), got {fold!r}"
            )
        if data["split_file"] is not None:
            raise ValueError("give data.folds or data.split_file, not both")
    if (data["cohort"] is None) == (data["table"] is None):
        raise ValueError("give exactly one of data.cohort (an embedded cohort) and data.table (your data)")
    for key in ("lr", "lambda_gp", "lambda_rec", "lambda_kl"):
        value = cfg["train"][key]
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"train.{key} must be a number >= 0, got {value!r}")
    optim = cfg["train"]["optim"]
    if not isinstance(optim, dict) or not all(isinstance(v, dict) for v in optim.values()):
        raise ValueError(f"train.optim maps network names to {{lr, betas}}, got {optim!r}")
    if not isinstance(cfg["seed"], int):
        raise ValueError(f"seed must be an integer, got {cfg['seed']!r}")
    if not isinstance(cfg["model"].get("name"), str):
        raise ValueError("model.name must name a registered model")


def dump(cfg: dict[str, Any]) -> str:
    """The configuration as YAML text (sections in a fixed order)."""
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
