"""King et al. (2024, seed 003)'s architecture comparison (their Fig. 2): experiment ``compare``.

Several generator presets (King et al.'s SN-GAN and alpha-SN-GAN, each with and without
DiffAugment; the hierarchical HA-GAN and alpha-HA-GAN come with issue 14) are trained on
the training subjects of one subject-grouped, stratified split of the data. Each trained
generator then draws ten synthetic sets, and every set is scored on features
(:mod:`brainkern.evaluate.features`: the ``autoencoder-3d`` extractor trained on the
training volumes by default, MedicalNet's ResNet-50 when its weights are given) against the
real volumes of the held-out subjects: FID, precision, recall (k-nearest-neighbour
manifolds) and MMD^2 (:mod:`brainkern.evaluate.fidelity`). Per architecture: the mean and
the 95% confidence interval over the ten sets, a one-way ANOVA across the architectures and
Bonferroni-corrected unpaired t-tests between them (King et al.'s statistics), and, beside
them, ten sets of each trivial baseline (mean volume, voxel Gaussian, training copies,
fitted on the training volumes), with a note wherever a baseline wins a metric.

Set sizes: King et al. draw as many synthetic volumes as the generator had real ones and
compare with those. Here the reference is the held-out part (``reference: held-out``; the
generators never saw it), and each set is as large as the reference by default
(``set_size: null``): Kynkaanniemi et al.'s precision and recall compare sets of equal size
(a larger set has smaller k-NN balls, which lowers its recall). With ``reference: train``
the figures compare with the training volumes, as the paper does.

Outputs of an experiment directory::

    config.yaml      the resolved configuration (the run is resumed against it)
    run.json         versions, command, data summary
    splits.json      subject ids and volumes per part; the subjects each generator trained on
    extractor.pt     the trained autoencoder-3d extractor (reused on resume)
    results.csv      one row per (architecture or baseline, set): FID, precision, recall, MMD^2
    summary.csv      per architecture and baseline: mean and 95% CI of each metric
    table.md         the table, the ANOVA and post-hoc tests, the baselines' notes
    metrics.png      four panels (MMD^2, FID, precision, recall) with 95% CI bars (Fig. 2)
    pca.png          the first two principal components of the features (Fig. S7)
    features/        each architecture's features of its first set (for pca.png)
    generators/<name>/   each architecture's training run directory

Resuming: a finished generator run is reused (an unfinished one resumes from its last
checkpoint), the extractor is reloaded, and every set already in ``results.csv`` is skipped.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainkern.experiment.zhuang import (
    append_result,
    check_same_grid,
    dump_config,
    experiment_presets,
    generator_config,
    mean_ci,
    read_experiment_preset,
    train_generator,
    write_json,
)

__all__ = [
    "DEFAULTS",
    "RESULT_FIELDS",
    "anova",
    "compare_config",
    "compare_presets",
    "metrics_plot",
    "posthoc",
    "run_compare",
    "summarise",
    "table_markdown",
]

METRICS = ("fid", "precision", "recall", "mmd2")
RESULT_FIELDS = ("name", "kind", "set", *METRICS, "n", "seconds")
EXTRACTORS = ("autoencoder-3d", "medicalnet-resnet50")
REFERENCES = ("held-out", "train")
# Later architectures of the paper's Fig. 2, not in brainkern yet.
PENDING = "HA-GAN and alpha-HA-GAN (King et al.'s hierarchical architectures) come with issue 14"


def _data_defaults() -> dict[str, Any]:
    from brainkern.train.config import DEFAULTS as TRAIN_DEFAULTS

    data = copy.deepcopy(TRAIN_DEFAULTS["data"])
    # King et al.'s data: clipped, scaled to [-1, 1], trimmed, 64^3; no augmentation outside the GAN.
    data.update(cohort="smri", n_per_class=96, shape=[64, 64, 64], flip=False, intensity=None)
    return data


# The experiment's configuration: defaults, then a preset (brainkern/configs/experiments/
# compare-<name>.yaml), then --set overrides.
DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    "data": _data_defaults(),
    # One subject-grouped, stratified split: fold `fold` of `folds` is held out.
    "split": {"folds": 5, "fold": 0, "seed": 0},
    # name -> {preset: training preset, set: {dotted key: value}} (a preset may also give a
    # list of {name, preset, set}).
    "architectures": {},
    "sets": 10,  # synthetic sets per architecture (and per baseline)
    "set_size": None,  # volumes per set; None: as many as the reference
    "reference": "held-out",  # the real volumes compared with: "held-out" or "train"
    "extractor": {
        "name": "autoencoder-3d",
        "weights": None,  # medicalnet-resnet50: a MedicalNet resnet_50.pth
        "width": 8,
        "code": 16,
        "iters": 300,
        "batch_size": 16,
        "lr": 2.0e-3,
    },
    "metrics": {"k": 3, "kernel": "rbf"},
    "baselines": True,
    "device": "auto",
    "threads": None,
    "figures": True,
}


def compare_presets() -> list[str]:
    """Names of the experiment's presets (``compare-<name>.yaml``)."""
    return experiment_presets("compare")


def _architectures(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """A list of ``{name, preset, set}`` or a mapping ``name -> {preset, set}``, as a mapping."""
    if isinstance(value, Mapping):
        return {str(k): dict(v or {}) for k, v in value.items()}
    if isinstance(value, list) and all(isinstance(e, Mapping) and "name" in e for e in value):
        return {str(e["name"]): {k: v for k, v in e.items() if k != "name"} for e in value}
    raise ValueError(f"{where}: give a list of {{name, preset, set}} or a mapping name -> {{preset, set}}")


def _layer(cfg: dict[str, Any], update: dict[str, Any], *, replace_architectures: bool) -> dict[str, Any]:
    from brainkern.train.config import merge

    update = dict(update)
    archs = update.pop("architectures", None)
    cfg = merge(cfg, update)
    if archs is not None:
        archs = _architectures(archs, "architectures")
        if replace_architectures:
            cfg["architectures"] = archs
        else:
            for name, spec in archs.items():
                old = cfg["architectures"].get(name, {})
                cfg["architectures"][name] = {
                    **old,
                    **spec,
                    "set": {**old.get("set", {}), **spec.get("set", {})},
                }
    return cfg


def compare_config(
    preset: str | os.PathLike | None = "king2024-architectures", overrides: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The experiment's configuration: :data:`DEFAULTS`, the preset, then ``overrides``, checked.

    Args:
        preset: a preset name (:func:`compare_presets`) or a YAML file; ``None``: the defaults.
        overrides: partial configurations laid over it in turn (``--set`` values); an
            ``architectures`` entry there updates (or adds) the named architectures.

    Raises:
        FileNotFoundError: no such preset.
        KeyError: an unknown key.
        ValueError: a value out of range (one line naming the key).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        data = read_experiment_preset("compare", preset)
        cfg = _layer(cfg, data, replace_architectures=True)
    for update in overrides:
        cfg = _layer(cfg, update, replace_architectures=False)
    return _check(cfg)


def _check_int(cfg: dict[str, Any], key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _check(cfg: dict[str, Any]) -> dict[str, Any]:
    from brainkern.train.config import DEFAULTS as TRAIN_DEFAULTS
    from brainkern.train.config import merge, validate

    split, ext, met = cfg["split"], cfg["extractor"], cfg["metrics"]
    _check_int(cfg, "split.folds", split["folds"], 2)
    if not (isinstance(split["fold"], int) and 0 <= split["fold"] < split["folds"]):
        raise ValueError(f"split.fold must be an integer in 0 .. {split['folds'] - 1}, got {split['fold']!r}")
    _check_int(cfg, "sets", cfg["sets"], 2)
    if cfg["set_size"] is not None:
        _check_int(cfg, "set_size", cfg["set_size"], 2)
    if cfg["reference"] not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {cfg['reference']!r}")
    if ext["name"] not in EXTRACTORS:
        raise ValueError(f"extractor.name must be one of {EXTRACTORS}, got {ext['name']!r}")
    if ext["name"] == "medicalnet-resnet50" and not ext["weights"]:
        raise ValueError(
            "extractor.name medicalnet-resnet50 needs extractor.weights (a MedicalNet resnet_50.pth)"
        )
    for key in ("width", "code", "iters", "batch_size"):
        _check_int(cfg, f"extractor.{key}", ext[key], 1)
    _check_int(cfg, "metrics.k", met["k"], 1)
    if met["kernel"] not in ("rbf", "linear"):
        raise ValueError(f"metrics.kernel must be 'rbf' or 'linear', got {met['kernel']!r}")
    data = validate(merge(TRAIN_DEFAULTS, {"data": cfg["data"]}))["data"]
    for key in ("folds", "split_file", "classes"):
        if data.get(key):
            raise ValueError(f"data.{key} is set by the experiment's split (split.*); leave it unset")
    if data["scale"] is None:
        raise ValueError("data.scale must be '[0,1]' or '[-1,1]'")
    cfg["data"] = data
    if len(cfg["architectures"]) < 1:
        raise ValueError("architectures: name at least one {name, preset, set}")
    for name, spec in cfg["architectures"].items():
        if set(spec) - {"preset", "set"} or not spec.get("preset"):
            raise ValueError(f"architectures.{name}: give {{preset: NAME, set: {{key: value}}}}, got {spec}")
        spec.setdefault("set", {})
    from brainkern.evaluate.baselines import BASELINES

    clash = sorted(set(cfg["architectures"]) & set(BASELINES))
    if clash:
        raise ValueError(f"architectures: {clash} is a baseline's name")
    return cfg


# ----------------------------------------------------------------------------- results


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["set"], row["n"] = int(row["set"]), int(row["n"])
        for key in (*METRICS, "seconds"):
            row[key] = float(row[key])
    return rows


def summarise(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per name (in ``names``' order): kind, number of sets, each metric's mean and 95% CI over
    the sets (Student t; :func:`brainkern.experiment.zhuang.mean_ci`). A set scored twice (a
    resumed run) counts once."""
    latest = {(r["name"], r["set"]): r for r in rows}
    out = []
    for name in names:
        mine = [r for (n, _), r in latest.items() if n == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"name": name, "kind": mine[0]["kind"], "sets": len(mine), "n": mine[0]["n"]}
        for m in METRICS:
            mean, lo, hi = mean_ci([r[m] for r in mine])
            entry.update({m: mean, f"{m}_lo": lo, f"{m}_hi": hi})
        out.append(entry)
    return out


def _groups(rows: Sequence[Mapping[str, Any]], names: Sequence[str], metric: str) -> dict[str, list[float]]:
    latest = {(r["name"], r["set"]): r for r in rows}
    groups = {n: [r[metric] for (name, _), r in latest.items() if name == n] for n in names}
    return {n: v for n, v in groups.items() if v}


def anova(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """One-way ANOVA of each metric across ``names`` (the sets as observations; scipy).

    Returns:
        metric -> ``{"F", "p", "df_between", "df_within"}``; ``F`` and ``p`` are NaN with fewer
        than 2 groups, fewer than 2 sets in one, or no variance within the groups.
    """
    from scipy import stats

    out = {}
    for m in METRICS:
        groups = _groups(rows, names, m)
        k, n = len(groups), sum(len(v) for v in groups.values())
        f = p = math.nan
        if k >= 2 and all(len(v) >= 2 for v in groups.values()):
            within = sum(np.var(v) * len(v) for v in groups.values())
            if within > 0:
                f, p = (float(x) for x in stats.f_oneway(*groups.values()))
        out[m] = {"F": f, "p": p, "df_between": k - 1, "df_within": n - k}
    return out


def posthoc(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """King et al.'s post-hoc tests: two-tailed unpaired t-tests (pooled variance) between every
    pair of ``names``, per metric, p-values Bonferroni-corrected over the pairs of a metric."""
    from scipy import stats

    out = []
    for m in METRICS:
        groups = _groups(rows, names, m)
        keys = list(groups)
        pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
        for a, b in pairs:
            va, vb = groups[a], groups[b]
            if len(va) < 2 or len(vb) < 2 or (np.ptp(va) == 0 and np.ptp(vb) == 0):
                t, p = math.nan, math.nan
            else:
                t, p = (float(x) for x in stats.ttest_ind(va, vb))
            out.append(
                {
                    "metric": m,
                    "a": a,
                    "b": b,
                    "t": t,
                    "df": len(va) + len(vb) - 2,
                    "p": p,
                    "p_bonferroni": min(1.0, p * len(pairs)) if not math.isnan(p) else math.nan,
                }
            )
    return out


def format_ci(e: Mapping[str, Any], m: str) -> str:
    lo, hi = e[f"{m}_lo"], e[f"{m}_hi"]
    if math.isnan(lo):
        return f"{e[m]:.4g}"
    return f"{e[m]:.4g} [{lo:.4g}, {hi:.4g}]"


def table_markdown(
    summary: Sequence[Mapping[str, Any]],
    stats_: Mapping[str, Mapping[str, float]],
    tests: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any],
) -> str:
    """``table.md``: Fig. 2's figures per architecture and baseline (mean [95% CI] over the sets),
    the ANOVA, the post-hoc tests and the notes where a baseline wins."""
    from brainkern.evaluate.fidelity import FIDELITY_METRICS, fidelity_notes

    titles = {
        m: FIDELITY_METRICS[m][0] + (" (higher better)" if FIDELITY_METRICS[m][1] else " (lower better)")
        for m in METRICS
    }
    models = [e["name"] for e in summary if e["kind"] == "model"]
    baselines = [e["name"] for e in summary if e["kind"] == "baseline"]
    lines = [
        "# Generator architectures compared (King et al. 2024, Fig. 2)",
        "",
        f"Features: **{info['extractor']}**. Reference: {info['reference']}. "
        f"Each architecture and baseline drew {info['sets']} sets of {info['set_size']} volumes; "
        f"precision / recall with k = {info['k']}; MMD^2 unbiased, {info['kernel']} kernel"
        + (" (bandwidths from the real features)" if info["kernel"] == "rbf" else "")
        + ". Figures: mean [95% CI] over the sets (Student t).",
        "",
        f"Data: {info['data']}. Split: {info['split']}.",
        "",
        "| architecture | kind | " + " | ".join(titles[m] for m in METRICS) + " |",
        "| --- | --- |" + " ---: |" * len(METRICS),
    ]
    for e in summary:
        lines.append(f"| {e['name']} | {e['kind']} | " + " | ".join(format_ci(e, m) for m in METRICS) + " |")
    lines += ["", "## One-way ANOVA across the architectures (sets as observations)", ""]
    if len(models) < 2:
        lines.append("- one architecture only: nothing to compare")
    else:
        for m in METRICS:
            s = stats_[m]
            lines.append(
                f"- {FIDELITY_METRICS[m][0]}: F({s['df_between']}, {s['df_within']}) = {s['F']:.4g}, "
                f"p = {s['p']:.3g}"
                if not math.isnan(s["F"])
                else f"- {FIDELITY_METRICS[m][0]}: no variance within the architectures' sets: no F"
            )
        lines += [
            "",
            "## Post-hoc: unpaired two-tailed t-tests, Bonferroni-corrected over the pairs of a metric",
            "",
            "| metric | a | b | t (df) | p (corrected) |",
            "| --- | --- | --- | ---: | ---: |",
        ]
        for t in tests:
            if math.isnan(t["t"]):  # both groups constant: no test
                cells = f"n/a ({t['df']}) | n/a (no variance) |"
            else:
                cells = f"{t['t']:.3g} ({t['df']}) | {t['p_bonferroni']:.3g} |"
            lines.append(f"| {FIDELITY_METRICS[t['metric']][0]} | {t['a']} | {t['b']} | {cells}")
    notes = fidelity_notes(summary, baselines)
    lines += ["", "## Where a trivial baseline wins (on the means)", ""]
    lines += [f"- {n}" for n in notes] or ["- nowhere: every metric has a model ahead of every baseline"]
    lines += ["", f"Not compared yet: {PENDING}."]
    return "\n".join(lines) + "\n"


def metrics_plot(summary: Sequence[Mapping[str, Any]], path: Path, extractor: str) -> Path:
    """Fig. 2's four panels (MMD^2, FID, precision, recall): one bar per architecture and
    baseline (grey, hatched) with 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brainkern.evaluate.fidelity import FIDELITY_METRICS

    order = ("mmd2", "fid", "precision", "recall")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    colours = plt.get_cmap("tab10")
    x = np.arange(len(summary))
    for ax, m, letter in zip(axes, order, "abcd", strict=True):
        for i, e in enumerate(summary):
            lo, hi = e[f"{m}_lo"], e[f"{m}_hi"]
            err = [[0.0 if math.isnan(lo) else e[m] - lo], [0.0 if math.isnan(hi) else hi - e[m]]]
            model = e["kind"] == "model"
            ax.bar(
                i,
                e[m],
                0.7,
                yerr=err,
                capsize=3,
                color=colours(i % 10) if model else "0.75",
                hatch=None if model else "//",
                edgecolor="0.3",
            )
        title, higher = FIDELITY_METRICS[m]
        ax.set_title(f"({letter}) {title}, {'higher' if higher else 'lower'} is better", fontsize=9)
        ax.set_xticks(x, [e["name"] for e in summary], rotation=40, ha="right", fontsize=7)
        if m in ("precision", "recall"):
            ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Features: {extractor}. Mean and 95% CI over the sets; baselines hatched", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the run


def _split(records, cfg: dict[str, Any]) -> dict[str, Any]:
    from brainkern.train.data import make_split

    s = cfg["split"]
    return make_split(records, {"folds": s["folds"], "fold": s["fold"], "split_seed": s["seed"]})


def _extractor(cfg: dict[str, Any], train_volumes: np.ndarray, out: Path, device, log):
    import torch

    from brainkern.evaluate.features import AutoencoderExtractor, fit_autoencoder, resnet50_3d

    ext = cfg["extractor"]
    if ext["name"] == "medicalnet-resnet50":
        return resnet50_3d(ext["weights"]).to(device)
    path = out / "extractor.pt"
    settings = {k: ext[k] for k in ("width", "code", "iters", "batch_size", "lr")}
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["settings"] == settings and saved["seed"] == int(cfg["seed"]):
            model = AutoencoderExtractor(ext["width"], ext["code"])
            model.load_state_dict(saved["state_dict"])
            return model.eval().to(device)
    log(f"training the autoencoder-3d extractor on {len(train_volumes)} training volumes")
    model = fit_autoencoder(torch.from_numpy(train_volumes), seed=int(cfg["seed"]), **settings)
    from brainkern.data.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "settings": settings, "seed": int(cfg["seed"])}, tmp)
    return model.to(device)


def _run_info(cfg: dict[str, Any], out: Path, dataset, source, device) -> None:
    import json

    from brainkern.train.engine import versions

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
            "shape": list(dataset.shape),
            "preprocessing": dataset.config,
        },
    }
    path = out / "run.json"
    if path.is_file():
        first = json.loads(path.read_text())
        first.setdefault("resumes", []).append({k: info[k] for k in ("command", "started", "versions")})
        info = first
    write_json(path, info)


def run_compare(
    cfg: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Run (or resume) the comparison of ``cfg`` into ``out_dir``; returns ``out_dir``.

    Raises:
        ValueError: ``out_dir`` holds an experiment with another configuration, or the data do
            not fit the split.
        RuntimeError: a generator's grid differs from the experiment's.
    """
    import torch
    from tqdm import tqdm

    from brainkern.evaluate.baselines import make_baselines
    from brainkern.evaluate.features import extract_features
    from brainkern.evaluate.fidelity import feature_bandwidths, fidelity_metrics
    from brainkern.experiment.kwon import generation_labels
    from brainkern.train.data import data_source, load_run_data, read_records
    from brainkern.train.engine import resolve_device

    log = log or (lambda *_: None)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stored, text = out / "config.yaml", dump_config(cfg)
    if stored.is_file() and stored.read_text() != text:
        raise ValueError(
            f"{out} holds an experiment with another configuration (its config.yaml); "
            "choose a new folder to run this one"
        )
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg["device"])

    # The split: written first, then every generator (and the data set here) reads it.
    source = data_source(cfg["data"], progress=progress)
    records = read_records(source)
    split = _split(records, cfg)
    names = list(cfg["architectures"])
    split_path = out / "splits.json"
    write_json(
        split_path,
        {
            "method": {k: v for k, v in split.items() if k not in ("parts", "subjects")},
            "subjects": {"train": split["subjects"]["train"], "test": split["subjects"]["test"]},
            "volumes": split["parts"],
            "files": {p: [str(records[i].path) for i in idx] for p, idx in split["parts"].items()},
            "generators": {n: split["subjects"]["train"] for n in names},
        },
    )
    data = {**cfg["data"], "split_file": str(split_path)}
    _, dataset = load_run_data(data, progress=progress)
    stored.write_text(text)  # once the data are readable
    _run_info(cfg, out, dataset, source, device)

    train_idx = np.sort(np.asarray(split["parts"]["train"]))
    ref_idx = train_idx if cfg["reference"] == "train" else np.sort(np.asarray(split["parts"]["test"]))
    vols = dataset.volumes
    train_x = np.asarray(vols[train_idx], dtype=np.float32)[:, None]
    ref_x = np.asarray(vols[ref_idx], dtype=np.float32)[:, None]
    ref_labels = np.asarray(dataset.labels)[ref_idx]
    n = int(cfg["set_size"] or len(ref_idx))
    n_sets, seed = int(cfg["sets"]), int(cfg["seed"])
    k, kernel, batch = int(cfg["metrics"]["k"]), cfg["metrics"]["kernel"], int(cfg["extractor"]["batch_size"])
    log(
        f"compare: {len(dataset)} volumes {tuple(dataset.shape)}, {len(train_idx)} training, reference "
        f"{cfg['reference']} ({len(ref_idx)}); architectures {names}; {n_sets} sets of {n}; results in {out}"
    )

    extractor = _extractor(cfg, train_x, out, device, log)
    ref_f = extract_features(ref_x, extractor, batch)
    bw = feature_bandwidths(ref_f) if kernel == "rbf" else None
    results = out / "results.csv"
    done = {(r["name"], r["set"]) for r in _read_rows(results)}
    (out / "features").mkdir(exist_ok=True)

    def score(name: str, kind: str, s: int, volumes) -> None:
        start = time.perf_counter()
        f = extract_features(volumes, extractor, batch)
        if s == 0:
            np.save(out / "features" / f"{name}.npy", f)
        row = {
            "name": name,
            "kind": kind,
            "set": s,
            "n": len(f),
            **fidelity_metrics(ref_f, f, k=k, kernel=kernel, bandwidths=bw),
        }
        row["seconds"] = round(time.perf_counter() - start, 3)
        append_result(results, row, RESULT_FIELDS)

    bar = tqdm(total=len(names) + (3 if cfg["baselines"] else 0), desc="compare", disable=not progress)
    for i, name in enumerate(names):
        todo = [s for s in range(n_sets) if (name, s) not in done]
        if todo:
            bar.set_postfix_str(f"training {name}")
            cfg_g = generator_config(
                {**cfg, "generators": cfg["architectures"]}, name, split_path, seed, dataset.classes
            )
            model, ckpt = train_generator(cfg_g, out / "generators" / name, progress)
            check_same_grid(dataset, model, ckpt, out / "generators" / name)
            labels = generation_labels(model, n, ref_labels)
            for s in todo:
                bar.set_postfix_str(f"{name}: set {s}")
                gen = torch.Generator().manual_seed(seed + 1000 * (i + 1) + s)
                score(name, "model", s, model.sample(n, labels, generator=gen, batch_size=batch))
            del model
        bar.update(1)
    if cfg["baselines"]:
        from brainkern.evaluate.baselines import BASELINES

        for b in BASELINES:
            for s in range(n_sets):
                if (b, s) not in done:
                    score(b, "baseline", s, make_baselines(train_x, n, seed=seed + s)[b])
            bar.update(1)
    bar.close()
    ext = cfg["extractor"]
    what = extractor.name
    if ext["name"] == "autoencoder-3d":
        what += (
            f" (trained on the {len(train_idx)} training volumes only, {ext['iters']} iterations; "
            f"{extractor.feature_dim} features a volume)"
        )
    write_outputs(out, cfg, dataset, split, what, ref_f, ref_labels, n, log=log)
    return out


def write_outputs(
    out: Path,
    cfg: dict[str, Any],
    dataset,
    split: Mapping[str, Any],
    extractor: str,
    ref_f: np.ndarray,
    ref_labels: np.ndarray,
    set_size: int,
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """``summary.csv``, ``table.md``, ``metrics.png`` and ``pca.png`` from ``results.csv``."""
    from brainkern.evaluate.baselines import BASELINES
    from brainkern.evaluate.fidelity import pca_scatter
    from brainkern.experiment.zhuang import write_summary_csv

    rows = _read_rows(out / "results.csv")
    names = [*cfg["architectures"], *(BASELINES if cfg["baselines"] else ())]
    summary = summarise(rows, names)
    models = [n for n in cfg["architectures"] if any(r["name"] == n for r in rows)]
    s = cfg["split"]
    info = {
        "extractor": extractor,
        "reference": (
            f"the {len(split['parts']['test'])} held-out volumes (subjects no generator was trained on)"
            if cfg["reference"] == "held-out"
            else f"the {len(split['parts']['train'])} training volumes (as King et al.)"
        ),
        "sets": cfg["sets"],
        "set_size": set_size,
        "k": cfg["metrics"]["k"],
        "kernel": cfg["metrics"]["kernel"],
        "data": f"{len(dataset)} volumes, classes {', '.join(dataset.classes)}, grid "
        f"{'x'.join(map(str, dataset.shape))}",
        "split": f"stratified {s['folds']}-fold grouped by subject, fold {s['fold']} held out "
        f"(seed {s['seed']}); {len(split['parts']['train'])} training volumes (splits.json)",
    }
    paths = {"summary": out / "summary.csv", "table": out / "table.md"}
    write_summary_csv(paths["summary"], summary)
    text = table_markdown(summary, anova(rows, models), posthoc(rows, models), info)
    paths["table"].write_text(text)
    if cfg["figures"]:
        paths["metrics"] = metrics_plot(summary, out / "metrics.png", extractor)
        feats = {
            n: np.load(out / "features" / f"{n}.npy")
            for n in models
            if (out / "features" / f"{n}.npy").is_file()
        }
        classes = np.asarray(dataset.classes)
        paths["pca"] = pca_scatter(
            ref_f,
            feats,
            {"real": classes[ref_labels].tolist()},
            out / "pca.png",
            title=f"PCA of the real ({cfg['reference']}) features ({extractor.split(' (')[0]}):\n"
            "real volumes and each architecture's first set",
        )
    log(text)
    log("written: " + ", ".join(str(p) for p in paths.values()))
    return paths
