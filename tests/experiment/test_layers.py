"""The import rule: a package imports only from the packages above it.

Order, top to bottom: ``data``, ``ops`` (with its Triton ``kernels``), ``nn``,
``models``, ``augment``, ``train``, ``evaluate``, ``experiment``, ``reconstruct``. Modules at the top of the
package (``_ext``, ``_cli``, ``_lazy``) serve every layer. The command lines
(``__main__`` modules and ``brainkern.sample``) are entry points that wire layers
together and may import from any of them: that is how ``python -m
brainkern.train`` plugs the run report of :mod:`brainkern.experiment` into the
engine, which never imports it itself. Read from the source (``ast``), so a lazy
import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "brainkern"
LAYERS = {
    "data": 0,
    "ops": 1,
    "kernels": 1,
    "nn": 2,
    "models": 3,
    "augment": 4,
    "train": 5,
    "evaluate": 6,
    "experiment": 7,
    "reconstruct": 8,
}


def _imported(path: Path) -> set[str]:
    """Every absolute ``brainkern.*`` module that ``path`` imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("brainkern.")}


def _library_modules() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py" and p.relative_to(PACKAGE).parts[0] in LAYERS
    )


def test_every_layer_is_checked():
    # A new package must get a place in the order (and in README's Architecture table).
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_modules_import_only_from_layers_above(path):
    layer = path.relative_to(PACKAGE).parts[0]
    below = sorted(
        name
        for name in _imported(path)
        if name.split(".")[1] in LAYERS and LAYERS[name.split(".")[1]] > LAYERS[layer]
    )
    assert not below, f"{path.relative_to(PACKAGE)} ({layer}) imports from layers below it: {below}"


def test_the_checker_sees_a_lazy_import_inside_a_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from brainkern.experiment.kwon import RunReport\n")
    assert "brainkern.experiment.kwon" in _imported(source)
