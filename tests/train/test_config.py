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


# The update schedule and optimiser of each preset: the paper's where it gives them,
# else the authors' notebook for that model (see the presets' comments).
SCHEDULES = {
    "kwon2019-alpha-wgan-gp": {"lr": 2e-4, "g_updates": 2, "d_updates": 1, "eg_schedule": "paper"},
    "kwon2019-alpha-gan": {"lr": 2e-4, "g_updates": 2, "d_updates": 1, "eg_schedule": "paper"},
    "kwon2019-wgan-gp": {"lr": 2e-4, "g_updates": 5, "d_updates": 1},
    "kwon2019-vae-gan": {"lr": 1e-4, "g_updates": 1, "d_updates": 1},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_kwon_presets_have_the_papers_settings(name):
    cfg = config.resolve(name)
    assert cfg["data"]["shape"] == [64, 64, 64]
    assert cfg["train"]["batch_size"] == 4
    assert cfg["model"]["latent_dim"] == 1000
    assert cfg["train"]["lambda_gp"] == 10.0
    assert cfg["model"]["name"] == name.removeprefix("kwon2019-")
    for key, value in SCHEDULES[name].items():
        assert cfg["train"][key] == (pytest.approx(value) if key == "lr" else value), key
    # The authors' data handling: no quantile clipping, flips, intensity factors in [0.7, 1].
    assert cfg["data"]["clip"] is None and cfg["data"]["flip"] is True
    assert cfg["data"]["intensity"] == [0.7, 1.0]
    if name.startswith("kwon2019-alpha"):
        assert cfg["model"]["code_hidden"] == 4096 and cfg["train"]["critic_batch"] == "fresh"
    if name == "kwon2019-vae-gan":
        train = cfg["train"]
        assert (train["lambda_kl"], train["lambda_rec"], train["lambda_dec"]) == (1.0, 10.0, 20.0)
        assert (train["kl_reduction"], train["reconstruction"]) == ("mean", "mse")


def test_defaults_follow_the_authors_code():
    cfg = config.resolve(None)
    assert cfg["data"]["intensity"] == [0.7, 1.0]
    assert cfg["train"]["eg_schedule"] == "paper" and cfg["train"]["critic_batch"] == "fresh"
    assert cfg["train"]["kl_reduction"] == "mean" and cfg["train"]["reconstruction"] == "mse"
    off = config.resolve("quick", [config.parse_override("data.clip=null")])
    assert off["data"]["clip"] is None


def test_overrides_parse_yaml_values():
    cfg = config.resolve(
        "quick",
        [config.parse_override("train.iters=7"), config.parse_override("data.shape=[16, 32, 16]")],
    )
    assert cfg["train"]["iters"] == 7
    assert cfg["data"]["shape"] == [16, 32, 16]
    assert config.parse_override("train.loss=hinge") == {"train": {"loss": "hinge"}}
    assert config.parse_override("data.table=") == {"data": {"table": None}}
    # YAML 1.1 reads 5e-4 (no dot) as text; the schema makes it the number the key takes.
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


def test_values_take_their_keys_types():
    over = [
        config.parse_override("data.classes=['0','1']"),
        config.parse_override("train.iters=1e3"),
        config.parse_override("model.latent_dim=2e1"),
        config.parse_override("train.betas=[5e-1, 0.9]"),
    ]
    cfg = config.resolve("quick", over)
    assert cfg["data"]["classes"] == ["0", "1"]  # class names stay text
    assert cfg["train"]["iters"] == 1000 and isinstance(cfg["train"]["iters"], int)
    assert cfg["model"]["latent_dim"] == 20 and isinstance(cfg["model"]["latent_dim"], int)
    assert cfg["train"]["betas"] == [0.5, 0.9]
    unquoted = config.resolve("quick", [config.parse_override("data.classes=[0, 1]")])
    assert unquoted["data"]["classes"] == ["0", "1"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iters=1.5", "train.iters: Input should be a valid integer"),
        ("train.batch_size=four", "train.batch_size: Input should be a valid integer"),
        ("train.lr=-1", "train.lr: Input should be greater than or equal to 0"),
        ("log.every=0", "log.every: Input should be greater than or equal to 1"),
        ("data.flip=maybe", "data.flip: Input should be a valid boolean"),
        ("train.eg_schedule=twice", "train.eg_schedule: Input should be 'paper', 'reference' or 'joint'"),
        ("train.critic_batch=new", "train.critic_batch: Input should be 'fresh' or 'same'"),
        ("train.kl_reduction=max", "train.kl_reduction: Input should be 'mean' or 'sum'"),
        ("train.reconstruction=l2", "train.reconstruction: Input should be 'mse', 'l1' or 'bce'"),
        ("train.lambda_dec=-1", "train.lambda_dec: Input should be greater than or equal to 0"),
        ("model.latent_dim=big", "model.latent_dim: Input should be a valid integer"),
        ("model.widht=8", "unknown config key 'model.widht'; model 'alpha-wgan-gp' takes: "),
        ("model.name=alpha-wgan", "model.name: 'alpha-wgan' is not a registered generative model"),
        (
            "train.optim.generator.momentum=0.9",
            "unknown config key 'train.optim.generator.momentum'; allowed keys here: lr, betas",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ValueError) as info:
        config.resolve("quick", [config.parse_override(override)])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_lists_the_allowed_ones():
    with pytest.raises(
        KeyError, match="unknown config key 'log.evry'; known keys here: checkpoint_every, every"
    ):
        config.resolve("quick", [config.parse_override("log.evry=3")])
