"""``SliceDataset``: 2D slices cut from one or several 3D data sets of the same subjects.

The 2D models of Han et al. (2018, seed 002) train on sagittal slices taken from the
middle of each volume (planes 80 to 149 of 240), leaving out the outermost planes, which
hold little or no brain; the sequences (T1, T1c, T2, FLAIR) of a subject are stacked as the
image's channels in their "Concat" setting. This module cuts such slices from brainkern's
preprocessed grids.

Plane convention (the one :mod:`brainkern.evaluate.pictures` uses): volumes are RAS
``(x, y, z)`` = ``(D, H, W)`` grids, so

- ``"sagittal"`` cuts along axis 0 (x, left-right): a slice is ``volume[s, :, :]`` ``(H, W)``;
- ``"coronal"`` cuts along axis 1 (y, posterior-anterior): ``volume[:, s, :]`` ``(D, W)``;
- ``"axial"`` cuts along axis 2 (z, inferior-superior): ``volume[:, :, s]`` ``(D, H)``.

A slice keeps the grid's axis order (rows = the first remaining axis) unless ``upright=True``,
which turns it for display in the usual image convention (first row at the top): superior
up in sagittal and coronal slices, anterior up in axial ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from brainkern.data.dataset import VolumeDataset

PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}
DEFAULT_CENTRAL = 0.5


def central_range(n: int, central: float) -> tuple[int, int]:
    """The ``(start, stop)`` index range of the central ``central`` fraction of ``n`` planes.

    ``round(central * n)`` planes (at least one) are kept, as many skipped at each end as
    possible (one more at the far end when the count left over is odd), e.g. ``n=64``,
    ``central=0.5`` -> ``(16, 48)``.

    Raises:
        ValueError: ``central`` not in ``(0, 1]`` or ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"an axis needs at least one plane, got {n}")
    if isinstance(central, bool) or not 0.0 < float(central) <= 1.0:
        raise ValueError(f"central must be a fraction in (0, 1], got {central!r}")
    keep = max(1, int(round(float(central) * n)))
    start = (n - keep) // 2
    return start, start + keep


def _check_same(datasets: Sequence[VolumeDataset]) -> None:
    first = datasets[0]
    for k, ds in enumerate(datasets[1:], start=1):
        if len(ds) != len(first):
            raise ValueError(
                f"sequence {k} has {len(ds)} volumes, sequence 0 has {len(first)}: the data sets "
                "must hold the same subjects in the same order"
            )
        if list(ds.subjects) != list(first.subjects):
            bad = next(i for i, (a, b) in enumerate(zip(ds.subjects, first.subjects, strict=True)) if a != b)
            raise ValueError(
                f"sequence {k} differs from sequence 0 in its subjects: volume {bad} is subject "
                f"{ds.subjects[bad]!r} there and {first.subjects[bad]!r} in sequence 0 (the data sets "
                "must hold the same subjects in the same order)"
            )
        if tuple(ds.shape) != tuple(first.shape) or not np.allclose(ds.affine, first.affine, atol=1e-5):
            raise ValueError(
                f"sequence {k} is on grid {tuple(ds.shape)} with affine\n{ds.affine}\nbut sequence 0 "
                f"on {tuple(first.shape)} with affine\n{first.affine}\n(the sequences must share one grid)"
            )


class SliceDataset(Dataset):
    """2D slices of one or several 3D data sets, the sequences stacked as channels.

    Item ``k`` is ``{"image": (C, S, S) float32, "label": int, "subject": str,
    "volume": int, "slice": int, "plane": str, "source": str | tuple[str, ...]}`` with
    ``C`` = number of data sets (in the order given) and ``S`` = ``size`` (or the slice's
    own ``(rows, cols)`` when ``size=None``). ``volume`` is the source volume's index in
    the 3D data sets, ``slice`` its index along the plane's axis, ``source`` the source
    file (a tuple of one file per sequence when there are several); ``subject`` is ``""``
    where the data set does not know it. Items are ordered volume by volume, slices in
    increasing order within a volume.

    Slices are read straight from each data set's ``volumes`` array (so a memory-mapped
    cache reads only the planes it needs); the 3D data sets' own ``transform`` is not
    applied, give ``transform=`` here instead.

    Args:
        volumes: one :class:`VolumeDataset`, or several of the same subjects in the same
            order and on the same grid (one per sequence).
        plane: ``"sagittal"`` (axis 0), ``"coronal"`` (axis 1) or ``"axial"`` (axis 2);
            see the module docstring.
        slices: an explicit ``(start, stop)`` index range along the axis (``stop``
            excluded); default: the central planes (``central``).
        central: the fraction of planes kept in the middle of the axis when ``slices``
            is not given (default 0.5: the central half, skipping a quarter at each end).
        size: resize each slice to ``size x size`` (bilinear; antialiased along an axis that
            shrinks), e.g. 64 or 128; ``None`` keeps the slice as it is.
        indices: the volumes to use (e.g. a training fold); default all.
        upright: turn slices for display (see the module docstring).
        transform: a callable applied to every item (``item -> item``).

    Attributes:
        plane, axis, start, stop, size: the settings (``start:stop`` the slice range).
        classes: class names of the first data set.
        volume_indices: ``(N,)`` int64, the source volume of each item.
        slice_indices: ``(N,)`` int64, the slice index of each item.
        labels: ``(N,)`` int64, the label of each item.

    Raises:
        ValueError: no data set, mismatched data sets, an unknown plane, a slice range
            outside the grid or empty, both ``slices`` and ``central``, a bad ``size``, a
            volume index out of range.
    """

    def __init__(
        self,
        volumes: VolumeDataset | Sequence[VolumeDataset],
        plane: str = "sagittal",
        slices: tuple[int, int] | None = None,
        *,
        central: float | None = None,
        size: int | None = None,
        indices: Sequence[int] | None = None,
        upright: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        datasets = [volumes] if isinstance(volumes, VolumeDataset) else list(volumes)
        if not datasets:
            raise ValueError("SliceDataset needs at least one VolumeDataset")
        for k, ds in enumerate(datasets):
            if not isinstance(ds, VolumeDataset):
                raise TypeError(f"sequence {k} is a {type(ds).__name__}, not a VolumeDataset")
        _check_same(datasets)
        if plane not in PLANES:
            raise ValueError(f"plane must be one of {sorted(PLANES)}, got {plane!r}")
        self.datasets = datasets
        self.plane = plane
        self.axis = PLANES[plane]
        n = int(datasets[0].shape[self.axis])
        if slices is not None:
            if central is not None:
                raise ValueError("give either slices=(start, stop) or central=, not both")
            start, stop = (int(s) for s in slices)
            if not 0 <= start < stop <= n:
                raise ValueError(
                    f"slice range {tuple(slices)} is empty or outside the {plane} axis's {n} planes "
                    f"(need 0 <= start < stop <= {n})"
                )
        else:
            start, stop = central_range(n, DEFAULT_CENTRAL if central is None else central)
        self.start, self.stop = start, stop
        if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
            raise ValueError(f"size must be a positive integer or None, got {size!r}")
        self.size = None if size is None else int(size)
        self.upright = bool(upright)
        self.transform = transform
        n_vol = len(datasets[0])
        vols = np.arange(n_vol) if indices is None else np.asarray(list(indices), dtype=np.int64)
        if vols.ndim != 1 or (vols.size and (vols.min() < 0 or vols.max() >= n_vol)):
            raise ValueError(f"volume indices must lie in 0 .. {n_vol - 1}, got {vols.tolist()}")
        self.indices = vols
        per = stop - start
        self.volume_indices = np.repeat(vols, per).astype(np.int64)
        self.slice_indices = np.tile(np.arange(start, stop, dtype=np.int64), vols.size)
        self.classes = list(datasets[0].classes)
        self.labels = np.asarray(datasets[0].labels, dtype=np.int64)[self.volume_indices]

    # ------------------------------------------------------------------ subsets

    def subset(self, indices: Sequence[int]) -> SliceDataset:
        """The same slices of the volumes ``indices`` only (indices into the 3D data sets)."""
        return SliceDataset(
            self.datasets,
            self.plane,
            (self.start, self.stop),
            size=self.size,
            indices=indices,
            upright=self.upright,
            transform=self.transform,
        )

    def for_subjects(self, subjects: Sequence[str]) -> SliceDataset:
        """The slices of every volume of the given subjects (a split by subject: no slice of
        another subject gets in, none of these subjects' volumes is left out).

        Raises:
            ValueError: a subject the data sets do not hold.
        """
        wanted = set(subjects)
        known = set(self.datasets[0].subjects)
        missing = sorted(str(s) for s in wanted - known)
        if missing:
            raise ValueError(f"unknown subjects: {missing}")
        return self.subset([i for i, s in enumerate(self.datasets[0].subjects) if s in wanted])

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return int(self.volume_indices.size)

    def _slice(self, ds: VolumeDataset, v: int, s: int) -> torch.Tensor:
        index: list[Any] = [v, slice(None), slice(None), slice(None)]
        index[1 + self.axis] = s
        x = torch.from_numpy(np.array(ds.volumes[tuple(index)], dtype=np.float32, copy=True))
        if self.upright:
            x = x.T.flip(0)  # the second remaining axis (superior / anterior) up
        return x

    def __getitem__(self, k: int) -> dict[str, Any]:
        """Item ``k`` (see the class docstring).

        Raises:
            IndexError: ``k`` out of range.
        """
        n = len(self)
        if not -n <= int(k) < n:
            raise IndexError(f"index {k} out of range for a data set of {n} slices")
        k = int(k) % n
        v, s = int(self.volume_indices[k]), int(self.slice_indices[k])
        x = torch.stack([self._slice(ds, v, s) for ds in self.datasets])
        if self.size is not None and tuple(x.shape[1:]) != (self.size, self.size):
            shrink = x.shape[1] > self.size or x.shape[2] > self.size
            x = torch.nn.functional.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=shrink
            )[0]
        first = self.datasets[0]
        paths = tuple(str(ds.paths[v]) for ds in self.datasets)
        item = {
            "image": x.contiguous(),
            "label": int(first.labels[v]),
            "subject": "" if first.subjects[v] is None else str(first.subjects[v]),
            "volume": v,
            "slice": s,
            "plane": self.plane,
            "source": paths[0] if len(paths) == 1 else paths,
        }
        return item if self.transform is None else self.transform(item)

    # ------------------------------------------------------------------ run metadata

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, S)``: the side of the square images (``size``), or the slices' own ``(rows, cols)``."""
        if self.size is not None:
            return (self.size, self.size)
        dims = [d for a, d in enumerate(self.datasets[0].shape) if a != self.axis]
        return (dims[1], dims[0]) if self.upright else (dims[0], dims[1])

    @property
    def channels(self) -> int:
        """``C``: the number of sequences stacked as channels."""
        return len(self.datasets)

    @property
    def paths(self) -> list:
        """The source file of each 3D volume (of the first sequence), indexed like the 3D data sets."""
        return list(self.datasets[0].paths)

    @property
    def subjects(self) -> list:
        """The subject of each 3D volume, indexed like the 3D data sets."""
        return list(self.datasets[0].subjects)

    @property
    def affine(self) -> np.ndarray:
        """The affine of the 3D grid the slices are cut from."""
        return self.datasets[0].affine

    @property
    def config(self) -> dict[str, Any]:
        """The 3D preprocessing of the first sequence and the slicing settings, for a run's record."""
        return {
            "volumes": self.datasets[0].config,
            "sequences": len(self.datasets),
            "plane": self.plane,
            "slices": [self.start, self.stop],
            "size": self.size,
            "upright": self.upright,
        }

    def save(self, image: Any, path: str | os.PathLike, *, value_range: tuple[float, float] = (-1.0, 1.0)):
        """Write one image ``(C, S, S)`` as an 8-bit grey PNG, the channels side by side,
        ``value_range`` mapped to 0..255 (clipped), the same rule for every image.

        Returns:
            The path written.

        Raises:
            ValueError: not a ``(C, S, S)`` or ``(S, S)`` image.
        """
        return write_png(image, path, value_range=value_range)

    def __repr__(self) -> str:
        return (
            f"SliceDataset(n={len(self)}, sequences={len(self.datasets)}, plane={self.plane!r}, "
            f"slices=({self.start}, {self.stop}), size={self.size}, volumes={self.indices.size})"
        )


def write_png(image: Any, path: str | os.PathLike, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Write one image ``(C, S, S)`` or ``(S, S)`` (array or tensor) as an 8-bit grey PNG, the
    channels side by side, ``value_range`` mapped to 0..255 (clipped).

    Raises:
        ValueError: not a ``(C, S, S)`` or ``(S, S)`` image.
    """
    from PIL import Image

    x = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"save: expected an image (C, S, S) or (S, S), got shape {x.shape}")
    low, high = value_range
    grey = np.clip(np.round((x - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(list(grey), axis=1)).save(path)
    return path
