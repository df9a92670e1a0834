"""The augmentation experiment of Zhuang et al. (2019): classifiers trained on real maps, and on
real maps plus noisy copies or synthetic maps, tested on held-out real maps.

For every repeat ``r`` and fold ``f`` of a stratified k-fold split grouped by subject
(a *cell*), the fold's training subjects are split once more into the part that trains
everything (``train``) and a real validation part (``val``) that selects the classifiers'
models; the fold's ``test`` part only tests. Inside the cell:

1. every generative model of the experiment (``gmm``, ``cvae``, ``icw-gan`` by default) is
   trained by :class:`brainkern.train.engine.Trainer` on the ``train`` subjects only (its
   own run directory, with a split file that names them, under ``generators/``);
2. the training sets of the conditions are built: ``real`` (the ``train`` maps),
   ``real+noise`` (plus ``k`` copies per class of random training maps with Gaussian noise of
   variance ``noise_var``, clipped to the data range), and ``real+<generator>`` (plus ``k``
   class-conditional samples per class);
3. each classifier (``svm``, ``dnn3d``) is fitted on each condition's set (validation: the real
   ``val`` maps) and scored on the real ``test`` maps: accuracy, macro F1, macro precision
   and macro recall.

Nothing fitted from data sees a ``val`` or ``test`` subject: generators, masks, scaling and
classifiers are fitted inside the cell on ``train`` (and the classifiers select on ``val``).
``splits.json`` records every subject of every part of every cell, and which subjects each
generator was trained on, so anyone can check.

Outputs of an experiment directory::

    config.yaml         the resolved experiment configuration (the run is resumed against it)
    run.json            versions, command, seed, data summary
    splits.json         subject ids per cell and part; the subjects each generator was trained on
    results.csv         one row per (condition, classifier, repeat, fold): every figure
    summary.csv         per (condition, classifier): mean, 95% CI, fold variance, paired test vs real
    table.md            the paper's Table 1 layout (mean [95% CI]), Table 3 (fold variances),
                        the paired tests, and the paper's direction beside what was measured
    bars.png            the metrics per condition and classifier with their 95% CIs
    figure2.png         real and synthetic maps per class (glass-brain projections, nilearn)
    generators/r#-f#/<name>/   each generator's run directory

The experiment resumes: a finished cell (a row of ``results.csv``) is not recomputed, and
a generator whose run directory holds a finished checkpoint is not retrained (an
unfinished one resumes from its last checkpoint).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CONDITIONS_BASE",
    "DEFAULTS",
    "METRICS",
    "Cell",
    "append_result",
    "augmentation_config",
    "cell_seed",
    "cv_data_section",
    "check_same_grid",
    "dump_config",
    "experiment_dataset",
    "experiment_presets",
    "experiment_records",
    "format_ci",
    "generator_config",
    "make_cells",
    "make_classifier",
    "merge_config",
    "read_experiment_preset",
    "run_augmentation",
    "scale_range",
    "splits_record",
    "subject_id_list",
    "summarise",
    "train_generator",
    "write_json",
    "write_summary_csv",
]

METRICS = ("accuracy", "f1", "precision", "recall")
METRIC_TITLES = {"accuracy": "Accuracy", "f1": "Macro F1", "precision": "Precision", "recall": "Recall"}
CONDITIONS_BASE = ("real", "real+noise")
RESULT_FIELDS = (
    "condition",
    "classifier",
    "repeat",
    "fold",
    *METRICS,
    "n_train_real",
    "n_extra",
    "n_val",
    "n_test",
    "seconds",
)

# Real-trained classifiers scored on each generator's class-conditional samples.
FIDELITY_FIELDS = ("generator", "classifier", "repeat", "fold", *METRICS, "n_samples")

# The experiment's configuration: defaults, then a preset (brainkern/configs/experiments/),
# then --set overrides.
DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    # The training configuration's data section (brainkern.train.config.DEFAULTS["data"]),
    # shared by every generator and classifier of the experiment.
    "data": {
        "cohort": "fmri",
        "n_per_class": 100,
        "n_classes": 4,
        "noise": 1.0,
        "shape": [53, 63, 46],
        "cohort_shape": None,
        "scale": "[0,1]",
        "clip": [0.01, 0.99],
        "trim": False,
        "flip": False,
        "intensity": None,
    },
    # Neurovault folders: the metadata field that gives the label.
    "label_field": None,
    "cv": {
        "folds": 3,
        "repeats": 3,
        "seed": 0,
        # Of each fold's training subjects, this fraction (stratified, by subject) is the real
        # validation set the classifiers select their models on; the rest trains everything.
        "val_fraction": 0.125,
    },
    "augment": {
        "k": 100,  # extra maps per class: noisy copies or synthetic samples
        "noise_var": 0.01,  # variance of the Gaussian noise of real+noise (maps on [0, 1])
    },
    # name -> {preset: training preset, set: {dotted key: value}}; trained in every cell.
    "generators": {
        "gmm": {"preset": "zhuang2019-gmm", "set": {}},
        "cvae": {"preset": "zhuang2019-cvae", "set": {}},
        "icw-gan": {"preset": "zhuang2019-icw-gan", "set": {}},
    },
    # name -> keyword arguments of brainkern.models.build_model(name, ...).
    "classifiers": {"svm": {}, "dnn3d": {}},
    "device": "auto",
    "threads": None,
    "figures": True,
}

# The paper's direction (Zhuang et al. 2019, Tables 1 and 2), checked against the results.
PAPER_DIRECTION = (
    "Real+Synth. with ICW-GAN and CVAE above Real+noise and Real+Synth. GMM, all of them at or "
    "above Real; the DNN above the SVM"
)


def experiments_dir() -> Path:
    """The folder of experiment presets, ``brainkern/configs/experiments/``."""
    return Path(__file__).resolve().parents[1] / "configs" / "experiments"


def experiment_presets(kind: str) -> list[str]:
    """Names of experiment ``kind``'s presets (``<kind>-<name>.yaml`` in :func:`experiments_dir`)."""
    prefix = f"{kind}-"
    return sorted(p.stem[len(prefix) :] for p in experiments_dir().glob(f"{prefix}*.yaml"))


def read_experiment_preset(kind: str, preset: str | os.PathLike) -> dict[str, Any]:
    """The contents of experiment ``kind``'s preset ``preset`` (a name or a YAML file), with its
    ``preset`` key set to the name (or the file's path) unless the file sets it.

    Raises:
        FileNotFoundError: no such preset (the message lists the known ones).
    """
    from brainkern.train.config import _read_yaml

    path = Path(preset)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        path = experiments_dir() / f"{kind}-{preset}.yaml"
        if not path.is_file():
            raise FileNotFoundError(
                f"no {kind} preset {str(preset)!r}; known: {', '.join(experiment_presets(kind))}"
            )
    data = _read_yaml(path)
    data.setdefault("preset", str(preset) if Path(str(preset)).suffix else path.stem[len(kind) + 1 :])
    return data


def augmentation_presets() -> list[str]:
    """Names of the augmentation experiment's presets (``augmentation-<name>.yaml``)."""
    return experiment_presets("augmentation")


def merge_config(base: dict[str, Any], update: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` updated by ``update`` recursively (a copy); unknown keys outside the open sections
    (data, generators, classifiers) are errors naming their path."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        # Keys of the data section are the training configuration's (its schema checks them);
        # generator and classifier entries are named by the user.
        open_section = where in ("data", "generators", "classifiers") or where.startswith(
            ("generators.", "classifiers.")
        )
        if key not in out and not open_section:
            raise KeyError(f"unknown experiment key {path!r}; known keys here: {', '.join(sorted(out))}")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge_config(out[key], value, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def augmentation_config(
    preset: str | os.PathLike | None = "zhuang2019", overrides: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The experiment's configuration: :data:`DEFAULTS`, the preset, then ``overrides``, checked.

    Args:
        preset: a preset name (``zhuang2019``, ``quick``; :func:`augmentation_presets`) or a
            YAML file; ``None`` for the defaults alone.
        overrides: partial configurations laid over it in turn (``--set`` values).

    Raises:
        FileNotFoundError: no such preset.
        KeyError: an unknown key.
        ValueError: a value out of range (one line naming the key).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        data = read_experiment_preset("augmentation", preset)
        # A preset's generator and classifier lists replace the defaults' (not merged into them).
        for section in ("generators", "classifiers"):
            if section in data:
                cfg[section] = {}
        cfg = merge_config(cfg, data)
    for update in overrides:
        cfg = merge_config(cfg, update)
    return _check(cfg)


def cv_data_section(data: dict[str, Any], experiment: str) -> dict[str, Any]:
    """An experiment's ``data`` section laid over the training defaults and checked for
    cross-validation: every key of the training data section, resolved.

    Raises:
        ValueError: ``data.trim`` (its box would be fitted per fold, giving each fold its own
            grid), no ``data.scale``, or ``folds`` / ``split_file`` / ``classes`` set (the
            experiment's cross-validation sets them).
    """
    from brainkern.train.config import DEFAULTS as TRAIN_DEFAULTS
    from brainkern.train.config import merge, validate

    data = validate(merge(TRAIN_DEFAULTS, {"data": data}))["data"]
    if data["trim"]:
        raise ValueError(
            f"data.trim must be false in the {experiment} experiment: the trimming box is fitted on "
            "training volumes, so each fold would have its own grid"
        )
    if data["scale"] is None:
        raise ValueError("data.scale must be '[0,1]' or '[-1,1]'")
    for key in ("folds", "split_file", "classes"):
        if data.get(key):
            raise ValueError(f"data.{key} is set by the experiment's cross-validation; leave it unset")
    return data


def _check(cfg: dict[str, Any]) -> dict[str, Any]:
    from brainkern.models import model_kind

    cv, aug = cfg["cv"], cfg["augment"]
    if int(cv["folds"]) != cv["folds"] or cv["folds"] < 2:
        raise ValueError(f"cv.folds must be an integer >= 2, got {cv['folds']}")
    if int(cv["repeats"]) != cv["repeats"] or cv["repeats"] < 1:
        raise ValueError(f"cv.repeats must be an integer >= 1, got {cv['repeats']}")
    if not 0.0 < float(cv["val_fraction"]) <= 0.5:
        raise ValueError(f"cv.val_fraction must be in (0, 0.5], got {cv['val_fraction']}")
    if int(aug["k"]) != aug["k"] or aug["k"] < 1:
        raise ValueError(f"augment.k must be an integer >= 1, got {aug['k']}")
    if not float(aug["noise_var"]) >= 0:
        raise ValueError(f"augment.noise_var must be >= 0, got {aug['noise_var']}")
    # The data section is the training configuration's: checked by its schema.
    cfg["data"] = cv_data_section(cfg["data"], "augmentation")
    for name, spec in cfg["generators"].items():
        if set(spec) - {"preset", "set"} or not spec.get("preset"):
            raise ValueError(f"generators.{name}: give {{preset: NAME, set: {{key: value}}}}, got {spec}")
        spec.setdefault("set", {})
        if name in ("real", "noise"):
            raise ValueError(f"generators.{name}: that name is taken by a condition")
    for name in cfg["classifiers"]:
        if model_kind(name) != "classifier":
            raise ValueError(f"classifiers.{name}: {name!r} is not a registered classifier")
    if not cfg["classifiers"]:
        raise ValueError("classifiers: name at least one classifier")
    return cfg


# ----------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Cell:
    """One (repeat, fold) of the cross-validation: volume indices of each part."""

    repeat: int
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def tag(self) -> str:
        return f"r{self.repeat}-f{self.fold}"


def make_cells(
    labels: Sequence, subjects: Sequence, *, folds: int, repeats: int, seed: int, val_fraction: float
) -> list[Cell]:
    """Stratified k-fold cross-validation grouped by subject, repeated with new shuffles; inside
    each fold's training part a stratified, grouped validation part.

    Repeat ``r`` shuffles with ``seed + r``. The validation part is one fold of
    ``round(1 / val_fraction)`` of the training part (so its size is ``val_fraction`` of it).

    Raises:
        ValueError: a class with fewer subjects than the folds need.
    """
    from brainkern.data.splits import stratified_kfold

    y, groups = np.asarray(labels), np.asarray([str(s) for s in subjects])
    n_val = max(2, round(1.0 / float(val_fraction)))
    cells = []
    for r in range(repeats):
        for f, (train_all, test) in enumerate(stratified_kfold(y, folds, groups=groups, seed=seed + r)):
            inner = stratified_kfold(
                y[train_all], n_val, groups=groups[train_all], seed=seed + 7919 * (r + 1) + f
            )
            fit, val = inner[0]
            cells.append(Cell(r, f, np.sort(train_all[fit]), np.sort(train_all[val]), np.sort(test)))
    return cells


# ----------------------------------------------------------------------------- data


def experiment_records(cfg: dict[str, Any], progress: bool):
    """The volumes the experiment reads: an embedded cohort, a labels table, a folder of class
    folders, or a Neurovault download (``label_field`` names the label)."""
    from brainkern.data.sources import scan_neurovault
    from brainkern.train.data import data_source, read_records

    data = cfg["data"]
    if data["cohort"] is None and data["table"]:
        folder = Path(data["table"]).expanduser()
        if folder.is_dir() and next(folder.rglob("image_*_metadata.json"), None) is not None:
            if not cfg["label_field"]:
                raise ValueError(
                    f"{folder} is a Neurovault download: say which metadata field is the label "
                    "(--label-field, e.g. cognitive_paradigm_cogatlas)"
                )
            return scan_neurovault(folder, cfg["label_field"]), folder
    source = data_source(data, progress=progress)
    return read_records(source), source


def experiment_dataset(cfg: dict[str, Any], records, progress: bool):
    """The experiment's preprocessed :class:`~brainkern.data.VolumeDataset` of ``records`` (cached)."""
    from brainkern.data import VolumeDataset
    from brainkern.train.config import cache_root

    data = cfg["data"]
    cache = Path(data["cache_dir"]).expanduser() if data.get("cache_dir") else cache_root() / "datasets"
    # Nothing here is fitted across volumes (no trimming box, no mask; clipping and scaling
    # are per volume), so one preprocessed data set serves every fold.
    return VolumeDataset(
        records,
        shape=tuple(data["shape"]),
        scale=data["scale"],
        clip=tuple(data["clip"]) if data.get("clip") else None,
        trim=False,
        mask=None,
        cache_dir=cache,
        progress=progress,
    )


def scale_range(scale: str) -> tuple[float, float]:
    """The value range of ``data.scale``: ``(0, 1)`` or ``(-1, 1)``."""
    return (0.0, 1.0) if scale == "[0,1]" else (-1.0, 1.0)


def subject_id_list(records) -> list[str]:
    """The subject id of each record, in order (see :func:`brainkern.train.data.subject_ids`)."""
    from brainkern.train.data import subject_ids

    return subject_ids(records)


# ----------------------------------------------------------------------------- generators


def generator_config(
    cfg: dict[str, Any], name: str, split_file: Path, seed: int, classes: Sequence[str]
) -> dict[str, Any]:
    """The training configuration of generator ``name`` for one cell: its preset and overrides,
    the experiment's data settings, ``split_file`` (the cell's training subjects) and ``seed``."""
    from brainkern.train.config import parse_override, resolve
    from brainkern.train.engine import with_num_classes

    spec = cfg["generators"][name]
    overrides = [parse_override(f"{k}={json.dumps(v)}") for k, v in spec["set"].items()]
    data = {k: v for k, v in cfg["data"].items()}
    data.update(split_file=str(split_file), folds=None, classes=None)
    fixed = {
        "seed": seed,
        "data": data,
        "log": {"n_samples": 0},
        "evaluate": {"enabled": False},
        "train": {"device": cfg["device"], **({"threads": cfg["threads"]} if cfg["threads"] else {})},
    }
    # The class count as the engine would set it from the data, so the stored config compares equal.
    return with_num_classes(resolve(spec["preset"], [*overrides, fixed]), classes)


def train_generator(cfg_g: dict[str, Any], run_dir: Path, progress: bool):
    """Train (or resume, or reuse) one generator; returns the model in eval mode."""
    from brainkern.train.engine import Trainer, load_run
    from brainkern.train.state import load_checkpoint

    last = run_dir / "checkpoints" / "last.pt"
    done = False
    if last.is_file():
        ckpt = load_checkpoint(last)
        if ckpt["config"] != cfg_g:
            raise ValueError(
                f"{run_dir} was trained with another configuration; use a new experiment folder "
                "or delete that run directory"
            )
        done = int(ckpt["iter"]) >= int(cfg_g["train"]["iters"])
    if not done:
        Trainer(cfg_g, run_dir, resume=last.is_file(), progress=progress, log=None).fit()
    model, _, ckpt = load_run(run_dir, "last", cfg_g["train"]["device"])
    return model, ckpt


def _class_labels(n_classes: int, k: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), k)


def synthetic_maps(
    model, n_classes: int, k: int, seed: int, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` class-conditional samples per class: ``(k * C, 1, D, H, W)`` float32 and their labels."""
    import torch

    labels = _class_labels(n_classes, k)
    gen = torch.Generator().manual_seed(int(seed))
    x = model.sample(len(labels), labels=torch.as_tensor(labels), generator=gen, batch_size=batch_size)
    return x.numpy(), labels


def noisy_copies(
    volumes: np.ndarray,
    labels: np.ndarray,
    k: int,
    variance: float,
    value_range: tuple[float, float],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``k`` noisy copies per class (Zhuang et al.'s Real+noise): training maps of the class drawn
    at random (with replacement when the class has fewer than ``k``), plus Gaussian noise of
    ``variance``, clipped to ``value_range`` (the data's scale).

    Args:
        volumes: ``(N, 1, D, H, W)`` training maps; labels ``(N,)``.
    """
    rng = np.random.default_rng(seed)
    out, out_labels = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, size=k, replace=len(idx) < k)
        noise = rng.normal(0.0, math.sqrt(variance), size=(k, *volumes.shape[1:])).astype(np.float32)
        out.append(np.clip(volumes[pick] + noise, *value_range))
        out_labels.append(np.full(k, c))
    return np.concatenate(out).astype(np.float32), np.concatenate(out_labels)


# ----------------------------------------------------------------------------- classifiers


def score(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1, precision and recall (scikit-learn; 0 for a class never predicted)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f),
        "precision": float(p),
        "recall": float(r),
    }


def make_classifier(name: str, kwargs: dict[str, Any], n_classes: int, seed: int):
    """The registered classifier ``name`` with ``kwargs``, ``num_classes`` and ``seed`` filled in
    where it takes them and ``kwargs`` leaves them out."""
    from brainkern.models import build_model, model_parameters

    params = model_parameters(name)
    extra = {}
    if "num_classes" in params and "num_classes" not in kwargs:
        extra["num_classes"] = n_classes
    if "seed" in params and "seed" not in kwargs:
        extra["seed"] = seed
    return build_model(name, **kwargs, **extra)


# ----------------------------------------------------------------------------- results


def _read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of ``results.csv`` (or ``fidelity.csv``), numbers converted."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    counts = ("repeat", "fold", "n_train_real", "n_extra", "n_val", "n_test", "n_samples")
    for row in rows:
        for key in row:
            if key in counts:
                row[key] = int(row[key])
            elif key in (*METRICS, "seconds"):
                row[key] = float(row[key])
    return rows


def append_result(path: Path, row: dict[str, Any], fields: Sequence[str] = RESULT_FIELDS) -> None:
    """Append ``row`` (its ``fields``) to the CSV ``path``, with a header when new; flushed and synced
    at once, so an interrupted experiment loses no finished row."""
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in fields})
        fh.flush()
        os.fsync(fh.fileno())


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of a Student-t confidence interval of the mean (``nan`` ends for one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def corrected_paired_test(diffs: Sequence[float], test_over_train: float) -> tuple[float, float]:
    """Nadeau and Bengio's (2003) corrected resampled t-test of paired differences over the cells
    of a repeated cross-validation: ``t = mean(d) / sqrt((1/n + n_test/n_train) var(d))`` with
    ``n - 1`` degrees of freedom; two-sided p-value.

    Cells of one cross-validation share training subjects, so their differences are not
    independent and the plain paired t-test is too liberal; the correction widens the variance by
    the test-to-training size ratio. (scipy has the plain test only, hence this function.)

    Returns:
        ``(t, p)``; ``(0, 1)`` when every difference is zero; ``(nan, nan)`` for fewer than two.
    """
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    var = d.var(ddof=1)
    if np.ptp(d) == 0:  # equal differences (var may still come out as a rounding residue)
        return (0.0, 1.0) if d.mean() == 0 else (math.copysign(math.inf, d.mean()), 0.0)
    t = float(d.mean() / math.sqrt((1.0 / n + float(test_over_train)) * var))
    return t, float(2 * stats.t.sf(abs(t), n - 1))


def summarise(
    rows: list[dict[str, Any]], conditions: Sequence[str], classifiers: Sequence[str]
) -> list[dict[str, Any]]:
    """Per (classifier, condition): each metric's mean, 95% CI over the cells, the fold variance
    (Zhuang et al.'s Table 3: the variance over folds within a repeat, averaged over repeats),
    and the corrected paired test against ``real`` over the cells both have."""
    out = []
    for clf in classifiers:
        base = {
            (r["repeat"], r["fold"]): r for r in rows if r["classifier"] == clf and r["condition"] == "real"
        }
        for cond in conditions:
            mine = [r for r in rows if r["classifier"] == clf and r["condition"] == cond]
            if not mine:
                continue
            entry: dict[str, Any] = {"condition": cond, "classifier": clf, "n_cells": len(mine)}
            for m in METRICS:
                mean, lo, hi = mean_ci([r[m] for r in mine])
                by_repeat: dict[int, list[float]] = {}
                for r in mine:
                    by_repeat.setdefault(r["repeat"], []).append(r[m])
                fold_var = float(np.mean([np.var(v) for v in by_repeat.values() if len(v) > 1] or [math.nan]))
                entry.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi, f"{m}_fold_var": fold_var})
                if cond != "real":
                    pairs = [
                        (r[m], base[(r["repeat"], r["fold"])][m])
                        for r in mine
                        if (r["repeat"], r["fold"]) in base
                    ]
                    ratio = np.mean([r["n_test"] / max(r["n_train_real"] + r["n_val"], 1) for r in mine])
                    t, p = corrected_paired_test([a - b for a, b in pairs], float(ratio))
                    entry.update(
                        {
                            f"{m}_diff": float(np.mean([a - b for a, b in pairs])) if pairs else math.nan,
                            f"{m}_p": p,
                        }
                    )
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- the run


def condition_names(cfg: dict[str, Any]) -> list[str]:
    """``real``, ``real+noise`` and ``real+<generator>`` for each generator, in that order."""
    return [*CONDITIONS_BASE, *(f"real+{g}" for g in cfg["generators"])]


def check_same_grid(dataset, model, ckpt, where: Path) -> None:
    """Raise ``RuntimeError`` when a trained generator's grid or affine is not the data set's."""
    affine = np.asarray(ckpt["affine"], dtype=np.float64)
    if tuple(model.shape) != tuple(dataset.shape) or not np.allclose(affine, dataset.affine, atol=1e-4):
        raise RuntimeError(
            f"{where}: the generator's grid {tuple(model.shape)} (affine {affine.tolist()}) is not the "
            f"experiment's {tuple(dataset.shape)}: its data settings differ"
        )


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path``, written atomically."""
    from brainkern.data.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=1) + "\n")


def splits_record(
    cells: list[Cell], subjects: list[str], files: list[str], generators: Sequence[str]
) -> dict:
    """What ``splits.json`` holds: the subjects of every part of every cell and each generator's."""
    record: dict[str, Any] = {"cells": []}
    for cell in cells:
        parts = {p: getattr(cell, p) for p in ("train", "val", "test")}
        record["cells"].append(
            {
                "repeat": cell.repeat,
                "fold": cell.fold,
                "subjects": {p: sorted({subjects[i] for i in idx}) for p, idx in parts.items()},
                "volumes": {p: idx.tolist() for p, idx in parts.items()},
                "files": {p: [files[i] for i in idx] for p, idx in parts.items()},
                # Every generator of the cell is trained on the train part's subjects only.
                "generators": {g: sorted({subjects[i] for i in cell.train}) for g in generators},
            }
        )
    return record


def cell_seed(base: int, cell: Cell, offset: int = 0) -> int:
    """A seed per cell (repeat, fold) and purpose (``offset``), derived from the experiment's."""
    return int(base) + 1000 * cell.repeat + 10 * cell.fold + offset


def run_augmentation(
    cfg: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Run (or resume) the augmentation experiment of ``cfg`` into ``out_dir``; returns ``out_dir``.

    Raises:
        ValueError: ``out_dir`` holds an experiment with another configuration, or the data do
            not fit the cross-validation (too few subjects of a class).
        RuntimeError: a generator's grid differs from the experiment's.
    """
    import torch
    from tqdm import tqdm

    from brainkern.train.engine import resolve_device, versions

    log = log or (lambda *_: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "config.yaml"
    text = dump_config(cfg)
    if stored.is_file() and stored.read_text() != text:
        raise ValueError(
            f"{out} holds an experiment with another configuration (its config.yaml); "
            "choose a new folder to run this one"
        )
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))

    records, source = experiment_records(cfg, progress)
    dataset = experiment_dataset(cfg, records, progress)
    stored.write_text(text)  # once the data are readable: a failed start leaves no config behind
    subjects = subject_id_list(records)
    files = [str(p) for p in dataset.paths]
    labels = np.asarray(dataset.labels)
    n_classes = len(dataset.classes)
    cv = cfg["cv"]
    cells = make_cells(
        labels,
        subjects,
        folds=int(cv["folds"]),
        repeats=int(cv["repeats"]),
        seed=int(cv["seed"]),
        val_fraction=float(cv["val_fraction"]),
    )
    generators = list(cfg["generators"])
    splits = splits_record(cells, subjects, files, generators)
    splits.update(classes=dataset.classes, source=str(source), method={"cv": cv, "grouped_by": "subject"})
    write_json(out / "splits.json", splits)
    device = resolve_device(cfg["device"])
    info = {
        "seed": cfg["seed"],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(device),
        "platform": platform.platform(),
        "data": {
            "source": str(source),
            "n_volumes": len(dataset),
            "classes": dataset.classes,
            "per_class": np.bincount(labels, minlength=n_classes).tolist(),
            "shape": list(dataset.shape),
            "preprocessing": dataset.config,
        },
    }
    run_json = out / "run.json"
    if run_json.is_file():
        first = json.loads(run_json.read_text())
        first.setdefault("resumes", []).append({k: info[k] for k in ("command", "started", "versions")})
        info = first
    write_json(run_json, info)

    results_path = out / "results.csv"
    done = {(r["condition"], r["classifier"], r["repeat"], r["fold"]) for r in _read_results(results_path)}
    conditions = condition_names(cfg)
    classifiers = list(cfg["classifiers"])
    k, lo_hi = int(cfg["augment"]["k"]), scale_range(cfg["data"]["scale"])
    volumes = dataset.volumes
    log(
        f"augmentation experiment: {len(dataset)} maps, {n_classes} classes {dataset.classes}, grid "
        f"{tuple(dataset.shape)}; {cv['folds']}-fold x {cv['repeats']} repeats; conditions {conditions}; "
        f"classifiers {classifiers}; results in {out}"
    )
    total = len(cells) * len(conditions) * len(classifiers)
    with tqdm(total=total, initial=len(done), unit="fit", desc="cells", disable=not progress) as bar:
        for cell in cells:
            todo = [
                (c, m) for c in conditions for m in classifiers if (c, m, cell.repeat, cell.fold) not in done
            ]
            if not todo:
                continue
            split_file = out / "splits" / f"{cell.tag}.json"
            write_json(
                split_file,
                {p: sorted({subjects[i] for i in getattr(cell, p)}) for p in ("train", "val", "test")},
            )
            x_train = np.asarray(volumes[cell.train], dtype=np.float32)[:, None]
            y_train = labels[cell.train]
            x_val = np.asarray(volumes[cell.val], dtype=np.float32)[:, None]
            x_test = np.asarray(volumes[cell.test], dtype=np.float32)[:, None]
            extras: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            # Every condition's extra maps, also of conditions already done: the classifiers fitted
            # on real maps are scored on each generator's samples too (fidelity.csv).
            for cond in conditions:
                if cond == "real":
                    extras[cond] = (x_train[:0], y_train[:0])
                elif cond == "real+noise":
                    extras[cond] = noisy_copies(
                        x_train,
                        y_train,
                        k,
                        float(cfg["augment"]["noise_var"]),
                        lo_hi,
                        cell_seed(cfg["seed"], cell, 1),
                    )
                else:
                    name = cond[len("real+") :]
                    run_dir = out / "generators" / cell.tag / name
                    cfg_g = generator_config(
                        cfg, name, split_file, cell_seed(cfg["seed"], cell, 2), dataset.classes
                    )
                    bar.set_postfix_str(f"{cell.tag}: training {name}")
                    model, ckpt = train_generator(cfg_g, run_dir, progress)
                    check_same_grid(dataset, model, ckpt, run_dir)
                    if model.num_classes != n_classes:
                        raise RuntimeError(
                            f"{run_dir}: {model.num_classes} classes, the data have {n_classes}"
                        )
                    extras[cond] = synthetic_maps(model, n_classes, k, cell_seed(cfg["seed"], cell, 3))
            for cond, clf_name in todo:
                bar.set_postfix_str(f"{cell.tag}: {clf_name} on {cond}")
                xe, ye = extras[cond]
                start = time.perf_counter()
                clf = make_classifier(
                    clf_name, dict(cfg["classifiers"][clf_name]), n_classes, cell_seed(cfg["seed"], cell, 4)
                )
                clf.fit(
                    np.concatenate([x_train, xe]),
                    np.concatenate([y_train, ye]),
                    validation=(x_val, labels[cell.val]),
                )
                row = {
                    "condition": cond,
                    "classifier": clf_name,
                    "repeat": cell.repeat,
                    "fold": cell.fold,
                    **score(labels[cell.test], clf.predict(x_test)),
                    "n_train_real": len(cell.train),
                    "n_extra": len(ye),
                    "n_val": len(cell.val),
                    "n_test": len(cell.test),
                    "seconds": round(time.perf_counter() - start, 3),
                }
                append_result(results_path, row)
                if cond == "real":
                    for gen_cond in conditions[len(CONDITIONS_BASE) :]:
                        xs, ys = extras[gen_cond]
                        fidelity = {
                            "generator": gen_cond[len("real+") :],
                            "classifier": clf_name,
                            "repeat": cell.repeat,
                            "fold": cell.fold,
                            **score(ys, clf.predict(xs)),
                            "n_samples": len(ys),
                        }
                        append_result(out / "fidelity.csv", fidelity, FIDELITY_FIELDS)
                bar.update(1)
    write_outputs(out, cfg, dataset, cells, progress=progress, log=log)
    return out


def dump_config(cfg: dict[str, Any]) -> str:
    """``cfg`` as YAML in its key order (what ``config.yaml`` holds)."""
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------- outputs


def format_ci(mean: float, lo: float, hi: float) -> str:
    """``mean [lo, hi]`` with three decimals (the mean alone when the interval is undefined)."""
    if math.isnan(lo):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


# How the paper's tables write the generators.
_PAPER_NAMES = {"gmm": "GMM", "cvae": "CVAE", "icw-gan": "ICW-GAN"}


def _label(cond: str) -> tuple[str, str]:
    """(Input, Gen. model) as the paper's Table 1 writes them."""
    if cond == "real":
        return "Real", ""
    if cond == "real+noise":
        return "Real+noise", ""
    name = cond[len("real+") :]
    return "Real+Synth.", _PAPER_NAMES.get(name, name)


def direction_lines(summary: list[dict[str, Any]], generators: Sequence[str]) -> list[str]:
    """What the paper's direction says and whether it holds here, claim by claim (accuracy)."""

    def acc(cond: str, clf: str) -> dict[str, Any] | None:
        return next((e for e in summary if e["condition"] == cond and e["classifier"] == clf), None)

    lines = []
    classifiers = sorted({e["classifier"] for e in summary})
    deep = [g for g in ("icw-gan", "cvae") if g in generators]
    shallow = [c for c in ("real+noise", "real+gmm") if acc(c, classifiers[0]) is not None]
    for clf in classifiers:
        real = acc("real", clf)
        if real is None:
            continue
        for g in deep:
            mine = acc(f"real+{g}", clf)
            if mine is None:
                continue
            beats = [
                c for c in shallow if acc(c, clf) is not None and mine["accuracy"] > acc(c, clf)["accuracy"]
            ]
            held = len(beats) == len(shallow) and mine["accuracy"] >= real["accuracy"]
            p = mine["accuracy_p"]
            if held and not p < 0.05:
                verdict = ": in the paper's order, but not significantly above Real"
            elif held:
                verdict = ": the paper's direction holds"
            else:
                verdict = ": the paper's direction does not hold"
            lines.append(
                f"- {clf}, Real+Synth. {g}: accuracy {mine['accuracy']:.3f}, "
                f"Real {real['accuracy']:.3f}"
                + "".join(f", {c} {acc(c, clf)['accuracy']:.3f}" for c in shallow)
                + f" (difference to Real {mine['accuracy_diff']:+.3f}, "
                f"corrected paired p = {mine['accuracy_p']:.2g})" + verdict
            )
    if "svm" in classifiers and "dnn3d" in classifiers:
        for cond in sorted({e["condition"] for e in summary}, key=lambda c: (c != "real", c)):
            a, b = acc(cond, "dnn3d"), acc(cond, "svm")
            if a is not None and b is not None:
                verdict = "above" if a["accuracy"] > b["accuracy"] else "not above"
                lines.append(f"- {cond}: DNN {a['accuracy']:.3f} {verdict} SVM {b['accuracy']:.3f}")
    return lines


def _table(
    summary: list[dict[str, Any]], cell: Callable[[dict[str, Any], str], str], titles: str = ""
) -> list[str]:
    """A Table 1-style markdown table: one row per summary entry, ``cell(entry, metric)`` per metric."""
    lines = [
        "| Input | Gen. model | Classifier | "
        + " | ".join(METRIC_TITLES[m] + titles for m in METRICS)
        + " |",
        "| --- | --- | --- |" + " ---: |" * len(METRICS),
    ]
    for e in summary:
        inp, gen = _label(e["condition"])
        lines.append(
            f"| {inp} | {gen} | {e['classifier']} | " + " | ".join(cell(e, m) for m in METRICS) + " |"
        )
    return lines


def summarise_fidelity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (classifier, generator): the real-trained classifier's metrics on the generator's
    samples (mean and 95% CI over the cells); a cell scored twice (a resumed run) counts once."""
    latest = {(r["generator"], r["classifier"], r["repeat"], r["fold"]): r for r in rows}
    out = []
    for clf in dict.fromkeys(r["classifier"] for r in latest.values()):
        for gen in dict.fromkeys(r["generator"] for r in latest.values()):
            mine = [r for r in latest.values() if r["classifier"] == clf and r["generator"] == gen]
            if not mine:
                continue
            entry: dict[str, Any] = {"condition": f"real+{gen}", "classifier": clf, "n_cells": len(mine)}
            for m in METRICS:
                mean, lo, hi = mean_ci([r[m] for r in mine])
                entry.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
            out.append(entry)
    return out


def table_markdown(
    summary: list[dict[str, Any]],
    cfg: dict[str, Any],
    dataset,
    cells: list[Cell],
    fidelity: list[dict[str, Any]] = (),
) -> str:
    """``table.md``: the paper's Table 1 layout with 95% CIs, Table 3's fold variances, the
    paired tests against Real, how well real-trained classifiers recognise each generator's
    samples, and the paper's direction beside what was measured."""
    cv = cfg["cv"]
    chance = 1.0 / max(len(dataset.classes), 1)
    lines = [
        "# Augmentation experiment (Zhuang et al. 2019, Table 1 layout)",
        "",
        f"Data: {len(dataset)} maps, {len(dataset.classes)} classes ({', '.join(dataset.classes)}), grid "
        f"{'x'.join(map(str, dataset.shape))}. Stratified {cv['folds']}-fold cross-validation grouped by "
        f"subject, repeated {cv['repeats']} times ({len(cells)} cells); in each cell {cv['val_fraction']:g} "
        "of the training subjects form the real validation set, the generators are trained on the rest, "
        f"and the test set is real. k = {cfg['augment']['k']} extra maps per class.",
        "",
        "Each figure is the mean over the cells with its 95% confidence interval (Student t over the "
        "cells; the cells of one cross-validation share training subjects, so the interval is narrower "
        "than an independent replication would give).",
        "",
        *_table(summary, lambda e, m: format_ci(e[m], e[f"{m}_lo"], e[f"{m}_hi"])),
        "",
        "## Fold variances (Table 3 layout)",
        "",
        "The variance of each metric over the folds of a repeat (population variance), averaged over "
        "the repeats.",
        "",
        *_table(summary, lambda e, m: f"{e[f'{m}_fold_var']:.1e}"),
        "",
        "## Each augmented condition against Real",
        "",
        "Mean paired difference over the cells and the two-sided p-value of Nadeau and Bengio's corrected "
        "resampled t-test (the plain paired t-test ignores that cells share training subjects).",
        "",
        *_table(
            [e for e in summary if e["condition"] != "real"],
            lambda e, m: f"{e[f'{m}_diff']:+.3f} ({e[f'{m}_p']:.2g})",
            " diff (p)",
        ),
    ]
    if fidelity:
        lines += [
            "",
            "## Do the samples carry their class?",
            "",
            "Each classifier trained on the real maps of a cell (the Real row), scored on the generator's "
            f"class-conditional samples of that cell (chance: {chance:.3f}). Synthetic maps that a "
            "classifier "
            "of real maps cannot tell apart by class can only add label noise.",
            "",
            *_table(fidelity, lambda e, m: format_ci(e[m], e[f"{m}_lo"], e[f"{m}_hi"])),
        ]
    lines += ["", "## The paper's direction", "", f"Zhuang et al.: {PAPER_DIRECTION}. Here (accuracy):", ""]
    lines += direction_lines(summary, list(cfg["generators"])) or ["- (not enough conditions to compare)"]
    return "\n".join(lines) + "\n"


def write_summary_csv(path: Path, summary: list[dict[str, Any]]) -> None:
    """The summary rows as CSV, columns in first-seen order."""
    keys: list[str] = []
    for e in summary:
        keys += [k for k in e if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for e in summary:
            writer.writerow(e)


def bar_plot(summary: list[dict[str, Any]], path: Path) -> Path:
    """Bars of each metric per condition, grouped by classifier, with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classifiers = list(dict.fromkeys(e["classifier"] for e in summary))
    conditions = list(dict.fromkeys(e["condition"] for e in summary))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.6), sharey=True)
    width = 0.8 / max(len(conditions), 1)
    colours = plt.get_cmap("tab10")
    for ax, m in zip(np.atleast_1d(axes), METRICS, strict=True):
        for j, cond in enumerate(conditions):
            xs, ys, errs = [], [], [[], []]
            for i, clf in enumerate(classifiers):
                e = next((e for e in summary if e["classifier"] == clf and e["condition"] == cond), None)
                if e is None:
                    continue
                xs.append(i + (j - (len(conditions) - 1) / 2) * width)
                ys.append(e[m])
                lo, hi = e[f"{m}_lo"], e[f"{m}_hi"]
                errs[0].append(0.0 if math.isnan(lo) else e[m] - lo)
                errs[1].append(0.0 if math.isnan(hi) else hi - e[m])
            ax.bar(xs, ys, width, yerr=errs, capsize=2, color=colours(j), label=cond)
        ax.set_xticks(range(len(classifiers)), classifiers)
        ax.set_title(METRIC_TITLES[m])
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("mean over cells, 95% CI")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def figure2(
    dataset, cell: Cell, models: dict[str, Any], path: Path, *, seed: int = 0, value_range=(0.0, 1.0)
) -> Path:
    """Zhuang et al.'s Fig. 2: one real training map and one sample of each generator per class
    (columns), as glass-brain projections (nilearn). Maps are shown relative to their
    background (the value most voxels share: the statistical map's 0 before scaling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import torch
    from nilearn import plotting

    from brainkern.data.masks import background_values

    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels)
    n_classes = len(dataset.classes)
    rows: list[tuple[str, np.ndarray]] = []
    real = []
    for c in range(n_classes):
        idx = cell.train[labels[cell.train] == c]
        real.append(np.asarray(dataset.volumes[rng.choice(idx)], dtype=np.float32))
    rows.append(("real", np.stack(real)))
    for name, model in models.items():
        gen = torch.Generator().manual_seed(seed)
        x = model.sample(n_classes, labels=torch.arange(n_classes), generator=gen)
        rows.append((name, x[:, 0].numpy()))
    # One colour scale for every map: the largest value above a map's background.
    vmax = max(float((v - background_values(v)[:, None, None, None]).max()) for _, v in rows) or 1.0
    fig, axes = plt.subplots(len(rows), n_classes, figsize=(3.3 * n_classes, 1.45 * len(rows) + 0.4))
    axes = np.asarray(axes).reshape(len(rows), n_classes)
    for r, (name, maps) in enumerate(rows):
        bg = background_values(maps)
        for c in range(n_classes):
            img = nib.Nifti1Image((maps[c] - bg[c]).astype(np.float32), dataset.affine)
            with warnings.catch_warnings():  # a map with nothing above the threshold draws empty
                warnings.filterwarnings("ignore", message="empty mask")
                plotting.plot_glass_brain(
                    img,
                    axes=axes[r, c],
                    display_mode="lzr",
                    plot_abs=False,
                    colorbar=False,
                    vmin=0.0,
                    vmax=vmax,
                    cmap="hot",
                    annotate=False,
                    threshold=0.35 * vmax,
                )
            if r == 0:
                axes[r, c].set_title(dataset.classes[c], fontsize=9)
            if c == 0:
                axes[r, c].text(
                    -0.02,
                    0.5,
                    name,
                    transform=axes[r, c].transAxes,
                    rotation=90,
                    ha="right",
                    va="center",
                    fontsize=9,
                )
    fig.suptitle(
        "Real and synthetic maps per class: glass-brain projections of the values above each map's "
        f"background, shown from {0.35 * vmax:.2f}",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    out: Path, cfg: dict[str, Any], dataset, cells: list[Cell], *, progress: bool = False, log=print
) -> dict[str, Path]:
    """``summary.csv``, ``table.md``, ``bars.png`` and ``figure2.png`` from ``results.csv``."""
    from brainkern.train.engine import load_run

    rows = _read_results(out / "results.csv")
    summary = summarise(rows, condition_names(cfg), list(cfg["classifiers"]))
    fidelity = summarise_fidelity(_read_results(out / "fidelity.csv"))
    paths = {"summary": out / "summary.csv", "table": out / "table.md", "bars": out / "bars.png"}
    write_summary_csv(paths["summary"], summary)
    text = table_markdown(summary, cfg, dataset, cells, fidelity)
    paths["table"].write_text(text)
    bar_plot(summary, paths["bars"])
    first = cells[0]
    models = {}
    for name in cfg["generators"]:
        run_dir = out / "generators" / first.tag / name
        if (run_dir / "checkpoints" / "last.pt").is_file():
            models[name] = load_run(run_dir, "last", "cpu")[0]
    paths["figure2"] = figure2(dataset, first, models, out / "figure2.png", seed=int(cfg["seed"]))
    if log:
        log(text)
        log("written: " + ", ".join(str(p) for p in paths.values()))
    return paths
