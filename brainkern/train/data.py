"""The training data of a run: the data set, its batches and their augmentation.

The embedded cohorts are simulated on first use into the cache folder (see
:func:`brainkern.train.config.cache_root`) and reused afterwards; preprocessed
volumes are cached too, so a second run starts at once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.train.config import cache_root


def cohort_table(data: dict[str, Any], *, progress: bool = True) -> Path:
    """The labels table of the embedded cohort ``data["cohort"]``, made if missing.

    The cohort is written to a temporary folder and renamed into place, so two runs
    starting together never see half a cohort.
    """
    from brainkern.data import cohorts

    kind = data["cohort"]
    shape = tuple(data.get("cohort_shape") or data["shape"])
    tag = f"{kind}-n{data['n_per_class']}-{'x'.join(map(str, shape))}-s{data['cohort_seed']}"
    if kind == "smri":
        tag += f"-e{float(data['effect']):g}"
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
        cohorts.smri(tmp, effect=float(data["effect"]), **kwargs)
    else:
        cohorts.fmri(tmp, **kwargs)
    try:
        os.rename(tmp, folder)
    except OSError:  # another run finished first: use its cohort
        shutil.rmtree(tmp, ignore_errors=True)
    return table


def load_dataset(data: dict[str, Any], *, progress: bool = True):
    """The :class:`~brainkern.data.VolumeDataset` a run trains on.

    Raises:
        FileNotFoundError: ``data.table`` does not exist.
        ValueError: ``data.classes`` names a class the data set lacks, or a side of
            ``data.shape`` is not divisible by 16 (checked by the model).
    """
    from brainkern.data import VolumeDataset

    if data["cohort"] is not None:
        source = cohort_table(data, progress=progress)
    else:
        source = Path(data["table"]).expanduser()
        if not source.exists():
            raise FileNotFoundError(f"data.table: no file or folder at {source}")
    cache = Path(data["cache_dir"]).expanduser() if data.get("cache_dir") else cache_root() / "datasets"
    settings = dict(
        shape=tuple(data["shape"]),
        clip=tuple(data["clip"]) if data.get("clip") else None,
        trim=bool(data["trim"]),
        cache_dir=cache,
        progress=progress,
    )
    if source.is_dir():
        return VolumeDataset.from_folder(source, **settings)
    return VolumeDataset.from_table(source, **settings)


def training_indices(dataset, classes: list[str] | None) -> np.ndarray:
    """Indices of the volumes of ``classes`` (all when ``None``)."""
    if classes is None:
        return np.arange(len(dataset))
    unknown = sorted(set(classes) - set(dataset.classes))
    if unknown:
        raise ValueError(f"data.classes: {unknown} not in the data set's classes {dataset.classes}")
    keep = [dataset.classes.index(c) for c in classes]
    return np.flatnonzero(np.isin(dataset.labels, keep))


def real_volumes(dataset, indices: np.ndarray) -> torch.Tensor:
    """``(N, 1, D, H, W)`` float32 tensor of the given volumes of a data set (read in file order)."""
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

    Args:
        dataset: ``dataset[i]`` gives an item dict with at least ``image``.
        indices: which items to use.
        batch_size: ``B``.
        seed: seed of the generator.
        flip: mirror left-right with probability 1/2.
        intensity: ``(low, high)``: scale each volume's intensity above the
            background (-1) by a factor uniform in that range; ``None`` for off.
        device: where batches go.
    """

    def __init__(
        self,
        dataset,
        indices: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        flip: bool = True,
        intensity: tuple[float, float] | None = (0.9, 1.0),
        device: torch.device | str = "cpu",
    ) -> None:
        from brainkern.data.augment import RandomFlipLR, RandomIntensityScale

        if len(indices) < batch_size:
            raise ValueError(f"batch size {batch_size} exceeds the {len(indices)} training volumes")
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
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

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
