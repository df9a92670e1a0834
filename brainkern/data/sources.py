"""Where a data set's files and labels come from: a labels table, class folders,
a BIDS data set, or a Neurovault collection folder as nilearn downloads it.

Each reader returns a list of :class:`Record` (file, label, subject) and checks
every row up front, so a bad table fails at once with the row and column named.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from brainkern.data.io import is_nifti


@dataclass(frozen=True)
class Record:
    """One labelled volume: its file, its class name and (optionally) its subject."""

    path: Path
    label: str
    subject: str | None = None


def _nifti_files(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_nifti(p.name) and not p.name.startswith("."))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _delimiter(table: Path) -> str:
    name = table.name.lower()
    if name.endswith((".tsv", ".tsv.gz")):
        return "\t"
    if name.endswith((".csv", ".csv.gz")):
        return ","
    with open(table, newline="") as fh:
        head = fh.readline()
    return "\t" if head.count("\t") > head.count(",") else ","


def read_table(table: str | os.PathLike) -> list[Record]:
    """Read a labels table (CSV or TSV) with columns ``path``, ``label`` and optional ``subject``.

    Relative paths resolve against the table's folder. Rows are numbered from 1
    (the first row after the header), as a spreadsheet shows them minus the header.

    Raises:
        FileNotFoundError: the table does not exist.
        ValueError: a required column is missing, the table has no rows, or a row
            has an empty ``path``/``label``, a file that does not exist, or a file
            that is not ``.nii``/``.nii.gz``; the message names the row and column.
    """
    import pandas as pd

    table = Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"no such labels table: {table}")
    try:
        df = pd.read_csv(table, sep=_delimiter(table), dtype=str, keep_default_na=False)
    except Exception as err:
        raise ValueError(f"{table}: could not parse the table ({type(err).__name__}: {err})") from err
    df.columns = [str(c).strip() for c in df.columns]
    for column in ("path", "label"):
        if column not in df.columns:
            raise ValueError(
                f"{table}: missing column '{column}' (columns found: {', '.join(map(str, df.columns))}); "
                "a labels table needs 'path' and 'label' and may have 'subject'"
            )
    if len(df) == 0:
        raise ValueError(f"{table}: the table has no rows")
    has_subject = "subject" in df.columns
    root = table.resolve().parent
    records = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{table}, row {i} (line {i + 1})"
        raw_path = str(row["path"]).strip()
        label = str(row["label"]).strip()
        if not raw_path:
            raise ValueError(f"{where}: column 'path' is empty")
        if not label:
            raise ValueError(f"{where}: column 'label' is empty")
        path = Path(raw_path).expanduser()
        if not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise ValueError(f"{where}: column 'path': file not found: {path}")
        if not is_nifti(path.name):
            raise ValueError(f"{where}: column 'path': {path} is not a .nii or .nii.gz file")
        subject = str(row["subject"]).strip() if has_subject else ""
        records.append(Record(path=path, label=label, subject=subject or None))
    return records


def write_table(records: list[Record], table: str | os.PathLike) -> Path:
    """Write a labels table (CSV unless the name ends in .tsv), paths relative to its folder
    where possible, atomically."""
    from brainkern.data.io import atomic_path

    table = Path(table)
    root = table.resolve().parent
    delimiter = "\t" if table.name.lower().endswith(".tsv") else ","
    with atomic_path(table) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
            writer.writerow(["path", "label", "subject"])
            for r in records:
                p = Path(r.path).resolve()
                try:
                    shown = p.relative_to(root).as_posix()
                except ValueError:
                    shown = str(p)
                writer.writerow([shown, r.label, r.subject or ""])
    return table


def scan_folder(root: str | os.PathLike) -> list[Record]:
    """One subfolder per class, NIfTI files anywhere below it; the subject is the file stem.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` has no class subfolders, or a class folder has no NIfTI file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root}: no class subfolders (expected one folder of NIfTI files per class)")
    records = []
    for folder in classes:
        files = _nifti_files(folder)
        if not files:
            raise ValueError(f"{root}: class folder '{folder.name}' holds no .nii or .nii.gz file")
        records += [Record(path=f, label=folder.name, subject=_stem(f)) for f in files]
    return records


def scan_bids(
    root: str | os.PathLike, label_column: str, suffix: str = "T1w", missing: str = "raise"
) -> list[Record]:
    """A BIDS data set: labels from ``participants.tsv``, images ``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``.

    Every matching image of a participant is a record with the participant as its
    subject (so splits keep sessions of one person together).

    Args:
        root: the BIDS root (holding ``participants.tsv``).
        label_column: the ``participants.tsv`` column holding the class.
        suffix: the image suffix (``T1w`` by default).
        missing: ``"raise"`` or ``"skip"`` for participants with no image.

    Raises:
        FileNotFoundError: no root or no ``participants.tsv``.
        ValueError: missing ``participant_id`` or ``label_column`` column, an empty or
            ``n/a`` label, or (``missing="raise"``) a participant without an image;
            the message names the row and column.
    """
    import pandas as pd

    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
    root = Path(root)
    table = root / "participants.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"no participants.tsv in the BIDS folder {root}")
    df = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    for column in ("participant_id", label_column):
        if column not in df.columns:
            raise ValueError(
                f"{table}: missing column '{column}' (columns found: {', '.join(map(str, df.columns))})"
            )
    records = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{table}, row {i} (line {i + 1})"
        pid = str(row["participant_id"]).strip()
        label = str(row[label_column]).strip()
        if not pid:
            raise ValueError(f"{where}: column 'participant_id' is empty")
        if not label or label.lower() == "n/a":
            raise ValueError(f"{where}: column '{label_column}' is empty or n/a")
        sub = pid if pid.startswith("sub-") else f"sub-{pid}"
        files = sorted(
            p
            for pattern in (f"anat/{sub}*_{suffix}.nii*", f"ses-*/anat/{sub}*_{suffix}.nii*")
            for p in (root / sub).glob(pattern)
            if is_nifti(p.name)
        )
        if not files:
            if missing == "skip":
                continue
            raise ValueError(
                f"{where}: column 'participant_id': no {root / sub}/[ses-*/]anat/*_{suffix}.nii[.gz] image"
            )
        records += [Record(path=f, label=label, subject=sub) for f in files]
    if not records:
        raise ValueError(f"{root}: no participant has a *_{suffix} image")
    return records


def scan_neurovault(
    folder: str | os.PathLike, label_field: str, subject_field: str | None = None
) -> list[Record]:
    """A Neurovault download (nilearn ``fetch_neurovault``): ``image_<id>.nii.gz`` with
    ``image_<id>_metadata.json`` beside it, in one ``collection_<id>`` folder or several.

    The label is the metadata field ``label_field`` (e.g. ``"cognitive_paradigm_cogatlas"``,
    ``"contrast_definition"``, ``"map_type"``). When only the resampled copy
    ``image_<id>_resampled.nii.gz`` is present it is used.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no metadata files, a metadata file that is not JSON, lacks
            ``label_field`` or has it empty, or whose image file is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such Neurovault folder: {folder}")
    metas = sorted(folder.rglob("image_*_metadata.json"))
    if not metas:
        raise ValueError(f"{folder}: no image_<id>_metadata.json files (a Neurovault download folder?)")
    records = []
    for meta in metas:
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta}: not a readable JSON metadata file ({err})") from err
        image_id = meta.name[len("image_") : -len("_metadata.json")]
        if label_field not in info:
            raise ValueError(f"{meta}: no field '{label_field}' (fields: {', '.join(sorted(info))})")
        value = info[label_field]
        label = "" if value is None else str(value).strip()
        if not label or label.lower() in ("none", "n/a"):
            raise ValueError(f"{meta}: field '{label_field}' is empty")
        candidates = [
            meta.parent / f"image_{image_id}.nii.gz",
            meta.parent / f"image_{image_id}_resampled.nii.gz",
        ]
        for key in ("absolute_path", "resampled_absolute_path"):
            if info.get(key):
                candidates.append(Path(info[key]))
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"{meta}: image file not found (looked for {candidates[0].name} beside it)")
        subject = None
        if subject_field is not None:
            if info.get(subject_field) in (None, ""):
                raise ValueError(f"{meta}: field '{subject_field}' is missing or empty")
            subject = str(info[subject_field])
        records.append(Record(path=path, label=label, subject=subject))
    return records
