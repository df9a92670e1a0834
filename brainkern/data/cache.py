"""On-disk cache of preprocessed volumes: one folder per (files, settings) key.

A cache entry ``<cache_dir>/vol-<key>/`` holds ``volumes.npy`` (``(N, D, H, W)``
float32, opened memory-mapped), ``mask.npy`` when a mask was computed, and
``meta.json``. The key hashes each input file's resolved path, size and
modification time with the preprocessing settings, so touching or replacing a
file gives a new key (a miss) and the stale entry is pruned.

Entries are built in a private temporary folder and published with one
``os.rename``; two processes filling the same entry at once both build, the
first rename wins and the second discards its copy. Readers only ever see
complete entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

CACHE_VERSION = 1


def file_stamp(path: str | os.PathLike) -> list:
    """``[resolved path, size, mtime_ns]`` of a file (no read of its content)."""
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), int(st.st_size), int(st.st_mtime_ns)]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def cache_keys(paths: list, settings: dict, extra_files: list | None = None) -> tuple[str, str]:
    """``(key, source)``: the entry key (paths + stats + settings) and the source id
    (paths + settings, no stats) shared by stale versions of the same entry."""
    stamps = [file_stamp(p) for p in paths] + [file_stamp(p) for p in (extra_files or [])]
    key = _digest({"version": CACHE_VERSION, "files": stamps, "settings": settings})
    source = _digest({"version": CACHE_VERSION, "files": [s[0] for s in stamps], "settings": settings})
    return key[:32], source[:32]


def entry_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"vol-{key}"


def is_complete(entry: Path) -> bool:
    return (entry / "meta.json").is_file() and (entry / "volumes.npy").is_file()


def new_build_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    """A private folder to build an entry in (same file system as the entry)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".build-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(build: Path, entry: Path) -> Path:
    """Move a finished build folder onto its entry name, atomically.

    If another process published the entry first, this build is discarded and the
    existing entry is used.
    """
    try:
        os.rename(build, entry)
    except OSError:
        shutil.rmtree(build, ignore_errors=True)
        if not is_complete(entry):
            raise
    return entry


def prune_stale(cache_dir: str | os.PathLike, source: str, keep: Path) -> list[Path]:
    """Remove entries built from the same files and settings but older file stats."""
    removed = []
    for entry in Path(cache_dir).glob("vol-*"):
        if entry == keep or not entry.is_dir():
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source") == source:
            # Open memory maps of the old entry stay valid after unlink on POSIX.
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
