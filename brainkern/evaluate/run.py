"""Evaluation and pictures of a training run (Kwon et al.'s Table 1, seed 001).

:func:`evaluate_model` compares a trained generator with the real training
volumes and with two baselines it must beat: the same architecture untrained
(its initial weights) and Gaussian noise volumes matched to the real volumes'
mean and standard deviation. :class:`RunReport` plugs into the training engine:
tri-planar mosaics (real next to generated) and loss curves at each check, and
at the end the evaluation table (``evaluation.json``, ``report.md``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.evaluate.generation import format_table, generation_table, matched_noise
from brainkern.train.data import real_volumes
from brainkern.train.engine import Callback, Trainer, build_run_model


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


def write_report(run_dir: str | os.PathLike, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """``evaluation.json`` and ``report.md`` in ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    (run_dir / "evaluation.json").write_text(
        json.dumps({**info, "rows": rows}, indent=2, default=float) + "\n"
    )
    lines = [f"# brainkern run: {info.get('model', '')}", ""]
    for key in ("preset", "iterations", "checkpoint", "train_seconds", "grid", "n_real", "n_generated"):
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
        info = {
            "model": trainer.model.name,
            "preset": trainer.cfg.get("preset"),
            "iterations": trainer.iteration,
            "checkpoint": "last",
            "train_seconds": round(trainer.elapsed, 1),
            "grid": list(trainer.dataset.shape),
            "n_real": int(len(trainer.indices)),
            "n_generated": int(trainer.cfg["evaluate"]["n_generated"]),
        }
        if not self.evaluate:
            return
        trainer.log("evaluating (Kwon et al. Table 1) ...")
        real = real_volumes(trainer.dataset, trainer.indices)
        rows = evaluate_model(trainer.model, real, trainer.cfg, device=trainer.device, progress=self.progress)
        path = write_report(trainer.run_dir, rows, info)
        trainer.log(format_table(rows))
        trainer.log(f"report: {path}")
