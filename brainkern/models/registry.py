"""The model registry: names to factories, with keyword checking and a rebuildable config."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from brainkern.models.base import GenerativeModel

__all__ = ["build_model", "model_names", "model_parameters", "register_model"]

_REGISTRY: dict[str, Callable[..., GenerativeModel]] = {}

F = TypeVar("F", bound=Callable[..., GenerativeModel])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a :class:`GenerativeModel` subclass or a factory under ``name``.

    The factory takes keyword arguments only in practice (every parameter needs a
    default or must be given to :func:`build_model`) and returns a
    :class:`GenerativeModel`; the object is returned unchanged.

    Raises:
        ValueError: ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")

    def decorator(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"register_model: a model named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


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


def build_model(name: str, **cfg: Any) -> GenerativeModel:
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
    if not isinstance(model, GenerativeModel):
        raise TypeError(
            f"build_model({name!r}): the registered factory returned {type(model).__name__}, "
            "not a GenerativeModel"
        )
    model.name = name
    model.config = {"name": name, **_plain(arguments)}
    return model
