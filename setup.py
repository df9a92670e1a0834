"""Build brainkern and its compiled extension ``brainkern._C``.

The C++ CPU kernels are always built. The CUDA kernels are added when a CUDA
toolkit and a CUDA build of PyTorch are both present. Switches (``1``, ``true``,
``yes``, ``on`` or ``0``, ``false``, ``no``, ``off``, empty):

- ``BRAINKERN_NO_EXTENSION=1``: build no extension at all (pure Python install;
  the ``cpu`` and ``cuda`` backends then report themselves unavailable);
- ``BRAINKERN_NO_CUDA=1``: build the CPU kernels only;
- ``BRAINKERN_FORCE_CUDA=1``: build the CUDA kernels, and fail with a clear
  message instead of quietly leaving them out when the toolkit or a CUDA build of
  PyTorch is missing. A visible GPU is not needed.

When CUDA is built and ``TORCH_CUDA_ARCH_LIST`` is unset, it defaults to
``8.0;9.0+PTX`` (A100 and H100/H200, plus PTX that later GPUs can JIT): PyTorch
would otherwise ask the visible GPU for its architecture, and with none visible
its detection fails on an empty list. ``MAX_JOBS`` sets ninja's parallelism.

Which of these apply is decided by :func:`build_plan`, a pure function of the
environment that ``tests/test_build_flags.py`` runs without building anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent

# sm_80 (A100) and sm_90 (H100/H200) machine code, and sm_90 PTX for newer GPUs.
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class BuildPlan(NamedTuple):
    """What ``setup.py`` builds.

    ``arch_list`` is the ``TORCH_CUDA_ARCH_LIST`` to set before building, or
    ``None`` to leave the environment as it is.
    """

    extension: bool
    cuda: bool
    arch_list: str | None


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {_TRUE + _FALSE[1:]} (or unset), got {env[name]!r}")


def build_plan(
    env: Mapping[str, str],
    probe: Callable[[], tuple[str | None, str | None]],
) -> BuildPlan:
    """Decide what to build from the environment's switches.

    Args:
        env: the environment (``os.environ``, or a dict in tests).
        probe: returns ``(cuda_home, torch_cuda)``: the CUDA toolkit PyTorch's
            build helpers found (``torch.utils.cpp_extension.CUDA_HOME``) and
            ``torch.version.cuda``, each ``None`` when absent. Called only when
            the answer matters, so ``BRAINKERN_NO_EXTENSION=1`` never imports torch.

    Raises:
        ValueError: a switch has a value that is neither true nor false, two
            switches contradict each other, or ``BRAINKERN_FORCE_CUDA=1`` cannot
            be honoured (no toolkit, or a CPU-only PyTorch).
    """
    no_extension = _flag(env, "BRAINKERN_NO_EXTENSION")
    no_cuda = _flag(env, "BRAINKERN_NO_CUDA")
    force_cuda = _flag(env, "BRAINKERN_FORCE_CUDA")
    if force_cuda and (no_extension or no_cuda):
        other = "BRAINKERN_NO_EXTENSION" if no_extension else "BRAINKERN_NO_CUDA"
        raise ValueError(f"BRAINKERN_FORCE_CUDA=1 and {other}=1 contradict each other; unset one")
    if no_extension:
        return BuildPlan(extension=False, cuda=False, arch_list=None)
    if no_cuda:
        return BuildPlan(extension=True, cuda=False, arch_list=None)
    cuda_home, torch_cuda = probe()
    if force_cuda:
        # First: a CPU-only torch also reports no toolkit (it does not look for one).
        if torch_cuda is None:
            raise ValueError(
                "BRAINKERN_FORCE_CUDA=1 but this PyTorch is a CPU-only build (torch.version.cuda is "
                "None); install a CUDA build of PyTorch"
            )
        if cuda_home is None:
            raise ValueError(
                "BRAINKERN_FORCE_CUDA=1 but PyTorch found no CUDA toolkit: set CUDA_HOME to the "
                "folder that holds bin/nvcc, or put nvcc on PATH"
            )
    cuda = cuda_home is not None and torch_cuda is not None
    arch_list = DEFAULT_ARCH_LIST if cuda and not env.get("TORCH_CUDA_ARCH_LIST", "").strip() else None
    return BuildPlan(extension=True, cuda=cuda, arch_list=arch_list)


def _probe_torch() -> tuple[str | None, str | None]:
    import torch  # noqa: PLC0415  (only when an extension is built)
    from torch.utils.cpp_extension import CUDA_HOME  # noqa: PLC0415

    return CUDA_HOME, torch.version.cuda


def _sources(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob(pattern))


def extensions(plan: BuildPlan):
    """The extension modules and command classes that carry out ``plan``."""
    if not plan.extension:
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: PLC0415

    cpu_sources = ["csrc/bindings.cpp", *_sources("*/*_cpu.cpp")]
    cuda_sources = [*_sources("*/*_cuda.cpp"), *_sources("*/*.cu")]
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    common = dict(
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if plan.cuda:
        ext = CUDAExtension(
            "brainkern._C",
            cpu_sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            **common,
        )
    else:
        ext = CppExtension("brainkern._C", cpu_sources, extra_compile_args={"cxx": cxx}, **common)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # pip's build backend runs this file as __main__ too
    from setuptools import setup

    try:
        plan = build_plan(os.environ, _probe_torch)
    except ValueError as exc:
        raise SystemExit(f"brainkern setup.py: {exc}") from None
    if plan.arch_list is not None:
        # Read by torch.utils.cpp_extension when it builds the nvcc flags.
        os.environ["TORCH_CUDA_ARCH_LIST"] = plan.arch_list
    ext_modules, cmdclass = extensions(plan)
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
