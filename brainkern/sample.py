"""``python -m brainkern.sample RUN_DIR --n N``: write generated volumes as NIfTI, with a labels table.

Volumes are written on the run's training grid with its affine (the output grid
of the data set the model was trained on), so they overlay on the preprocessed
inputs in any viewer. Latents come from ``--seed``; generation runs in batches.

A class-conditional model (Zhuang et al. 2019's ICW-GAN, CVAE, GMM) needs to be
told which classes to generate, and refuses to guess:

- ``--per-class``: ``--n`` volumes of every class the run trained on;
- ``--labels visual,motor``: the class of each of the ``--n`` volumes in turn
  (cycling), by class name or by index.

Class names are the run's (``run.json``'s ``data.classes``, else ``split.json``'s
``classes``, else the indices). Files are ``sample_#####_<class>.nii.gz`` for a
conditional model and ``sample_#####.nii.gz`` otherwise; beside them
``labels.csv`` (``path``, ``label``, ``subject`` = ``synthetic-#####``) reads back
with :meth:`brainkern.data.VolumeDataset.from_table`, so synthetic volumes can
join a real data set. An unconditional model's volumes are labelled with the
run's one trained class when it trained on one, else ``generated``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from brainkern._cli import positive_int

# The label of an unconditional model's volumes when the run trained on several classes.
UNCONDITIONAL_LABEL = "generated"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainkern.sample",
        description="Sample volumes from a trained run and write them as NIfTI (.nii.gz) with a "
        "labels table (labels.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run directory written by python -m brainkern.train")
    parser.add_argument(
        "--n", type=positive_int, required=True, help="number of volumes (per class with --per-class)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--per-class",
        action="store_true",
        help="conditional models: --n volumes of every class the run trained on",
    )
    which.add_argument(
        "--labels",
        help="conditional models: comma-separated class names or indices, the class of each "
        "volume in turn (cycling)",
    )
    parser.add_argument("--out", help="output folder (default: RUN_DIR/generated)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="volumes per generator call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent vectors")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run_classes(run_dir: str | Path, num_classes: int) -> list[str]:
    """The names of a run's classes, in label order (label ``k`` is ``names[k]``).

    From ``run.json`` (``data.classes``: every class of the data set, which is what
    a conditional model's labels index), else ``split.json`` (``classes``, when it is
    not ``null``), else ``"0" .. "num_classes - 1"``. A list of another length than
    ``num_classes`` is passed over.
    """
    run_dir = Path(run_dir)
    candidates: list[Any] = []
    for name, keys in (("run.json", ("data", "classes")), ("split.json", ("classes",))):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            value: Any = json.loads(path.read_text())
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
        except ValueError:
            continue
        candidates.append(value)
    for value in candidates:
        if isinstance(value, list) and len(value) == num_classes:
            return [str(v) for v in value]
    return [str(k) for k in range(num_classes)]


def parse_labels(spec: str | Sequence[str | int], classes: Sequence[str]) -> list[int]:
    """Class indices from names or indices: ``"visual,motor"``, ``"0,2"`` or a list of them.

    A token that is a class name means that class (even when it looks like a
    number); otherwise an integer means that index.

    Raises:
        ValueError: an empty list, or a token that is neither a class name nor an
            index in ``0 .. len(classes) - 1`` (the message lists the classes).
    """
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t.strip() if isinstance(t, str) else t for t in tokens]
    if not tokens or any(t == "" for t in tokens):
        raise ValueError(f"labels: give class names or indices separated by commas, got {spec!r}")
    index = {name: k for k, name in enumerate(classes)}
    out = []
    for token in tokens:
        if isinstance(token, str) and token in index:
            out.append(index[token])
            continue
        try:
            k = int(token)
        except (TypeError, ValueError):
            k = -1
        if not 0 <= k < len(classes):
            listed = ", ".join(f"{i}={name}" for i, name in enumerate(classes))
            raise ValueError(f"labels: unknown class {token!r}; the run's classes are {listed}")
        out.append(k)
    return out


def sample_run(
    run_dir: str | Path,
    n: int,
    out: str | Path | None = None,
    *,
    labels: str | Sequence[str | int] | None = None,
    per_class: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    checkpoint: str = "last",
    device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write sampled volumes of a run into ``out`` with a labels table ``out/labels.csv``.

    Args:
        run_dir: a run directory written by ``python -m brainkern.train``.
        n: volumes in all, or per class with ``per_class``.
        out: output folder (default ``run_dir/generated``).
        labels: conditional models: class names or indices (a comma-separated string
            or a list), the class of each of the ``n`` volumes in turn (cycling).
        per_class: conditional models: ``n`` volumes of each class the run trained
            on (``data.classes``, else all), class after class.
        batch_size: volumes per generator call (the latents of each batch are drawn
            in turn from one generator seeded with ``seed``).
        seed, checkpoint, device: see the command line.

    Returns:
        The paths of the volumes, in order; each is ``(D, H, W)`` float32 on the run's grid.

    Raises:
        FileNotFoundError: not a run directory, or no such checkpoint.
        ValueError: a conditional model with neither ``labels`` nor ``per_class``,
            both of them, an unconditional model with either, or unknown classes.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from brainkern.data import save_volume
    from brainkern.data.sources import Record, write_table
    from brainkern.train.engine import file_part, load_run

    if labels is not None and per_class:
        raise ValueError("give either labels or per_class, not both")
    model, cfg, ckpt = load_run(run_dir, checkpoint, device)
    trained = cfg.get("data", {}).get("classes")
    single = trained[0] if trained and len(trained) == 1 else UNCONDITIONAL_LABEL
    label_ids: list[int] | None = None
    if model.conditional:
        classes = run_classes(run_dir, model.num_classes)
        if per_class:
            wanted = parse_labels(list(trained), classes) if trained else list(range(model.num_classes))
            label_ids = [k for k in wanted for _ in range(n)]
        elif labels is not None:
            cycle = parse_labels(labels, classes)
            label_ids = [cycle[i % len(cycle)] for i in range(n)]
        else:
            raise ValueError(
                f"{model.name} is conditional ({model.num_classes} classes: {', '.join(classes)}): "
                "say which to generate with --per-class or --labels"
            )
    elif per_class or labels is not None:
        raise ValueError(
            f"{model.name} is unconditional: it takes no --per-class or --labels (it generates "
            "whatever it learned)"
        )
    total = n if label_ids is None else len(label_ids)
    affine = np.asarray(ckpt["affine"], dtype=np.float64)
    out = Path(out) if out is not None else Path(run_dir) / "generated"
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    paths: list[Path] = []
    records: list[Record] = []
    with torch.no_grad(), tqdm(total=total, unit="vol", disable=not progress, desc="sampling") as bar:
        for start in range(0, total, batch_size):
            b = min(batch_size, total - start)
            z = model.sample_latent(b, generator=gen, device=dev)
            if label_ids is None:
                volumes = model.generate(z).float().cpu()
                names = [single] * b
                stems = [f"sample_{start + i:05d}" for i in range(b)]
            else:
                part = torch.as_tensor(label_ids[start : start + b], dtype=torch.int64)
                volumes = model.generate(z, part.to(dev)).float().cpu()
                names = [classes[int(k)] for k in part]
                stems = [f"sample_{start + i:05d}_{file_part(c)}" for i, c in enumerate(names)]
            for i, (v, stem, name) in enumerate(zip(volumes, stems, names, strict=True)):
                path = save_volume(v[0].numpy(), affine, out / f"{stem}.nii.gz")
                paths.append(path)
                records.append(Record(path, name, f"synthetic-{start + i:05d}"))
            bar.update(b)
    write_table(records, out / "labels.csv")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = sample_run(
            args.run_dir,
            args.n,
            args.out,
            labels=args.labels,
            per_class=args.per_class,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint=args.checkpoint,
            device=args.device,
            progress=not args.quiet,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} volumes written to {paths[0].parent}, labels in {paths[0].parent / 'labels.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
