"""Han et al.'s (2018, seed 002) 2D slice models: pictures during training and the machine
observer at the end of a run.

A 2D run (``data.slices`` set; models ``dcgan2d``, ``wgan2d``) trains on sagittal slices of
one or several MR sequences stacked as channels. Han et al. judge their synthetic slices by
a Visual Turing Test (``python -m brainkern.evaluate turing RUN_DIR``); a run's own report
gives the machine observer beside it: the classifier two-sample test
(:func:`brainkern.evaluate.c2st`) of held-out real slices against

- the model's samples,
- trivial generators fitted on the training slices only (the mean training image, a
  per-pixel Gaussian), which a model must beat to count as better than nothing,
- training slices (real against real: the test's own level where nothing differs, about
  50%),

each with its exact 95% interval and permutation p-value, and the unbiased RBF MMD^2 of the
same sets. Real slices of one subject are kept in one cross-validation fold, so the test
cannot tell sets apart by recognising a subject it saw in training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.experiment.kwon import RunReport, intensity_range
from brainkern.train.data import real_volumes
from brainkern.train.engine import Trainer

__all__ = ["SliceReport", "evaluate_slice_run", "evaluate_slices", "format_slice_table", "write_slice_report"]

# What each row of the table is, in order.
ROWS = ("model", "mean training image", "pixel Gaussian", "training slices (real vs real)")


def _as_volumes(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, S, S)`` images as ``(N, 1, C, S, S)`` "volumes" for the 3D baselines and
    MMD helpers (which treat any trailing grid alike)."""
    return x.unsqueeze(1)


def _groups(subjects: list[str], n_other: int, tag: str) -> np.ndarray:
    """Group labels: the real images' subjects, then one group per other image."""
    return np.asarray([*subjects, *(f"{tag}{i}" for i in range(n_other))], dtype=object)


def evaluate_slices(
    model,
    real: torch.Tensor,
    real_subjects: list[str],
    train: torch.Tensor,
    train_subjects: list[str],
    *,
    n_generated: int = 512,
    permutations: int = 20,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """The machine observer's table for a 2D model (see the module docstring).

    Args:
        model: a trained 2D :class:`~brainkern.models.GenerativeModel` (unconditional).
        real: ``(N, C, S, S)`` held-out real slices, ``real_subjects`` their subjects.
        train: ``(M, C, S, S)`` training slices (the baselines are fitted on these only),
            ``train_subjects`` their subjects.
        n_generated: images per compared set (capped by the real count so both sides match).
        permutations: permutation count of each test's p-value (20: the smallest p is
            1/21 < 0.05; each permutation refits the cross-validation, about half a
            minute per row at 512 images a side of 4 x 64 x 64 on a 2-core CPU).
        seed: seeds sampling, baselines and the tests.
        device: where the model samples.

    Returns:
        One dict per row of :data:`ROWS`: ``source``, ``accuracy``, ``ci`` (low, high),
        ``p_value``, ``fold_accuracies``, ``n_real``, ``n_other``, ``mmd2`` (RBF), ``mmd2_std``.

    Raises:
        ValueError: fewer than 2 images on a side, or shapes that differ.
    """
    from brainkern.evaluate.baselines import mean_volume, voxel_gaussian
    from brainkern.evaluate.c2st import c2st
    from brainkern.evaluate.distribution import kernel_mmd2, rbf_bandwidths

    if real.shape[1:] != train.shape[1:]:
        raise ValueError(f"real slices {tuple(real.shape)} and training slices {tuple(train.shape)} differ")
    n = min(int(n_generated), real.shape[0])
    if n < 2 or train.shape[0] < 2:
        raise ValueError(
            f"need at least 2 real and 2 training slices, got {real.shape[0]} and {train.shape[0]}"
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(real.shape[0], size=n, replace=False))
    real, real_subjects = real[pick], [real_subjects[i] for i in pick]
    gen = torch.Generator().manual_seed(seed)
    fake = model.sample(n, generator=gen, batch_size=64, device=device)
    copies = rng.choice(train.shape[0], size=n, replace=train.shape[0] < n)
    sets = {
        ROWS[0]: (fake, None),
        ROWS[1]: (mean_volume(_as_volumes(train), n)[:, 0], None),
        ROWS[2]: (voxel_gaussian(_as_volumes(train), n, seed=seed)[:, 0], None),
        ROWS[3]: (train[copies], [train_subjects[i] for i in copies]),
    }
    bandwidths = rbf_bandwidths(_as_volumes(real), seed=seed)
    rows = []
    for name, (images, subjects) in sets.items():
        if subjects is None:
            groups = _groups(real_subjects, n, "synthetic-")
        else:  # real against real: every subject one group, whichever side it is on
            groups = np.asarray([*real_subjects, *subjects], dtype=object)
        test = c2st(
            real, images, spatial=2, groups=groups, permutations=permutations, quadratic=True, seed=seed
        )
        mmd = kernel_mmd2(_as_volumes(real), _as_volumes(images), bandwidths=bandwidths, seed=seed)
        rows.append(
            {
                "source": name,
                "accuracy": test.accuracy,
                "ci": [test.ci_low, test.ci_high],
                "p_value": test.p_value,
                "fold_accuracies": list(test.fold_accuracies),
                "n_real": int(real.shape[0]),
                "n_other": int(images.shape[0]),
                "mmd2": mmd["mmd2"],
                "mmd2_std": mmd["mmd2_std"],
            }
        )
    return rows


def format_slice_table(rows: list[dict[str, Any]]) -> str:
    """The machine observer's table as Markdown."""
    lines = [
        "| compared with held-out real slices | C2ST accuracy | 95% CI | permutation p | RBF MMD^2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {100 * r['accuracy']:.1f}% | {100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f}% "
            f"| {r['p_value']:.3g} | {r['mmd2']:.4f} ± {r['mmd2_std']:.4f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: does the model beat the trivial generators, and how far is it from
    the real-vs-real level?"""
    by = {r["source"]: r for r in rows}
    model, floor = by[ROWS[0]], by[ROWS[3]]
    trivial = [by[ROWS[1]], by[ROWS[2]]]
    beats = all(model["accuracy"] < t["accuracy"] for t in trivial)
    lines = [
        "- The classifier tells the model's slices from held-out real ones with "
        f"{100 * model['accuracy']:.1f}% accuracy (95% CI {100 * model['ci'][0]:.1f}-"
        f"{100 * model['ci'][1]:.1f}%); real against real it scores {100 * floor['accuracy']:.1f}%, "
        "the level at which nothing differs.",
        "- "
        + (
            "Lower than both trivial generators (the mean image, a per-pixel Gaussian): better than nothing."
            if beats
            else "Not lower than every trivial generator: on this test the model is no better than one."
        ),
        "- Han et al. report physicians' accuracies of 53-77% on their synthetic slices (Table 1), "
        "i.e. often near chance; a machine observer is usually sharper than a person, so a model "
        "can fail this test and still pass the Visual Turing Test (python -m brainkern.evaluate turing).",
    ]
    return lines


def write_slice_report(run_dir: str | os.PathLike, rows: list[dict[str, Any]], info: dict[str, Any]) -> Path:
    """``evaluation.json`` and ``report.md`` of a 2D run; returns the report's path."""
    run_dir = Path(run_dir)
    (run_dir / "evaluation.json").write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    lines = [f"# brainkern run: {info.get('model', '')} (2D slices)", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in info.items() if k != "model"]
    lines += [
        "",
        "## The machine observer: classifier two-sample tests against held-out real slices",
        "",
        "Cross-validated logistic regression on PCA of pooled pixels (brainkern.evaluate.c2st), real",
        "slices of a subject kept in one fold; 50% = the classifier cannot tell the sets apart.",
        "",
        format_slice_table(rows),
        "",
        *verdict(rows),
        "",
        "## Pictures",
        "",
    ]
    pictures = sorted((run_dir / "pictures").glob("*.png")) if (run_dir / "pictures").is_dir() else []
    lines += [f"![{p.stem}](pictures/{p.name})" for p in pictures[-2:]] or ["(none)"]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _subjects(dataset, indices: np.ndarray) -> list[str]:
    """The subject of each item ``indices`` (sorted); a stimulus image is its own subject."""
    if not hasattr(dataset, "volume_indices"):
        return [str(dataset.subjects[i]) for i in np.sort(indices)]
    volumes = dataset.volume_indices[np.sort(indices)]
    subjects = dataset.subjects
    return [str(subjects[v]) if subjects[v] is not None else str(dataset.paths[v]) for v in volumes]


class SliceReport(RunReport):
    """Pictures at every check and the machine observer at the end of a 2D run (the real
    images shown come from :meth:`RunReport.on_start`, which reads slices as it reads volumes).

    Args:
        evaluate: compute the table at the end.
        progress: kept to match :class:`RunReport` (the table takes seconds).
        permutations: permutation count of each two-sample test's p-value.
    """

    def __init__(self, evaluate: bool = True, progress: bool = True, permutations: int = 20) -> None:
        super().__init__(evaluate, progress)
        self.permutations = int(permutations)

    def on_check(self, trainer: Trainer, it: int) -> None:
        from brainkern.evaluate.pictures import loss_curves, slice_grid

        gen = torch.Generator().manual_seed(trainer.cfg["seed"] + 4)
        fake = trainer.model.sample(len(self.real), generator=gen, batch_size=16, device=trainer.device)
        low, high = intensity_range(trainer.cfg)
        slice_grid(
            {"real": self.real, "generated": fake},
            trainer.run_dir / "pictures" / f"samples_{it:07d}.png",
            channel_names=None
            if trainer.cfg["data"].get("images")
            else [s.upper() for s in trainer.cfg["data"]["sequences"]],
            n_per_row=len(self.real),
            title=f"{trainer.model.name}, iteration {it}",
            vmin=low,
            vmax=high,
        )
        loss_curves(trainer.metrics_path, trainer.run_dir / "pictures" / "losses.png")

    def on_end(self, trainer: Trainer) -> None:
        if not self.evaluate:
            return
        indices, what = trainer.evaluation_indices()
        trainer.log(f"evaluating (classifier two-sample tests and baselines) against {what} ...")
        rows, info = _observe(
            trainer.model,
            trainer.cfg,
            trainer.dataset,
            indices,
            trainer.indices,
            what,
            permutations=self.permutations,
            iterations=trainer.iteration,
            train_seconds=trainer.elapsed,
            device=trainer.device,
        )
        path = write_slice_report(trainer.run_dir, rows, info)
        trainer.log(format_slice_table(rows))
        trainer.log("\n".join(verdict(rows)))
        trainer.log(f"report: {path}")


def _observe(
    model, cfg, dataset, indices, trained_on, what: str, *, permutations, iterations, train_seconds, device
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The machine observer's rows for a 2D run's data, and the report's facts."""
    rows = evaluate_slices(
        model,
        real_volumes(dataset, indices),
        _subjects(dataset, indices),
        real_volumes(dataset, trained_on),
        _subjects(dataset, trained_on),
        n_generated=int(cfg["evaluate"]["n_generated"]),
        permutations=permutations,
        seed=int(cfg["seed"]),
        device=device,
    )
    info = {
        "model": model.name,
        "preset": cfg.get("preset"),
        "iterations": int(iterations),
        "train_seconds": round(float(train_seconds), 1),
        "images": _describe_images(cfg["data"], dataset),
        "real": what,
    }
    return rows, info


def _describe_images(data: dict[str, Any], dataset) -> str:
    if data.get("images"):
        return f"stimulus domain {data['images']['domain']!r}, grey images {list(dataset.shape)}"
    return f"{data['slices']['plane']} slices {list(dataset.shape)}, sequences {', '.join(data['sequences'])}"


def evaluate_slice_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str = "last",
    device: str = "auto",
    n_generated: int | None = None,
    permutations: int = 20,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Path]:
    """The machine observer's table for the 2D run in ``run_dir``, written beside it
    (``evaluation.json``, ``report.md``): what :class:`SliceReport` computes at the end of a
    run, again from a checkpoint.

    Returns:
        ``(rows, report_path)``.

    Raises:
        FileNotFoundError: not a run directory, or no such checkpoint.
        ValueError: the run is not a 2D one (``data.slices`` unset).
    """
    from brainkern.train.config import DEFAULTS
    from brainkern.train.data import evaluation_indices, is_2d, load_run_data, training_indices
    from brainkern.train.engine import load_run

    model, cfg, ckpt = load_run(run_dir, checkpoint, device)
    if not is_2d(cfg["data"]):
        raise ValueError(f"{run_dir} is a 3D run (data.slices unset): use Kwon et al.'s table")
    cfg["evaluate"] = {**DEFAULTS["evaluate"], **cfg["evaluate"]}
    if n_generated is not None:
        cfg["evaluate"]["n_generated"] = int(n_generated)
    split, dataset = load_run_data(cfg["data"], progress=progress)
    indices, what = evaluation_indices(dataset, cfg["data"]["classes"], split)
    trained_on = training_indices(dataset, cfg["data"]["classes"], split)
    rows, info = _observe(
        model,
        cfg,
        dataset,
        indices,
        trained_on,
        what,
        permutations=permutations,
        iterations=int(ckpt["iter"]),
        train_seconds=float(ckpt.get("elapsed", 0.0)),
        device=next(model.parameters()).device,
    )
    info["checkpoint"] = checkpoint
    return rows, write_slice_report(run_dir, rows, info)
