"""Han et al.'s Visual Turing Test (seed 002, section 3.3 and Table 1) as a local web page.

A rater (Han et al.: one expert physician) sees real and synthetic images one at a time, in
random order, and calls each "real" or "synthetic" (or flags it as unreadable); nothing tells
them which was which until they have answered every image. Their accuracy is reported in
Han et al.'s Table 1 layout; 50% means the rater could not tell the two sets apart.

A *session* is a folder:

- ``images/<token>.png``: the images as shown, 8-bit grey, named by random tokens, encoded
  by one writer and padded to one byte length, so neither names nor sizes nor metadata
  say which are real;
- ``session.json``: source, settings, seed, the items (``id``, ``file``, ``channel``) in
  a seeded random order, creation time and versions; nothing in it reveals the key;
- ``key.json``: the answer key (never served before a rater has finished);
- ``images.npz``: the real and synthetic pools the shown images were drawn from (float
  arrays, up to ``pool`` a side), for the machine observer (:func:`~brainkern.evaluate.c2st`);
- ``answers/<rater>.jsonl``: one JSON line per answer, appended, flushed and fsynced
  before the page is told it was saved (so a killed server or a closed browser loses
  nothing, and the page resumes at the first unanswered image);
- ``report.md`` / ``report.json``: written by :func:`write_report`.

Every rater gets their own order of the same items (seeded from the session seed and
their name). Real and synthetic images pass through the same display rule: a fixed
window (the data range of a run, [-1, 1] by default) or, for images from folders, a
per-image 1st-99th percentile window; a different rule per set would give the answer
away through brightness alone.

The same machinery serves a second task, ``"task": "pairs"`` in ``session.json`` (a
session without ``task`` is a Visual Turing Test): Seeliger et al.'s (2018) pairwise
identification of reconstructions, prepared by :mod:`brainkern.reconstruct.human`. Its
items add ``left`` and ``right`` (the two candidate pictures shown beneath ``file``, the
original), the answers are ``left`` / ``right`` (and ``unsure`` when the session allows it)
and the key holds the side of the true reconstruction.

The server is the standard library's :class:`http.server.ThreadingHTTPServer` serving one
HTML page with inline script and style (no build step, no outside network), bound to
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import platform
import re
import secrets
import struct
import threading
import zlib
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

__all__ = [
    "ANSWERS",
    "HAN2018_TABLE1",
    "PAIR_ANSWERS",
    "TASKS",
    "AnswerConflict",
    "TuringServer",
    "binomial_summary",
    "default_session_dir",
    "folder_images",
    "format_turing_table",
    "load_session",
    "pairs_counts",
    "prepare_session",
    "rater_key",
    "rater_order",
    "read_answers",
    "record_answer",
    "run_images",
    "save_session",
    "serve",
    "serve_until_stopped",
    "session_task",
    "task_answers",
    "turing_table",
    "write_pictures",
    "write_report",
]

FORMAT = "brainkern-turing-1"
ANSWERS = ("real", "synthetic", "unreadable")
TASKS = ("turing", "pairs")
PAIR_ANSWERS = ("left", "right")
UNSURE = "unsure"  # a pairs session's optional "can't tell" answer
MAX_NAME = 64

# Han et al. (2018), Table 1: one expert physician, 50 real and 50 synthetic images per row.
# (row, accuracy %, real as real, real as synthetic, synthetic as real, synthetic as synthetic)
HAN2018_TABLE1: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("T1 (DCGAN, 128x128)", 70, 26, 24, 6, 44),
    ("T1c (DCGAN, 128x128)", 71, 24, 26, 3, 47),
    ("T2 (DCGAN, 128x128)", 64, 22, 28, 8, 42),
    ("FLAIR (DCGAN, 128x128)", 54, 12, 38, 8, 42),
    ("Concat (DCGAN, 128x128)", 77, 34, 16, 7, 43),
    ("Concat (DCGAN, 64x64)", 54, 13, 37, 9, 41),
    ("T1 (WGAN, 128x128)", 64, 20, 30, 6, 44),
    ("T1c (WGAN, 128x128)", 55, 13, 37, 8, 42),
    ("T2 (WGAN, 128x128)", 58, 19, 31, 11, 39),
    ("FLAIR (WGAN, 128x128)", 62, 16, 34, 4, 46),
    ("Concat (WGAN, 128x128)", 66, 31, 19, 15, 35),
    ("Concat (WGAN, 64x64)", 53, 18, 32, 15, 35),
)

CHANCE = (
    "50% accuracy is chance: the rater could not tell real from synthetic images (Han et al.: "
    "the closer to 50%, the better the generator). Well above 50%: the synthetic images give "
    "themselves away; well below 50%: the rater swapped the labels systematically (synthetic "
    "taken for real and real for synthetic), which also means the two sets look different."
)

_LOCK = threading.Lock()
_PAD_CHUNK = b"bkPd"  # ancillary, private, safe-to-copy: decoders skip it


class AnswerConflict(ValueError):
    """An item already holds a different answer (answers are final)."""

    def __init__(self, item: str, stored: dict[str, Any]):
        super().__init__(f"item {item} was already answered {stored['answer']!r}; answers are final")
        self.stored = stored


# ----------------------------------------------------------------------------- images


def _png(gray: np.ndarray) -> bytes:
    """8-bit greyscale PNG of ``(H, W)`` uint8 pixels: no text, time or gamma chunks."""
    h, w = gray.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), gray], axis=1)  # filter type 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def _pad_png(data: bytes, size: int) -> bytes:
    """``data`` grown to exactly ``size`` bytes by a zero-filled ancillary chunk before IEND."""
    pad = size - len(data) - 12
    if pad < 0:
        raise ValueError(f"cannot pad a PNG of {len(data)} bytes to {size}")
    body = bytes(pad)
    chunk = struct.pack(">I", pad) + _PAD_CHUNK + body + struct.pack(">I", zlib.crc32(_PAD_CHUNK + body))
    return data[:-12] + chunk + data[-12:]


def _upright(plane: np.ndarray) -> np.ndarray:
    """A plane cut from an RAS grid, turned so its second axis (superior / anterior) is up."""
    return plane.T[::-1]


def _to_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def _side_by_side(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels of uint8 pixels next to each other on black, vertically centred, with a gap."""
    height = max(p.shape[0] for p in panels)
    gap = max(2, round(0.04 * height))
    out = []
    for k, p in enumerate(panels):
        top = (height - p.shape[0]) // 2
        out.append(np.pad(p, ((top, height - p.shape[0] - top), (0, 0))))
        if k + 1 < len(panels):
            out.append(np.zeros((height, gap), np.uint8))
    return np.concatenate(out, axis=1)


def _display(
    image: np.ndarray, channel: int | None, view: str, window: tuple[float, float] | str
) -> np.ndarray:
    """The ``(rows, cols)`` uint8 picture of one image: a 2D ``(C, H, W)`` slice (one channel,
    or all side by side when ``channel`` is None) or a 3D ``(1, D, H, W)`` RAS volume (its
    central sagittal slice, or the three central planes)."""
    if image.ndim == 3:
        planes = [image[channel]] if channel is not None else list(image)
    else:
        v = image[0]
        d, h, w = (s // 2 for s in v.shape)
        sagittal = _upright(v[d])
        planes = [sagittal] if view == "slice" else [sagittal, _upright(v[:, h, :]), _upright(v[:, :, w])]
    if isinstance(window, str):  # one percentile window over everything shown
        lo, hi = (float(v) for v in np.percentile(np.concatenate([p.ravel() for p in planes]), [1, 99]))
        if not hi > lo:  # a flat image: mid grey rather than a division by zero
            return _side_by_side([np.full(p.shape, 128, np.uint8) for p in planes])
    else:
        lo, hi = float(window[0]), float(window[1])
    return _side_by_side([_to_uint8(p, lo, hi) for p in planes])


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 5 and arr.shape[1] != 1:
        raise ValueError(f"{name}: 3D images must have one channel (N, 1, D, H, W), got shape {arr.shape}")
    if arr.ndim not in (4, 5):
        raise ValueError(f"{name}: expected images (N, C, H, W) or volumes (N, 1, D, H, W), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


# ----------------------------------------------------------------------------- sessions


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _versions() -> dict[str, str]:
    import brainkern  # noqa: PLC0415

    return {"brainkern": brainkern.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _write_json(path: Path, obj: Any) -> None:
    from brainkern.data.io import atomic_path  # noqa: PLC0415

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def prepare_session(
    real: Any,
    synthetic: Any,
    out: str | os.PathLike,
    *,
    n: int = 50,
    seed: int = 0,
    channels: str = "split",
    names: Sequence[str] | None = None,
    source: str | None = None,
    view: str = "slice",
    window: tuple[float, float] | str = (-1.0, 1.0),
    pool: int = 200,
    notes: dict[str, Any] | None = None,
    real_groups: Sequence[str] | None = None,
) -> Path:
    """Prepare a Visual Turing Test session folder (see the module docstring).

    ``n`` real and ``n`` synthetic images are drawn at random (seeded) from the two sets
    and shown in a random order fixed by ``seed``. Multi-channel 2D images (Han et al.'s
    "Concat" of T1, T1c, T2, FLAIR) are shown one channel per trial with ``channels="split"``,
    the channels cycling in equal proportion on both sides (Han et al. mixed Concat images
    with real images of each sequence in equal proportion); ``"panel"`` shows all channels
    side by side.

    Args:
        real, synthetic: arrays or tensors of 2D images ``(N, C, H, W)`` (rows top to bottom
            as they should appear) or 3D RAS volumes ``(N, 1, D, H, W)``; one shape for all.
        out: the session folder (must not hold a session yet).
        n: images shown per set.
        seed: seed of the picks, the channels and the order (a non-negative integer).
        channels: ``"split"`` or ``"panel"`` (2D images with several channels).
        names: channel names shown with each split trial (e.g. ``["T1", "T2"]``).
        source: what the images came from, recorded in ``session.json``.
        view: 3D volumes: ``"slice"`` (central sagittal slice) or ``"triplanar"``.
        window: ``(low, high)`` intensities mapped to black and white for both sets, or
            ``"percentile"`` for a 1st-99th percentile window per shown image.
        pool: up to this many images a side (the shown ones included) are kept in
            ``images.npz`` for the machine observer.
        notes: extra JSON-able facts recorded in ``session.json`` (e.g. where the real
            images came from).
        real_groups: the subject of each real image (several slices of one subject):
            kept with the pools, so the machine observer keeps a subject's images in one
            cross-validation fold and cannot score by recognising a subject it trained on.

    Returns:
        The session folder.

    Raises:
        ValueError: bad shapes, shapes that differ between the sets, fewer than ``n``
            images in a set, unknown ``channels``/``view``/``window``, wrong ``names``,
            or ``out`` already holding a session.
    """
    real_a, syn_a = _as_array(real, "real"), _as_array(synthetic, "synthetic")
    if real_a.shape[1:] != syn_a.shape[1:]:
        raise ValueError(
            f"real images are {real_a.shape[1:]}, synthetic {syn_a.shape[1:]}: give both one shape "
            "(a size difference would give the answer away)"
        )
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    for name, arr in (("real", real_a), ("synthetic", syn_a)):
        if len(arr) < n:
            raise ValueError(f"n={n} {name} images needed, got {len(arr)}")
    if channels not in ("split", "panel"):
        raise ValueError(f"channels must be 'split' or 'panel', got {channels!r}")
    if view not in ("slice", "triplanar"):
        raise ValueError(f"view must be 'slice' or 'triplanar', got {view!r}")
    if isinstance(window, str):
        if window != "percentile":
            raise ValueError(f"window must be (low, high) or 'percentile', got {window!r}")
    elif not float(window[1]) > float(window[0]):
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
    n_channels = real_a.shape[1] if real_a.ndim == 4 else 1
    if names is not None and len(names) != n_channels:
        raise ValueError(f"names: one per channel ({n_channels}) expected, got {list(names)}")
    out = Path(out)
    if (out / "session.json").exists():
        raise ValueError(f"{out} already holds a session; serve it with --session or choose another folder")

    rng = np.random.default_rng(int(seed))
    order_real, order_syn = rng.permutation(len(real_a)), rng.permutation(len(syn_a))
    keep_real, keep_syn = (
        order_real[: max(n, min(pool, len(real_a)))],
        order_syn[: max(n, min(pool, len(syn_a)))],
    )
    split = channels == "split" and real_a.ndim == 4 and n_channels > 1
    trials = [
        (truth, k, k % n_channels if split else None) for truth in ("real", "synthetic") for k in range(n)
    ]
    trials = [trials[int(i)] for i in rng.permutation(len(trials))]

    pictures = []
    for truth, k, ch in trials:
        arr = real_a[keep_real[k]] if truth == "real" else syn_a[keep_syn[k]]
        # A single-channel slice shows its channel; a multi-channel one on a panel shows all (None).
        shown = ch if split else (0 if real_a.ndim == 4 and n_channels == 1 else None)
        pictures.append(_display(arr, shown, view, window))

    items, key = [], {}
    for (truth, k, ch), token in zip(trials, write_pictures(out, pictures), strict=True):
        channel = None if ch is None else (names[ch] if names is not None else f"channel {ch}")
        items.append({"id": token, "file": f"images/{token}.png", "channel": channel})
        key[token] = {"truth": truth, "pool_index": k}
    pools = {"real": real_a[keep_real], "synthetic": syn_a[keep_syn]}
    if real_groups is not None:
        pools["real_groups"] = np.asarray([str(g) for g in real_groups])[keep_real]
    np.savez_compressed(out / "images.npz", **pools)
    meta = {
        "format": FORMAT,
        "created": _now(),
        "source": source,
        "seed": int(seed),
        "n": int(n),
        "kind": "2d" if real_a.ndim == 4 else "3d",
        "image_shape": list(real_a.shape[1:]),
        "channels": channels if real_a.ndim == 4 and n_channels > 1 else None,
        "channel_names": list(names) if names is not None else None,
        "view": view if real_a.ndim == 5 else None,
        "window": window if isinstance(window, str) else [float(window[0]), float(window[1])],
        "pool": {
            "real": len(keep_real),
            "synthetic": len(keep_syn),
            "note": "images.npz holds the pools (the shown images are their first n); the machine "
            "observer compares them",
        },
        "items": items,
        "versions": _versions(),
        **(notes or {}),
    }
    return save_session(out, meta, key)


def write_pictures(out: str | os.PathLike, pictures: Sequence[np.ndarray]) -> list[str]:
    """Write ``(H, W)`` uint8 pictures as ``out/images/<token>.png`` and return their tokens.

    Each name is a fresh random token and every file is padded to one byte length, so
    neither names nor sizes say what a picture is.
    """
    encoded = [_png(p) for p in pictures]
    size = max(len(p) for p in encoded) + 12
    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    tokens = []
    for data in encoded:
        token = secrets.token_hex(8)
        (images / f"{token}.png").write_bytes(_pad_png(data, size))
        tokens.append(token)
    return tokens


def save_session(out: str | os.PathLike, meta: dict[str, Any], key: dict[str, dict[str, Any]]) -> Path:
    """Write a prepared session's ``key.json`` (``key``: item id -> a dict with its ``truth``),
    ``session.json`` (``meta``, given the package versions if it has none) and an empty
    ``answers/`` folder; returns the folder."""
    out = Path(out)
    meta = meta if "versions" in meta else {**meta, "versions": _versions()}
    _write_json(out / "key.json", {"format": FORMAT, "items": key})
    _write_json(out / "session.json", meta)
    (out / "answers").mkdir(exist_ok=True)
    return out


def load_session(session: str | os.PathLike) -> dict[str, Any]:
    """A session's ``session.json``.

    Raises:
        FileNotFoundError: not a session.
        ValueError: a session of another format.
    """
    path = Path(session) / "session.json"
    if not path.is_file():
        raise FileNotFoundError(f"{session} has no session.json: not a Turing test session")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def session_task(meta: dict[str, Any]) -> str:
    """A session's task: ``"turing"`` (also for sessions written before tasks existed) or ``"pairs"``."""
    task = meta.get("task", "turing")
    if task not in TASKS:
        raise ValueError(f"unknown session task {task!r}; expected one of {TASKS}")
    return task


def task_answers(meta: dict[str, Any]) -> tuple[str, ...]:
    """The answers a session's items take."""
    if session_task(meta) == "pairs":
        return PAIR_ANSWERS + ((UNSURE,) if meta.get("unsure") else ())
    return ANSWERS


def _load_key(session: str | os.PathLike) -> dict[str, str]:
    items = json.loads((Path(session) / "key.json").read_text())["items"]
    return {item: v["truth"] for item, v in items.items()}


# ----------------------------------------------------------------------------- raters and answers


def rater_key(name: str) -> str:
    """The safe, injective file stem of a rater's name (case and outer spaces ignored).

    Letters, digits, ``-`` and ``_`` stay; every other character becomes ``~`` and its UTF-8
    bytes in hex, so two names never share a file and no name leaves the answers folder.

    Raises:
        ValueError: an empty name, control characters, or more than 64 characters.
    """
    if not isinstance(name, str):
        raise ValueError(f"a rater name must be text, got {type(name).__name__}")
    text = name.strip().casefold()
    if not text:
        raise ValueError("a rater name (or initials) is required")
    if len(text) > MAX_NAME:
        raise ValueError(f"a rater name has at most {MAX_NAME} characters, got {len(text)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("a rater name cannot hold control characters")
    return "".join(
        c if (c.isascii() and (c.isalnum() or c in "-_")) else "".join(f"~{b:02x}" for b in c.encode())
        for c in text
    )


def rater_order(meta: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The session's items in this rater's own order (seeded from the session seed and name)."""
    digest = int.from_bytes(hashlib.sha256(rater_key(name).encode()).digest()[:8], "big")
    perm = np.random.default_rng([int(meta["seed"]), digest]).permutation(len(meta["items"]))
    return [meta["items"][int(i)] for i in perm]


def _parse_lines(data: bytes, path: Path) -> list[dict[str, Any]]:
    """Answer records of a file's bytes; a last line without its newline (torn) is ignored."""
    lines = data.split(b"\n")
    out = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: empty, or a torn tail
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON answer line ({exc.msg})") from None
        out.append(record)
    return out


def _first_per_item(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for r in records:
        if r.get("item") not in seen:
            seen.add(r.get("item"))
            out.append(r)
    return out


def _answers_path(session: str | os.PathLike, name: str) -> Path:
    return Path(session) / "answers" / f"{rater_key(name)}.jsonl"


def _rater_answers(session: str | os.PathLike, name: str) -> list[dict[str, Any]]:
    path = _answers_path(session, name)
    return _first_per_item(_parse_lines(path.read_bytes(), path)) if path.is_file() else []


try:
    import fcntl

    def _flock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another server process on the same session waits

except ImportError:  # pragma: no cover - Windows: one server process per session

    def _flock(f) -> None:
        return None


def record_answer(
    session: str | os.PathLike, rater: str, item: str, answer: str, ms: float | None = None
) -> tuple[bool, dict[str, Any]]:
    """Append one answer durably (written, flushed and fsynced before returning).

    Idempotent by item: an item already answered the same way is not stored again.

    Returns:
        ``(stored_now, record)``: ``False`` and the earlier record for a repeated answer.

    Raises:
        ValueError: a bad rater name, an unknown item or answer.
        AnswerConflict: the item already holds a different answer.
    """
    meta = load_session(session)
    if item not in {it["id"] for it in meta["items"]}:
        raise ValueError(f"unknown item {item!r}")
    answers = task_answers(meta)
    if answer not in answers:
        raise ValueError(f"answer must be one of {answers}, got {answer!r}")
    if ms is not None and (not isinstance(ms, (int, float)) or isinstance(ms, bool) or not math.isfinite(ms)):
        raise ValueError(f"ms must be a number of milliseconds, got {ms!r}")
    path = _answers_path(session, rater)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with _LOCK, open(path, "a+b") as f:
        _flock(f)
        f.seek(0)
        data = f.read()
        if data and not data.endswith(b"\n"):
            # A line torn by a kill mid-write was never confirmed to the page: drop it, so the
            # next line does not get glued onto it.
            f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        for record in _first_per_item(_parse_lines(data, path)):
            if record.get("item") == item:
                if record.get("answer") != answer:
                    raise AnswerConflict(item, record)
                return False, record
        record = {
            "rater": rater.strip(),
            "item": item,
            "answer": answer,
            "time": _now(),
            "ms": None if ms is None else round(float(ms)),
        }
        f.write((json.dumps(record) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    if created:  # the new file's directory entry must survive a crash too
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True, record


def read_answers(session: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Every rater's answers: rater name (as first given) -> records in the order given.

    One record per item (the first, should a file hold a repeat); a torn last line is ignored.

    Raises:
        FileNotFoundError: not a session.
        ValueError: a line that is not JSON (other than a torn last line).
    """
    load_session(session)
    out: dict[str, list[dict[str, Any]]] = {}
    folder = Path(session) / "answers"
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        records = _first_per_item(_parse_lines(path.read_bytes(), path))
        if records:
            out[str(records[0].get("rater") or path.stem)] = records
    return out


# ----------------------------------------------------------------------------- the table


def binomial_summary(k: int, total: int, alternative: str = "two-sided") -> dict[str, float | None]:
    """``k`` of ``total`` as ``accuracy``, its exact (Clopper-Pearson) two-sided 95% interval
    (``ci_low``, ``ci_high``) and the exact binomial test's ``p_value`` against 50%
    (``alternative``: ``"two-sided"`` or ``"greater"``); all None when ``total`` is 0."""
    if total == 0:
        return {"accuracy": None, "ci_low": None, "ci_high": None, "p_value": None}
    from scipy.stats import binomtest  # noqa: PLC0415

    ci = binomtest(k, total, 0.5).proportion_ci(0.95, method="exact")
    test = binomtest(k, total, 0.5, alternative=alternative)
    return {
        "accuracy": k / total,
        "ci_low": float(ci.low),
        "ci_high": float(ci.high),
        "p_value": float(test.pvalue),
    }


def pairs_counts(records: Sequence[dict[str, Any]], key: dict[str, str]) -> dict[str, int]:
    """A pairs rater's ``answered``, ``unsure``, ``judged`` (left or right) and ``correct`` counts."""
    correct = unsure = 0
    for r in records:
        if r["item"] not in key:
            raise ValueError(f"answer to item {r['item']!r}, which the session does not hold")
        unsure += r["answer"] == UNSURE
        correct += r["answer"] == key[r["item"]]
    return {"answered": len(records), "unsure": unsure, "judged": len(records) - unsure, "correct": correct}


def _row(name: str, records: list[dict[str, Any]], key: dict[str, str], total: int) -> dict[str, Any]:
    cells = {"real_as_real": 0, "real_as_synthetic": 0, "synthetic_as_real": 0, "synthetic_as_synthetic": 0}
    unreadable = {"real": 0, "synthetic": 0}
    for r in records:
        truth = key.get(r["item"])
        if truth is None:
            raise ValueError(f"rater {name!r} answered item {r['item']!r}, which the session does not hold")
        if r["answer"] == "unreadable":
            unreadable[truth] += 1
        else:
            cells[f"{truth}_as_{r['answer']}"] += 1
    correct = cells["real_as_real"] + cells["synthetic_as_synthetic"]
    judged = sum(cells.values())
    return {
        "rater": name,
        **cells,
        "answered": len(records),
        "items": total,
        "complete": len(records) >= total,
        "unreadable": sum(unreadable.values()),
        "unreadable_real": unreadable["real"],
        "unreadable_synthetic": unreadable["synthetic"],
        "judged": judged,
        "correct": correct,
        **binomial_summary(correct, judged),
    }


def _machine_observer(session: Path, seed: int, permutations: int) -> dict[str, Any]:
    path = session / "images.npz"
    if not path.is_file():
        return {"skipped": "the session has no images.npz"}
    with np.load(path) as z:
        real, synthetic = z["real"], z["synthetic"]
        groups = z["real_groups"] if "real_groups" in z else None
    if groups is not None:  # every synthetic image its own group
        groups = np.concatenate([groups.astype(object), [f"synthetic-{i}" for i in range(len(synthetic))]])
    folds = min(5, len(real), len(synthetic))
    if folds < 2:
        return {
            "skipped": f"too few images for cross-validation ({len(real)} real, {len(synthetic)} synthetic)"
        }
    from brainkern.evaluate.c2st import c2st  # noqa: PLC0415

    result = c2st(
        real,
        synthetic,
        folds=folds,
        permutations=permutations,
        spatial=2 if real.ndim == 4 else 3,
        groups=groups,
        seed=seed,
    )
    return {**result.to_dict(), "folds": folds, "grouped_by_subject": groups is not None}


def turing_table(
    session: str | os.PathLike, rater: str | None = None, *, machine: bool = True, permutations: int = 100
) -> dict[str, Any]:
    """Han et al.'s Table 1 for a session: one row per rater (pooled too when several).

    Each row: the four cells (real/synthetic selected as real/synthetic), answered and
    unreadable counts (unreadable answers are left out of the accuracy), the accuracy
    with its exact (Clopper-Pearson) 95% interval and the two-sided binomial test against
    50% (:func:`scipy.stats.binomtest`). The pooled row adds the raters' cells, treating
    their answers as independent. With ``machine``, the classifier two-sample test
    (:func:`brainkern.evaluate.c2st`) of the session's real and synthetic pools.

    Args:
        session: a session folder.
        rater: only this rater (name as typed; case and outer spaces ignored).
        machine: run the machine observer.
        permutations: its permutations.

    Returns:
        A JSON-able dict: ``rows``, ``pooled`` (or None), ``machine``, ``han2018``, ``chance``
        and the session's facts.

    Raises:
        FileNotFoundError: not a session.
        ValueError: unreadable answer files, or no answers from ``rater``.
    """
    session = Path(session)
    meta = load_session(session)
    if session_task(meta) != "turing":
        raise ValueError(
            f"{session} is a {session_task(meta)!r} session, not a Visual Turing Test: "
            "report it with 'python -m brainkern.reconstruct human-report'"
        )
    key = _load_key(session)
    answers = read_answers(session)
    if rater is not None:
        wanted = rater_key(rater)
        answers = {name: r for name, r in answers.items() if rater_key(name) == wanted}
        if not answers:
            raise ValueError(f"no answers from rater {rater!r} in {session}")
    rows = [_row(name, records, key, len(key)) for name, records in answers.items()]
    pooled = None
    if len(rows) > 1:
        pooled = _row(
            "pooled", [r for records in answers.values() for r in records], key, len(key) * len(rows)
        )
    return {
        "session": str(session),
        "source": meta.get("source"),
        "kind": meta.get("kind"),
        "image_shape": meta.get("image_shape"),
        "channels": meta.get("channels"),
        "channel_names": meta.get("channel_names"),
        "n_real": sum(1 for t in key.values() if t == "real"),
        "n_synthetic": sum(1 for t in key.values() if t == "synthetic"),
        "pool": meta.get("pool"),
        "rows": rows,
        "pooled": pooled,
        "machine": _machine_observer(session, int(meta["seed"]), permutations) if machine else None,
        "han2018": [
            dict(
                zip(
                    (
                        "row",
                        "accuracy",
                        "real_as_real",
                        "real_as_synthetic",
                        "synthetic_as_real",
                        "synthetic_as_synthetic",
                    ),
                    r,
                    strict=True,
                )
            )
            for r in HAN2018_TABLE1
        ],
        "chance": CHANCE,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_turing_table(table: dict[str, Any]) -> str:
    """Markdown of a :func:`turing_table`: the raters' rows in Han et al.'s layout, the machine
    observer, what 50% means, and Han et al.'s Table 1 for reference."""
    lines = [
        f"# Visual Turing Test: {table['session']}",
        "",
        f"Source: {table.get('source')}; {table['n_real']} real and {table['n_synthetic']} synthetic images "
        f"({table.get('kind')}, {'x'.join(str(s) for s in table.get('image_shape') or [])}"
        + (
            f", channels {table['channels']}: {', '.join(table['channel_names'] or [])}"
            if table.get("channels")
            else ""
        )
        + ").",
        "",
        "| rater | accuracy (%) | 95% CI (%) | p (vs 50%) | real as real | real as synt | synt as real "
        "| synt as synt | answered | unreadable |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table["rows"] + ([table["pooled"]] if table.get("pooled") else []):
        ci = "-" if r["ci_low"] is None else f"{_pct(r['ci_low'])} - {_pct(r['ci_high'])}"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        flag = "" if r["complete"] else " (incomplete)"
        lines.append(
            f"| {r['rater']}{flag} | {_pct(r['accuracy'])} | {ci} | {p} | {r['real_as_real']} | "
            f"{r['real_as_synthetic']} | {r['synthetic_as_real']} | {r['synthetic_as_synthetic']} | "
            f"{r['answered']} / {r['items']} | {r['unreadable']} |"
        )
    if not table["rows"]:
        lines.append("| (no answers yet) | | | | | | | | | |")
    lines += [
        "",
        "Accuracy = (real as real + synthetic as synthetic) / images judged; images flagged unreadable are "
        "counted apart and left out. CI: exact (Clopper-Pearson); p: two-sided exact binomial test against "
        "50%."
        + (" The pooled row adds the raters' answers as if independent." if table.get("pooled") else ""),
        "",
        table["chance"],
        "",
        "## Machine observer (classifier two-sample test)",
        "",
    ]
    m = table.get("machine")
    if m is None:
        lines.append("Not run.")
    elif "skipped" in m:
        lines.append(f"Skipped: {m['skipped']}.")
    else:
        lines.append(
            f"C2ST accuracy {_pct(m['accuracy'])}% (95% CI {_pct(m['ci_low'])} - {_pct(m['ci_high'])}), "
            f"permutation p = {m['p_value']:.3g} ({m['permutations']} permutations), {m['folds']}-fold "
            f"cross-validated on the session's pools: {m['n_real']} real vs {m['n_synthetic']} synthetic "
            "images (all channels), the shown ones among them"
            + ("; a subject's real images kept in one fold" if m.get("grouped_by_subject") else "")
            + ". 50% again means indistinguishable."
        )
    lines += [
        "",
        "## Han et al. (2018), Table 1, for reference (one expert physician, 50 real + 50 synthetic each)",
        "",
        "| images | accuracy (%) | real as real | real as synt | synt as real | synt as synt |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table["han2018"]:
        lines.append(
            f"| {r['row']} | {r['accuracy']} | {r['real_as_real']} | {r['real_as_synthetic']} | "
            f"{r['synthetic_as_real']} | {r['synthetic_as_synthetic']} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    session: str | os.PathLike, rater: str | None = None, *, machine: bool = True, permutations: int = 100
) -> tuple[str, dict[str, Any]]:
    """:func:`turing_table` written as ``SESSION/report.md`` and ``SESSION/report.json``.

    Returns:
        ``(markdown, table)``.

    Raises:
        As :func:`turing_table`.
    """
    table = turing_table(session, rater, machine=machine, permutations=permutations)
    text = format_turing_table(table)
    from brainkern.data.io import atomic_path  # noqa: PLC0415

    with atomic_path(Path(session) / "report.md") as tmp:
        tmp.write_text(text)
    _write_json(Path(session) / "report.json", table)
    return text, table


# ----------------------------------------------------------------------------- the server


def _page() -> bytes:
    return resources.files("brainkern.evaluate").joinpath("turing_page.html").read_bytes()


def _own_result(session: Path, name: str, task: str = "turing") -> dict[str, Any]:
    """The finished rater's own row (only then does the key leave the server)."""
    key = _load_key(session)
    if task == "pairs":
        counts = pairs_counts(_rater_answers(session, name), key)
        return {**counts, "accuracy": counts["correct"] / counts["judged"] if counts["judged"] else None}
    row = _row(name.strip(), _rater_answers(session, name), key, len(key))
    return {k: row[k] for k in (*_row_cells(), "accuracy", "unreadable", "judged", "correct", "answered")}


def _row_cells() -> tuple[str, ...]:
    return ("real_as_real", "real_as_synthetic", "synthetic_as_real", "synthetic_as_synthetic")


class TuringServer(ThreadingHTTPServer):
    """The session's HTTP server (see :func:`serve`); ``url`` is where the page is."""

    daemon_threads = True

    def __init__(self, session: Path, address: tuple[str, int]):
        self.session = Path(session)
        self.meta = load_session(session)
        self.task = session_task(self.meta)
        self.files = {
            Path(it[k]).name for it in self.meta["items"] for k in ("file", "left", "right") if k in it
        }
        self.page = _page()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: TuringServer
    server_version = "brainkern-turing"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return None  # answers are the log; per-request lines would only bury the URL

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _state(self, name: str) -> dict[str, Any]:
        items = rater_order(self.server.meta, name)
        done = {r["item"]: r["answer"] for r in _rater_answers(self.server.session, name)}
        finished = len(done) >= len(items)
        task = self.server.task
        if task == "pairs":
            shown = [
                {
                    "id": it["id"],
                    **{k: "/" + it[f] for k, f in (("src", "file"), ("left", "left"), ("right", "right"))},
                }
                for it in items
            ]
        else:
            shown = [{"id": it["id"], "src": "/" + it["file"], "channel": it["channel"]} for it in items]
        return {
            "rater": name.strip(),
            "task": task,
            "total": len(items),
            "items": shown,
            "answered": done,
            "finished": finished,
            "result": _own_result(self.server.session, name, task) if finished else None,
        }

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8")
            elif url.path.startswith("/images/") and url.path[len("/images/") :] in self.server.files:
                data = (self.server.session / url.path.lstrip("/")).read_bytes()
                self._send(200, data, "image/png")
            elif url.path == "/api/task":  # what the start screen explains, before a name is given
                self._json(200, {"task": self.server.task, "answers": list(task_answers(self.server.meta))})
            elif url.path == "/api/state":
                self._json(200, self._state(query.get("rater", [""])[0]))
            else:
                self._json(404, {"error": f"no such page: {url.path}"})
        except ValueError as exc:
            self._json(400, {"error": str(exc)})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if urlsplit(self.path).path != "/api/answer":
            self._json(404, {"error": f"no such page: {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 4096:
                raise ValueError(f"expected a JSON body of 1 to 4096 bytes, got {length}")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            name, item = body.get("rater", ""), body.get("item", "")
            stored_now, record = record_answer(
                self.server.session, name, item, body.get("answer"), body.get("ms")
            )
        except AnswerConflict as exc:
            self._json(409, {"error": str(exc), "answer": exc.stored["answer"]})
            return
        except (ValueError, json.JSONDecodeError) as exc:
            self._json(400, {"error": str(exc)})
            return
        done = len(_rater_answers(self.server.session, name))
        self._json(
            200,
            {
                "status": "saved" if stored_now else "already saved",
                "answer": record["answer"],
                "answered": done,
                "finished": done >= len(self.server.meta["items"]),
            },
        )


def serve(session: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> TuringServer:
    """A bound (not yet running) server of a session's page: call ``serve_forever()`` on it
    (in a thread for tests), ``shutdown()`` and ``server_close()`` to stop; ``port=0`` picks a
    free port (see ``server.url``).

    Raises:
        FileNotFoundError: not a session.
        OSError: the address cannot be bound.
    """
    return TuringServer(Path(session), (host, int(port)))


def serve_until_stopped(session: str | os.PathLike, host: str, port: int, title: str) -> int:
    """Serve a session's page until Ctrl-C, printing ``title`` and the URL first; the exit status
    (2, with the reason on stderr, when the session cannot be served)."""
    import sys  # noqa: PLC0415

    try:
        server = serve(session, host, port)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{title} at {server.url}  (session {session}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print(f"stopped; answers are in {Path(session) / 'answers'}", flush=True)
    return 0


# ----------------------------------------------------------------------------- sources


_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".png")


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"{folder} holds no .nii, .nii.gz or .png images")
    return files


def _read_image(path: Path) -> np.ndarray:
    """``(1, H, W)`` (PNG as shown; a 2D NIfTI turned upright) or ``(1, D, H, W)`` (3D NIfTI)."""
    if path.name.lower().endswith(".png"):
        from matplotlib.image import imread  # noqa: PLC0415

        x = np.asarray(imread(path), dtype=np.float32)
        if x.ndim == 3:  # RGB(A): grey from the colour channels
            x = x[..., :3].mean(axis=-1)
        return x[None]
    import nibabel as nib  # noqa: PLC0415

    x = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))
    while x.ndim > 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 3 and 1 in x.shape:
        x = np.squeeze(x)
    if x.ndim == 2:
        return np.ascontiguousarray(_upright(x))[None]
    if x.ndim == 3:
        return x[None]
    raise ValueError(f"{path}: expected a 2D or 3D image, got shape {x.shape}")


def folder_images(folder: str | os.PathLike, count: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Up to ``count`` images of a folder, picked at random (seeded), as ``(N, 1, ...)`` float32.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no images, or images of different shapes.
    """
    files = _image_files(Path(folder))
    pick = np.random.default_rng(seed).permutation(len(files))[:count]
    chosen = [files[int(i)] for i in pick]
    arrays = [_read_image(p) for p in chosen]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"{folder}: images of several shapes {shapes[:3]}; resample them to one first")
    return np.stack(arrays), [p.name for p in chosen]


def run_images(
    run_dir: str | os.PathLike, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Up to ``count`` held-out real images of a training run (picked at random, seeded) and as
    many samples of its model, in display orientation, with what they are.

    Returns:
        ``(real, synthetic, facts)``: ``(N, C, S, S)`` slices of a 2D run (turned upright if the
        run's :class:`~brainkern.data.SliceDataset` did not cut them so) or ``(N, 1, D, H, W)``
        volumes of a 3D run, and a dict with ``window``, ``names`` (2D channel names), ``real``
        (which images), ``model`` and ``groups`` (the subject of each real image).

    Raises:
        FileNotFoundError: not a run directory.
        ValueError: the run has no images to show.
    """
    import torch  # noqa: PLC0415

    from brainkern.train.data import evaluation_indices, load_run_data  # noqa: PLC0415
    from brainkern.train.engine import load_run  # noqa: PLC0415

    model, cfg, _ = load_run(run_dir, device="cpu")
    split, dataset = load_run_data(cfg["data"], progress=False)
    idx, desc = evaluation_indices(dataset, cfg["data"].get("classes"), split)
    if len(idx) == 0:
        raise ValueError(f"{run_dir}: the run has no real images to compare with")
    pick = np.asarray(idx)[np.random.default_rng(seed).permutation(len(idx))[:count]]
    items = [dataset[int(i)] for i in pick]
    real = torch.stack([it["image"] for it in items]).float()
    subjects = getattr(dataset, "subjects", None)
    volume = getattr(dataset, "volume_indices", None)
    owners = [int(volume[i]) if volume is not None else int(i) for i in pick]
    groups = [
        str(subjects[v]) if subjects is not None and subjects[v] is not None else f"volume-{v}"
        for v in owners
    ]
    labels = None
    if getattr(model, "conditional", False):
        labels = torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long)
    synthetic = model.sample(
        len(pick), labels, generator=torch.Generator().manual_seed(seed), batch_size=16, device="cpu"
    )
    real_a, syn_a = real.numpy(), synthetic.numpy()
    names = None
    if real_a.ndim == 4:
        if not getattr(dataset, "upright", True):  # SliceDataset says how it cut its slices
            real_a = np.ascontiguousarray(np.swapaxes(real_a, 2, 3)[:, :, ::-1])
            syn_a = np.ascontiguousarray(np.swapaxes(syn_a, 2, 3)[:, :, ::-1])
        sequences = [str(s) for s in cfg["data"].get("sequences") or []]
        if len(sequences) == real_a.shape[1]:
            pretty = {"t1": "T1", "t1c": "T1c", "t2": "T2", "flair": "FLAIR"}
            names = [pretty.get(s.lower(), s) for s in sequences]
    window = (0.0, 1.0) if cfg["data"].get("scale") == "[0,1]" else (-1.0, 1.0)
    return (
        real_a,
        syn_a,
        {
            "window": window,
            "names": names,
            "real": desc,
            "model": cfg.get("model", {}).get("name"),
            "groups": groups,
        },
    )


def default_session_dir(source: str | os.PathLike) -> Path:
    """``turing-<source name>-<UTC time>`` beside the source."""
    source = Path(source).resolve()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return source.parent / f"turing-{re.sub(r'[^A-Za-z0-9_.-]', '_', source.name)}-{stamp}"
