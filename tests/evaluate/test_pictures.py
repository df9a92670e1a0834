"""Tri-planar mosaics and loss curves: valid, non-blank PNGs, orientation, bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from brainkern.evaluate import loss_curves, triplanar_mosaic
from brainkern.evaluate.pictures import _centre_slices, _is_timing

mpimg = pytest.importorskip("matplotlib.image")


def _read_png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


def _not_blank(image) -> bool:
    return float(image[..., :3].std()) > 0.02


def _blobs(n: int, grid, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1, 1, s) for s in grid]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    r = (torch.rand(n, 3, generator=g) - 0.5) * 0.6
    d2 = (x - r[:, 0, None, None, None]) ** 2 + (y - r[:, 1, None, None, None]) ** 2 + z**2
    return (torch.exp(-d2 / 0.3) * 2 - 1)[:, None]


def test_mosaic_writes_a_png(tmp_path):
    out = tmp_path / "new" / "deeper" / "mosaic.png"
    got = triplanar_mosaic(
        {"real": _blobs(8, (16, 16, 16)), "generated": _blobs(3, (16, 16, 16), 1).numpy()[:, 0]},
        out,
        n_per_row=4,
        title="step 100",
    )
    assert got == out
    image = _read_png(out)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[1] > image.shape[0]  # 12 panels across, 2 rows down
    assert _not_blank(image)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mosaic.png"]  # no temporary left over


def test_mosaic_non_cubic_and_short_rows(tmp_path):
    vols = _blobs(2, (20, 12, 9))
    path = triplanar_mosaic({"a": vols, "b": vols[:1, 0]}, tmp_path / "m.png", n_per_row=6)
    image = _read_png(path)
    assert _not_blank(image)
    # Only two columns of volumes are drawn when no row holds more.
    wide = _read_png(triplanar_mosaic({"a": _blobs(6, (20, 12, 9))}, tmp_path / "w.png", n_per_row=6))
    assert wide.shape[1] > 2 * image.shape[1]


def test_centre_slices_orientation():
    # value = 100 x + 10 y + z on a (D, H, W) = (5, 4, 3) grid, RAS.
    x, y, z = torch.meshgrid(torch.arange(5.0), torch.arange(4.0), torch.arange(3.0), indexing="ij")
    vol = (100 * x + 10 * y + z).numpy()
    sag, cor, axi = _centre_slices(vol)
    assert sag.shape == (3, 4) and cor.shape == (3, 5) and axi.shape == (4, 5)
    # imshow(origin="lower"): row index grows upwards, column index to the right.
    assert sag[2, 0] - sag[0, 0] == 2 and sag[0, 3] - sag[0, 0] == 30  # superior up, anterior right
    assert cor[2, 0] - cor[0, 0] == 2 and cor[0, 4] - cor[0, 0] == 400  # superior up, right to the right
    assert axi[3, 0] - axi[0, 0] == 30 and axi[0, 4] - axi[0, 0] == 400  # anterior up
    assert sag[0, 0] == 200 and cor[0, 0] == 20 and axi[0, 0] == 1  # the centre planes x = 2, y = 2, z = 1


def test_mosaic_puts_superior_up(tmp_path):
    # Bright where z is high (superior), dark below: the bright pixels sit in the upper half.
    vol = -torch.ones(1, 16, 16, 16)
    vol[..., 8:] = 1
    image = _read_png(triplanar_mosaic({"s": vol}, tmp_path / "o.png", n_per_row=1))
    grey = image[..., :3].mean(-1)
    rows = np.nonzero(grey > 0.7)[0]
    # The sagittal and coronal panels are bright on top; the axial plane (z = 8) is all bright,
    # so the bright mass still lies above the middle.
    assert rows.size > 0 and rows.mean() < grey.shape[0] / 2


def test_mosaic_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one row"):
        triplanar_mosaic({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no volumes"):
        triplanar_mosaic({"a": torch.zeros(0, 1, 8, 8, 8)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        triplanar_mosaic({"a": torch.zeros(2, 8, 8)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="vmin"):
        triplanar_mosaic({"a": torch.zeros(2, 8, 8, 8)}, tmp_path / "x.png", vmin=1, vmax=1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        triplanar_mosaic({"a": [1, 2]}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _write_metrics(path, records, tail=""):
    with open(path, "w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
        fh.write(tail)


def _records(n=60):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        r = {"iter": i * 10, "loss_d": float(-i + rng.normal()), "loss_g": float(i * 0.5 + rng.normal())}
        if i % 3 == 0:
            r["loss_c"] = float(rng.normal())  # logged only some steps
        r["it_per_s"] = 3.0 + float(rng.normal()) * 0.1
        r["phase"] = "warmup" if i < 5 else "main"  # non-numeric: ignored
        out.append(r)
    return out


def test_loss_curves_png(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write_metrics(metrics, _records(), tail='{"iter": 600, "loss_d": 1.')  # a partial last line
    image = _read_png(loss_curves(metrics, tmp_path / "plots" / "loss.png"))
    assert _not_blank(image)
    only = _read_png(loss_curves(metrics, tmp_path / "one.png", keys=["loss_d"], smooth=0.0))
    assert _not_blank(only) and only.shape[1] < image.shape[1]


def test_timing_fields_share_a_subplot(tmp_path):
    metrics = tmp_path / "m.jsonl"
    recs = [
        {"iter": i, "loss_d": float(i), "loss_g": float(-i), "it_per_s": 2.0 + i % 2, "data_s": 0.1}
        for i in range(8)
    ]
    _write_metrics(metrics, recs)
    # loss_d, loss_g and one timing panel: three subplots fit one row; four would need two.
    shared = _read_png(loss_curves(metrics, tmp_path / "a.png"))
    three = _read_png(loss_curves(metrics, tmp_path / "b.png", keys=["loss_d", "loss_g", "it_per_s"]))
    assert shared.shape == three.shape
    assert _is_timing("it_per_s") and _is_timing("data_s") and _is_timing("step_time")
    assert not any(_is_timing(k) for k in ("loss_d", "loss_g", "loss_c", "gp_d", "lr"))


def test_loss_curves_tolerates_a_glued_line_after_resume(tmp_path):
    metrics = tmp_path / "m.jsonl"
    recs = _records(10)
    lines = [json.dumps(r) for r in recs]
    lines[4] = lines[4][:20] + lines[5]  # a crash cut line 5, the resumed run appended after it
    metrics.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        path = loss_curves(metrics, tmp_path / "r.png")
    assert _not_blank(_read_png(path))


def test_loss_curves_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        loss_curves(tmp_path / "absent.jsonl", tmp_path / "x.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no record"):
        loss_curves(empty, tmp_path / "x.png")
    no_numbers = tmp_path / "n.jsonl"
    _write_metrics(no_numbers, [{"iter": 1, "phase": "a"}])
    with pytest.raises(ValueError, match="no numeric field"):
        loss_curves(no_numbers, tmp_path / "x.png")
    ok = tmp_path / "ok.jsonl"
    _write_metrics(ok, _records(5))
    with pytest.raises(ValueError, match="loss_x"):
        loss_curves(ok, tmp_path / "x.png", keys=["loss_x"])
    with pytest.raises(ValueError, match="smooth"):
        loss_curves(ok, tmp_path / "x.png", smooth=1.0)
    assert not (tmp_path / "x.png").exists()


def test_import_does_not_load_matplotlib(tmp_path):
    code = (
        "import sys, brainkern.evaluate as e; assert 'matplotlib' not in sys.modules, 'import'; "
        "e.loss_curves, e.triplanar_mosaic; assert 'matplotlib' not in sys.modules, 'attribute'; "
        f"e.triplanar_mosaic({{'a': __import__('torch').zeros(1, 8, 8, 8)}}, {str(tmp_path / 'i.png')!r}); "
        "assert 'matplotlib' in sys.modules; print(sorted(e.__all__))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "loss_curves" in done.stdout
