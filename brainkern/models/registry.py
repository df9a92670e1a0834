"""The model registry: names to factories, with keyword checking and a rebuildable config.

One registry holds both kinds of model brainkern trains: generative models
(:class:`~brainkern.models.GenerativeModel`, trained by ``brainkern.train``) and
classifiers (:class:`~brainkern.models.classifier.Classifier`, used by the
augmentation experiments). A factory declares its kind when it registers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from brainkern.models.base import GenerativeModel
from brainkern.models.classifier import Classifier

__all__ = [
    "KINDS",
    "build_model",
    "model_factory",
    "model_kind",
    "model_names",
    "model_parameters",
    "model_summaries",
    "register_model",
]

# A registered name's kind, and the type its factory must return.
KINDS: dict[str, type] = {"generative": GenerativeModel, "classifier": Classifier}

_REGISTRY: dict[str, Callable[..., Any]] = {}
_KIND: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., Any])


def register_model(name: str, kind: str = "generative") -> Callable[[F], F]:
    """Decorator registering a model factory (or class) under ``name``.

    The factory takes keyword arguments only in practice (every parameter needs a
    default or must be given to :func:`build_model`) and returns a
    :class:`GenerativeModel` (``kind="generative"``) or a
    :class:`~brainkern.models.classifier.Classifier` (``kind="classifier"``); the
    first line of its docstring is what ``python -m brainkern.train --list`` shows.
    The object is returned unchanged.

    Raises:
        ValueError: ``name`` is empty or already registered, or an unknown ``kind``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"register_model({name!r}): kind must be one of {sorted(KINDS)}, got {kind!r}")

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        _REGISTRY[name] = factory
        _KIND[name] = kind
        return factory

    return decorator


def model_names(kind: str | None = None) -> list[str]:
    """The registered model names (of one ``kind`` when given), sorted."""
    return sorted(n for n in _REGISTRY if kind is None or _KIND[n] == kind)


def model_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` (its signature is the model's config schema).

    Raises:
        ValueError: unknown model name.
    """
    model_kind(name)
    return _REGISTRY[name]


def model_kind(name: str) -> str:
    """``"generative"`` or ``"classifier"``.

    Raises:
        ValueError: unknown model name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    return _KIND[name]


def model_summaries() -> list[tuple[str, str, str]]:
    """``(name, kind, first docstring line)`` of every registered model, sorted by kind and name."""
    rows = []
    for name in sorted(_REGISTRY, key=lambda n: (_KIND[n], n)):
        doc = inspect.getdoc(_REGISTRY[name]) or ""
        rows.append((name, _KIND[name], " ".join(doc.split("\n\n")[0].split())))
    return rows


def model_parameters(name: str) -> list[str]:
    """The keyword arguments the registered model ``name`` accepts.

    Raises:
        ValueError: unknown model name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds]


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config survives JSON and YAML unchanged."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_model(name: str, **cfg: Any) -> GenerativeModel | Classifier:
    """Builds the registered model ``name`` with the keyword arguments ``cfg``.

    The returned model's ``config`` holds ``name`` and every keyword argument of
    the factory (given or default), so ``build_model(**model.config)`` builds the
    same architecture again.

    Raises:
        ValueError: an unknown ``name`` (the message lists the registered ones).
        TypeError: a keyword the model does not take, or a missing required one
            (the message lists the accepted ones); the factory's own errors
            (bad grid, non-positive sizes) pass through.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"build_model: unknown model {name!r}; registered models: {', '.join(model_names())}"
        )
    factory = _REGISTRY[name]
    signature = inspect.signature(factory)
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [
        p.name
        for p in params.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = [key for key in cfg if key not in accepted]
    if unknown and not takes_any:
        raise TypeError(
            f"build_model({name!r}): unknown keyword(s) {', '.join(map(repr, unknown))}; "
            f"{name!r} accepts: {', '.join(accepted)}"
        )
    try:
        bound = signature.bind(**cfg)
    except TypeError as err:
        raise TypeError(f"build_model({name!r}): {err}; {name!r} accepts: {', '.join(accepted)}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for p in params.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(arguments.pop(p.name, {}))
    model = factory(**arguments)
    expected = KINDS[_KIND[name]]
    if not isinstance(model, expected):
        raise TypeError(
            f"build_model({name!r}): the registered factory returned {type(model).__name__}, "
            f"not a {expected.__name__}"
        )
    model.name = name
    model.config = {"name": name, **_plain(arguments)}
    return model
