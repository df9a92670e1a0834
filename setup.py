"""Build brainkern and its compiled extension ``brainkern._C``.

The C++ CPU kernels are always built. The CUDA kernels are added when a CUDA
toolkit and a CUDA build of PyTorch are both present. Switches:

- ``BRAINKERN_NO_EXTENSION=1``: build no extension at all (pure Python install;
  the ``cpu`` and ``cuda`` backends then report themselves unavailable);
- ``BRAINKERN_NO_CUDA=1``: build the CPU kernels only;
- ``BRAINKERN_FORCE_CUDA=1``: build the CUDA kernels even when no GPU is visible
  (a toolkit is still needed).

``MAX_JOBS`` sets ninja's parallelism.
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _sources(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob(pattern))


def extensions():
    if _flag("BRAINKERN_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cpu_sources = ["csrc/bindings.cpp", *_sources("*/*_cpu.cpp")]
    cuda_sources = [*_sources("*/*_cuda.cpp"), *_sources("*/*.cu")]
    want_cuda = not _flag("BRAINKERN_NO_CUDA") and (
        _flag("BRAINKERN_FORCE_CUDA") or (CUDA_HOME is not None and torch.version.cuda is not None)
    )
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    common = dict(
        include_dirs=[str(ROOT / "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if want_cuda:
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


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
