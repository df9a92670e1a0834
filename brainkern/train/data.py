"""The training data of a run: the data set, its batches and their augmentation.

The embedded cohorts are simulated on first use into the cache folder (see
:func:`brainkern.train.config.cache_root`) and reused afterwards; preprocessed
volumes are cached too, so a second run starts at once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.train.config import cache_root
from brainkern.train.distributed import local_batch


def cohort_table(data: dict[str, Any], *, progress: bool = True) -> Path:
    """The labels table of the embedded cohort ``data["cohort"]``, made if missing.

    The cohort is written to a temporary folder and renamed into place, so two runs
    starting together never see half a cohort.
    """
    from brainkern.data import cohorts

    kind = data["cohort"]
    shape = tuple(data.get("cohort_shape") or data["shape"])
    tag = f"{kind}-n{data['n_per_class']}-{'x'.join(map(str, shape))}-s{data['cohort_seed']}"
    sequences, lesions = _cohort_sequences(data), float(data.get("lesions") or 0.0)
    if kind == "smri":
        tag += f"-e{float(data['effect']):g}"
        # Cohorts of T1 alone without lesions keep the names they had before sequences existed.
        tag += ("-mr4" if sequences != ("t1",) else "") + (f"-l{lesions:g}" if lesions else "")
    else:  # cohorts made before these keys existed keep their names
        n_classes, noise = int(data.get("n_classes", 4)), float(data.get("noise", 1.0))
        tag += (f"-c{n_classes}" if n_classes != 4 else "") + (f"-z{noise:g}" if noise != 1.0 else "")
    folder = cache_root() / "cohorts" / tag
    table = folder / "labels.csv"
    if table.is_file():
        return table
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{tag}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = dict(
        n_per_class=int(data["n_per_class"]), shape=shape, seed=int(data["cohort_seed"]), progress=progress
    )
    if kind == "smri":
        cohorts.smri(tmp, effect=float(data["effect"]), sequences=sequences, lesions=lesions, **kwargs)
    else:
        cohorts.fmri(
            tmp, n_classes=int(data.get("n_classes", 4)), noise=float(data.get("noise", 1.0)), **kwargs
        )
    try:
        os.rename(tmp, folder)
    except OSError:  # another run finished first: use its cohort
        shutil.rmtree(tmp, ignore_errors=True)
    return table


def _cohort_sequences(data: dict[str, Any]) -> tuple[str, ...]:
    """The sequences the smri cohort is simulated with: T1 alone, or all four of Han et al.
    when a run asks for any other (one cohort folder then serves every choice of them).

    Raises:
        ValueError: sequences other than T1, or lesions, asked of a cohort other than smri.
    """
    wanted = tuple(data.get("sequences") or ("t1",))
    if data.get("cohort") != "smri" and (wanted != ("t1",) or float(data.get("lesions") or 0.0)):
        source = f"the {data['cohort']} cohort" if data.get("cohort") else "a labels table"
        raise ValueError(
            f"data.sequences={list(wanted)} / data.lesions={data.get('lesions')}: only the embedded smri "
            f"cohort simulates MR sequences and lesions; {source} gives one image per subject "
            "(leave data.sequences=[t1] and data.lesions=0)"
        )
    return ("t1",) if wanted == ("t1",) else ("t1", "t1c", "t2", "flair")


def sequence_tables(data: dict[str, Any], *, progress: bool = True) -> list[Path]:
    """One labels table per entry of ``data.sequences`` (same subjects, same order), the
    embedded cohort made first; a labels table or class folder is its own single sequence.

    Raises:
        FileNotFoundError: ``data.table`` does not exist.
        ValueError: several sequences asked of data that has one (see ``_cohort_sequences``).
    """
    _cohort_sequences(data)
    source = data_source(data, progress=progress)
    wanted = list(data.get("sequences") or ("t1",))
    if data["cohort"] != "smri" or wanted == ["t1"]:
        return [source]
    from brainkern.data import cohorts

    return [cohorts.sequence_table(source.parent, s) for s in wanted]


def data_source(data: dict[str, Any], *, progress: bool = True) -> Path:
    """The labels table or class folder a run reads (an embedded cohort is made first).

    Raises:
        FileNotFoundError: ``data.table`` does not exist.
    """
    if data["cohort"] is not None:
        return cohort_table(data, progress=progress)
    source = Path(data["table"]).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"data.table: no file or folder at {source}")
    return source


def read_records(source: Path):
    """The volumes (path, label, subject) of a labels table or a folder of class folders."""
    from brainkern.data.sources import read_table, scan_folder

    return scan_folder(source) if source.is_dir() else read_table(source)


def subject_ids(records) -> list[str]:
    """Each volume's subject, or its file name where the source names no subject."""
    return [r.subject if r.subject is not None else Path(r.path).name for r in records]


def make_split(records, data: dict[str, Any]) -> dict[str, Any] | None:
    """The run's train / held-out split of ``records``, or ``None`` to train on all.

    Either ``data.split_file`` (JSON ``{"train": [subject, ...], "test": [...]}``,
    optionally ``"val"``) or ``data.folds`` >= 2 with ``data.fold`` in
    ``0 .. folds - 1``: a stratified k-fold grouped by subject (scikit-learn's
    ``StratifiedGroupKFold`` through :func:`brainkern.data.stratified_kfold`,
    seeded by ``data.split_seed``) whose fold ``data.fold`` is held out. A subject's
    volumes never sit on both sides.

    Returns:
        ``{"method", "parts": {part: [volume indices]}, "subjects": {part: [ids]}, ...}``.

    Raises:
        ValueError: a fold out of range, too few subjects per class, a split file
            that names subjects the data lacks, puts one subject in two parts,
            or leaves the training part empty.
    """
    from brainkern.data.splits import stratified_kfold

    subjects = subject_ids(records)
    if data.get("split_file"):
        path = Path(data["split_file"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.split_file: no file at {path}")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"data.split_file {path} is not valid JSON: {exc}") from None
        spec = spec.get("subjects", spec) if isinstance(spec, dict) else spec
        if not isinstance(spec, dict) or "train" not in spec:
            raise ValueError(f"data.split_file {path}: expected {{'train': [...], 'test': [...]}}")
        known, owner = set(subjects), {}
        for part, ids in spec.items():
            missing = sorted(set(map(str, ids)) - known)
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise ValueError(
                    f"data.split_file {path}: part {part!r} names {len(missing)} subject(s) "
                    f"the data set lacks: {shown}"
                )
            for sid in map(str, ids):
                if owner.setdefault(sid, part) != part:
                    raise ValueError(
                        f"data.split_file {path}: subject {sid!r} is in both {owner[sid]!r} and {part!r}"
                    )
        parts = {part: [i for i, s in enumerate(subjects) if owner.get(s) == part] for part in spec}
        method = {"method": "file", "file": str(path.resolve())}
    elif data.get("folds"):
        folds, fold = int(data["folds"]), int(data["fold"])
        if not 0 <= fold < folds:
            raise ValueError(f"data.fold must lie in 0 .. {folds - 1} (data.folds={folds}), got {fold}")
        labels = [r.label for r in records]
        train, test = stratified_kfold(labels, folds, groups=subjects, seed=int(data["split_seed"]))[fold]
        parts = {"train": train.tolist(), "test": test.tolist()}
        method = {
            "method": "stratified-group-kfold",
            "folds": folds,
            "fold": fold,
            "seed": int(data["split_seed"]),
        }
    else:
        return None
    if not parts.get("train"):
        raise ValueError("the split leaves no training volume")
    return {
        **method,
        "parts": parts,
        "subjects": {part: sorted({subjects[i] for i in idx}) for part, idx in parts.items()},
    }


def is_2d(data: dict[str, Any]) -> bool:
    """Whether a run's ``data`` section makes it a 2D run: slices of brain volumes
    (``data.slices``, Han et al.) or a stimulus image domain (``data.images``, Seeliger et al.)."""
    return bool(data.get("slices") or data.get("images"))


def _image_run_data(data: dict[str, Any], *, progress: bool):
    """The split and :class:`~brainkern.data.stimuli.StimulusDataset` of a ``data.images`` run:
    the experiment's stimuli kept out (:meth:`StimulusDataset.split`), or with no stimuli
    reserved, ``data.folds`` / ``data.split_file`` over the images (each its own subject; for
    folds, the images of one source, a photograph's patches, count as one subject named after
    its first image, and the folds are not stratified).

    Raises:
        ValueError: ``data.images`` together with brain-data keys (slices, sequences, lesions),
            or reserved stimuli together with folds / a split file.
    """
    from collections import namedtuple

    from brainkern.data.stimuli import StimulusDataset

    if data.get("slices") or list(data.get("sequences") or ["t1"]) != ["t1"] or data.get("lesions"):
        raise ValueError(
            "data.images trains on a stimulus image domain: leave data.slices, data.sequences and "
            "data.lesions unset (they cut brain volumes)"
        )
    dataset = StimulusDataset(data["images"], progress=progress)
    if any(dataset.settings["stimuli"]):
        if data.get("folds") or data.get("split_file"):
            raise ValueError(
                "data.images.stimuli reserves the experiment's stimuli and holds its test stimuli out; "
                "leave data.folds and data.split_file unset (or set stimuli: [0, 0])"
            )
        return dataset.split(), dataset
    Record = namedtuple("Record", "path label subject")
    names, groups = dataset.subjects, dataset.stimuli.groups
    labels = [int(y) for y in dataset.labels]
    if data.get("folds") and not data.get("split_file") and len(np.unique(groups)) < len(groups):
        # Folds keep every image of one source (a photograph's overlapping patches) on one
        # side; the label is the source then, so the folds are not stratified.
        owner = {g: names[i] for i, g in reversed(list(enumerate(groups.tolist())))}
        subjects, labels = [owner[g] for g in groups.tolist()], [0] * len(names)
    else:
        subjects = list(names)
    records = [Record(n, y, s) for n, y, s in zip(names, labels, subjects, strict=True)]
    return make_split(records, data), dataset


def load_run_data(data: dict[str, Any], *, progress: bool = True):
    """The split (:func:`make_split`, ``None`` without one) and the
    :class:`~brainkern.data.VolumeDataset` a run trains on, from one read of the records.

    The split comes first: the quantities preprocessing fits from the data (trimming
    box, brain mask) come from its training part only.

    Raises:
        FileNotFoundError: ``data.table`` (or ``data.split_file``) does not exist.
        ValueError: a split that does not fit the data (see :func:`make_split`).
    """
    from brainkern.data import SliceDataset, VolumeDataset

    if data.get("images"):
        return _image_run_data(data, progress=progress)
    slices = data.get("slices")
    if slices is None and len(data.get("sequences") or ("t1",)) > 1:  # before any data is made
        raise ValueError(
            f"data.sequences={data['sequences']}: the 3D models take one sequence; stack several as "
            "channels of 2D slices (data.slices, Han et al.'s models) or pick one"
        )
    tables = sequence_tables(data, progress=progress)
    per_sequence = [read_records(t) for t in tables]
    records = per_sequence[0]
    split = make_split(records, data)
    cache = Path(data["cache_dir"]).expanduser() if data.get("cache_dir") else cache_root() / "datasets"
    datasets = [
        VolumeDataset(
            recs,
            shape=tuple(data["shape"]),
            scale=data.get("scale", "[-1,1]"),
            clip=tuple(data["clip"]) if data.get("clip") else None,
            trim=bool(data["trim"]),
            fit_on=None if split is None else split["parts"]["train"],
            cache_dir=cache,
            progress=progress,
        )
        for recs in per_sequence
    ]
    if slices is None:
        return split, datasets[0]
    # Every slice of every volume; the split stays one of volumes (subjects), and
    # training_indices / evaluation_indices turn it into slices.
    rng = tuple(slices["range"]) if slices.get("range") else None
    dataset = SliceDataset(
        datasets,
        slices.get("plane") or "sagittal",
        rng,
        central=None if rng else slices.get("central"),
        size=slices.get("size"),
        upright=True,
    )
    return split, dataset


def _items_of_volumes(dataset, volumes) -> np.ndarray:
    """The items of ``dataset`` cut from the 3D volumes ``volumes`` (a split part): the
    volumes themselves for a volume data set, their slices for a slice data set."""
    volumes = np.asarray(volumes, dtype=np.int64)
    if not hasattr(dataset, "volume_indices"):
        return volumes
    return np.flatnonzero(np.isin(dataset.volume_indices, volumes)).astype(np.int64)


def training_indices(dataset, classes: list[str] | None, split: dict[str, Any] | None = None) -> np.ndarray:
    """Indices of the items of ``classes`` (all when ``None``) in the split's training part: its
    volumes, or for a slice data set every slice of them (the split is one of volumes)."""
    keep = np.arange(len(dataset)) if split is None else _items_of_volumes(dataset, split["parts"]["train"])
    if classes is None:
        return keep
    unknown = sorted(set(classes) - set(dataset.classes))
    if unknown:
        raise ValueError(f"data.classes: {unknown} not in the data set's classes {dataset.classes}")
    wanted = [dataset.classes.index(c) for c in classes]
    return keep[np.isin(dataset.labels[keep], wanted)]


def evaluation_indices(
    dataset, classes: list[str] | None, split: dict[str, Any] | None
) -> tuple[np.ndarray, str]:
    """The real volumes a run's samples are compared with, and a line saying which.

    The split's held-out part (``test``, else ``val``) restricted to ``classes``
    when the run has one; else the training volumes (then the figures say how
    close samples are to what the generator saw, not to new subjects).
    """
    for part in ("test", "val"):
        held_out = (split or {}).get("parts", {}).get(part)
        if held_out:
            # training_indices applies data.classes to whichever part it is given.
            idx = training_indices(dataset, classes, {"parts": {"train": held_out}})
            if len(idx):
                return idx, f"held-out {part} {_what(dataset, idx)}, subjects not trained on)"
    idx = training_indices(dataset, classes, split)
    return idx, f"training {_what(dataset, idx)}; the run has no held-out part)"


def _what(dataset, idx: np.ndarray) -> str:
    """``"volumes (12"`` or, for a slice data set, ``"slices (384 of 12 volumes"``."""
    if hasattr(dataset, "volume_indices"):
        return f"slices ({len(idx)} of {len(np.unique(dataset.volume_indices[idx]))} volumes"
    return f"{getattr(dataset, 'item_noun', 'volumes')} ({len(idx)}"


def real_volumes(dataset, indices: np.ndarray) -> torch.Tensor:
    """``(N, 1, D, H, W)`` float32 tensor of the given volumes of a data set (read in file order);
    for a slice or stimulus data set ``(N, C, S, S)``, its images in index order."""
    if not hasattr(dataset, "volumes"):
        order = np.sort(np.asarray(indices, dtype=np.int64))
        if not len(order):
            return torch.empty(0, dataset.channels, *dataset.shape)
        return torch.stack([dataset[int(i)]["image"] for i in order])
    return torch.from_numpy(np.asarray(dataset.volumes[np.sort(indices)], dtype=np.float32)).unsqueeze(1)


class Batches:
    """Shuffled mini-batches of whole epochs, with Kwon et al.'s augmentation.

    Volumes are drawn without replacement within an epoch; a new permutation starts
    each epoch (a last short batch is dropped). Items are read through the data
    set's own interface (``dataset[i]``, so a ``dataset.transform`` applies) and
    collated into a batch dict: ``image`` ``(B, 1, D, H, W)`` float32, ``label``
    ``(B,)`` int64 and ``index`` ``(B,)`` int64, plus any other tensor or number
    an item carries. All randomness comes from one CPU ``torch.Generator`` whose
    state, with the epoch's permutation and position, is part of
    :meth:`state_dict`, so a resumed run sees the same batches.

    On several processes (``torchrun``) ``batch_size`` is the global batch: every
    process draws the same permutation and augmentation for all ``B`` volumes and
    keeps its contiguous slice of ``B / world_size`` (rank 0 the first), so the
    processes together see what one process would, in the same order, and the
    state is the same on all of them (a run resumes on any number of processes).

    Args:
        dataset: ``dataset[i]`` gives an item dict with at least ``image``.
        indices: which items to use.
        batch_size: ``B``, the global batch.
        seed: seed of the generator.
        flip: mirror left-right with probability 1/2.
        intensity: ``(low, high)``: scale each volume's intensity above the
            background (-1) by a factor uniform in that range; ``None`` for off.
        device: where batches go.
        rank, world_size: this process and the number of processes.
        dtype: the dtype of ``image`` (default: as read, float32).

    Raises:
        ValueError: fewer volumes than ``B``, ``B`` not a multiple of
            ``world_size``, or a rank outside ``0 .. world_size - 1``.
    """

    def __init__(
        self,
        dataset,
        indices: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        flip: bool = True,
        intensity: tuple[float, float] | None = (0.7, 1.0),
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype | None = None,
    ) -> None:
        from brainkern.data.augment import RandomFlipLR, RandomIntensityScale

        if len(indices) < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {len(indices)} training volumes")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in 0 .. world_size - 1 (world_size={world_size})")
        self.local_batch = local_batch(batch_size, world_size)
        self.rank, self.world_size, self.dtype = int(rank), int(world_size), dtype
        self.dataset = dataset
        self.indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.flip = RandomFlipLR(p=0.5) if flip else None
        self.intensity = RandomIntensityScale(*intensity) if intensity else None
        self.order = torch.empty(0, dtype=torch.int64)
        self.position = 0
        self.epoch = -1

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
            self.position = 0
            self.epoch += 1
        idx = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        batch = collate([self.dataset[int(i)] for i in idx])
        x = batch["image"]
        if self.flip is not None:
            x = self.flip(x, self.generator)
        if self.intensity is not None:
            # Scale the signal above the background of [-1, 1] data, not the background.
            x = self.intensity(x + 1.0, self.generator) - 1.0
        batch["image"] = x
        # Every process augments the whole global batch (the generator advances alike
        # everywhere) and keeps its slice.
        part = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        batch = {k: v[part].to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.dtype is not None:
            batch["image"] = batch["image"].to(self.dtype)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Item dicts to a batch dict: tensors stacked, numbers to a 1-D tensor; other
    values (subject names, paths) are left out of the batch.

    Raises:
        ValueError: no items, or items without an ``image``.
    """
    if not items or any("image" not in it for it in items):
        raise ValueError("collate: needs one or more items, each with an 'image'")
    out: dict[str, torch.Tensor] = {}
    for key, first in items[0].items():
        values = [it[key] for it in items]
        if isinstance(first, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(first, bool | int | float | np.integer | np.floating):
            out[key] = torch.as_tensor(np.asarray(values))
    return out
