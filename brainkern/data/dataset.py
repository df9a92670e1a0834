"""``VolumeDataset``: labelled NIfTI volumes preprocessed onto one training grid.

``ds[i]`` is an item dict: ``{"image": tensor (1, D, H, W) float32, "label": int,
"index": i}`` (then whatever ``ds.transform`` makes of it). The preprocessed
volumes live in one ``(N, D, H, W)`` float32 array, memory-mapped from the cache
when ``cache_dir`` is given (a second construction with the same files and
settings reads no NIfTI file at all).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from brainkern.data import cache as _cache
from brainkern.data.io import load_volume, save_volume
from brainkern.data.preprocess import (
    Preprocess,
    clip_scale,
    crop_affine,
    foreground_bbox,
    reorient_ras,
    resample_to,
    resize_affine,
    resize_volume,
    same_grid,
)
from brainkern.data.sources import Record, read_table, scan_bids, scan_folder, scan_neurovault

_FG_TOL = 1e-6


class VolumeDataset(Dataset):
    """Labelled 3D volumes, preprocessed and (optionally) cached.

    Args:
        records: the volumes (see :mod:`brainkern.data.sources`).
        preprocess: the settings; or give them as keywords (``shape=``, ``scale=``,
            ``clip=``, ``trim=``, ``reorient=``, ``resample=``, ``antialias=``,
            ``mask=``, ``mask_fraction=``, ``nan_policy=``, ``index=``).
        cache_dir: folder for the memory-mapped cache; ``None`` keeps arrays in memory.
        progress: show a tqdm bar while preprocessing.
        transform: a callable applied to every item (``item -> item``), e.g. an
            augmentation; settable later as ``ds.transform``.
        memory_budget: bytes of native-grid volumes kept in memory between the
            trimming pass and the output pass; above it volumes are read twice.

    Attributes:
        classes: sorted class names; ``labels[i]`` indexes into it.
        labels: ``(N,)`` int64 array.
        subjects: the subject of each volume (``None`` where unknown).
        paths: the input files.
        affine: ``(4, 4)`` affine of the output grid.
        mask: ``(D, H, W)`` bool brain mask, or ``None`` (``mask=None``).
        config: the resolved preprocessing settings (a JSON-able dict).
        volumes: ``(N, D, H, W)`` float32 array (memory-mapped when cached).

    Raises:
        ValueError: no records, unreadable volumes (see :func:`load_volume`), grids
            that differ with ``resample=False``.
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        preprocess: Preprocess | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        memory_budget: int = 2 << 30,
        **settings: Any,
    ) -> None:
        records = list(records)
        self.transform = transform
        if not records:
            raise ValueError("VolumeDataset needs at least one volume")
        if preprocess is not None and settings:
            raise TypeError("give either preprocess= or preprocessing keywords, not both")
        self.preprocess = preprocess if preprocess is not None else Preprocess(**settings)
        self.records = records
        self.paths = [Path(r.path) for r in records]
        self.classes = sorted({r.label for r in records})
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([index[r.label] for r in records], dtype=np.int64)
        self.subjects = [r.subject for r in records]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._progress = progress
        self._memory_budget = int(memory_budget)
        self.cache_hit = False
        if self.cache_dir is None:
            volumes, meta, mask = self._build(None)
            self._volumes_path = None
        else:
            volumes, meta, mask = self._cached()
        self._volumes = volumes
        self.mask = mask
        self.affine = np.asarray(meta["affine"], dtype=np.float64)
        self.background_values = np.asarray(meta["background_values"], dtype=np.float32)
        self.config = meta["config"]

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_table(
        cls,
        table: str | os.PathLike,
        *,
        shape: tuple[int, int, int] | None = None,
        scale: str | None = "[-1,1]",
        clip: tuple[float, float] | None = (0.01, 0.99),
        trim: bool = True,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> VolumeDataset:
        """From a CSV/TSV labels table (``path``, ``label``, optional ``subject``)."""
        return cls(
            read_table(table), shape=shape, scale=scale, clip=clip, trim=trim, cache_dir=cache_dir, **kwargs
        )

    @classmethod
    def from_folder(
        cls,
        root: str | os.PathLike,
        *,
        shape: tuple[int, int, int] | None = None,
        scale: str | None = "[-1,1]",
        clip: tuple[float, float] | None = (0.01, 0.99),
        trim: bool = True,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> VolumeDataset:
        """From a folder with one subfolder of NIfTI files per class."""
        return cls(
            scan_folder(root), shape=shape, scale=scale, clip=clip, trim=trim, cache_dir=cache_dir, **kwargs
        )

    @classmethod
    def from_bids(
        cls,
        root: str | os.PathLike,
        *,
        label_column: str,
        suffix: str = "T1w",
        missing: str = "raise",
        shape: tuple[int, int, int] | None = None,
        scale: str | None = "[-1,1]",
        clip: tuple[float, float] | None = (0.01, 0.99),
        trim: bool = True,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> VolumeDataset:
        """From a BIDS data set: ``participants.tsv[label_column]`` and ``sub-*/anat/*_T1w.nii[.gz]``."""
        records = scan_bids(root, label_column=label_column, suffix=suffix, missing=missing)
        return cls(records, shape=shape, scale=scale, clip=clip, trim=trim, cache_dir=cache_dir, **kwargs)

    @classmethod
    def from_neurovault(
        cls,
        folder: str | os.PathLike,
        *,
        label_field: str,
        subject_field: str | None = None,
        shape: tuple[int, int, int] | None = None,
        scale: str | None = "[-1,1]",
        clip: tuple[float, float] | None = (0.01, 0.99),
        trim: bool = True,
        cache_dir: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> VolumeDataset:
        """From a Neurovault download folder, labelled by a metadata field."""
        records = scan_neurovault(folder, label_field=label_field, subject_field=subject_field)
        return cls(records, shape=shape, scale=scale, clip=clip, trim=trim, cache_dir=cache_dir, **kwargs)

    @classmethod
    def from_memmap(
        cls,
        folder: str | os.PathLike,
        *,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> VolumeDataset:
        """The volumes ``python -m brainkern.sample --format memmap`` wrote, read in place.

        ``folder`` holds ``volumes.npy`` (``(N, D, H, W)`` float32), ``index.csv`` (``row``,
        ``label``, ``subject``) and ``sampling.json`` (``affine``, ``shape``, ``background``).
        ``volumes`` is the read-only memory map itself (no copy); items are as for any
        data set, classes are the sorted label names, every record's path is the array
        file, and nothing is preprocessed (``config`` is the sampling settings; no mask).

        Raises:
            FileNotFoundError: no such folder or no ``volumes.npy``.
            ValueError: no ``index.csv`` (the sampling run has not finished: rerun it), or an
                index whose rows do not match the array.
        """
        import csv

        folder = Path(folder)
        path = folder / "volumes.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no volumes.npy: not a memmap sampling folder")
        if not (folder / "index.csv").is_file():
            raise ValueError(f"{folder} has no index.csv: the sampling run has not finished (rerun it)")
        settings = json.loads((folder / "sampling.json").read_text())
        volumes = np.load(path, mmap_mode="r")
        if settings.get("images") == "2d":
            raise ValueError(
                f"{folder}/volumes.npy holds {volumes.shape} images of a 2D run, not volumes: read it with "
                "numpy.load(path, mmap_mode='r') ((n, C, S, S), one channel per sequence)"
            )
        with open(folder / "index.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        if [int(r["row"]) for r in rows] != list(range(len(volumes))):
            raise ValueError(
                f"{folder}/index.csv: its rows do not number the {len(volumes)} volumes 0 .. N - 1"
            )
        self = cls.__new__(cls)
        self.transform = transform
        self.preprocess = Preprocess(
            reorient=False, resample=False, trim=False, clip=None, scale=None, mask=None
        )
        self.records = [Record(path, r["label"], r["subject"] or None) for r in rows]
        self.paths = [path] * len(rows)
        self.classes = sorted({r.label for r in self.records})
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([index[r.label] for r in self.records], dtype=np.int64)
        self.subjects = [r.subject for r in self.records]
        self.cache_dir, self.cache_hit, self._progress, self._memory_budget = None, False, False, 0
        self._volumes, self._volumes_path, self.mask = volumes, path, None
        self.affine = np.asarray(settings["affine"], dtype=np.float64)
        background = settings.get("background")
        self.background_values = np.full(len(rows), 0.0 if background is None else background, np.float32)
        self.config = settings
        return self

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Item ``i``: ``{"image": (1, D, H, W) float32, "label": int, "index": int}``,
        passed through ``self.transform`` when one is set.

        Raises:
            IndexError: ``i`` out of range.
        """
        n = len(self.records)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for a data set of {n} volumes")
        i = int(i) % n
        x = torch.from_numpy(np.array(self._volumes[i], dtype=np.float32, copy=True))
        item = {"image": x.unsqueeze(0), "label": int(self.labels[i]), "index": i}
        return item if self.transform is None else self.transform(item)

    @property
    def volumes(self) -> np.ndarray:
        """``(N, D, H, W)`` float32 array of every preprocessed volume (read-only when cached)."""
        return self._volumes

    @property
    def shape(self) -> tuple[int, int, int]:
        """The output grid ``(D, H, W)``."""
        return tuple(self._volumes.shape[1:])  # type: ignore[return-value]

    def compute_mask(self, indices: Sequence[int] | None = None, fraction: float | None = None) -> np.ndarray:
        """A brain mask from some volumes (e.g. a training fold): voxels that are
        foreground in at least ``fraction`` of them.

        Returns:
            ``(D, H, W)`` bool array.
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("compute_mask needs at least one volume")
        frac = self.preprocess.mask_fraction if fraction is None else float(fraction)
        count = np.zeros(self.shape, dtype=np.int32)
        for i in idx:
            count += np.abs(self._volumes[i] - self.background_values[i]) > _FG_TOL
        return count >= frac * idx.size

    def save(self, volume: Any, path: str | os.PathLike) -> Path:
        """Write a ``(D, H, W)`` / ``(1, D, H, W)`` volume on this data set's output grid."""
        return save_volume(volume, self.affine, path)

    def __repr__(self) -> str:
        return (
            f"VolumeDataset(n={len(self)}, shape={self.shape}, classes={self.classes}, "
            f"cache={'hit' if self.cache_hit else ('miss' if self.cache_dir else 'off')})"
        )

    # Memory maps must not be pickled by value (DataLoader workers): reopen by path.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._volumes_path is not None:
            state["_volumes"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._volumes is None:
            self._volumes = np.load(self._volumes_path, mmap_mode="r")

    # ------------------------------------------------------------------ building

    def _cached(self) -> tuple[np.ndarray, dict, np.ndarray | None]:
        assert self.cache_dir is not None
        settings = self.preprocess.to_dict()
        extra = [settings["mask"]] if settings["mask"] not in (None, "auto") else []
        key, source = _cache.cache_keys(self.paths, settings, extra)
        entry = _cache.entry_dir(self.cache_dir, key)
        if not _cache.is_complete(entry):
            build = _cache.new_build_dir(self.cache_dir, key)
            try:
                _, meta, mask = self._build(build / "volumes.npy")
                meta["config"]["cache_key"] = key
                meta.update(key=key, source=source, files=[str(p.resolve()) for p in self.paths])
                if mask is not None:
                    np.save(build / "mask.npy", mask)
                (build / "meta.json").write_text(json.dumps(meta, indent=1))
            except BaseException:
                import shutil

                shutil.rmtree(build, ignore_errors=True)
                raise
            entry = _cache.publish(build, entry)
            _cache.prune_stale(self.cache_dir, source, keep=entry)
        else:
            self.cache_hit = True
        meta = json.loads((entry / "meta.json").read_text())
        self._volumes_path = entry / "volumes.npy"
        volumes = np.load(self._volumes_path, mmap_mode="r")
        mask = np.load(entry / "mask.npy") if (entry / "mask.npy").is_file() else None
        return volumes, meta, mask

    def _read(self, i: int, ref: tuple | None) -> tuple[np.ndarray, np.ndarray]:
        """Read volume ``i`` onto the reference grid (reorient, resample)."""
        p = self.preprocess
        vol = load_volume(self.paths[i], index=p.index, nan_policy=p.nan_policy)
        data, affine = vol.data, vol.affine
        if p.reorient:
            data, affine = reorient_ras(data, affine)
        if ref is not None and not same_grid(data.shape, affine, ref[0], ref[1]):
            if not p.resample:
                raise ValueError(
                    f"{self.paths[i]}: grid {data.shape} with affine\n{affine}\ndiffers from the first "
                    f"volume's {ref[0]} with affine\n{ref[1]}\n(resample=False)"
                )
            data = resample_to(data, affine, ref[0], ref[1])
            affine = ref[1]
        return data, affine

    def _build(self, out_path: Path | None) -> tuple[np.ndarray, dict, np.ndarray | None]:
        p = self.preprocess
        n = len(self.paths)
        bar = None
        if self._progress:
            from tqdm.auto import tqdm

            n_fit = n if p.fit_on is None else len(p.fit_on)
            bar = tqdm(total=n + (n_fit if p.trim else 0), desc="preprocessing", unit="vol")

        fit = range(n) if p.fit_on is None else p.fit_on
        if fit[-1] >= n:
            raise ValueError(f"fit_on names volume {fit[-1]}, but the data set has {n} volumes")
        first, ref_affine = self._read(0, None)
        ref = (tuple(first.shape), ref_affine)
        kept: dict[int, np.ndarray] = {0: first}
        union = np.zeros(ref[0], dtype=bool)
        if p.trim:
            held = first.nbytes
            for i in fit:  # the box comes from the fitting volumes only
                data = kept[i] if i in kept else self._read(i, ref)[0]
                union |= data != p.background
                if i > 0 and held + data.nbytes <= self._memory_budget:
                    kept[i] = data
                    held += data.nbytes
                if bar is not None:
                    bar.update()
            start, stop = foreground_bbox(union)
        else:
            start, stop = (0, 0, 0), ref[0]
        crop_shape = tuple(b - a for a, b in zip(start, stop, strict=True))
        out_shape = p.shape if p.shape is not None else crop_shape
        affine = resize_affine(crop_affine(ref_affine, start), crop_shape, out_shape)

        if out_path is None:
            volumes = np.empty((n, *out_shape), dtype=np.float32)
        else:
            volumes = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n, *out_shape))
        bg_values = np.zeros(n, dtype=np.float64)
        count = np.zeros(out_shape, dtype=np.int32) if p.mask == "auto" else None
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        fit_set = set(fit)
        for i in range(n):
            data = kept.pop(i) if i in kept else self._read(i, ref)[0]
            data = resize_volume(data[box], out_shape, antialias=p.antialias)
            out, bg_values[i] = clip_scale(data, p.clip, p.scale, p.background)
            volumes[i] = out
            if count is not None and (p.fit_on is None or i in fit_set):
                count += np.abs(out - np.float32(bg_values[i])) > _FG_TOL
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        if out_path is not None:
            volumes.flush()

        if p.mask == "auto":
            mask = count >= p.mask_fraction * len(fit)
        elif p.mask is not None:
            mvol = load_volume(p.mask, nan_policy="zero")
            mdata, maff = reorient_ras(mvol.data, mvol.affine) if p.reorient else (mvol.data, mvol.affine)
            mask = resample_to(mdata, maff, out_shape, affine, interpolation="nearest") > 0.5
        else:
            mask = None

        config = p.to_dict()
        config.update(
            reference_shape=list(ref[0]),
            reference_affine=np.asarray(ref_affine).tolist(),
            bbox={"start": list(start), "stop": list(stop)},
            output_shape=list(out_shape),
            affine=affine.tolist(),
            n_volumes=n,
            cache_key=None,
        )
        meta = {"affine": affine.tolist(), "background_values": bg_values.tolist(), "config": config}
        return volumes, meta, mask
