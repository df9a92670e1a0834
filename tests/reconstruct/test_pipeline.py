"""Seeliger et al.'s (2018) reconstruction experiment end to end: the configuration, a tiny run on
32x32 digits (built once for the module), a run on a given prior, the user's responses, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

yaml = pytest.importorskip("yaml")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")
pytest.importorskip("skimage")

from brainkern.data.stimuli import load_domain  # noqa: E402
from brainkern.reconstruct.__main__ import main  # noqa: E402
from brainkern.reconstruct.pipeline import DEFAULTS, load_config, preset_names, run  # noqa: E402

SIDE = 32
TINY = {
    "seed": 0,
    "threads": 1,
    "images": {"domain": "digits", "size": SIDE, "mask": False, "seed": 0, "stimuli": [60, 20]},
    "prior": {
        "preset": "seeliger2018-prior-digits",
        "set": {"train.iters": 3, "train.batch_size": 16, "model.width": 8, "model.d_width": 8},
    },
    "features": {"epochs": 1},
    "responses": {"n_voxels": 100, "snr": [1.0]},
    "reconstruction": {"members": 2, "epochs": 1, "batch_size": 16},
    "evaluation": {"grid": 8},
}
METHODS = ("gan", "gan_single", "ridge", "nearest", "shuffled")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny run: ``(its folder, its summary, the config file, the cfg)``."""
    root = tmp_path_factory.mktemp("reconstruct")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    threads = torch.get_num_threads()
    cfg = load_config(config=config)
    try:
        summary = run(cfg, root / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run", summary, config, cfg


@pytest.fixture(scope="module")
def digits():
    return load_domain("digits", size=SIDE, progress=False)


def _names(run_dir: Path) -> dict[str, list[str]]:
    return json.loads((run_dir / "split.json").read_text())["subjects"]


# ----------------------------------------------------------------------------- load_config


def test_quick_preset_loads_over_the_defaults():
    assert "quick" in preset_names()
    cfg = load_config("quick")
    assert cfg["preset"] == "quick"
    assert cfg["images"]["size"] == 32 and cfg["images"]["stimuli"] == [290, 70]
    assert cfg["reconstruction"]["members"] == 15 and len(cfg["responses"]["snr"]) == 2
    # keys the preset leaves alone keep the defaults (the paper's loss weights)
    assert cfg["reconstruction"]["lambda_fp"] == DEFAULTS["reconstruction"]["lambda_fp"] == 50.0
    assert cfg["prior"]["set"]["train.iters"] >= 500 and cfg["prior"]["set"]["model.d_first_norm"] is False
    assert load_config()["preset"] is None and load_config()["images"]["size"] == 64


def test_set_parses_yaml_values():
    cfg = load_config(
        "quick",
        sets=[
            "responses.snr=[0.5, 0.1]",
            "reconstruction.members=7",
            "reconstruction.lr=0.002",
            "images.domain=natural",
            "prior.run=runs/prior",
            "threads=2",
        ],
    )
    assert cfg["responses"]["snr"] == [0.5, 0.1]
    assert cfg["reconstruction"]["members"] == 7 and isinstance(cfg["reconstruction"]["members"], int)
    assert cfg["reconstruction"]["lr"] == 0.002 and isinstance(cfg["reconstruction"]["lr"], float)
    assert cfg["images"]["domain"] == "natural" and cfg["prior"]["run"] == "runs/prior"
    assert load_config(sets=["prior.set={train.iters: 5}"])["prior"]["set"] == {"train.iters": 5}
    assert cfg["threads"] == 2
    assert DEFAULTS["reconstruction"]["members"] == 15  # the defaults are not modified


def test_config_refusals(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_config("nope")
    with pytest.raises(ValueError, match="unknown configuration key 'reconstruction.membres'"):
        load_config(sets=["reconstruction.membres=3"])
    with pytest.raises(ValueError, match="unknown configuration key 'colour'"):
        load_config(sets=["colour=red"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(sets=["reconstruction.members"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(sets=["=3"])
    with pytest.raises(ValueError, match="reconstruction must be a mapping"):
        load_config(sets=["reconstruction=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: {sise: 32}\n")
    with pytest.raises(ValueError, match="unknown configuration key 'images.sise'"):
        load_config(config=bad)
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_config(config=tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- the tiny run


def test_run_writes_its_files(tiny):
    out, summary, _, cfg = tiny
    for name in ("config.yaml", "run.json", "split.json", "summary.json", "report.md", "features.pt"):
        assert (out / name).is_file(), name
    for name in ("identification.png", "prior_samples.png", "snr-1/reconstructions.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    assert (out / "prior" / "checkpoints" / "last.pt").is_file()
    # the written configuration is the one run, and loads back as it is
    assert yaml.safe_load((out / "config.yaml").read_text()) == cfg
    assert load_config(config=out / "config.yaml") == cfg
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 0 and "torch" in record["versions"]
    assert summary["out"] == str(out) and summary["prior"] == str(out / "prior")
    assert summary["prior_iterations"] == 3
    assert json.loads((out / "summary.json").read_text())["prior_iterations"] == 3
    assert [e["name"] for e in summary["experiments"]] == ["snr-1"]
    assert summary["experiments"][0]["snr"] == 1.0
    assert set(summary["timings"]) >= {"prior", "features", "snr-1", "total"}
    report = (out / "report.md").read_text()
    assert "## snr-1" in report and "ridge to pixels" in report and "chance control" in report


def test_split_keeps_test_stimuli_out_of_the_prior(tiny, digits):
    out = tiny[0]
    names = _names(out)
    assert [len(names[p]) for p in ("prior", "train", "test")] == [len(digits) - 80, 60, 20]
    prior, train, test = (set(names[p]) for p in ("prior", "train", "test"))
    assert not (prior & train or prior & test or train & test)
    # what the prior's own run says it trained on
    prior_split = json.loads((out / "prior" / "split.json").read_text())
    assert set(prior_split["subjects"]["train"]) == prior
    trained_on = {digits.names[i] for i in prior_split["trained_on"]}
    assert trained_on == prior and not trained_on & test


def test_arrays_hold_the_test_stimuli_and_reconstructions(tiny, digits):
    arrays = tiny[0] / "snr-1" / "arrays"
    names = json.loads((arrays / "names.json").read_text())
    assert names == _names(tiny[0])["test"]
    index = {n: i for i, n in enumerate(digits.names)}
    stimuli = np.load(arrays / "stimuli.npy")
    np.testing.assert_array_equal(stimuli, digits.images[[index[n] for n in names]])
    recon = {m: np.load(arrays / f"reconstruction_{m}.npy") for m in METHODS}
    for m, r in recon.items():
        assert r.shape == (20, SIDE, SIDE) and r.dtype == np.float32, m
        assert np.isfinite(r).all() and r.min() >= -1 and r.max() <= 1, m
    assert not np.allclose(recon["gan"], recon["gan_single"])
    # the nearest-image baseline answers with training stimuli only
    train = digits.images[[index[n] for n in _names(tiny[0])["train"]]].reshape(60, -1)
    for row in recon["nearest"].reshape(20, -1):
        assert (np.abs(train - row).max(1) == 0).any()
    # the chance control is the ensemble's reconstructions, reordered
    np.testing.assert_array_equal(
        np.sort(recon["shuffled"].reshape(20, -1), 0), np.sort(recon["gan"].reshape(20, -1), 0)
    )


def test_identification_results(tiny):
    folder = tiny[0] / "snr-1"
    record = json.loads((folder / "identification.json").read_text())
    assert record["name"] == "snr-1" and record["pca_components"] >= 1
    assert set(record["identification"]) == set(METHODS)
    for m in METHODS:
        for kind in ("pixel", "feature"):
            res = record["identification"][m][kind]
            assert 0 <= res["all_pairs"]["accuracy"] <= 1 and len(res["images"]) == 20
    chance = record["identification"]["shuffled"]
    for kind in ("pixel", "feature"):
        assert 0.25 <= chance[kind]["all_pairs"]["accuracy"] <= 0.75
    assert record["ridge"]["alpha"] > 0
    assert len(record["history"]["loss"]) == 1 and record["history"]["members"] == 2
    assert "ridge to pixels" in (folder / "identification.txt").read_text()
    saved = torch.load(folder / "regression.pt", weights_only=False)
    assert saved["members"] == 2 and saved["state_dict"]["weight"].shape[0] == 2


# ----------------------------------------------------------------------------- a given prior


def test_cli_reuses_a_prior(tiny, tmp_path, capsys):
    first, _, config, _ = tiny
    out = tmp_path / "again"
    threads = torch.get_num_threads()
    try:
        code = main(["--config", str(config), "--prior", str(first / "prior"), "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert str(out) in capsys.readouterr().out
    assert not (out / "prior").exists()
    assert json.loads((out / "summary.json").read_text())["prior"] == str(first / "prior")
    assert load_config(config=out / "config.yaml")["prior"]["run"] == str(first / "prior")
    assert _names(out) == _names(first)
    for name in ("stimuli", "reconstruction_gan", "reconstruction_ridge", "reconstruction_nearest"):
        again = np.load(out / "snr-1" / "arrays" / f"{name}.npy")
        assert again.shape == (20, SIDE, SIDE)
        # the same seed, data and prior: the same result
        np.testing.assert_allclose(again, np.load(first / "snr-1" / "arrays" / f"{name}.npy"), atol=1e-5)


def test_cli_refuses_a_non_empty_out(tiny, capsys):
    first, _, config, _ = tiny
    before = sorted(p.name for p in first.iterdir())
    assert main(["--config", str(config), "--out", str(first), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "not empty" in err[0]
    assert sorted(p.name for p in first.iterdir()) == before


def test_a_prior_that_saw_a_test_stimulus_is_refused(tiny, tmp_path):
    first, _, _, cfg = tiny
    leaky = tmp_path / "leaky"
    leaky.mkdir()
    test_name = _names(first)["test"][4]
    (leaky / "split.json").write_text(
        json.dumps({"subjects": {"train": ["digits-0000", test_name], "test": []}})
    )
    bad = {**cfg, "prior": {**cfg["prior"], "run": str(leaky)}}
    with pytest.raises(ValueError, match=f"trained on 1 of the test stimuli \\(e.g. {test_name}\\)"):
        run(bad, tmp_path / "out", progress=False)
    blind = tmp_path / "blind"
    blind.mkdir()
    bad = {**cfg, "prior": {**cfg["prior"], "run": str(blind)}}
    with pytest.raises(ValueError, match="no split.json"):
        run(bad, tmp_path / "out2", progress=False)


def test_a_prior_of_another_image_size_is_refused(tiny, tmp_path):
    first, _, _, cfg = tiny
    bigger = {
        **cfg,
        "images": {**cfg["images"], "size": 2 * SIDE},
        "prior": {**cfg["prior"], "run": str(first / "prior")},
    }
    with pytest.raises(ValueError, match=f"draws 1-channel {SIDE}x{SIDE} images, the stimuli are grey"):
        run(bigger, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------- the user's responses


def _user_files(folder: Path, train: list[str], test: list[str], digits) -> tuple[Path, Path]:
    """Two repeats of each stimulus: responses a fixed random projection of the image plus noise."""
    import pandas as pd

    rng = np.random.default_rng(0)
    index = {n: i for i, n in enumerate(digits.names)}
    proj = rng.normal(size=(SIDE * SIDE, 80)) / SIDE
    rows = [(n, p, r) for r in (1, 2) for p, names in (("train", train), ("test", test)) for n in names]
    images = digits.images[[index[n] for n, _, _ in rows]].reshape(len(rows), -1)
    data = images @ proj + rng.normal(0, 0.1, (len(rows), 80))
    np.save(folder / "responses.npy", data.astype(np.float32))
    pd.DataFrame(rows, columns=["stimulus", "part", "repeat"]).to_csv(folder / "table.csv", index=False)
    return folder / "responses.npy", folder / "table.csv"


def test_user_responses(tiny, tmp_path, digits):
    first, _, _, cfg = tiny
    names = _names(first)
    train, test = names["train"][:30], names["test"][::-1]  # the table's own order
    path, table = _user_files(tmp_path, train, test, digits)
    user = {
        **cfg,
        "prior": {**cfg["prior"], "run": str(first / "prior")},
        "responses": {**cfg["responses"], "path": str(path), "table": str(table)},
    }
    threads = torch.get_num_threads()
    try:
        summary = run(user, tmp_path / "user", progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "user"
    assert [e["name"] for e in summary["experiments"]] == ["responses"]
    split = json.loads((out / "split.json").read_text())
    assert split["method"] == "user table"
    assert split["subjects"]["train"] == train and split["subjects"]["test"] == test
    assert len(split["subjects"]["prior"]) == len(digits) - 50
    arrays = out / "responses" / "arrays"
    assert json.loads((arrays / "names.json").read_text()) == test
    index = {n: i for i, n in enumerate(digits.names)}
    np.testing.assert_array_equal(np.load(arrays / "stimuli.npy"), digits.images[[index[n] for n in test]])
    for m in METHODS:
        assert np.load(arrays / f"reconstruction_{m}.npy").shape == (20, SIDE, SIDE), m
    assert (out / "responses" / "identification.json").is_file()
    assert (out / "responses" / "reconstructions.png").read_bytes()[:8] == PNG
    assert "## responses" in (out / "report.md").read_text()
    assert not (out / "prior").exists()


def test_user_responses_train_their_own_prior(tiny, tmp_path, digits):
    first, _, _, cfg = tiny
    names = _names(first)
    train, test = names["train"][:20], names["test"][:10]
    path, table = _user_files(tmp_path, train, test, digits)
    user = {**cfg, "responses": {**cfg["responses"], "path": str(path), "table": str(table)}}
    threads = torch.get_num_threads()
    try:
        run(user, tmp_path / "user", progress=False)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "user"
    # the prior trains on the domain less the table's stimuli
    trained = set(json.loads((out / "prior" / "split.json").read_text())["subjects"]["train"])
    assert len(trained) == len(digits) - 30 and not trained & (set(train) | set(test))
    assert np.load(out / "responses" / "arrays" / "reconstruction_gan.npy").shape == (10, SIDE, SIDE)


def test_user_responses_refusals(tiny, tmp_path, digits):
    first, _, _, cfg = tiny
    path, table = _user_files(tmp_path, ["digits-0001"], ["digits-0002"], digits)
    half = {**cfg, "responses": {**cfg["responses"], "path": str(path)}}
    with pytest.raises(ValueError, match="together"):
        run(half, tmp_path / "a", progress=False)
    table.write_text(table.read_text().replace("digits-0002", "letters-0002"))
    unknown = {
        **cfg,
        "prior": {**cfg["prior"], "run": str(first / "prior")},
        "responses": {**cfg["responses"], "path": str(path), "table": str(table)},
    }
    with pytest.raises(ValueError, match="lacks, e.g. 'letters-0002'"):
        run(unknown, tmp_path / "b", progress=False)


# ----------------------------------------------------------------------------- human


def test_human_prepares_a_session(tiny, tmp_path, capsys):
    session = tmp_path / "session"
    code = main(["human", str(tiny[0] / "snr-1"), "--no-serve", "--session", str(session), "--repeats", "2"])
    assert code == 0
    assert "session prepared" in capsys.readouterr().out
    record = json.loads((session / "session.json").read_text())
    assert record["task"] == "pairs" and record["n"] == 20 and record["method"] == "gan"
    assert len(record["items"]) == 40
    assert main(["human", str(tiny[0]), "--no-serve", "--session", str(tmp_path / "s2")]) == 2
    assert capsys.readouterr().err.startswith("error:")
