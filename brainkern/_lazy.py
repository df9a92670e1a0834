"""Lazy package attributes: a package's public names load their module on first use.

Keeps ``import brainkern.<package>`` (and every command line's ``--help``) free of
torch, nibabel or matplotlib until something that needs them is touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        namespace: its ``globals()`` (a loaded name is cached there).
        exports: public name -> submodule that defines it.
        submodules: submodules reachable as attributes.
    """
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
            namespace[name] = value
            return value
        if name in subs:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports) | subs)

    return __getattr__, __dir__
