import json
from pathlib import Path

import pytest

from brainkern.data import VolumeDataset, read_table, scan_bids, scan_folder, scan_neurovault
from tests.data.helpers import blob_volume, make_table, write_nifti


@pytest.mark.parametrize("sep,name", [(",", "labels.csv"), ("\t", "labels.tsv")])
def test_table_csv_and_tsv(tmp_path, sep, name):
    table = make_table(tmp_path, sep=sep, name=name)
    recs = read_table(table)
    assert len(recs) == 6
    assert all(r.path.is_absolute() and r.path.is_file() for r in recs)
    assert recs[0].path == (tmp_path / "img/a_0.nii.gz").resolve()
    assert [r.label for r in recs] == ["a"] * 3 + ["b"] * 3
    assert recs[3].subject == "s1"
    ds = VolumeDataset.from_table(table)
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.subjects == ["s0", "s0", "s1", "s1", "s2", "s2"]


def test_table_without_subject_and_absolute_paths(tmp_path):
    p = write_nifti(tmp_path / "x" / "v.nii", blob_volume())
    table = tmp_path / "t" / "labels.csv"
    table.parent.mkdir()
    table.write_text(f"label,path\nctl,{p}\n")
    (rec,) = read_table(table)
    assert rec.path == p and rec.label == "ctl" and rec.subject is None


def test_table_errors_name_row_and_column(tmp_path):
    make_table(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nimg/a_0.nii.gz,a\n")
    with pytest.raises(ValueError, match="missing column 'path'"):
        read_table(bad)
    bad.write_text("path,label\nimg/a_0.nii.gz,a\nimg/a_1.nii.gz,\n")
    with pytest.raises(ValueError, match=r"row 2 .*column 'label' is empty"):
        read_table(bad)
    bad.write_text("path,label\nimg/a_0.nii.gz,a\n,b\n")
    with pytest.raises(ValueError, match=r"row 2 .*column 'path' is empty"):
        read_table(bad)
    bad.write_text("path,label\nimg/a_0.nii.gz,a\nimg/a_1.nii.gz,a\nimg/missing.nii.gz,b\n")
    with pytest.raises(ValueError, match=r"row 3 .*column 'path': file not found: .*missing.nii.gz"):
        read_table(bad)
    bad.write_text("path,label\n")
    with pytest.raises(ValueError, match="no rows"):
        read_table(bad)
    (tmp_path / "img" / "notes.txt").write_text("x")
    bad.write_text("path,label\nimg/notes.txt,a\n")
    with pytest.raises(ValueError, match=r"row 1 .*not a .nii"):
        read_table(bad)
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        read_table(tmp_path / "nothere.csv")


def test_class_folders(tmp_path):
    for c, n in (("patient", 2), ("control", 3)):
        for j in range(n):
            write_nifti(tmp_path / "data" / c / f"sub{j}.nii.gz", blob_volume(seed=j))
    write_nifti(tmp_path / "data" / "control" / "nested" / "sub9.nii", blob_volume(seed=9))
    (tmp_path / "data" / "control" / "README").write_text("ignored")
    recs = scan_folder(tmp_path / "data")
    assert [r.label for r in recs] == ["control"] * 4 + ["patient"] * 2
    assert recs[-1].subject == "sub1"
    ds = VolumeDataset.from_folder(tmp_path / "data", shape=(8, 8, 8))
    assert ds.classes == ["control", "patient"] and len(ds) == 6
    item = ds[5]
    assert item["image"].shape == (1, 8, 8, 8) and item["label"] == 1


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ValueError, match="'a' holds no"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "absent")


def _bids(root: Path):
    root.mkdir()
    rows = ["participant_id\tage\tdiagnosis"]
    for k, (sub, dx) in enumerate([("01", "HC"), ("02", "SCZ"), ("03", "HC"), ("04", "SCZ")]):
        rows.append(f"sub-{sub}\t3{k}\t{dx}")
        write_nifti(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", blob_volume(seed=k))
        write_nifti(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T2w.nii.gz", blob_volume(seed=k + 10))
    # a second session for one participant
    write_nifti(root / "sub-02" / "ses-2" / "anat" / "sub-02_ses-2_T1w.nii", blob_volume(seed=7))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")


def test_bids(tmp_path):
    root = tmp_path / "bids"
    _bids(root)
    recs = scan_bids(root, label_column="diagnosis")
    assert len(recs) == 5
    assert {r.path.name for r in recs if r.subject == "sub-02"} == {
        "sub-02_T1w.nii.gz",
        "sub-02_ses-2_T1w.nii",
    }
    ds = VolumeDataset.from_bids(root, label_column="diagnosis")
    assert ds.classes == ["HC", "SCZ"] and len(ds) == 5
    with pytest.raises(ValueError, match="missing column 'group'"):
        scan_bids(root, label_column="group")
    # a participant without an image, and an n/a label
    (root / "participants.tsv").write_text((root / "participants.tsv").read_text() + "sub-05\t40\tHC\n")
    with pytest.raises(ValueError, match=r"row 5 .*sub-05"):
        scan_bids(root, label_column="diagnosis")
    assert len(scan_bids(root, label_column="diagnosis", missing="skip")) == 5
    text = (root / "participants.tsv").read_text().replace("sub-03\t32\tHC", "sub-03\t32\tn/a")
    (root / "participants.tsv").write_text(text)
    with pytest.raises(ValueError, match=r"row 3 .*column 'diagnosis'"):
        scan_bids(root, label_column="diagnosis", missing="skip")


def _neurovault(folder: Path):
    coll = folder / "neurovault" / "collection_1952"
    coll.mkdir(parents=True)
    tasks = ["motor", "visual", "motor", "visual"]
    for k, task in enumerate(tasks):
        image_id = 100 + k
        write_nifti(coll / f"image_{image_id}.nii.gz", blob_volume(seed=k))
        meta = {
            "id": image_id,
            "collection_id": 1952,
            "map_type": "T map",
            "cognitive_paradigm_cogatlas": task,
            "relative_path": f"collection_1952/image_{image_id}.nii.gz",
            "absolute_path": f"/somewhere/else/collection_1952/image_{image_id}.nii.gz",
        }
        (coll / f"image_{image_id}_metadata.json").write_text(json.dumps(meta))
    (coll / "collection_metadata.json").write_text(json.dumps({"id": 1952}))
    return coll


def test_neurovault(tmp_path):
    coll = _neurovault(tmp_path)
    recs = scan_neurovault(tmp_path / "neurovault", label_field="cognitive_paradigm_cogatlas")
    assert [r.label for r in recs] == ["motor", "visual", "motor", "visual"]
    assert recs[0].path == coll / "image_100.nii.gz"
    ds = VolumeDataset.from_neurovault(coll, label_field="cognitive_paradigm_cogatlas", scale="[0,1]")
    assert ds.classes == ["motor", "visual"] and len(ds) == 4
    with pytest.raises(ValueError, match="no field 'contrast'"):
        scan_neurovault(coll, label_field="contrast")
    (coll / "image_101.nii.gz").unlink()
    with pytest.raises(ValueError, match="image_101_metadata.json: image file not found"):
        scan_neurovault(coll, label_field="map_type")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="no image_<id>_metadata.json"):
        scan_neurovault(tmp_path / "nothing", label_field="x")
