"""Pictures of a reconstruction run: stimuli above their reconstructions, image tilings, and
identification accuracy against SNR.

Like :mod:`brainkern.evaluate.pictures` (whose atomic PNG writer these share), everything draws on a
bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global backend switch, nothing
left open. Images are ``(n, S, S)`` in [-1, 1] and always shown on that fixed grey range (never
stretched per image), so brightness compares across panels, as in Seeliger et al.'s (2018)
Figures 5-7 (stimuli in the top row, reconstructions below).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainkern.evaluate.pictures import _save, slice_grid
from brainkern.reconstruct.identify import _as_images

__all__ = ["identification_figure", "reconstruction_grid", "save_image_grid"]

_PANEL = 0.96  # inches per image panel: 96 px at the default dpi, 1.5 px per pixel of a 64 x 64 image
_GAP = 0.03  # inches between panels
_BLOCK_GAP = 0.22  # inches between wrapped blocks
_MARGIN = 0.05
_TEXT = 0.17  # inches of accuracy text under a reconstruction row
_BACKGROUND = "0.85"  # light grey, so both an all-black and an all-white panel keep visible edges


def reconstruction_grid(
    stimuli: np.ndarray,
    rows: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    *,
    n: int | None = None,
    columns: int = 10,
    titles: bool = True,
    accuracy: Mapping[str, np.ndarray] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """One PNG: the stimuli in the top row, each method's reconstructions of them in a row below.

    Grey colour map on the fixed range [-1, 1], no axes, every panel the same size. When more than
    ``columns`` images are shown, the picture wraps into blocks stacked top to bottom, each with its
    own stimulus row.

    Args:
        stimuli: ``(N, S, S)`` (or ``(N, 1, S, S)``) shown stimuli in [-1, 1].
        rows: method name (the row label) -> ``(N, S, S)`` reconstructions, in the order of ``stimuli``.
        path: the PNG to write (parent folders are created).
        n: show the first ``n`` images (default all ``N``).
        columns: images per block row.
        titles: label each row at its left (``"stimulus"``, then the method names); False draws no
            text at all except ``accuracy`` and ``title``.
        accuracy: method -> ``(N,)`` per-image all-pairs identification accuracy in [0, 1]
            (``[im["all_pairs"] for im in identification(...)["images"]]``), printed in small text
            under each of that method's reconstructions.
        title: a figure title.
        dpi: resolution; a panel is ``0.96 * dpi`` pixels wide.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no rows, shapes that disagree with ``stimuli``, ``n`` or ``columns`` below 1,
            or an ``accuracy`` entry of the wrong length or for a method not in ``rows``.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    x = _as_images(stimuli, "stimuli", np.float32)
    if not rows:
        raise ValueError("reconstruction_grid needs at least one row of reconstructions")
    shown = x.shape[0] if n is None else int(n)
    if shown < 1 or isinstance(columns, bool) or int(columns) != columns or columns < 1:
        raise ValueError(f"n and columns must be integers >= 1, got n={n!r}, columns={columns!r}")
    shown = min(shown, x.shape[0])
    methods = {}
    for name, r in rows.items():
        r = _as_images(r, f"row {name!r}", np.float32)
        if r.shape[1:] != x.shape[1:] or r.shape[0] < shown:
            raise ValueError(
                f"row {name!r} must hold at least {shown} images of {x.shape[1:]}, got {r.shape}"
            )
        methods[str(name)] = r[:shown]
    acc = {}
    for name, a in (accuracy or {}).items():
        if str(name) not in methods:
            raise ValueError(f"accuracy given for {name!r}, which is not a row; rows are {list(methods)}")
        a = np.asarray(a, dtype=np.float64).ravel()
        if a.size < shown:
            raise ValueError(f"accuracy of {name!r} has {a.size} values for {shown} shown images")
        acc[str(name)] = a[:shown]

    cols = min(int(columns), shown)
    blocks = math.ceil(shown / cols)
    labels = ["stimulus", *methods]
    text = _TEXT if acc else 0.0
    label_w = (0.12 + 0.075 * max(len(s) for s in labels)) if titles else 0.0
    block_h = len(labels) * _PANEL + (len(labels) - 1) * _GAP + len(methods) * text
    top_h = 0.4 if title else 0.0
    fig_w = 2 * _MARGIN + label_w + cols * _PANEL + (cols - 1) * _GAP
    fig_h = 2 * _MARGIN + top_h + blocks * block_h + (blocks - 1) * _BLOCK_GAP
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi, facecolor=_BACKGROUND)

    images = [x[:shown], *methods.values()]
    for b in range(blocks):
        y = fig_h - _MARGIN - top_h - b * (block_h + _BLOCK_GAP)  # top edge of this block, inches
        for r, (label, stack) in enumerate(zip(labels, images, strict=True)):
            y -= _PANEL
            for c in range(cols):
                k = b * cols + c
                if k >= shown:
                    break
                left = _MARGIN + label_w + c * (_PANEL + _GAP)
                ax = fig.add_axes((left / fig_w, y / fig_h, _PANEL / fig_w, _PANEL / fig_h))
                ax.imshow(stack[k], cmap="gray", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
                ax.set_axis_off()
                if label in acc:
                    ax.text(
                        0.5, -0.02, f"{100 * acc[label][k]:.0f}%", transform=ax.transAxes,
                        ha="center", va="top", fontsize=7,
                    )  # fmt: skip
            if titles:
                fig.text(
                    (_MARGIN + label_w - 0.06) / fig_w, (y + _PANEL / 2) / fig_h, label,
                    ha="right", va="center", fontsize=9,
                )  # fmt: skip
            y -= _GAP + (text if r > 0 else 0.0)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / fig_h, va="top")
    return _save(fig, path)


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    *,
    columns: int = 8,
    title: str | None = None,
) -> Path:
    """A plain tiling of images, ``columns`` per row, on the fixed grey range [-1, 1].

    For the image prior's samples or a stimulus domain's images. Built on
    :func:`brainkern.evaluate.pictures.slice_grid`: each row is labelled with the (1-based) range
    of the images it holds.

    Args:
        images: ``(n, S, S)`` (or ``(n, 1, S, S)``) in [-1, 1].
        path: the PNG to write (parent folders are created).
        columns: images per row.
        title: a figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    x = _as_images(images, "images", np.float32)
    if isinstance(columns, bool) or int(columns) != columns or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    columns = int(columns)
    rows = {
        f"{start + 1}-{min(start + columns, len(x))}": x[start : start + columns, None]
        for start in range(0, len(x), columns)
    }
    return slice_grid(rows, path, n_per_row=columns, title=title)


def _all_pairs(result: Mapping[str, Any], kind: str) -> tuple[float, float, float]:
    """Accuracy and 95% CI from an :func:`~brainkern.reconstruct.identify.identification` dict
    or an :func:`~brainkern.reconstruct.identify.identify` dict (``kind`` picks the similarity)."""
    if "all_pairs" not in result:
        if kind not in result:
            raise ValueError(f"no {kind!r} identification in a result with keys {sorted(result)}")
        result = result[kind]
    ap = result["all_pairs"]
    return float(ap["accuracy"]), float(ap["ci"][0]), float(ap["ci"][1])


def identification_figure(
    results_by_snr: Mapping[Any, Mapping[str, Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    kind: str = "pixel",
    title: str | None = None,
) -> Path:
    """All-pairs identification accuracy of each method at each SNR, with 95% CI error bars.

    Args:
        results_by_snr: SNR (any label: a number, ``"inf"``) -> method -> an ``identify`` or
            ``identification`` result. SNRs are placed in the given order, evenly spaced; a method
            missing at some SNR is simply not drawn there.
        path: the PNG to write (parent folders are created).
        kind: the similarity to plot from ``identify`` results (``"pixel"`` or ``"feature"``).
        title: a figure title.

    Returns:
        ``path`` as a ``Path``. A dashed line marks chance (50%).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    if not results_by_snr:
        raise ValueError("identification_figure needs results for at least one SNR")
    snrs = list(results_by_snr)
    methods: dict[str, None] = {}
    for by_method in results_by_snr.values():
        methods.update(dict.fromkeys(map(str, by_method)))
    if not methods:
        raise ValueError("identification_figure needs at least one method's results")
    fig = Figure(figsize=(max(4.0, 1.1 * len(snrs) + 2.2), 3.4), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    width = 0.6 / max(len(methods), 1)
    for m, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for s, snr in enumerate(snrs):
            res = {str(k): v for k, v in results_by_snr[snr].items()}.get(method)
            if res is None:
                continue
            acc, low, high = _all_pairs(res, kind)
            xs.append(s + (m - (len(methods) - 1) / 2) * width)
            ys.append(100 * acc)
            lo.append(100 * (acc - low))
            hi.append(100 * (high - acc))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=3, markersize=4, linewidth=1, label=method)
    ax.axhline(50, color="0.4", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(snrs)), [str(s) for s in snrs])
    ax.set_xlim(-0.6, len(snrs) - 0.4)
    ax.set_xlabel("SNR")
    ax.set_ylabel(f"all-pairs identification (%), {kind}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)
