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

from brainkern.evaluate.generation import format_table, generation_table, matched_noise
from brainkern.train.data import evaluation_indices, load_run_data, real_volumes
from brainkern.train.engine import Callback, Trainer, build_run_model, load_run


def evaluate_model(
    model,
    real: torch.Tensor,
    cfg: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Kwon et al.'s Table 1 for ``model`` against ``real`` volumes, with baselines.

    Rows: ``trained`` (``model``), ``untrained`` (the same configuration's initial
    weights), ``noise`` (matched Gaussian noise) and ``real`` (MS-SSIM of real pairs).
    Generated volumes come from ``cfg["seed"]``-seeded latents, so a rerun gives
    the same table.

    Args:
        model: a :class:`~brainkern.models.GenerativeModel`.
        real: ``(N, 1, D, H, W)`` real volumes (N >= ``evaluate.mmd_batch``).
        cfg: the run's configuration (``evaluate`` section and ``seed``).
    """
    ecfg = cfg["evaluate"]
    n = int(ecfg["n_generated"])
    batch = int(cfg["train"]["batch_size"])
    seed = int(cfg["seed"])
    trained = model.sample(
        n, generator=torch.Generator().manual_seed(seed + 2), batch_size=batch, device=device
    )
    untrained_model = build_run_model(cfg, torch.device(device))
    untrained = untrained_model.sample(
        n, generator=torch.Generator().manual_seed(seed + 2), batch_size=batch, device=device
    )
    del untrained_model
    noise = matched_noise(real, n, seed=seed + 3)
    return generation_table(
        real,
        {"trained": trained, "untrained": untrained, "noise (matched)": noise},
        n_tests=int(ecfg["mmd_tests"]),
        batch_size=int(ecfg["mmd_batch"]),
        n_pairs=int(ecfg["ms_ssim_pairs"]),
        data_range=2.0,
        low=-1.0,
        seed=seed,
        progress=progress,
    )


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str = "last",
    device: str = "auto",
    n_generated: int | None = None,
    mmd_tests: int | None = None,
    ms_ssim_pairs: int | None = None,
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
        n_generated, mmd_tests, ms_ssim_pairs: override the run's ``evaluate``
            section (``None`` keeps it).

    Returns:
        ``(rows, report_path)``: the table's rows and the path of ``report.md``.

    Raises:
        FileNotFoundError: not a run directory, no such checkpoint, or the run's
            data table is gone.
        ValueError, RuntimeError: the run's configuration or data no longer fit.
    """
    model, cfg, ckpt = load_run(run_dir, checkpoint, device)
    for key, value in (
        ("n_generated", n_generated),
        ("mmd_tests", mmd_tests),
        ("ms_ssim_pairs", ms_ssim_pairs),
    ):
        if value is not None:
            cfg["evaluate"][key] = int(value)
    # The data as the run's Trainer saw it: the same split (preprocessing fitted on
    # its training part) and the same real volumes to compare with.
    split, dataset = load_run_data(cfg["data"], progress=progress)
    indices, what = evaluation_indices(dataset, cfg["data"]["classes"], split)
    real = real_volumes(dataset, indices)
    device = next(model.parameters()).device  # where load_run put it ("auto" resolved)
    rows = evaluate_model(model, real, cfg, device=device, progress=progress)
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
    lines += [
        "",
        "## Kwon et al. (2019) Table 1 for this run",
        "",
        "Batch MMD^2: linear kernel, biased, mean over tests of B real vs B generated volumes (lower is",
        "closer to the real distribution). MS-SSIM: mean over random pairs of generated volumes (lower is",
        "more diverse; compare with the real pairs).",
        "",
        format_table(rows),
        "",
        "## Pictures",
        "",
    ]
    pictures = sorted((run_dir / "pictures").glob("*.png")) if (run_dir / "pictures").is_dir() else []
    lines += [f"![{p.stem}](pictures/{p.name})" for p in pictures[-2:]] or ["(none)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


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

    def on_check(self, trainer: Trainer, it: int) -> None:
        from brainkern.evaluate.pictures import loss_curves, triplanar_mosaic

        pictures = trainer.run_dir / "pictures"
        gen = torch.Generator().manual_seed(trainer.cfg["seed"] + 4)
        fake = trainer.model.sample(len(self.real), generator=gen, batch_size=8, device=trainer.device)
        triplanar_mosaic(
            {"real": self.real[:, 0].numpy(), f"generated (iter {it})": fake[:, 0].numpy()},
            pictures / f"samples_{it:07d}.png",
            n_per_row=len(self.real),
            title=f"{trainer.model.name}, iteration {it}",
        )
        loss_curves(trainer.metrics_path, pictures / "losses.png")

    def on_end(self, trainer: Trainer) -> None:
        if not self.evaluate:
            return
        indices, what = trainer.evaluation_indices()
        trainer.log(f"evaluating (Kwon et al. Table 1) against {what} ...")
        real = real_volumes(trainer.dataset, indices)
        rows = evaluate_model(trainer.model, real, trainer.cfg, device=trainer.device, progress=self.progress)
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
        trainer.log(f"report: {path}")
