"""Run configuration: defaults, presets (YAML files in ``brainkern/configs/``), overrides.

A configuration is a nested dict with the sections below. A preset is a partial
configuration in ``brainkern/configs/<name>.yaml`` (or any YAML file given by path) laid over
:data:`DEFAULTS`; ``--set section.key=value`` overrides come last, their values
parsed as YAML (``--set train.iters=50``, ``--set data.shape=[32,32,32]``). The
resolved configuration is written to the run directory, so a run can be
reproduced from its own ``config.yaml``.

Keys of the ``model`` section other than ``name`` go to
:func:`brainkern.models.build_model` (which rejects unknown ones); the training
grid comes from ``data.shape``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    "model": {
        "name": "alpha-wgan-gp",
        "latent_dim": 1000,
        "width": 64,
    },
    "data": {
        # An embedded cohort ("smri" or "fmri"), made on first use in the cache ...
        "cohort": "smri",
        "n_per_class": 40,
        "effect": 1.0,
        "cohort_seed": 0,
        "cohort_shape": None,  # grid the cohort is simulated on (default: data.shape)
        "n_classes": 4,  # fmri cohort: how many of its task classes (2 to 7)
        "noise": 1.0,  # fmri cohort: the smooth noise's SD in t-units (1: the cohort's default)
        # ... or a labels table (CSV/TSV) or a folder of class folders.
        "table": None,
        "classes": None,  # train on these class names only (default: all)
        # Train on one fold of a subject-grouped, stratified split (the rest held out):
        # folds >= 2 and fold in 0 .. folds-1; or an explicit split file (JSON with
        # subject ids per part: {"train": [...], "test": [...]}). None: train on all.
        "folds": None,
        "fold": 0,
        "split_seed": 0,
        "split_file": None,
        "shape": [64, 64, 64],
        "clip": [0.01, 0.99],
        "scale": "[-1,1]",  # per-volume min-max scaling: "[-1,1]" (tanh generators) or "[0,1]" (sigmoid)
        "trim": True,
        "cache_dir": None,  # default: $BRAINKERN_CACHE or ~/.cache/brainkern
        # Kwon et al.'s augmentation: left-right flips (p 1/2) and the signal above the
        # background scaled by a factor uniform in [0.7, 1.0] (their code's range).
        "flip": True,
        "intensity": [0.7, 1.0],
        # smri cohort: the MR sequences simulated (of "t1", "t1c", "t2", "flair"; Han et al.'s
        # four), each its own labels table of the same subjects; a 2D run stacks them as channels.
        "sequences": ["t1"],
        # smri cohort: the fraction of subjects given a simulated tumour with oedema (0: none).
        "lesions": 0.0,
        # 2D runs (Han et al.'s slice models): slices cut from the preprocessed data.shape grid,
        # {"plane": "sagittal" | "coronal" | "axial", "range": [start, stop] or None (then the
        # central fraction "central" of the planes), "size": side of the square slice images}.
        # None: the run trains on 3D volumes.
        "slices": None,
        # 2D runs on a stimulus image domain (Seeliger et al.'s image prior; brainkern.reconstruct):
        # {"domain": "digits" | "natural" | a folder of images, "size": side, "mask": circle mask,
        #  "seed": patch/stimulus draw, "n": images drawn from the natural domain,
        #  "stimuli": [n_train, n_test] the experiment's stimuli, kept out of the prior's
        #  training images (the test ones are the run's held-out part)}. None: brain data.
        "images": None,
    },
    "train": {
        "iters": 1000,
        "batch_size": 4,
        "lr": 2.0e-4,
        "betas": [0.9, 0.999],
        # Per-network optimiser settings over lr/betas, e.g. {"discriminator": {"lr": 4e-4}}
        # (two time-scale updates); the recipe rejects a network it does not train.
        "optim": {},
        "optimizer": "adam",  # "adam" (betas from train.betas) or "rmsprop" (Arjovsky et al.'s WGAN)
        # WGAN weight clipping: every discriminator parameter clamped to [-c, c] after each of
        # its updates (Arjovsky et al.: 0.01); None: off.
        "weight_clip": None,
        # Largest gradient norm of each network before its optimiser step (Seeliger et al.: 10);
        # None: off.
        "grad_clip": None,
        "loss": None,  # default: the model's own ("wgan-gp", "wgan", "standard" or "hinge")
        "g_updates": 2,  # generator (encoder-generator) updates per iteration
        "d_updates": 1,  # discriminator updates per iteration
        # alpha family: how the generator's g_updates are made (see brainkern.train.recipes):
        # "paper" (encoder and generator once together, then the generator alone on a fresh
        # forward), "reference" (one backward, the generator's optimiser stepped g_updates
        # times on it, as Kwon et al.'s code), "joint" (both updated g_updates times).
        "eg_schedule": "paper",
        # alpha family: the discriminators' real batch: "fresh" (the next batch, as Kwon et
        # al.'s code; an iteration then reads two batches) or "same" (the encoder-generator's).
        "critic_batch": "fresh",
        "lambda_gp": 10.0,
        "gp_every": 1,  # lazy regularisation: the penalty every k-th critic update, scaled by k
        "lambda_rec": 10.0,  # reconstruction weight (alpha: E and G; vae-gan: the encoder's)
        "lambda_kl": 1.0,  # vae-gan: the encoder's KL weight
        "lambda_dec": 20.0,  # vae-gan: the generator's reconstruction weight
        "kl_reduction": "mean",  # vae-gan: KL averaged ("mean") or summed ("sum") over latent dims
        "reconstruction": "mse",  # vae-gan: "mse" (Kwon et al.'s code) or "l1"; cvae also "bce"
        # King et al.'s DiffAugment-3D on every volume a discriminator sees (real and generated):
        # any of "translation", "cutout", "intensity" (empty: off); each applied to a sample
        # with probability diffaugment_p; the background value the translation fills with and
        # the intensity scales around (None: from data.scale, -1 or 0).
        "diffaugment": [],
        "diffaugment_p": 0.3333333333333333,
        "diffaugment_background": None,
        # King et al.'s auxiliary classifier (models with a "classifier" network): trained on
        # aux_iters real batches (Adam, aux_lr) before the GAN, then frozen; its cross-entropy
        # on the generated volumes, weighted by lambda_cls, joins the generator's loss.
        "lambda_cls": 1.0,
        # gan family: weight of Salimans et al.'s feature matching in the generator's loss (the
        # squared distance of the batch means of the discriminator's first-layer features,
        # real vs generated; the discriminator must have a features() method); 0: off.
        "feature_matching": 0.0,
        "aux_iters": 500,
        "aux_lr": 2.0e-4,
        "checkpoint": False,  # gradient checkpointing of generator and discriminator blocks
        "gradfix": False,  # skip weight gradients inside the penalty's first backward
        "amp": "auto",  # "auto" (bf16 on CUDA), "bf16" or "off"
        "device": "auto",
        "threads": None,  # CPU threads for torch (default: torch's choice)
        "sync_batchnorm": False,  # under torchrun: BatchNorm statistics of the global batch
        "dtype": "float32",  # parameters and activations: float32, or float64 (exactness tests)
    },
    "log": {
        "every": 10,
        "checkpoint_every": 250,
        "picture_every": 500,
        "n_pictures": 6,
        "n_samples": 8,  # NIfTI sample volumes written at the end
    },
    "evaluate": {
        "enabled": True,
        "n_generated": 512,
        "mmd_tests": 100,
        "mmd_batch": 8,
        "ms_ssim_pairs": 1000,
        # "standard" MS-SSIM (Wang et al.), or "kwon2019": what Kwon et al.'s code computes,
        # to set a figure beside their Table 1 (brainkern.evaluate.ms_ssim3d).
        "ms_ssim": "standard",
        # Unbiased RBF MMD^2 columns: random subsets of this many volumes a side.
        "kernel_subsets": 20,
        "kernel_subset_size": 32,
    },
}

# Sections whose keys others check: the model registry (model.*), the recipe (train.optim.*).
_OPEN_SECTIONS = ("model", "train.optim")


def configs_dir() -> Path:
    """The folder of preset files, ``brainkern/configs/``.

    The presets ship inside the package (as package data), so an installed
    brainkern finds them from any working directory, without the repository.
    """
    return Path(__file__).resolve().parents[1] / "configs"


def preset_names() -> list[str]:
    """Names of the preset files in :func:`configs_dir`."""
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def cache_root() -> Path:
    """Where cohorts and preprocessed data sets are cached (``$BRAINKERN_CACHE``,
    else ``$XDG_CACHE_HOME/brainkern``, else ``~/.cache/brainkern``)."""
    if os.environ.get("BRAINKERN_CACHE"):
        return Path(os.environ["BRAINKERN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "brainkern"


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of sections, got a {type(data).__name__}")
    return data


def load_preset(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A preset's partial configuration, by name (``brainkern/configs/<name>.yaml``) or path.

    Raises:
        FileNotFoundError: no such preset; the message lists the known ones.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        candidate = configs_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            if path.suffix in (".yaml", ".yml"):
                raise FileNotFoundError(f"no config file at {path}")
            raise FileNotFoundError(
                f"no preset {str(name_or_path)!r}; known presets: {', '.join(preset_names())}"
            )
        path = candidate
    data = _read_yaml(path)
    data.setdefault("preset", path.stem)
    return data


def merge(base: dict[str, Any], update: dict[str, Any], *, where: str = "") -> dict[str, Any]:
    """``base`` updated by ``update`` section by section (a new dict).

    Raises:
        KeyError: a key of ``update`` that ``base`` does not have (the ``model``
            and ``train.optim`` sections take any key: the model registry and the
            recipe check those).
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}.{key}" if where else key
        if key not in out and where not in _OPEN_SECTIONS:
            known = ", ".join(sorted(out))
            raise KeyError(f"unknown config key {path!r}; known keys here: {known}")
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where=path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"train.iters=50"`` -> ``{"train": {"iters": 50}}`` (the value parsed as YAML)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"an override looks like section.key=value, got {text!r}")
    value = yaml.safe_load(raw) if raw.strip() else None
    parts = key.strip().split(".")
    # The value stays as YAML reads it ("5e-4" is text to YAML 1.1, '0' is text);
    # the schema converts it to the key's type.
    out: dict[str, Any] = value
    for part in reversed(parts):
        out = {part: out}
    return out


def resolve(
    preset: str | os.PathLike | None = None, overrides: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Defaults, then the preset, then each override; checked and typed (:func:`validate`)."""
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        cfg = merge(cfg, load_preset(preset))
    for update in overrides or []:
        cfg = merge(cfg, update)
    return validate(cfg)


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` checked against the schema (:mod:`brainkern.train.schema`), values converted
    to their keys' types, plus the checks that involve several keys.

    Raises:
        ValueError: an unknown key, a value of the wrong type or out of range, or an
            impossible combination; one line naming the key(s).
    """
    from brainkern.train.schema import check_config, check_model_section

    cfg = check_config(cfg, DEFAULTS)
    data = cfg["data"]
    if data["folds"] is not None:
        folds, fold = data["folds"], data["fold"]
        if not 0 <= fold < folds:
            raise ValueError(
                f"data.fold must be an integer in 0 .. {folds - 1} (data.folds={folds}), got {fold}"
            )
        if data["split_file"] is not None:
            raise ValueError("give data.folds or data.split_file, not both")
    if data.get("images") is not None:
        if data["cohort"] is not None or data["table"] is not None:
            raise ValueError(
                "data.images trains on a stimulus image domain: set data.cohort and data.table to null"
            )
    elif (data["cohort"] is None) == (data["table"] is None):
        raise ValueError("give exactly one of data.cohort (an embedded cohort) and data.table (your data)")
    cfg["model"] = _check_model(cfg["model"], check_model_section)
    return cfg


def _check_model(section: dict[str, Any], check) -> dict[str, Any]:
    """The model section against the registered model's factory (its keywords and types)."""
    from brainkern.models import model_names, model_parameters
    from brainkern.models.registry import model_factory

    name = section.get("name")
    generative = model_names("generative")
    if name not in generative:
        raise ValueError(
            f"model.name: {name!r} is not a registered generative model; choose one of {generative}"
        )
    takes = set(model_parameters(name)) - {"shape"}  # the grid is data.shape
    # A key another model takes (a preset's code_hidden after --model wgan-gp) is dropped
    # at build time with a note; one that no model takes is a typo.
    anyone = {k for m in generative for k in model_parameters(m)}
    unknown = sorted(k for k in section if k != "name" and k not in anyone)
    if unknown or "shape" in section:
        key = unknown[0] if unknown else "shape"
        raise ValueError(
            f"unknown config key 'model.{key}'; model {name!r} takes: {', '.join(sorted(takes))}"
            + ("; the grid is data.shape" if key == "shape" else "")
        )
    return check(section, model_factory(name))


def dump(cfg: dict[str, Any]) -> str:
    """The configuration as YAML text (sections in a fixed order)."""
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
