"""Kwon et al. (2019)'s Table 1 for a training run: experiment ``kwon2019-table1``.

:func:`evaluate_model` compares a trained generator with real volumes (the
held-out part of the run's split when it has one, else its training volumes:
:func:`evaluation_indices`) and with two baselines it must beat: the same
architecture untrained (its initial weights) and Gaussian noise volumes matched to
the real volumes' mean and standard deviation. :func:`evaluate_run` does that for a run directory
and writes ``evaluation.json`` and ``report.md`` into it (what
``python -m brainkern.experiment kwon2019-table1 RUN_DIR`` runs).
:class:`RunReport` plugs into the training engine: tri-planar mosaics (real next
to generated) and loss curves at each check, and the same evaluation at the end
of the run.

A class-conditional model (Zhuang et al. 2019's ICW-GAN, CVAE, GMM) generates for
the classes of the real volumes it is compared with: the table's samples come in
the real volumes' class proportions (:func:`generation_labels`), and each picture's
generated column has the class of the real volume above it. Runs on volumes scaled
to ``[0, 1]`` (``data.scale``) are measured and drawn over that range.

The metrics themselves (batch MMD^2, MS-SSIM diversity, the table) live in
:mod:`brainkern.evaluate`; this module decides which volumes they compare.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.data.preprocess import SCALES
from brainkern.evaluate.baselines import make_baselines
from brainkern.evaluate.generation import (
    column_name,
    format_table,
    generation_table,
    matched_noise,
    memorisation_verdict,
    verdict,
)
from brainkern.train.config import DEFAULTS
from brainkern.train.data import evaluation_indices, load_run_data, real_volumes, training_indices
from brainkern.train.engine import Callback, Trainer, build_run_model, load_run


def intensity_range(cfg: dict[str, Any]) -> tuple[float, float]:
    """``(low, high)`` of the run's volumes: ``data.scale`` (``[-1, 1]`` for older runs)."""
    return SCALES[str(cfg.get("data", {}).get("scale") or "[-1,1]")]


def generation_labels(model, n: int, real_labels: Any = None) -> torch.Tensor | None:
    """The classes of ``n`` volumes to generate, to be compared with real volumes.

    ``None`` for an unconditional model. For a conditional one: the real volumes'
    classes ``real_labels`` ``(N,)`` in their proportions (generated volume ``i``
    takes the class of real volume ``floor(i * N / n)``, so the proportions are
    exact where ``n`` is a multiple of ``N`` and off by at most one volume per class
    otherwise), or, without ``real_labels``, the classes in turn (``i % num_classes``).

    Raises:
        ValueError: ``real_labels`` empty or outside ``0 .. num_classes - 1``.
    """
    if not model.conditional:
        return None
    if real_labels is None:
        return torch.arange(n) % model.num_classes
    real_labels = torch.as_tensor(np.asarray(real_labels), dtype=torch.int64).flatten()
    if real_labels.numel() == 0:
        raise ValueError("generation_labels: no real labels to follow")
    if real_labels.min() < 0 or real_labels.max() >= model.num_classes:
        raise ValueError(f"generation_labels: real labels outside 0 .. {model.num_classes - 1}")
    return real_labels[(torch.arange(n) * real_labels.numel()) // max(n, 1)]


def evaluate_model(
    model,
    real: torch.Tensor,
    cfg: dict[str, Any],
    *,
    train: torch.Tensor | None = None,
    real_is_train: bool = False,
    real_labels: Any = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Kwon et al.'s Table 1 for ``model`` against ``real`` volumes, with baselines.

    Rows: ``trained`` (``model``), ``untrained`` (the same configuration's initial
    weights), ``noise (matched)``, and with ``train``: ``mean volume``,
    ``voxel Gaussian`` and ``training copies`` (fitted on ``train`` only); then
    ``real``. Generated volumes come from ``cfg["seed"]``-seeded latents, so a rerun
    gives the same table.

    Args:
        model: a :class:`~brainkern.models.GenerativeModel`.
        real: ``(N, 1, D, H, W)`` real volumes to compare with (N >= ``evaluate.mmd_batch``).
        cfg: the run's configuration (``evaluate`` section and ``seed``).
        train: ``(M, 1, D, H, W)`` the model's training volumes: the trivial
            baselines and the memorisation check (``None``: neither).
        real_is_train: ``real`` are the training volumes (no held-out part).
        real_labels: ``(N,)`` the classes of ``real``; a conditional model (and its
            untrained twin) generates in their proportions (:func:`generation_labels`).
    """
    ecfg = cfg["evaluate"]
    n = int(ecfg["n_generated"])
    batch = int(cfg["train"]["batch_size"])
    seed = int(cfg["seed"])
    low, high = intensity_range(cfg)
    labels = generation_labels(model, n, real_labels)
    trained = model.sample(
        n, labels, generator=torch.Generator().manual_seed(seed + 2), batch_size=batch, device=device
    )
    untrained_model = build_run_model(cfg, torch.device(device))
    untrained = untrained_model.sample(
        n, labels, generator=torch.Generator().manual_seed(seed + 2), batch_size=batch, device=device
    )
    del untrained_model
    noise = matched_noise(real, n, seed=seed + 3)
    candidates = {"trained": trained, "untrained": untrained, "noise (matched)": noise}
    if train is not None:
        candidates.update(make_baselines(train, n, seed=seed + 5))
    return generation_table(
        real,
        candidates,
        train=train,
        real_is_train=real_is_train,
        n_tests=int(ecfg["mmd_tests"]),
        batch_size=int(ecfg["mmd_batch"]),
        n_pairs=int(ecfg["ms_ssim_pairs"]),
        data_range=high - low,
        low=low,
        ms_ssim=str(ecfg["ms_ssim"]),
        n_subsets=int(ecfg["kernel_subsets"]),
        subset_size=int(ecfg["kernel_subset_size"]),
        seed=seed,
        progress=progress,
    )


def _real_and_train(dataset, evaluated: np.ndarray, trained_on: np.ndarray):
    """The real volumes to compare with, the training volumes, whether they are one set, and
    the real volumes' labels (in :func:`real_volumes`' file order)."""
    same = np.array_equal(np.sort(evaluated), np.sort(trained_on))
    real = real_volumes(dataset, evaluated)
    labels = np.asarray(dataset.labels)[np.sort(evaluated)]
    return real, (real if same else real_volumes(dataset, trained_on)), same, labels


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str = "last",
    device: str = "auto",
    n_generated: int | None = None,
    mmd_tests: int | None = None,
    ms_ssim_pairs: int | None = None,
    ms_ssim: str | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Path]:
    """Kwon et al.'s Table 1 for the run in ``run_dir``, written beside it.

    Loads the run's checkpoint and its training volumes (the data set its
    ``config.yaml`` names, rebuilt from the cache), evaluates the generator with
    :func:`evaluate_model` and writes ``evaluation.json`` and ``report.md`` into
    ``run_dir``.

    Args:
        checkpoint: ``"last"`` or ``"best"``.
        device: where to generate (``"auto"``: CUDA when there is one).
        n_generated, mmd_tests, ms_ssim_pairs, ms_ssim: override the run's
            ``evaluate`` section (``None`` keeps it); keys a run's older
            configuration lacks take today's defaults.

    Returns:
        ``(rows, report_path)``: the table's rows and the path of ``report.md``.

    Raises:
        FileNotFoundError: not a run directory, no such checkpoint, or the run's
            data table is gone.
        ValueError, RuntimeError: the run's configuration or data no longer fit.
    """
    model, cfg, ckpt = load_run(run_dir, checkpoint, device)
    cfg["evaluate"] = {**DEFAULTS["evaluate"], **cfg["evaluate"]}
    for key, value in (
        ("n_generated", n_generated),
        ("mmd_tests", mmd_tests),
        ("ms_ssim_pairs", ms_ssim_pairs),
    ):
        if value is not None:
            cfg["evaluate"][key] = int(value)
    if ms_ssim is not None:
        cfg["evaluate"]["ms_ssim"] = str(ms_ssim)
    # The data as the run's Trainer saw it: the same split (preprocessing fitted on
    # its training part) and the same real volumes to compare with.
    split, dataset = load_run_data(cfg["data"], progress=progress)
    indices, what = evaluation_indices(dataset, cfg["data"]["classes"], split)
    trained_on = training_indices(dataset, cfg["data"]["classes"], split)
    real, train, same, labels = _real_and_train(dataset, indices, trained_on)
    device = next(model.parameters()).device  # where load_run put it ("auto" resolved)
    rows = evaluate_model(
        model,
        real,
        cfg,
        train=train,
        real_is_train=same,
        real_labels=labels,
        device=device,
        progress=progress,
    )
    info = report_info(
        model,
        cfg,
        iterations=int(ckpt["iter"]),
        checkpoint=checkpoint,
        train_seconds=float(ckpt.get("elapsed", 0.0)),
        grid=dataset.shape,
        real=what,
        n_real=len(indices),
    )
    return rows, write_report(run_dir, rows, info)


def report_info(
    model,
    cfg: dict[str, Any],
    *,
    iterations: int,
    checkpoint: str,
    train_seconds: float,
    grid,
    real: str,
    n_real: int,
) -> dict[str, Any]:
    """What the report says about the run besides the table (``evaluation.json``'s other keys)."""
    return {
        "model": model.name,
        "preset": cfg.get("preset"),
        "iterations": int(iterations),
        "checkpoint": checkpoint,
        "train_seconds": round(float(train_seconds), 1),
        "grid": [int(s) for s in grid],
        "real": real,
        "n_real": int(n_real),
        "n_generated": int(cfg["evaluate"]["n_generated"]),
    }


def write_report(run_dir: str | os.PathLike, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """``evaluation.json`` and ``report.md`` in ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    (run_dir / "evaluation.json").write_text(
        json.dumps({**info, "rows": rows}, indent=2, default=float) + "\n"
    )
    lines = [f"# brainkern run: {info.get('model', '')}", ""]
    for key in (
        "preset",
        "iterations",
        "checkpoint",
        "train_seconds",
        "grid",
        "real",
        "n_real",
        "n_generated",
    ):
        if key in info:
            lines.append(f"- {key.replace('_', ' ')}: {info[key]}")
    memo = next((r["memorisation"] for r in rows if r.get("memorisation")), None)
    conv = next((r.get("ms_ssim_convention") for r in rows if r.get("ms_ssim_convention")), "standard")
    conv_name = "the convention of Kwon et al.'s code" if conv == "kwon2019" else "standard"
    lines += [
        "",
        "## Generation metrics: Kwon et al. (2019) Table 1 and what a trivial generator scores",
        "",
        f"Every row is compared with the {info.get('real', 'real volumes')}.",
        "",
        "- MMD^2 (Kwon, linear): Kwon et al.'s biased linear batch MMD^2, mean ± SD over tests of B real",
        "  vs B generated volumes. It is ||mean difference||^2 plus both batches' own spread, so a",
        "  generator with too little variance scores well on it (see the mean volume row).",
        "- MMD^2 (RBF, voxels / 4^3 blocks): unbiased MMD^2 with Gaussian kernels (bandwidths 0.5, 1, 2 x",
        "  the median distance between real volumes), on the voxels and on volumes averaged over 4^3 blocks",
        "  (where independent voxel noise averages away), mean ± SD over random subsets; about 0 for two",
        "  samples of one distribution, lower is better.",
        f"- MS-SSIM ({conv_name}): mean over random pairs of a set's volumes;",
        "  closer to the real row is better (1 = all alike).",
        "- voxel SD: how much a set varies at each voxel; closer to the real row is better.",
    ]
    if memo is not None:
        lines += [
            "- NN ratio: median distance of each generated volume to its nearest training volume, over",
            f"  the same for the reference ({memo['reference']}); near 1: as far from the training set as",
            "  new subjects, near 0: copies. near copies: the share of generated volumes nearer to a",
            f"  training volume than {100 * (1 - memo['quantile']):.0f}% of the reference volumes are.",
        ]
    lines += ["", format_table(rows), ""]
    lines += verdict_lines(rows)
    lines += ["## Pictures", ""]
    pictures = sorted((run_dir / "pictures").glob("*.png")) if (run_dir / "pictures").is_dir() else []
    lines += [f"![{p.stem}](pictures/{p.name})" for p in pictures[-2:]] or ["(none)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the table says about the trained generator: metric by metric, "better" only
    where it beats every baseline row; then whether its samples look memorised."""
    names = [r["model"] for r in rows]
    if "trained" not in names:
        return []
    trained = rows[names.index("trained")]
    baselines = [n for n in names if n not in ("trained", "real")]
    lines = ["### Does the trained generator beat every baseline?", ""]
    for key, result in verdict(rows, "trained", baselines).items():
        name = column_name(key)
        if not result["loses"]:
            lines.append(f"- {name}: yes, better than all {len(result['beats'])} baselines")
        else:
            lines.append(f"- {name}: no, not better than {', '.join(result['loses'])}")
    memorised = memorisation_verdict(trained)
    if memorised is not None:
        memo = trained["memorisation"]
        state = "look memorised" if memorised else "do not look memorised"
        lines.append(
            f"- memorisation: the samples {state} (NN ratio {memo['nn_ratio']:.2f}, "
            f"{memo['copy_rate']:.0%} near copies; reference: {memo['reference']})"
        )
    return [*lines, ""]


class RunReport(Callback):
    """Pictures at every check and the evaluation at the end of a run.

    Args:
        evaluate: compute the evaluation table at the end.
        progress: progress bar for the evaluation.
    """

    def __init__(self, evaluate: bool = True, progress: bool = True) -> None:
        self.evaluate = evaluate
        self.progress = progress

    def on_start(self, trainer: Trainer) -> None:
        n = int(trainer.cfg["log"]["n_pictures"])
        rng = np.random.default_rng(trainer.cfg["seed"])
        pick = rng.choice(trainer.indices, size=min(n, len(trainer.indices)), replace=False)
        self.real = real_volumes(trainer.dataset, pick)
        # A conditional model draws each column in the class of the real volume above it.
        self.real_labels = np.asarray(trainer.dataset.labels)[np.sort(pick)]

    def on_check(self, trainer: Trainer, it: int) -> None:
        from brainkern.evaluate.pictures import loss_curves, triplanar_mosaic

        pictures = trainer.run_dir / "pictures"
        model = trainer.model
        gen = torch.Generator().manual_seed(trainer.cfg["seed"] + 4)
        labels = torch.as_tensor(self.real_labels) if model.conditional else None
        fake = model.sample(len(self.real), labels, generator=gen, batch_size=8, device=trainer.device)
        title = f"{model.name}, iteration {it}"
        if model.conditional:
            title += "; classes: " + ", ".join(trainer.dataset.classes[int(k)] for k in self.real_labels)
        low, high = intensity_range(trainer.cfg)
        triplanar_mosaic(
            {"real": self.real[:, 0].numpy(), f"generated (iter {it})": fake[:, 0].numpy()},
            pictures / f"samples_{it:07d}.png",
            n_per_row=len(self.real),
            title=title,
            vmin=low,
            vmax=high,
        )
        loss_curves(trainer.metrics_path, pictures / "losses.png")

    def on_end(self, trainer: Trainer) -> None:
        if not self.evaluate:
            return
        indices, what = trainer.evaluation_indices()
        trainer.log(f"evaluating (Kwon et al. Table 1 and baselines) against {what} ...")
        real, train, same, labels = _real_and_train(trainer.dataset, indices, trainer.indices)
        rows = evaluate_model(
            trainer.model,
            real,
            trainer.cfg,
            train=train,
            real_is_train=same,
            real_labels=labels,
            device=trainer.device,
            progress=self.progress,
        )
        info = report_info(
            trainer.model,
            trainer.cfg,
            iterations=trainer.iteration,
            checkpoint="last",
            train_seconds=trainer.elapsed,
            grid=trainer.dataset.shape,
            real=what,
            n_real=len(indices),
        )
        path = write_report(trainer.run_dir, rows, info)
        trainer.log(format_table(rows))
        trainer.log("\n".join(verdict_lines(rows)))
        trainer.log(f"report: {path}")
