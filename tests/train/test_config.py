"""Presets, overrides and validation of run configurations."""

import pytest

from brainkern.train import config


def test_every_preset_resolves():
    names = config.preset_names()
    assert {
        "quick",
        "kwon2019-alpha-wgan-gp",
        "kwon2019-wgan-gp",
        "kwon2019-vae-gan",
        "kwon2019-alpha-gan",
    } <= set(names)
    for name in names:
        cfg = config.resolve(name)
        assert cfg["preset"] == name


@pytest.mark.parametrize(
    "name", ["kwon2019-alpha-wgan-gp", "kwon2019-wgan-gp", "kwon2019-vae-gan", "kwon2019-alpha-gan"]
)
def test_kwon_presets_have_the_papers_settings(name):
    cfg = config.resolve(name)
    assert cfg["data"]["shape"] == [64, 64, 64]
    assert cfg["train"]["batch_size"] == 4
    assert cfg["model"]["latent_dim"] == 1000
    assert cfg["train"]["lr"] == pytest.approx(2e-4)
    assert cfg["train"]["lambda_gp"] == 10.0
    assert cfg["train"]["g_updates"] == 2
    assert cfg["model"]["name"] == name.removeprefix("kwon2019-")


def test_overrides_parse_yaml_values():
    cfg = config.resolve(
        "quick",
        [config.parse_override("train.iters=7"), config.parse_override("data.shape=[16, 32, 16]")],
    )
    assert cfg["train"]["iters"] == 7
    assert cfg["data"]["shape"] == [16, 32, 16]
    assert config.parse_override("train.loss=hinge") == {"train": {"loss": "hinge"}}
    assert config.parse_override("data.table=") == {"data": {"table": None}}
    # YAML 1.1 reads 5e-4 (no dot) as text; it is a number here, in overrides and in files.
    assert config.parse_override("train.lr=5e-4") == {"train": {"lr": 5e-4}}
    assert config.resolve("quick", [config.parse_override("train.lr=1e-3")])["train"]["lr"] == 1e-3


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(KeyError, match="train.iterations"):
        config.resolve("quick", [config.parse_override("train.iterations=5")])
    with pytest.raises(ValueError, match="train.iters"):
        config.resolve("quick", [config.parse_override("train.iters=0")])
    with pytest.raises(ValueError, match="train.amp"):
        config.resolve("quick", [config.parse_override("train.amp=fp8")])
    with pytest.raises(ValueError, match="data.shape"):
        config.resolve("quick", [config.parse_override("data.shape=[32, 32]")])
    with pytest.raises(ValueError, match="exactly one of data.cohort"):
        config.resolve("quick", [config.parse_override("data.table=x.csv")])
    with pytest.raises(ValueError, match="section.key=value"):
        config.parse_override("train.iters")
    with pytest.raises(FileNotFoundError, match="known presets"):
        config.load_preset("no-such-preset")


def test_model_section_takes_any_key():
    cfg = config.resolve("quick", [config.parse_override("model.checkpoint=true")])
    assert cfg["model"]["checkpoint"] is True


def test_numbers_without_a_dot_in_files(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1e-4\n  betas: [5e-1, 0.999]\nmodel:\n  name: wgan-gp\n")
    cfg = config.resolve(path)
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["betas"] == [0.5, 0.999]
    assert cfg["model"]["name"] == "wgan-gp"


def test_dump_round_trips(tmp_path):
    cfg = config.resolve("quick")
    path = tmp_path / "config.yaml"
    path.write_text(config.dump(cfg))
    assert config.resolve(path) == {**cfg, "preset": "quick"}
