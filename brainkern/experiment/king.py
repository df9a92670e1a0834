"""The diagnosis experiment of King et al. (2024): a 3D CNN trained on real, augmented, mixed and
synthetic structural MRI to tell patients from controls, always tested on real volumes.

King, Hollenbenders and Reichenbach (2024) judge their class-conditional GAN by what its
volumes add to a diagnosis classifier (their Table 1, Fig. 6 and Fig. S11). Here, for every
fold ``f`` of a stratified 5-fold cross-validation grouped by subject:

1. the fold's parts: ``test`` is the fold itself (a fifth of the subjects); of the other
   subjects a stratified, grouped quarter is ``val`` (a fifth of all) and the rest is
   ``train`` (60 %): the paper's 60 / 20 / 20 split;
2. the conditional generator (a brainkern training preset, ``king2024-alpha-sn-gan-aux`` by
   default: the paper's winner) is trained by :class:`brainkern.train.engine.Trainer` on the
   ``train`` subjects only (a split file names them; its run directory is
   ``generators/f#/<name>``);
3. the training sets of Table 1 are built from the ``train`` part, with ``n_c`` its real
   volumes of class ``c``:

   - ``real``: the real volumes;
   - ``augmented``: the real volumes, each mini-batch augmented afresh with King et al.'s
     DiffAugment (:class:`brainkern.augment.DiffAugment3d`: translation up to 1/8, a cutout
     box up to 1/2, intensity times U[0.7, 1], each with probability 1/3);
   - ``mixed-small``: per class ``ceil(n_c / 2)`` real volumes (drawn at random) and
     ``floor(n_c / 2)`` synthetic ones (the paper's 31/30 and 28/27);
   - ``synthetic-small``: ``n_c`` synthetic volumes per class;
   - ``mixed-large``: the real volumes plus ``large_factor * n_c`` synthetic ones (5x);
   - ``synthetic-large``: ``(large_factor + 1) * n_c`` synthetic volumes per class (6x);
   - ``infinite``: a fresh synthetic batch every iteration, generated on the fly and never
     stored (labels drawn in the training part's class proportions);

4. the classifier (``vgg3d`` by default: the paper's AdamW 5e-6, weight decay 0.01, batch 12,
   weights kept at the minimum validation loss) is trained on each set, selected on the real
   ``val`` volumes, and scored on the real ``test`` volumes: accuracy, sensitivity,
   specificity and balanced accuracy, the positive class being ``positive`` (patients).

Beside the sets, the majority-class rate of each test part (a classifier that always answers
the training part's most frequent class) is the trivial baseline. Over the folds: means with
95 % confidence intervals, a one-way ANOVA across the small sets (the paper's F(3, 16)) and
across all sets, paired t-tests of each set against Real with a Bonferroni correction, a
one-sided paired test of Real against the majority rate, and the paper's direction beside
what was measured.

Nothing fitted from data sees a ``val`` or ``test`` subject: the generator is trained on the
``train`` subjects, the synthetic volumes come from it, and the classifiers train on
``train`` (plus synthetic) volumes only; validation and test volumes are always real.
``splits.json`` records every subject of every part of every fold and the subjects each
generator was trained on.

Outputs of an experiment directory::

    config.yaml         the resolved experiment configuration (the run is resumed against it)
    run.json            versions, command, seed, data summary
    splits.json         subject ids per fold and part; the subjects each generator was trained on
    results.csv         one row per (set, fold): every metric, the set's size, best epoch, time
    histories/<set>-f#.json   each classifier's training history (loss, validation per epoch)
    table.md            Table 1 (the sets' sizes), the metrics with 95% CIs, the tests, the
                        paper's direction and whether it holds here
    figure6.png         accuracy per set with 95% CIs and the chance line (Fig. 6)
    figureS11.png       sensitivity, specificity and balanced accuracy per set (Fig. S11)
    generators/f#/<name>/   each fold's generator run directory

The experiment resumes: a finished (set, fold) row of ``results.csv`` is not recomputed, and
a generator whose run directory holds a finished checkpoint is not retrained (an unfinished
one resumes from its last checkpoint).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainkern.experiment.zhuang import (
    Cell,
    append_result,
    cell_seed,
    check_same_grid,
    cv_data_section,
    dump_config,
    experiment_dataset,
    experiment_presets,
    experiment_records,
    format_ci,
    generator_config,
    make_cells,
    make_classifier,
    mean_ci,
    merge_config,
    read_experiment_preset,
    scale_range,
    splits_record,
    subject_id_list,
    train_generator,
    write_json,
)

__all__ = [
    "DEFAULTS",
    "METRICS",
    "SETS",
    "binary_scores",
    "diagnosis_config",
    "diagnosis_presets",
    "run_diagnosis",
    "set_sizes",
    "summarise",
    "tests_against_real",
]

METRICS = ("accuracy", "sensitivity", "specificity", "balanced_accuracy")
METRIC_TITLES = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "balanced_accuracy": "Balanced accuracy",
}
# The training sets of King et al.'s Table 1 (and the Infinite set of their Fig. 6), in order.
SETS = ("real", "augmented", "mixed-small", "synthetic-small", "mixed-large", "synthetic-large", "infinite")
SMALL_SETS = ("real", "augmented", "mixed-small", "synthetic-small")
SET_TITLES = {
    "real": "Real (small)",
    "augmented": "Augmented (small)",
    "mixed-small": "Mixed (small)",
    "synthetic-small": "Synthetic (small)",
    "mixed-large": "Mixed (large)",
    "synthetic-large": "Synthetic (large)",
    "infinite": "Infinite",
    "majority": "Majority class (chance)",
}
# The trivial baseline's rows in results.csv.
BASELINE = "majority"
RESULT_FIELDS = (
    "set",
    "fold",
    *METRICS,
    "n_real",
    "n_synthetic",
    "n_val",
    "n_test",
    "best_epoch",
    "seconds",
)

# The experiment's configuration: defaults, then a preset (brainkern/configs/experiments/
# diagnosis-<name>.yaml), then --set overrides.
DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    # The training configuration's data section, shared by the generators and the classifiers.
    "data": {
        "cohort": "smri",
        "n_per_class": 97,
        "effect": 1.0,
        "shape": [64, 64, 64],
        "cohort_shape": None,
        "scale": "[-1,1]",
        "clip": [0.01, 0.99],
        "trim": False,
        "flip": False,
        "intensity": None,
    },
    "label_field": None,
    # The class whose detection is "sensitivity" (by name).
    "positive": "patient",
    "cv": {"folds": 5, "seed": 0},
    "sets": list(SETS),
    # Mixed (large): real + large_factor x synthetic; Synthetic (large): (large_factor + 1) x.
    "large_factor": 5,
    # The Augmented set: brainkern.augment.DiffAugment3d's arguments (background: the data's).
    "augment": {
        "policy": ["translation", "cutout", "intensity"],
        "p": 1.0 / 3.0,
        "translation": 0.125,
        "cutout": 0.5,
        "intensity": [0.7, 1.0],
    },
    "train": {
        # Optimiser steps of each fixed set: epochs = ceil(steps / mini-batches an epoch), so
        # small and large sets get the same number of updates; null: the classifier's epochs.
        "steps": None,
        "infinite_iterations": 4700,  # the Infinite set's steps (the paper's peak: 4700)
        "eval_every": 100,  # Infinite: steps between validations
    },
    "sample_batch": 16,  # generator batch when drawing the synthetic sets
    # Exactly one each: name -> {preset, set} (a conditional training preset) ...
    "generators": {"alpha-sn-gan-aux": {"preset": "king2024-alpha-sn-gan-aux", "set": {}}},
    # ... and name -> keyword arguments of brainkern.models.build_model.
    "classifiers": {"vgg3d": {}},
    "device": "auto",
    "threads": None,
    "figures": True,
}

PAPER_DIRECTION = (
    "Real above chance (60.6 %); the small sets (Augmented, Mixed, Synthetic) comparable to Real "
    "(F(3,16) = 0.36, p = .786); Mixed (large) and Synthetic (large) significantly above Real "
    "(78.9 % for Synthetic (large)); Infinite no better than the large sets"
)


def diagnosis_presets() -> list[str]:
    """Names of the diagnosis experiment's presets (``diagnosis-<name>.yaml``)."""
    return experiment_presets("diagnosis")


def diagnosis_config(
    preset: str | os.PathLike | None = "king2024", overrides: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The experiment's configuration: :data:`DEFAULTS`, the preset, then ``overrides``, checked.

    Args:
        preset: a preset name (``king2024``, ``quick``; :func:`diagnosis_presets`) or a YAML
            file; ``None`` for the defaults alone.
        overrides: partial configurations laid over it in turn (``--set`` values).

    Raises:
        FileNotFoundError: no such preset.
        KeyError: an unknown key.
        ValueError: a value out of range (one line naming the key).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        data = read_experiment_preset("diagnosis", preset)
        for section in ("generators", "classifiers"):  # a preset's entries replace the defaults'
            if section in data:
                cfg[section] = {}
        cfg = merge_config(cfg, data)
    for update in overrides:
        cfg = merge_config(cfg, update)
    return _check(cfg)


def _whole(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check(cfg: dict[str, Any]) -> dict[str, Any]:
    from brainkern.models import model_kind, model_names
    from brainkern.train.config import preset_names

    _whole(cfg["cv"]["folds"], "cv.folds", 3)  # a test fold, a validation fold, training folds
    _whole(cfg["large_factor"], "large_factor", 1)
    _whole(cfg["sample_batch"], "sample_batch", 1)
    train = cfg["train"]
    if train["steps"] is not None:
        _whole(train["steps"], "train.steps", 1)
    _whole(train["infinite_iterations"], "train.infinite_iterations", 1)
    _whole(train["eval_every"], "train.eval_every", 1)
    sets = list(cfg["sets"])
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets or "real" not in sets or len(set(sets)) != len(sets):
        raise ValueError(
            f"sets must name each set once, 'real' among them, from {', '.join(SETS)}; got {cfg['sets']!r}"
        )
    cfg["sets"] = [s for s in SETS if s in sets]  # the paper's order
    from brainkern.augment import DiffAugment3d

    DiffAugment3d(**cfg["augment"])  # its own checks, one line each
    cfg["data"] = cv_data_section(cfg["data"], "diagnosis")
    if len(cfg["generators"]) != 1 or len(cfg["classifiers"]) != 1:
        raise ValueError(
            "name exactly one generator and one classifier, got generators "
            f"{list(cfg['generators'])} and classifiers {list(cfg['classifiers'])}"
        )
    for name, spec in cfg["generators"].items():
        if set(spec) - {"preset", "set"} or not spec.get("preset"):
            raise ValueError(f"generators.{name}: give {{preset: NAME, set: {{key: value}}}}, got {spec}")
        spec.setdefault("set", {})
        if spec["preset"] not in preset_names() and not Path(spec["preset"]).is_file():
            raise ValueError(
                f"generators.{name}.preset: no training preset {spec['preset']!r}; known: "
                f"{', '.join(preset_names())}"
            )
    for name in cfg["classifiers"]:
        if name not in model_names() or model_kind(name) != "classifier":
            raise ValueError(f"classifiers.{name}: {name!r} is not a registered classifier")
    return cfg


# ----------------------------------------------------------------------------- metrics


def binary_scores(y_true: Sequence[int], y_pred: Sequence[int], positive: int) -> dict[str, float]:
    """Accuracy, sensitivity (recall of ``positive``), specificity (recall of the other class) and
    balanced accuracy (their mean) of two-class predictions; ``nan`` for a rate whose class is
    absent from ``y_true``."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    pos, neg = t == positive, t != positive
    sens = float(np.mean(p[pos] == positive)) if pos.any() else math.nan
    spec = float(np.mean(p[neg] != positive)) if neg.any() else math.nan
    return {
        "accuracy": float(np.mean(t == p)),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
    }


# ----------------------------------------------------------------------------- the training sets


def set_sizes(name: str, real_counts: Sequence[int], large_factor: int) -> list[tuple[int, int]]:
    """``(real, synthetic)`` volumes per class of the set ``name`` (King et al.'s Table 1), given
    the real training part's counts per class; ``(0, 0)`` per class for ``infinite`` (a stream)."""
    out = []
    for n in (int(c) for c in real_counts):
        out.append(
            {
                "real": (n, 0),
                "augmented": (n, 0),
                "mixed-small": (n - n // 2, n // 2),
                "synthetic-small": (0, n),
                "mixed-large": (n, large_factor * n),
                "synthetic-large": (0, (large_factor + 1) * n),
                "infinite": (0, 0),
            }[name]
        )
    return out


def _pool(model, counts: Sequence[int], seed: int, batch_size: int) -> list[np.ndarray]:
    """Per class ``c``, ``counts[c]`` class-conditional samples ``(n, 1, D, H, W)`` float32."""
    import torch

    out = []
    for c, n in enumerate(counts):
        gen = torch.Generator().manual_seed(int(seed) + 7 * c)
        labels = torch.full((int(n),), c, dtype=torch.int64)
        out.append(model.sample(int(n), labels=labels, generator=gen, batch_size=batch_size).numpy())
    return out


def build_set(
    name: str,
    x_real: np.ndarray,
    y_real: np.ndarray,
    pool: Sequence[np.ndarray],
    large_factor: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The fixed training set ``name`` from the real training volumes and a synthetic pool.

    Args:
        x_real: ``(N, 1, D, H, W)`` real training volumes; ``y_real`` ``(N,)`` labels ``0..C-1``.
        pool: per class, at least as many synthetic volumes as the set takes (the first ones
            are taken: the sets of a fold share their synthetic volumes).
        seed: which real volumes ``mixed-small`` keeps.

    Returns:
        ``(x, y, n_real, n_synthetic)``.

    Raises:
        ValueError: ``infinite`` (a stream, no fixed set) or a pool too small.
    """
    if name == "infinite":
        raise ValueError("the infinite set is a stream: it has no fixed volumes")
    counts = np.bincount(y_real, minlength=len(pool))
    rng = np.random.default_rng(seed)
    xs, ys, n_real, n_syn = [], [], 0, 0
    for c, (k_real, k_syn) in enumerate(set_sizes(name, counts, large_factor)):
        idx = np.flatnonzero(y_real == c)
        if k_real < len(idx):
            idx = np.sort(rng.choice(idx, size=k_real, replace=False))
        if k_syn > len(pool[c]):
            raise ValueError(
                f"{name}: {k_syn} synthetic volumes of class {c} needed, the pool has {len(pool[c])}"
            )
        xs += [x_real[idx], pool[c][:k_syn]]
        ys += [np.full(len(idx) + k_syn, c, dtype=np.int64)]
        n_real, n_syn = n_real + len(idx), n_syn + k_syn
    return np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys), n_real, n_syn


def infinite_stream(model, class_weights: Sequence[float], batch_size: int, seed: int) -> Callable:
    """A ``draw()`` giving a fresh synthetic batch ``(x (B, 1, D, H, W), y (B,))`` each call: labels
    drawn with ``class_weights``, volumes generated for them; nothing is kept between calls.

    The batches come from :func:`brainkern.sample.sample_batches`, the code path that writes
    synthetic sets to disk, as an endless stream of shards of one batch each: call ``j`` is
    shard ``j``, its latents and its labels (:func:`brainkern.sample.weighted_labels`) drawn
    from generators seeded with ``(seed, j)`` (:func:`brainkern.sample.shard_seed`).
    """
    from brainkern.sample import sample_batches, weighted_labels

    plan = weighted_labels(class_weights, int(seed))
    stream = sample_batches(
        model, None, labels=plan, seed=int(seed), shard_size=int(batch_size), batch_size=int(batch_size)
    )

    def draw():
        _, x, y = next(stream)
        return x, y

    return draw


# ----------------------------------------------------------------------------- statistics


def _by_fold(rows: list[dict[str, Any]], name: str, metric: str) -> dict[int, float]:
    return {r["fold"]: r[metric] for r in rows if r["set"] == name}


def summarise(rows: list[dict[str, Any]], sets: Sequence[str]) -> list[dict[str, Any]]:
    """Per set (and the majority baseline): each metric's mean and 95% CI over the folds."""
    out = []
    for name in [*sets, BASELINE]:
        mine = [r for r in rows if r["set"] == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"set": name, "n_folds": len(mine)}
        for m in METRICS:
            entry[m], entry[f"{m}_lo"], entry[f"{m}_hi"] = mean_ci([r[m] for r in mine])
        for key in ("n_real", "n_synthetic"):
            entry[key] = float(np.mean([r[key] for r in mine]))
        out.append(entry)
    return out


def tests_against_real(rows: list[dict[str, Any]], sets: Sequence[str], metric: str = "accuracy") -> dict:
    """The paper's statistics of one metric over the folds.

    Returns:
        ``{"pairs": {set: {"diff", "t", "p", "p_bonferroni", "n"}}`` (two-sided paired t-tests of
        each set against Real over the folds both have, p multiplied by the number of sets
        compared, capped at 1), ``"anova_small"`` and ``"anova_all"`` (one-way ANOVA ``{"F",
        "p", "df"}`` across the small sets and across all sets present), and ``"chance"``: Real
        against the majority rate, a one-sided paired t-test (``{"diff", "t", "p"}``); ``nan``
        where there are too few folds.
    """
    from scipy import stats

    real = _by_fold(rows, "real", metric)
    others = [s for s in sets if s != "real" and _by_fold(rows, s, metric)]
    out: dict[str, Any] = {"pairs": {}}
    for name in others:
        mine = _by_fold(rows, name, metric)
        folds = sorted(set(mine) & set(real))
        a, b = np.array([mine[f] for f in folds]), np.array([real[f] for f in folds])
        t, p = _paired(a, b, stats)
        out["pairs"][name] = {
            "diff": float(np.mean(a - b)) if folds else math.nan,
            "t": t,
            "p": p,
            "p_bonferroni": min(1.0, p * len(others)) if not math.isnan(p) else math.nan,
            "n": len(folds),
        }
    for key, group in (("anova_small", [s for s in SMALL_SETS if s in sets]), ("anova_all", list(sets))):
        samples = [list(_by_fold(rows, s, metric).values()) for s in group]
        samples = [v for v in samples if v]
        n = sum(len(v) for v in samples)
        f, p = math.nan, math.nan
        if len(samples) >= 2 and n > len(samples):
            with warnings.catch_warnings():  # equal values within every group: F undefined (nan)
                warnings.simplefilter("ignore")
                f, p = (float(v) for v in stats.f_oneway(*samples))
        out[key] = {"F": f, "p": p, "df": (len(samples) - 1, n - len(samples))}
    chance = _by_fold(rows, BASELINE, metric)
    folds = sorted(set(chance) & set(real))
    a, b = np.array([real[f] for f in folds]), np.array([chance[f] for f in folds])
    t, p = _paired(a, b, stats, alternative="greater")
    out["chance"] = {"diff": float(np.mean(a - b)) if folds else math.nan, "t": t, "p": p}
    return out


def _paired(a: np.ndarray, b: np.ndarray, stats, alternative: str = "two-sided") -> tuple[float, float]:
    """scipy's paired t-test; ``(0, 1)`` for identical pairs, ``(+-inf, 0)`` for a constant nonzero
    difference, ``(nan, nan)`` for fewer than two pairs."""
    if len(a) < 2:
        return math.nan, math.nan
    d = a - b
    if np.ptp(d) == 0:
        if d[0] == 0:
            return 0.0, 1.0
        p = 0.0 if alternative == "two-sided" or (alternative == "greater") == (d[0] > 0) else 1.0
        return math.copysign(math.inf, d[0]), p
    res = stats.ttest_rel(a, b, alternative=alternative)
    return float(res.statistic), float(res.pvalue)


def direction_lines(summary: list[dict[str, Any]], tests: dict) -> list[str]:
    """Each claim of the paper's direction (accuracy) and whether it holds here."""
    acc = {e["set"]: e["accuracy"] for e in summary}
    lines = []
    if "real" in acc and BASELINE in acc:
        c = tests["chance"]
        held = c["p"] < 0.05
        lines.append(
            f"- Real above chance: Real {acc['real']:.3f}, majority rate {acc[BASELINE]:.3f} (one-sided "
            f"paired t = {c['t']:.2f}, p = {c['p']:.2g}): "
            + ("holds" if held else "not significantly above chance here")
        )
    a = tests["anova_small"]
    if not math.isnan(a["F"]):
        lines.append(
            "- Small sets comparable to Real: one-way ANOVA over "
            f"{', '.join(s for s in SMALL_SETS if s in acc)} "
            f"F({a['df'][0]},{a['df'][1]}) = {a['F']:.2f}, p = {a['p']:.2g}: "
            + ("holds (no significant difference)" if a["p"] >= 0.05 else "does not hold (they differ)")
        )
    for name in ("mixed-large", "synthetic-large"):
        if name not in acc or "real" not in acc:
            continue
        pair = tests["pairs"][name]
        above = acc[name] > acc["real"]
        if above and pair["p_bonferroni"] < 0.05:
            verdict = "holds"
        elif above:
            verdict = "in the paper's order, but not significantly above Real"
        else:
            verdict = "does not hold"
        lines.append(
            f"- {SET_TITLES[name]} above Real: {acc[name]:.3f} vs {acc['real']:.3f} "
            f"(paired t = {pair['t']:.2f}, "
            f"Bonferroni p = {pair['p_bonferroni']:.2g}): {verdict}"
        )
    if "infinite" in acc:
        large = [acc[s] for s in ("mixed-large", "synthetic-large") if s in acc]
        if large:
            verdict = "holds" if acc["infinite"] <= max(large) else "does not hold (Infinite is above them)"
            lines.append(
                f"- Infinite no better than the large sets: {acc['infinite']:.3f} vs "
                f"{', '.join(f'{v:.3f}' for v in large)}: {verdict}"
            )
    return lines


# ----------------------------------------------------------------------------- outputs


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in RESULT_FIELDS[1:]:
            value = float(row[key])
            row[key] = (
                int(value)
                if key in ("fold", "n_real", "n_synthetic", "n_val", "n_test", "best_epoch")
                else value
            )
    return rows


def table_markdown(
    summary: list[dict[str, Any]], tests: dict[str, dict], cfg: dict[str, Any], info: dict[str, Any]
) -> str:
    """``table.md``: the sets' sizes (Table 1), the metrics with 95% CIs (Fig. 6 and S11 as a
    table), the tests against Real, and the paper's direction beside what was measured."""
    counts = ", ".join(f"{n} {c}" for c, n in zip(info["classes"], info["per_class"], strict=True))
    generators = ", ".join(f"{k} ({v['preset']})" for k, v in cfg["generators"].items())
    lines = [
        "# Diagnosis experiment (King et al. 2024, Table 1, Fig. 6, Fig. S11)",
        "",
        f"Data: {info['n_volumes']} volumes ({counts}), grid {'x'.join(map(str, info['shape']))}, "
        f"scaled {cfg['data']['scale']}. Stratified {cfg['cv']['folds']}-fold cross-validation grouped "
        "by subject: each fold tests on one fold of the subjects, validates on a stratified share of "
        f"the rest as large as a fold and trains on the others. Generator: {generators}, trained per "
        f"fold on that fold's training subjects only. Classifier: {', '.join(cfg['classifiers'])}, "
        "selected on the real validation part, tested on the real test part. Positive class: "
        f"{cfg['positive']} (sensitivity = its recall; specificity = the other class's).",
        "",
        "## Training sets (Table 1; mean volumes per fold, real / synthetic)",
        "",
        "| Set | Real | Synthetic |",
        "| --- | ---: | ---: |",
    ]
    for e in summary:
        if e["set"] == BASELINE:
            continue
        syn = "fresh batch each step" if e["set"] == "infinite" else f"{e['n_synthetic']:.1f}"
        lines.append(f"| {SET_TITLES[e['set']]} | {e['n_real']:.1f} | {syn} |")
    lines += [
        "",
        "## Test metrics (real test volumes; mean over folds [95% CI])",
        "",
        "| Set | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " | folds |",
        "| --- |" + " ---: |" * (len(METRICS) + 1),
    ]
    for e in summary:
        cells = " | ".join(format_ci(e[m], e[f"{m}_lo"], e[f"{m}_hi"]) for m in METRICS)
        lines.append(f"| {SET_TITLES[e['set']]} | {cells} | {e['n_folds']} |")
    lines += [
        "",
        "## Against Real (accuracy)",
        "",
        "Two-sided paired t-tests over the folds (the folds share their test volumes across sets), "
        "p-values Bonferroni-corrected for the number of sets compared. (The paper reports unpaired "
        "t-tests, t(8) for 5 folds a side.)",
        "",
        "| Set | difference | t | p | p (Bonferroni) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    acc = tests["accuracy"]
    for name, pair in acc["pairs"].items():
        lines.append(
            f"| {SET_TITLES[name]} | {pair['diff']:+.3f} | {pair['t']:.2f} | {pair['p']:.2g} | "
            f"{pair['p_bonferroni']:.2g} |"
        )
    lines += ["", "One-way ANOVA of accuracy across sets:", ""]
    for key, title in (("anova_small", "the small sets"), ("anova_all", "all sets")):
        a = acc[key]
        lines.append(f"- {title}: F({a['df'][0]},{a['df'][1]}) = {a['F']:.2f}, p = {a['p']:.2g}")
    lines += [
        "",
        "## The paper's direction",
        "",
        f"King et al.: {PAPER_DIRECTION}. Here (accuracy):",
        "",
        *(direction_lines(summary, acc) or ["- (not enough sets to compare)"]),
    ]
    return "\n".join(lines) + "\n"


def _errors(entries: list[dict[str, Any]], metric: str) -> list[list[float]]:
    lo = [0.0 if math.isnan(e[f"{metric}_lo"]) else e[metric] - e[f"{metric}_lo"] for e in entries]
    hi = [0.0 if math.isnan(e[f"{metric}_hi"]) else e[f"{metric}_hi"] - e[metric] for e in entries]
    return [lo, hi]


def _panel(ax, summary: list[dict[str, Any]], metric: str, chance: float, stars: Sequence[str] = ()) -> None:
    """One metric per set: small sets as circles, large ones as squares, Infinite as a diamond;
    ``*`` above the sets in ``stars`` (significantly different from Real)."""
    entries = [e for e in summary if e["set"] != BASELINE]
    for i, e in enumerate(entries):
        marker = "D" if e["set"] == "infinite" else ("o" if e["set"] in SMALL_SETS else "s")
        err = _errors([e], metric)
        ax.errorbar([i], [e[metric]], yerr=err, fmt=marker, capsize=3, color="C0" if marker == "o" else "C1")
        if e["set"] in stars:
            ax.text(i, min(0.97, e[metric] + err[1][0] + 0.03), "*", ha="center", fontsize=12)
    ax.axhline(chance, ls=":", color="grey", label=f"chance (majority class) {chance:.2f}")
    ax.set_xticks(
        range(len(entries)), [SET_TITLES[e["set"]] for e in entries], rotation=35, ha="right", fontsize=7
    )
    ax.set_ylim(0, 1)
    ax.set_title(METRIC_TITLES[metric], fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def figures(summary: list[dict[str, Any]], out: Path, stars: Sequence[str] = ()) -> dict[str, Path]:
    """``figure6.png`` (accuracy, chance line: the majority rate; ``*``: the sets in ``stars``,
    accuracy significantly different from Real after Bonferroni) and ``figureS11.png`` (the other
    metrics, chance 0.5), 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((e for e in summary if e["set"] == BASELINE), None)
    paths = {"figure6": out / "figure6.png", "figureS11": out / "figureS11.png"}
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    _panel(ax, summary, "accuracy", base["accuracy"] if base else 0.5, stars)
    ax.set_ylabel("test accuracy (real volumes), 95% CI")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(paths["figure6"], dpi=120)
    plt.close(fig)
    others = METRICS[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(4.2 * len(others), 3.8), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), others, strict=True):
        _panel(ax, summary, m, 0.5)
    fig.tight_layout()
    fig.savefig(paths["figureS11"], dpi=120)
    plt.close(fig)
    return paths


def write_outputs(out: Path, cfg: dict[str, Any], info: dict[str, Any], *, log=print) -> dict[str, Path]:
    """``table.md`` and the figures from ``results.csv``."""
    rows = _read_rows(out / "results.csv")
    summary = summarise(rows, cfg["sets"])
    tests = {m: tests_against_real(rows, cfg["sets"], m) for m in METRICS}
    paths = {"table": out / "table.md"}
    text = table_markdown(summary, tests, cfg, info)
    paths["table"].write_text(text)
    write_json(out / "statistics.json", _plain(tests))
    if cfg["figures"]:
        pairs = tests["accuracy"]["pairs"]
        paths.update(figures(summary, out, [k for k, v in pairs.items() if v["p_bonferroni"] < 0.05]))
    if log:
        log(text)
        log("written: " + ", ".join(str(p) for p in paths.values()))
    return paths


def _plain(value: Any) -> Any:
    """JSON-safe: tuples to lists, nan/inf to None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- the run


def _run_info(cfg: dict[str, Any], dataset, source, labels: np.ndarray, device) -> dict[str, Any]:
    from brainkern.train.engine import versions

    return {
        "seed": cfg["seed"],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(device),
        "platform": platform.platform(),
        "n_volumes": len(dataset),
        "classes": list(dataset.classes),
        "per_class": np.bincount(labels, minlength=len(dataset.classes)).tolist(),
        "shape": list(dataset.shape),
        "source": str(source),
    }


def _fit_set(
    name: str,
    cfg: dict[str, Any],
    cell: Cell,
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    generator,
    pool: list[np.ndarray] | None,
    n_classes: int,
    shape: tuple[int, ...],
) -> tuple[Any, int, int]:
    """Train the classifier on set ``name`` of one fold; returns ``(classifier, n_real, n_synthetic)``."""
    from brainkern.models import model_parameters

    ((clf_name, kwargs),) = cfg["classifiers"].items()
    kwargs = dict(kwargs)
    if "shape" in model_parameters(clf_name):
        kwargs.setdefault("shape", list(shape))
    clf = make_classifier(clf_name, kwargs, n_classes, cell_seed(cfg["seed"], cell, 6))
    x_train, y_train = parts["train"]
    validation = parts["val"]
    train = cfg["train"]
    if name == "infinite":
        weights = np.bincount(y_train, minlength=n_classes) / len(y_train)
        draw = infinite_stream(generator, weights, clf.batch_size, cell_seed(cfg["seed"], cell, 4))
        clf.fit_stream(
            draw,
            int(train["infinite_iterations"]),
            classes=list(range(n_classes)),
            validation=validation,
            eval_every=int(train["eval_every"]),
        )
        return clf, 0, int(train["infinite_iterations"]) * clf.batch_size
    x, y, n_real, n_syn = (
        (x_train, y_train, len(y_train), 0)
        if name in ("real", "augmented")
        else build_set(
            name, x_train, y_train, pool, int(cfg["large_factor"]), cell_seed(cfg["seed"], cell, 5)
        )
    )
    if train["steps"] is not None and hasattr(clf, "epochs"):
        per_epoch = max(1, len(y) // clf.batch_size)  # a last batch of one joins the one before
        clf.epochs = max(1, math.ceil(int(train["steps"]) / per_epoch))
    transform = None
    if name == "augmented":
        from brainkern.augment import DiffAugment3d

        augment = DiffAugment3d(**cfg["augment"], background=scale_range(cfg["data"]["scale"])[0])

        def transform(xb, gen):
            return augment(xb, generator=gen)

    if transform is not None:
        clf.fit(x, y, validation=validation, transform=transform)
    else:
        clf.fit(x, y, validation=validation)
    return clf, n_real, n_syn


def run_diagnosis(
    cfg: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Run (or resume) the diagnosis experiment of ``cfg`` into ``out_dir``; returns ``out_dir``.

    Raises:
        ValueError: ``out_dir`` holds an experiment with another configuration, the data do not
            have two classes, ``positive`` is not one of them, or a class has too few subjects.
        RuntimeError: the generator's grid or class count differs from the experiment's.
    """
    import torch
    from tqdm import tqdm

    from brainkern.train.engine import load_run, resolve_device

    log = log or (lambda *_: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored, text = out / "config.yaml", dump_config(cfg)
    if stored.is_file() and stored.read_text() != text:
        raise ValueError(
            f"{out} holds an experiment with another configuration (its config.yaml); "
            "choose a new folder to run this one"
        )
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    records, source = experiment_records(cfg, progress)
    dataset = experiment_dataset(cfg, records, progress)
    classes = list(dataset.classes)
    if len(classes) != 2 or cfg["positive"] not in classes:
        raise ValueError(
            f"the diagnosis experiment needs two classes, one of them positive={cfg['positive']!r}; "
            f"the data have {classes}"
        )
    stored.write_text(text)  # once the data are readable: a failed start leaves no config behind
    positive = classes.index(cfg["positive"])
    subjects, labels = subject_id_list(records), np.asarray(dataset.labels)
    files = [str(p) for p in dataset.paths]
    folds = int(cfg["cv"]["folds"])
    # One fold tests; of the rest a stratified quarter (one fold's worth at 5 folds) validates.
    cells = make_cells(
        labels, subjects, folds=folds, repeats=1, seed=int(cfg["cv"]["seed"]), val_fraction=1.0 / (folds - 1)
    )
    (gen_name,) = cfg["generators"]
    splits = splits_record(cells, subjects, files, [gen_name])
    splits.update(
        classes=classes,
        positive=cfg["positive"],
        source=str(source),
        method={
            "cv": cfg["cv"],
            "grouped_by": "subject",
            "validation": f"a stratified 1/{folds - 1} of the rest",
        },
    )
    write_json(out / "splits.json", splits)
    device = resolve_device(cfg["device"])
    info = _run_info(cfg, dataset, source, labels, device)
    run_json = out / "run.json"
    if run_json.is_file():
        first = json.loads(run_json.read_text())
        first.setdefault("resumes", []).append({k: info[k] for k in ("command", "started")})
        info = {**first, **{k: info[k] for k in ("n_volumes", "classes", "per_class", "shape")}}
    write_json(run_json, info)

    results = out / "results.csv"
    done = {(r["set"], r["fold"]) for r in _read_rows(results)}
    sets = list(cfg["sets"])
    volumes = dataset.volumes
    large = int(cfg["large_factor"])
    log(
        f"diagnosis experiment: {len(dataset)} volumes, classes {classes} "
        f"(positive: {cfg['positive']}), grid "
        f"{tuple(dataset.shape)}; {folds}-fold; sets {sets}; generator {gen_name}; results in {out}"
    )
    with tqdm(
        total=len(cells) * len(sets),
        initial=len(done & {(s, c.fold) for s in sets for c in cells}),
        unit="fit",
        desc="sets",
        disable=not progress,
    ) as bar:
        for cell in cells:
            if (BASELINE, cell.fold) not in done:
                majority = int(np.argmax(np.bincount(labels[cell.train], minlength=2)))
                row = {
                    "set": BASELINE,
                    "fold": cell.fold,
                    **binary_scores(labels[cell.test], np.full(len(cell.test), majority), positive),
                    "n_real": len(cell.train),
                    "n_synthetic": 0,
                    "n_val": len(cell.val),
                    "n_test": len(cell.test),
                    "best_epoch": 0,
                    "seconds": 0.0,
                }
                append_result(results, row, RESULT_FIELDS)
            todo = [s for s in sets if (s, cell.fold) not in done]
            if not todo:
                continue
            parts = {
                p: (
                    np.asarray(volumes[getattr(cell, p)], dtype=np.float32)[:, None],
                    labels[getattr(cell, p)],
                )
                for p in ("train", "val", "test")
            }
            generator, pool = None, None
            if any(s not in ("real", "augmented") for s in todo):
                split_file = out / "splits" / f"f{cell.fold}.json"
                write_json(
                    split_file,
                    {p: sorted({subjects[i] for i in getattr(cell, p)}) for p in ("train", "val", "test")},
                )
                run_dir = out / "generators" / f"f{cell.fold}" / gen_name
                cfg_g = generator_config(cfg, gen_name, split_file, cell_seed(cfg["seed"], cell, 2), classes)
                bar.set_postfix_str(f"fold {cell.fold}: training {gen_name}")
                train_generator(cfg_g, run_dir, progress)
                generator, _, ckpt = load_run(run_dir, "last", cfg["device"])
                check_same_grid(dataset, generator, ckpt, run_dir)
                if generator.num_classes != len(classes):
                    raise RuntimeError(
                        f"{run_dir}: {generator.num_classes} classes, the data have {len(classes)}"
                    )
                if any(s not in ("real", "augmented", "infinite") for s in todo):
                    counts = np.bincount(parts["train"][1], minlength=2)
                    pool = _pool(
                        generator,
                        (large + 1) * counts,
                        cell_seed(cfg["seed"], cell, 3),
                        int(cfg["sample_batch"]),
                    )
            for name in todo:
                bar.set_postfix_str(f"fold {cell.fold}: {name}")
                start = time.perf_counter()
                clf, n_real, n_syn = _fit_set(
                    name, cfg, cell, parts, generator, pool, len(classes), dataset.shape
                )
                x_test, y_test = parts["test"]
                row = {
                    "set": name,
                    "fold": cell.fold,
                    **binary_scores(y_test, clf.predict(x_test), positive),
                    "n_real": n_real,
                    "n_synthetic": n_syn,
                    "n_val": len(cell.val),
                    "n_test": len(cell.test),
                    "best_epoch": int(getattr(clf, "best_epoch", 0)),
                    "seconds": round(time.perf_counter() - start, 3),
                }
                history = getattr(clf, "history", [])
                write_json(out / "histories" / f"{name}-f{cell.fold}.json", _plain(history))
                append_result(results, row, RESULT_FIELDS)
                bar.update(1)
            del pool
    write_outputs(out, cfg, info, log=log)
    return out
