"""Pictures of a run: tri-planar mosaics of volumes and training-loss curves.

Both functions draw on a bare ``matplotlib.figure.Figure`` with the Agg canvas
(no pyplot, so no global backend switch and nothing left open), import matplotlib
only when called, and write the PNG atomically: to a temporary file in the target
folder first, then ``os.replace``, so a reader never sees half a picture.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from brainkern.data.io import atomic_path

__all__ = ["loss_curves", "triplanar_mosaic"]

# Logged fields that measure speed or time rather than training: one shared subplot.
_TIMING_NAMES = frozenset({"it_per_s", "time", "elapsed", "wall", "wall_s", "data_time", "step_time"})
_TIMING_SUFFIXES = ("_per_s", "_per_sec", "_time", "_sec", "_secs", "_seconds", "_ms", "_s")


def _save(fig, path: str | os.PathLike) -> Path:
    """Render ``fig`` to PNG at ``path`` via a temporary file and ``os.replace``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def _as_volumes(volumes, name: str, limit: int) -> np.ndarray:
    """The first ``limit`` volumes as a float32 ``(k, D, H, W)`` numpy array."""
    if isinstance(volumes, torch.Tensor):
        head = volumes[:limit].detach().to("cpu", torch.float32).numpy()
    elif isinstance(volumes, np.ndarray):
        head = np.asarray(volumes[:limit], dtype=np.float32)
    else:
        raise TypeError(
            f"row {name!r}: expected a torch.Tensor or numpy.ndarray, got {type(volumes).__name__}"
        )
    if head.ndim == 5 and head.shape[1] == 1:
        head = head[:, 0]
    if head.ndim != 4:
        raise ValueError(
            f"row {name!r}: expected volumes of shape (N, 1, D, H, W) or (N, D, H, W), "
            f"got {tuple(volumes.shape)}"
        )
    if head.shape[0] == 0:
        raise ValueError(f"row {name!r} holds no volumes")
    return head


def _centre_slices(vol: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sagittal, coronal and axial centre slices of an RAS ``(x, y, z)`` volume, ready for
    ``imshow(origin="lower")``: superior up in the first two, anterior up in the axial one;
    anterior to the right in the sagittal one, the subject's right to the right otherwise."""
    x, y, z = (s // 2 for s in vol.shape)
    return vol[x].T, vol[:, y, :].T, vol[:, :, z].T


def _check_layout(rows, n_per_row, vmin: float, vmax: float, empty: str) -> None:
    """The arguments every picture of sets shares: some rows, a count per row, a grey range."""
    if not rows:
        raise ValueError(empty)
    if isinstance(n_per_row, bool) or int(n_per_row) != n_per_row or n_per_row < 1:
        raise ValueError(f"n_per_row must be an integer >= 1, got {n_per_row!r}")
    if not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin}, vmax={vmax}")


def triplanar_mosaic(
    rows: Mapping[str, torch.Tensor | np.ndarray],
    path: str | os.PathLike,
    *,
    n_per_row: int = 6,
    title: str | None = None,
    vmin: float = -1,
    vmax: float = 1,
) -> Path:
    """One PNG with the centre slices of a few volumes from each named set.

    Each row shows its set's first ``n_per_row`` volumes side by side, each as three
    centre slices: sagittal, coronal, axial. Volumes are taken as RAS-oriented
    ``(x, y, z)``, so the slices are turned to put superior (sagittal, coronal) or
    anterior (axial) up. Grey colour map over ``[vmin, vmax]``, no ticks, the set's
    name at the left of its row. Sets may hold fewer than ``n_per_row`` volumes
    (empty cells stay blank) and non-cubic grids.

    Args:
        rows: name -> volumes ``(N, 1, D, H, W)`` or ``(N, D, H, W)`` (torch or numpy),
            e.g. ``{"real": real, "generated": fake}``.
        path: the PNG to write (parent folders are created).
        n_per_row: volumes shown per row.
        title: a figure title.
        vmin, vmax: the grey scale's range (volumes in [-1, 1] by default).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no rows, an empty row, a bad shape, ``n_per_row < 1`` or
            ``vmin >= vmax``.
        TypeError: a row that is not a tensor or array.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    _check_layout(rows, n_per_row, vmin, vmax, "triplanar_mosaic needs at least one row of volumes")
    sets = {str(name): _as_volumes(v, str(name), int(n_per_row)) for name, v in rows.items()}
    columns = max(v.shape[0] for v in sets.values())
    # Panel widths follow the largest extent along each displayed horizontal axis
    # (sagittal: y; coronal and axial: x), row heights the tallest slice, so
    # non-cubic grids waste little space; imshow keeps every voxel square.
    ex = max(v.shape[1] for v in sets.values())
    ey = max(v.shape[2] for v in sets.values())
    heights = [max(v.shape[2], v.shape[3]) for v in sets.values()]
    # A narrow spacer column separates one volume's three slices from the next volume's.
    gap = max(1, round(0.25 * ex))
    widths = ([ey, ex, ex, gap] * columns)[:-1]
    # About 1.6 inches per 64 voxels, but every panel between 1 and 2.4 inches wide.
    extent = max(ex, ey, *heights)
    inch = min(max(extent * 1.6 / 64, 1.0), 2.4) / extent
    label_w = 0.25 + 0.085 * max(len(name) for name in sets)
    fig_w = sum(widths) * inch * 1.08 + label_w
    fig_h = sum(heights) * inch * 1.12 + (0.5 if title else 0.15)
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="black")
    grid = fig.add_gridspec(
        len(sets),
        len(widths),
        width_ratios=widths,
        height_ratios=heights,
        left=label_w / fig_w,
        right=0.995,
        bottom=0.01,
        top=1 - (0.45 if title else 0.1) / fig_h,
        wspace=0.04,
        hspace=0.06,
    )
    for r, (name, vols) in enumerate(sets.items()):
        for c in range(columns):
            slices = _centre_slices(vols[c]) if c < vols.shape[0] else (None, None, None)
            for k, image in enumerate(slices):
                ax = fig.add_subplot(grid[r, 4 * c + k])
                ax.set_facecolor("black")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if image is not None:
                    ax.imshow(
                        image, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest"
                    )
                if c == 0 and k == 0:
                    ax.set_ylabel(name, color="white", rotation=0, ha="right", va="center", fontsize=11)
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    return _save(fig, path)


def slice_grid(
    rows: Mapping[str, torch.Tensor | np.ndarray],
    path: str | os.PathLike,
    *,
    channel_names: Sequence[str] | None = None,
    n_per_row: int = 6,
    title: str | None = None,
    vmin: float = -1,
    vmax: float = 1,
) -> Path:
    """One PNG of 2D images from each named set: a row of images per set and channel.

    For Han et al.'s (seed 002) slice models: each set's first ``n_per_row`` images side by
    side, one row per channel (sequence), labelled ``"<set> <channel>"``; images are shown
    as they are stored (first row at the top: :class:`brainkern.data.SliceDataset` with
    ``upright=True`` gives superior up). Grey colour map over ``[vmin, vmax]``.

    Args:
        rows: name -> images ``(N, C, H, W)`` (torch or numpy), one ``C`` for all sets.
        path: the PNG to write (parent folders are created).
        channel_names: a name per channel (default ``"ch0"``, ...; none shown for one channel).
        n_per_row: images shown per row.
        title: a figure title.
        vmin, vmax: the grey scale's range.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no rows, an empty set, sets with different channel counts, a wrong
            number of channel names, ``n_per_row < 1`` or ``vmin >= vmax``.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    _check_layout(rows, n_per_row, vmin, vmax, "slice_grid needs at least one set of images")
    sets = {}
    for name, images in rows.items():
        x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"slice_grid: set {name!r} must be (N, C, H, W) with N >= 1, got {x.shape}")
        sets[str(name)] = x[: int(n_per_row)].astype(np.float32)
    channels = {x.shape[1] for x in sets.values()}
    if len(channels) != 1:
        raise ValueError(f"slice_grid: every set needs the same number of channels, got {sorted(channels)}")
    (c_count,) = channels
    if channel_names is not None and len(channel_names) != c_count:
        raise ValueError(f"slice_grid: {len(channel_names)} channel names for {c_count} channels")
    names = list(channel_names) if channel_names is not None else [f"ch{c}" for c in range(c_count)]
    columns = max(x.shape[0] for x in sets.values())
    h, w = max(x.shape[2] for x in sets.values()), max(x.shape[3] for x in sets.values())
    inch = min(max(max(h, w) * 1.4 / 64, 0.9), 2.0) / max(h, w)
    labels = [f"{name} {names[c]}" if c_count > 1 else name for name in sets for c in range(c_count)]
    label_w = 0.25 + 0.085 * max(len(t) for t in labels)
    n_rows = len(sets) * c_count
    fig_w = columns * w * inch * 1.05 + label_w
    fig_h = n_rows * h * inch * 1.06 + (0.5 if title else 0.15)
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="black")
    grid = fig.add_gridspec(
        n_rows,
        columns,
        left=label_w / fig_w,
        right=0.995,
        bottom=0.01,
        top=1 - (0.45 if title else 0.1) / fig_h,
        wspace=0.03,
        hspace=0.04,
    )
    for s, x in enumerate(sets.values()):
        for c in range(c_count):
            r = s * c_count + c
            for k in range(columns):
                ax = fig.add_subplot(grid[r, k])
                ax.set_facecolor("black")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if k < x.shape[0]:
                    ax.imshow(x[k, c], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
                if k == 0:
                    ax.set_ylabel(labels[r], color="white", rotation=0, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    return _save(fig, path)


def _read_metrics(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file, skipping unreadable lines.

    A trailing line without its newline is a record still being written (or cut by a
    crash) and is dropped silently; other unreadable lines (a crash followed by an
    appending resume glues a partial line to the next one) are dropped with a warning.
    """
    if not path.is_file():
        raise ValueError(f"metrics file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):  # a complete line (the last piece has no newline after it)
                bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s): {shown}", stacklevel=3)
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_timing(key: str) -> bool:
    return key in _TIMING_NAMES or key.endswith(_TIMING_SUFFIXES)


def _ema(values: np.ndarray, smooth: float) -> np.ndarray:
    """Bias-corrected exponential moving average; NaN entries are skipped (and kept NaN)."""
    out = np.full_like(values, np.nan)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        acc = smooth * acc + (1 - smooth) * v
        weight = smooth * weight + (1 - smooth)
        out[i] = acc / weight
    return out


def loss_curves(
    metrics_path: str | os.PathLike,
    path: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    smooth: float = 0.9,
) -> Path:
    """Plot the numeric fields of a training log against the iteration.

    Reads a JSON-lines file, one object per logged step with an ``"iter"`` field
    and numeric fields (``"loss_d"``, ``"loss_g"``, ``"loss_c"``, ``"gp_d"``,
    ``"it_per_s"``, ...). Records may lack some keys or carry non-numeric fields
    (ignored); records without a numeric ``"iter"`` are skipped; a trailing partial
    line is ignored; an iteration logged twice (a resumed run) keeps its later
    value. Each field gets a subplot with the raw values drawn faintly and their
    exponential moving average on top; timing fields (``it_per_s`` and names
    ending in ``_s``, ``_time``, ``_per_s``, ...) share one subplot of their own.

    Args:
        metrics_path: the JSON-lines log.
        path: the PNG to write (parent folders are created).
        keys: plot only these fields (default: every numeric field but ``"iter"``).
        smooth: the moving average's decay in ``[0, 1)`` (0: no smoothing).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: an absent or empty file, no record with an ``"iter"``, no
            numeric field to plot, a requested key that never appears, or ``smooth``
            outside ``[0, 1)``.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    if not 0 <= smooth < 1:
        raise ValueError(f"smooth must lie in [0, 1), got {smooth!r}")
    metrics_path = Path(metrics_path)
    records = [r for r in _read_metrics(metrics_path) if _is_number(r.get("iter"))]
    if not records:
        raise ValueError(f"metrics file {metrics_path} holds no record with a numeric 'iter' field")
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k != "iter" and _is_number(v):
                seen.setdefault(k)
    if keys is None:
        chosen = list(seen)
    else:
        chosen = [str(k) for k in keys if k != "iter"]
        missing = [k for k in chosen if k not in seen]
        if missing:
            raise ValueError(
                f"{metrics_path}: no numeric values for {missing}; the numeric fields are {sorted(seen)}"
            )
    if not chosen:
        raise ValueError(f"metrics file {metrics_path} has no numeric field to plot besides 'iter'")

    panels: list[tuple[str, list[str]]] = [(k, [k]) for k in chosen if not _is_timing(k)]
    timing = [k for k in chosen if _is_timing(k)]
    if timing:
        panels.append(("timing", timing))

    n = len(panels)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 2.9 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = [f"C{i}" for i in range(10)]
    for idx, (panel, fields) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        for f_i, field in enumerate(fields):
            # A resumed run logs some iterations again: the later record wins.
            latest = {float(r["iter"]): float(r[field]) for r in records if _is_number(r.get(field))}
            it = np.array(sorted(latest))
            val = np.array([latest[i] for i in it])
            color = colors[f_i % len(colors)]
            ax.plot(it, val, color=color, alpha=0.25, linewidth=0.8)
            marker = "o" if len(it) < 3 else None  # a lone point has no line to draw
            ax.plot(it, _ema(val, smooth), color=color, linewidth=1.5, marker=marker, label=field)
        ax.set_title(panel, fontsize=10)
        ax.grid(True, alpha=0.3)
        if len(fields) > 1:
            ax.legend(fontsize=8)
        if idx // ncols == nrows - 1 or idx + ncols >= n:
            ax.set_xlabel("iteration")
    for idx in range(n, nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    fig.suptitle(metrics_path.name, fontsize=11)
    return _save(fig, path)
