"""The typed schema of a run configuration (pydantic), and of each model's section.

:mod:`brainkern.train.config` holds the defaults (``DEFAULTS``, with a comment per
key); this module says what type each key takes and checks a merged
configuration against it. Why pydantic: its lax mode converts what YAML and the
command line produce (``"5e-4"`` read as text by YAML 1.1, ``1e3`` for an integer
count) into the declared type and nothing else, so ``data.classes=['0','1']``
stays two strings while ``train.iters=1e3`` becomes ``1000``; its errors carry the
key's path. A hand-written checker as strict would be longer.

- Keys listed in :data:`TYPES` have the type given there; any other key takes the
  type of its default (bool, int, float or str), so a key added to ``DEFAULTS``
  is checked without touching this file.
- The ``model`` section is checked against the registered model's factory: its
  keyword arguments and their annotations (``latent_dim: int``, ...).
- Unknown keys are errors that name the key and the allowed ones.
"""

from __future__ import annotations

import inspect
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

__all__ = ["TYPES", "check_config", "check_model_section"]


def _number_text(value: Any) -> Any:
    """``"1e3"`` (text from YAML 1.1) -> 1000.0, which pydantic accepts for an int field
    when it is whole; anything else is left for pydantic to judge."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Int = Annotated[int, BeforeValidator(_number_text)]
Positive = Annotated[int, BeforeValidator(_number_text), Field(ge=1)]
Count = Annotated[int, BeforeValidator(_number_text), Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]
Pair = tuple[float, float]
Grid = tuple[Positive, Positive, Positive]


class _Optim(BaseModel):
    """``train.optim.<network>``: what differs from ``train.lr`` / ``train.betas``."""

    model_config = ConfigDict(extra="forbid")
    lr: NonNegative | None = None
    betas: Pair | None = None


class _Slices(BaseModel):
    """``data.slices``: how a 2D run cuts its images from the preprocessed volumes."""

    model_config = ConfigDict(extra="forbid")
    plane: Literal["sagittal", "coronal", "axial"] = "sagittal"
    range: tuple[Count, Positive] | None = None
    central: Annotated[float, Field(gt=0, le=1)] | None = None
    size: Positive | None = None


class _Images(BaseModel):
    """``data.images``: a 2D run on a stimulus image domain (brainkern.reconstruct)."""

    model_config = ConfigDict(extra="forbid")
    domain: str
    size: Positive = 64
    mask: bool = False
    seed: Int = 0
    n: Positive | None = None
    stimuli: tuple[Count, Count] = (0, 0)


Sequence = Literal["t1", "t1c", "t2", "flair"]

# (section, key) -> type; "" is the top level.
TYPES: dict[tuple[str, str], Any] = {
    ("", "preset"): str | None,
    ("", "seed"): Int,
    ("data", "cohort"): Literal["smri", "fmri"] | None,
    ("data", "n_per_class"): Positive,
    ("data", "cohort_shape"): Grid | None,
    ("data", "cohort_seed"): Int,
    ("data", "n_classes"): Annotated[int, BeforeValidator(_number_text), Field(ge=2, le=7)],
    ("data", "noise"): Annotated[float, Field(gt=0)],
    ("data", "scale"): Literal["[-1,1]", "[0,1]"],
    ("data", "table"): str | None,
    ("data", "classes"): list[str] | None,
    ("data", "folds"): Annotated[int, BeforeValidator(_number_text), Field(ge=2)] | None,
    ("data", "fold"): Count,
    ("data", "split_seed"): Int,
    ("data", "split_file"): str | None,
    ("data", "shape"): Grid,
    ("data", "clip"): Pair | None,
    ("data", "cache_dir"): str | None,
    ("data", "intensity"): Pair | None,
    ("data", "sequences"): Annotated[list[Sequence], Field(min_length=1)],
    ("data", "lesions"): Annotated[float, Field(ge=0, le=1)],
    ("data", "slices"): _Slices | None,
    ("data", "images"): _Images | None,
    ("train", "iters"): Positive,
    ("train", "batch_size"): Positive,
    ("train", "lr"): NonNegative,
    ("train", "betas"): Pair,
    ("train", "optim"): dict[str, _Optim],
    ("train", "loss"): Literal["wgan-gp", "wgan", "standard", "hinge"] | None,
    ("train", "optimizer"): Literal["adam", "rmsprop"],
    ("train", "weight_clip"): Annotated[float, Field(gt=0)] | None,
    ("train", "grad_clip"): Annotated[float, Field(gt=0)] | None,
    ("train", "feature_matching"): NonNegative,
    ("train", "g_updates"): Positive,
    ("train", "d_updates"): Positive,
    ("train", "lambda_gp"): NonNegative,
    ("train", "gp_every"): Positive,
    ("train", "lambda_rec"): NonNegative,
    ("train", "lambda_kl"): NonNegative,
    ("train", "lambda_dec"): NonNegative,
    ("train", "eg_schedule"): Literal["paper", "reference", "joint"],
    ("train", "critic_batch"): Literal["fresh", "same"],
    ("train", "kl_reduction"): Literal["mean", "sum"],
    ("train", "reconstruction"): Literal["mse", "l1", "bce"],
    ("train", "diffaugment"): list[Literal["translation", "cutout", "intensity"]],
    ("train", "diffaugment_p"): Annotated[float, Field(ge=0, le=1)],
    ("train", "diffaugment_background"): float | None,
    ("train", "lambda_cls"): NonNegative,
    ("train", "aux_iters"): Count,
    ("train", "aux_lr"): NonNegative,
    ("train", "amp"): Literal["auto", "bf16", "off"],
    ("train", "device"): str,
    ("train", "threads"): Positive | None,
    ("train", "dtype"): Literal["float32", "float64"],
    ("log", "every"): Positive,
    ("log", "checkpoint_every"): Positive,
    ("log", "picture_every"): Positive,
    ("log", "n_pictures"): Count,
    ("log", "n_samples"): Count,
    ("evaluate", "n_generated"): Positive,
    ("evaluate", "mmd_tests"): Positive,
    ("evaluate", "mmd_batch"): Positive,
    ("evaluate", "ms_ssim_pairs"): Positive,
    ("evaluate", "ms_ssim"): Literal["standard", "kwon2019"],
    ("evaluate", "kernel_subsets"): Positive,
    ("evaluate", "kernel_subset_size"): Annotated[int, BeforeValidator(_number_text), Field(ge=2)],
}

_BY_DEFAULT = {bool: bool, int: Int, float: float, str: str}


def _field_type(section: str, key: str, default: Any) -> Any:
    if (section, key) in TYPES:
        return TYPES[section, key]
    for kind, annotation in _BY_DEFAULT.items():
        if type(default) is kind:
            return annotation
    return Any


def _section_model(section: str, defaults: dict[str, Any]) -> type[BaseModel]:
    fields = {key: (_field_type(section, key, value), value) for key, value in defaults.items()}
    # coerce_numbers_to_str: a class named 0 (data.classes=[0, 1]) is the text "0".
    config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    return create_model(f"{section or 'top'}_section", __config__=config, **fields)


def _message(exc: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    err = exc.errors()[0]
    path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    if err["type"] == "extra_forbidden":
        # train.optim.<network>.<key>, data.slices.<key>
        nested = (
            {"optim": _Optim, "slices": _Slices, "images": _Images}.get(err["loc"][0])
            if len(err["loc"]) > 1
            else None
        )
        allowed = ", ".join((nested or model).model_fields)
        text = f"unknown config key {path!r}; allowed keys here: {allowed}"
    else:
        given = err.get("input")
        text = f"{path}: {err['msg'].rstrip('.')} (got {given!r})"
    more = len(exc.errors()) - 1
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def check_config(cfg: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with every value of the ``data``, ``train``, ``log`` and ``evaluate``
    sections and the top-level keys converted to its declared type.

    Raises:
        ValueError: an unknown key, or a value of the wrong type or out of range;
            one line naming the key (``train.iters: ...``).
    """
    out = dict(cfg)
    top = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    model = _section_model("", top)
    try:
        checked = model(**{k: cfg[k] for k in top if k in cfg}).model_dump(mode="json")
    except ValidationError as exc:
        raise ValueError(_message(exc, "", model)) from None
    out.update(checked)
    for section, section_defaults in defaults.items():
        if not isinstance(section_defaults, dict) or section == "model":
            continue
        model = _section_model(section, section_defaults)
        try:
            value = model(**cfg[section]).model_dump(mode="json")
        except ValidationError as exc:
            raise ValueError(_message(exc, section, model)) from None
        if section == "train":
            value["optim"] = {
                net: {k: v for k, v in opts.items() if v is not None} for net, opts in value["optim"].items()
            }
        out[section] = value
    return out


def check_model_section(section: dict[str, Any], factory) -> dict[str, Any]:
    """The ``model`` section (``name`` plus the factory's keyword arguments) converted to
    the factory's annotated types; keys it does not take are returned unchecked, for the
    caller to judge (a preset's ``code_hidden`` after switching to ``wgan-gp``).

    Raises:
        ValueError: a value of the wrong type, naming ``model.<key>``.
    """
    hints = typing.get_type_hints(factory)
    params = inspect.signature(factory).parameters
    fields = {
        name: (_loose(hints.get(name, Any)), p.default if p.default is not inspect.Parameter.empty else ...)
        for name, p in params.items()
        if name in section and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    model = create_model("model_section", __config__=ConfigDict(extra="ignore"), **fields)
    try:
        checked = model(**section).model_dump(mode="json")
    except ValidationError as exc:
        raise ValueError(_message(exc, "model", model)) from None
    return {**section, **checked}


def _loose(annotation: Any) -> Any:
    """An int annotation that also takes ``1e3``-style text (as the sections do)."""
    return Int if annotation is int else annotation
