"""NIfTI reading and writing through nibabel, with the checks a training run needs.

Every volume comes out as a 3D float32 array plus its 4x4 voxel-to-world affine,
whatever the file stores (integers, scaled integers, float64, a 4D series with an
index). Writes are atomic: a crash never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NAN_POLICIES = ("raise", "zero")


@dataclass
class Volume:
    """One 3D image.

    Attributes:
        data: ``(X, Y, Z)`` float32 array, in the file's voxel order.
        affine: ``(4, 4)`` float64 voxel-to-world (mm) matrix.
        header: the nibabel header the volume was read from (``None`` for volumes
            made in memory).
        path: the file it came from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any = None
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> np.ndarray:
        """Voxel sizes in mm, the column norms of the affine's 3x3 part."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def is_nifti(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(NIFTI_SUFFIXES)


def _open_image(path: Path):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    if not path.exists():
        raise FileNotFoundError(f"no such NIfTI file: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    try:
        img = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    except Exception as err:  # zlib.error and friends from a truncated gzip stream
        raise ValueError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: is a {type(img).__name__}, not a NIfTI-1 or NIfTI-2 image")
    return img


def load_volume(path: str | os.PathLike, index: int | None = None, nan_policy: str = "raise") -> Volume:
    """Read one 3D volume from a ``.nii`` or ``.nii.gz`` file.

    Integer and scaled (``scl_slope``/``scl_inter``) data are returned as float32
    with the scaling applied. Trailing singleton dimensions (``(X, Y, Z, 1)``) are
    dropped.

    Args:
        path: the file.
        index: which volume of a 4D file to read (0-based). Required for 4D files
            with more than one volume.
        nan_policy: ``"raise"`` (default) to refuse volumes holding NaN or infinite
            voxels, ``"zero"`` to replace them by 0.

    Returns:
        A :class:`Volume` with ``data`` of shape ``(X, Y, Z)`` float32 and ``affine``
        ``(4, 4)`` float64.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable NIfTI image (corrupt, truncated, another
            format), is 4D without ``index``, ``index`` is out of range, the image is
            not 3D/4D, or it holds NaN/inf voxels under ``nan_policy="raise"``.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    path = Path(path)
    img = _open_image(path)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1 and (len(shape) > 4 or index in (None, 0)):
        shape = shape[:-1]
    try:
        if len(shape) == 3:
            if index not in (None, 0):
                raise ValueError(f"{path}: index={index} given but the file is 3D with shape {shape}")
            data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
        elif len(shape) == 4:
            if index is None:
                raise ValueError(
                    f"{path}: the file is 4D with shape {shape}; pass index=<0..{shape[3] - 1}> "
                    "to choose one volume"
                )
            if not -shape[3] <= index < shape[3]:
                raise ValueError(f"{path}: index={index} out of range for a 4D file with shape {shape}")
            data = np.asarray(img.dataobj[..., index], dtype=np.float32)
        else:
            raise ValueError(f"{path}: expected a 3D or 4D image, got shape {shape}")
    except ValueError:
        raise
    except Exception as err:  # truncated data, bad gzip stream, short file
        raise ValueError(f"{path}: could not read the image data ({type(err).__name__}: {err})") from err
    data = np.ascontiguousarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if nan_policy == "raise":
            raise ValueError(
                f"{path}: {n_bad} voxel(s) are NaN or infinite; pass nan_policy='zero' to set them to 0"
            )
        data[bad] = 0.0
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(f"{path}: the header's affine is singular or not finite:\n{affine}")
    return Volume(data=data, affine=affine, header=img.header, path=path)


def _file_mode() -> int:
    # What open() would give a new file: 0o666 less the umask (read without changing it
    # where the platform allows; os.umask is the portable fallback).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary name in ``path``'s folder; on success move it onto ``path``.

    The parent folders are created. The temporary file keeps ``suffix`` (for
    writers that choose a format from the name, e.g. ``.nii.gz``). The file gets the
    permissions a plain ``open`` would give it (``mkstemp``'s are owner-only). On
    error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _nifti_suffix(path: Path) -> str:
    name = str(path)
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def save_volume(data: Any, affine: Any, path: str | os.PathLike, dtype: Any = np.float32) -> Path:
    """Write a volume as NIfTI (float32 by default), atomically.

    Args:
        data: numpy array or torch tensor of shape ``(X, Y, Z)`` or ``(1, X, Y, Z)``.
        affine: ``(4, 4)`` voxel-to-world matrix (numpy or torch).
        path: a ``.nii`` or ``.nii.gz`` file name; parent folders are created.
        dtype: the on-disk data type (float32 unless told otherwise; integer types
            are rounded and clipped to the type's range).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: bad shape, affine or file name, or non-finite voxels.
    """
    import nibabel as nib

    path = Path(path)
    suffix = _nifti_suffix(path)
    arr = _to_numpy(data)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"save_volume expects (X, Y, Z) or (1, X, Y, Z) data, got shape {arr.shape}")
    aff = _to_numpy(affine).astype(np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"save_volume expects a finite (4, 4) affine, got shape {aff.shape}")
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    else:
        arr = np.asarray(arr, dtype=dtype)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: refusing to write {int((~np.isfinite(arr)).sum())} NaN/inf voxel(s)")
    img = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units(xyz="mm")
    img.set_sform(aff, code="aligned")
    img.set_qform(aff, code="aligned")
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path
