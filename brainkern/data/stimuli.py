"""Stimulus image domains for reconstruction from brain responses (Seeliger et al. 2018, seed 004).

Seeliger et al. train an image prior (a DCGAN) and a feature network on the domain of the
stimuli a subject saw, then reconstruct those stimuli from the responses. brainkern ships
two domains that need no download, and reads any folder of images:

- ``"digits"``: scikit-learn's handwritten digits (1,797 images of 8x8 pixels, ten classes),
  upsampled to a centred square of ``0.8 S`` pixels (cubic), smoothed (Gaussian, SD ``S / 64``
  pixels) and padded to ``S x S``; bright ink on a dark ground. The stand-in for the paper's
  BRAINS handwritten characters (which are not redistributable here).
- ``"natural"``: grey-scale patches of the sample photographs that ship with scikit-image and
  scikit-learn (18 photographs: people, animals, objects, text, textures, a landscape, a
  galaxy field, microscopy), each a random square crop of side 64 px .. 60% of the
  photograph's shorter side, resized to ``S x S`` (antialiased), then contrast-adjusted as
  MATLAB's ``imadjust`` does by default (the 1st and 99th percentiles of the patch mapped to
  black and white, the rest clipped), as the paper does after Kay et al. (2008). The label of
  a patch is its photograph. Optionally masked by a circular aperture (vim-1's stimuli), the
  outside set to mid-grey (0).
- a folder: every PNG/JPEG/TIFF/BMP file under it (sorted), converted to grey, centre-cropped
  to a square, resized and contrast-adjusted as the natural patches; the label is the first
  sub-folder's name (or one class when the files lie at the top).

Images are float32 ``(N, S, S)`` in [-1, 1].

The experiment's stimuli are kept out of what is fitted before the experiment:
:func:`experiment_parts` divides a domain into the prior's images (the DCGAN and the feature
network train on them), the experiment's training stimuli and its test stimuli. For the
natural domain the test stimuli come from photographs of their own (no patch of them is in
any other part: patches of one photograph overlap), so nothing fitted ever saw the test
photographs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DOMAINS",
    "NATURAL_PHOTOS",
    "StimulusDataset",
    "Stimuli",
    "circle_mask",
    "experiment_parts",
    "load_domain",
]

DOMAINS = ("digits", "natural")
# scikit-image's bundled photographs (read from the wheel, no download) and scikit-learn's two.
NATURAL_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle",
    "page",
    "retina",
    "rocket",
    "china",
    "flower",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DEFAULT_NATURAL_N = 3000
TEST_SOURCES = 3  # photographs the natural domain's test stimuli come from, at least


@dataclass
class Stimuli:
    """The images of a stimulus domain.

    Attributes:
        images: ``(N, S, S)`` float32 in [-1, 1].
        labels: ``(N,)`` int64: digit class, or index of the source photograph / sub-folder.
        classes: names of the labels.
        names: ``N`` unique ids, e.g. ``"digits-0042"``.
        groups: ``(N,)`` int64: the source of each image (its photograph; for digits and
            folder images the image itself).
        domain: ``"digits"``, ``"natural"`` or the folder.
        mask: ``(S, S)`` bool circular aperture when the images are masked, else ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    names: list[str]
    groups: np.ndarray
    domain: str
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Stimuli:
        """The images ``indices`` (in that order), everything else alike."""
        idx = np.asarray(indices, dtype=np.int64)
        return Stimuli(
            self.images[idx],
            self.labels[idx],
            list(self.classes),
            [self.names[i] for i in idx],
            self.groups[idx],
            self.domain,
            self.mask,
        )


def circle_mask(size: int) -> np.ndarray:
    """``(S, S)`` bool: the disc inscribed in the square (pixel centres within ``S / 2``)."""
    c = (np.arange(size) + 0.5) - size / 2
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (size / 2) ** 2


def _imadjust(x: np.ndarray) -> np.ndarray:
    """MATLAB's default ``imadjust``: the 1st and 99th percentiles to 0 and 1, clipped.
    A flat image becomes mid-grey."""
    lo, hi = np.percentile(x, (1.0, 99.0))
    if hi - lo < 1e-6:
        return np.full_like(x, 0.5)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _to_signed(x01: np.ndarray) -> np.ndarray:
    return (2.0 * x01 - 1.0).astype(np.float32)


def _digits(size: int) -> Stimuli:
    from scipy import ndimage
    from sklearn.datasets import load_digits

    bunch = load_digits()
    inner = int(round(0.8 * size))
    pad = (size - inner) // 2
    out = np.zeros((len(bunch.images), size, size), dtype=np.float32)
    for k, im in enumerate(bunch.images):
        big = ndimage.zoom(im / 16.0, inner / 8.0, order=3, mode="nearest", grid_mode=True)
        big = ndimage.gaussian_filter(np.clip(big, 0.0, 1.0), sigma=size / 64.0)
        out[k, pad : pad + inner, pad : pad + inner] = big[:inner, :inner]
    images = _to_signed(np.clip(out, 0.0, 1.0))
    n = len(images)
    return Stimuli(
        images=images,
        labels=np.asarray(bunch.target, dtype=np.int64),
        classes=[str(d) for d in range(10)],
        names=[f"digits-{k:04d}" for k in range(n)],
        groups=np.arange(n, dtype=np.int64),
        domain="digits",
    )


def _photo(name: str) -> np.ndarray:
    """Photograph ``name`` as float grey in [0, 1] ``(H, W)``."""
    from skimage import color, data, util

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        rgb = load_sample_image(f"{name}.jpg")
    elif name == "cat":
        rgb = data.chelsea()
    elif name == "motorcycle":
        rgb = data.stereo_motorcycle()[0]
    else:
        rgb = getattr(data, name)()
    img = util.img_as_float(rgb)
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3])
    return np.asarray(img, dtype=np.float64)


def _patch(img: np.ndarray, top: int, left: int, side: int, size: int) -> np.ndarray:
    from skimage.transform import resize

    crop = img[top : top + side, left : left + side]
    return resize(crop, (size, size), order=1, anti_aliasing=side > size, mode="reflect")


def _natural(size: int, n: int, seed: int, progress: bool) -> Stimuli:
    from tqdm import tqdm

    photos = [_photo(name) for name in NATURAL_PHOTOS]
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=n)
    images = np.empty((n, size, size), dtype=np.float32)
    for k in tqdm(range(n), desc="natural patches", disable=not progress, leave=False):
        img = photos[which[k]]
        short = min(img.shape)
        side = int(rng.integers(min(64, short), max(min(64, short), int(0.6 * short)) + 1))
        top = int(rng.integers(img.shape[0] - side + 1))
        left = int(rng.integers(img.shape[1] - side + 1))
        images[k] = _to_signed(_imadjust(_patch(img, top, left, side, size)))
    return Stimuli(
        images=images,
        labels=which.astype(np.int64),
        classes=list(NATURAL_PHOTOS),
        names=[f"natural-{k:05d}" for k in range(n)],
        groups=which.astype(np.int64),
        domain="natural",
    )


def _folder(folder: Path, size: int) -> Stimuli:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"images: no {'/'.join(IMAGE_SUFFIXES)} file under {folder}")
    tops = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "" for p in files]
    classes = sorted(set(tops))
    images = np.empty((len(files), size, size), dtype=np.float32)
    for k, path in enumerate(files):
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        short = min(grey.shape)
        top, left = (grey.shape[0] - short) // 2, (grey.shape[1] - short) // 2
        images[k] = _to_signed(_imadjust(_patch(grey, top, left, short, size)))
    return Stimuli(
        images=images,
        labels=np.asarray([classes.index(t) for t in tops], dtype=np.int64),
        classes=[c or folder.name for c in classes],
        names=[str(p.relative_to(folder)) for p in files],
        groups=np.arange(len(files), dtype=np.int64),
        domain=str(folder),
    )


def load_domain(
    domain: str,
    *,
    size: int = 64,
    mask: bool = False,
    n: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Stimuli:
    """The images of a stimulus domain (see the module docstring).

    Args:
        domain: ``"digits"``, ``"natural"`` or a folder of images.
        size: the side ``S`` of the square images.
        mask: apply the circular aperture (pixels outside set to 0, mid-grey).
        n: how many natural patches to draw (default 3000); refused for the other domains.
        seed: the natural patches' draw.
        progress: a progress bar while drawing patches.

    Raises:
        ValueError: an unknown domain that is no folder, a bad size, ``n`` below 1 or for a
            domain of fixed images, an empty folder.
    """
    if isinstance(size, bool) or int(size) != size or size < 8:
        raise ValueError(f"images.size must be an integer >= 8, got {size!r}")
    size = int(size)
    if n is not None and (isinstance(n, bool) or int(n) != n or n < 1):
        raise ValueError(f"images.n must be a positive integer (how many natural patches to draw), got {n!r}")
    if domain == "natural":
        stimuli = _natural(size, DEFAULT_NATURAL_N if n is None else int(n), int(seed), progress)
    elif n is not None:
        raise ValueError(f"images.n={n}: only the natural domain draws a chosen number of images")
    elif domain == "digits":
        stimuli = _digits(size)
    else:
        folder = Path(os.path.expanduser(domain))
        if not folder.is_dir():
            raise ValueError(f"images.domain must be one of {DOMAINS} or a folder of images, got {domain!r}")
        stimuli = _folder(folder, size)
    if mask:
        disc = circle_mask(size)
        stimuli.images[:, ~disc] = 0.0
        stimuli.mask = disc
    return stimuli


def experiment_parts(stimuli: Stimuli, n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Divide a domain into the prior's images and the experiment's training and test stimuli.

    The test stimuli are drawn first, from sources (photographs) of their own, at least
    three (a quarter of the sources at most), in turn from each: every image of a test
    source that is not a test stimulus is left out of all parts. For
    domains whose images are their own sources (digits, folders) that is just a draw of
    images. Then the training stimuli, from the remaining images; the prior gets the rest.
    The draw is stratified by nothing; the seed fixes it.

    Returns:
        ``{"prior": idx, "train": idx, "test": idx, "unused": idx}``, sorted int64 arrays.

    Raises:
        ValueError: a negative count, more stimuli asked than the domain can give, or a prior
            left with fewer than 64 images.
    """
    n_train, n_test = int(n_train), int(n_test)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"stimuli counts must be >= 0, got {n_train} training and {n_test} test stimuli")
    rng = np.random.default_rng(seed)
    groups = stimuli.groups
    sources = rng.permutation(np.unique(groups))
    # Images that share sources (patches of one photograph): the test stimuli come from at
    # least TEST_SOURCES photographs (a quarter of them at most), taken from each in turn.
    shared = len(sources) < len(groups)
    least = min(TEST_SOURCES, max(1, len(sources) // 4)) if shared else 1
    test_sources: list[int] = []
    count = 0
    if n_test:
        for s in sources:
            test_sources.append(int(s))
            count += int(np.sum(groups == s))
            if count >= n_test and len(test_sources) >= least:
                break
    in_test_source = np.isin(groups, test_sources)
    if n_test and count < n_test:
        raise ValueError(f"the domain has {len(stimuli)} images, fewer than the {n_test} test stimuli asked")
    if shared:
        pools = [list(rng.permutation(np.flatnonzero(groups == s))) for s in test_sources]
        turns = [pool[k] for k in range(max(map(len, pools), default=0)) for pool in pools if k < len(pool)]
        test = np.sort(np.asarray(turns[:n_test], dtype=np.int64))
    else:
        pool = np.flatnonzero(in_test_source)
        test = np.sort(rng.choice(pool, size=n_test, replace=False)) if n_test else np.zeros(0, np.int64)
        test = test.astype(np.int64)
    rest = np.flatnonzero(~in_test_source)
    if n_train + 64 > rest.size:
        raise ValueError(
            f"the domain leaves {rest.size} images outside the test stimuli' sources: too few for "
            f"{n_train} training stimuli and a prior of at least 64 images (draw more, or ask fewer)"
        )
    train = np.sort(rng.choice(rest, size=n_train, replace=False)).astype(np.int64)
    prior = np.setdiff1d(rest, train).astype(np.int64)
    unused = np.setdiff1d(np.flatnonzero(in_test_source), test).astype(np.int64)
    return {"prior": prior, "train": train, "test": test, "unused": unused}


def images_config(images: dict[str, Any]) -> dict[str, Any]:
    """``data.images`` with its defaults filled in (a run's record)."""
    out = {"size": 64, "mask": False, "seed": 0, "n": None, "stimuli": [0, 0], **dict(images)}
    out["stimuli"] = [int(v) for v in out["stimuli"]]
    return out


class StimulusDataset:
    """The images of a stimulus domain as a 2D run's data set (one channel).

    Items are ``{"image": (1, S, S) float32, "label": int, "subject": name, "index": k}``;
    the split of a run is one of images (each image its own "subject"), built by
    :meth:`split` from :func:`experiment_parts`: the prior's images train, the
    experiment's test stimuli are the held-out part the samples are compared with.

    Args:
        images: the ``data.images`` section (``domain``, ``size``, ``mask``, ``seed``, ``n``,
            ``stimuli``).
        progress: progress bars while drawing.
    """

    item_noun = "images"

    def __init__(self, images: dict[str, Any], *, progress: bool = True) -> None:
        self.settings = images_config(images)
        s = self.settings
        self.stimuli = load_domain(
            str(s["domain"]),
            size=int(s["size"]),
            mask=bool(s["mask"]),
            n=s["n"],
            seed=int(s["seed"]),
            progress=progress,
        )
        self.classes = list(self.stimuli.classes)
        self.labels = self.stimuli.labels
        self.transform = None

    def __len__(self) -> int:
        return len(self.stimuli)

    def __getitem__(self, k: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= int(k) < n:
            raise IndexError(f"index {k} out of range for a data set of {n} images")
        k = int(k) % n
        item = {
            "image": torch.from_numpy(self.stimuli.images[k][None].copy()),
            "label": int(self.labels[k]),
            "subject": self.stimuli.names[k],
        }
        return item if self.transform is None else self.transform(item)

    def split(self) -> dict[str, Any]:
        """The run's split: ``{"method": "stimuli", "parts": {"train": prior, "test": test stimuli},
        "subjects": {part: names}, ...}`` (also naming the experiment's training stimuli, which no
        part of the run uses)."""
        n_train, n_test = self.settings["stimuli"]
        parts = experiment_parts(self.stimuli, n_train, n_test, int(self.settings["seed"]))
        keep = {"train": parts["prior"].tolist()}
        if n_test:
            keep["test"] = parts["test"].tolist()
        names = self.stimuli.names
        return {
            "method": "stimuli",
            "note": "the prior trains on the domain's images outside the experiment's stimuli (and outside "
            "the test stimuli' photographs); the test stimuli are held out",
            "experiment_train": [names[i] for i in parts["train"]],
            "parts": keep,
            "subjects": {part: sorted(names[i] for i in idx) for part, idx in keep.items()},
        }

    # -- what the engine records and writes ---------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return (self.stimuli.size, self.stimuli.size)

    @property
    def channels(self) -> int:
        return 1

    @property
    def paths(self) -> list[str]:
        return list(self.stimuli.names)

    @property
    def subjects(self) -> list[str]:
        return list(self.stimuli.names)

    @property
    def affine(self) -> np.ndarray:
        return np.eye(4)

    @property
    def config(self) -> dict[str, Any]:
        return {"images": self.settings, "n": len(self), "classes": self.classes}

    def save(self, image: Any, path: str | os.PathLike, *, value_range: tuple[float, float] = (-1.0, 1.0)):
        """One image ``(1, S, S)`` or ``(S, S)`` as an 8-bit grey PNG (``value_range`` to 0..255).

        Raises:
            ValueError: anything but one grey image.
        """
        from brainkern.data.slices import write_png

        shape = tuple(np.shape(image))
        if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
            raise ValueError(f"save: expected an image (1, S, S) or (S, S), got shape {shape}")
        return write_png(image, path, value_range=value_range)

    def __repr__(self) -> str:
        return f"StimulusDataset(domain={self.stimuli.domain!r}, n={len(self)}, size={self.stimuli.size})"
