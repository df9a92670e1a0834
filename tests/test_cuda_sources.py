"""Compile-check every CUDA source for sm_90 with nvcc (nothing runs them here).

The ``.cu`` files include no torch headers (raw pointers and launchers that take
a ``cudaStream_t``), so nvcc alone can compile them on a machine without a GPU
or a CUDA build of PyTorch. Skipped, not failed, where nvcc is absent.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc").glob("*/*.cu"))
NVCC = shutil.which("nvcc")


def test_every_op_folder_has_cuda_source():
    folders = sorted(p.parent.name for p in (ROOT / "csrc").glob("*/*_cpu.cpp"))
    missing = [f for f in folders if not list((ROOT / "csrc" / f).glob("*.cu"))]
    assert not missing, f"op folders without a .cu file: {missing}"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CU_FILES, ids=[p.parent.name for p in CU_FILES])
def test_cuda_source_compiles_for_sm90(source, tmp_path):
    cmd = [
        NVCC,
        "-std=c++17",
        "-O2",
        "-arch=sm_90",
        "-I",
        str(ROOT / "csrc"),
        "-Werror",
        "all-warnings",
        "-c",
        str(source),
        "-o",
        str(tmp_path / "out.o"),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"


CUDA_CPP_FILES = sorted((ROOT / "csrc").glob("*/*_cuda.cpp"))
CXX = shutil.which("g++") or shutil.which("c++")


def _cuda_include() -> Path | None:
    if NVCC is None:
        return None
    import os

    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates += [Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    return next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)


# A CPU build of torch ships c10/cuda's headers but not the one header CMake
# generates for a CUDA build; its whole content is this definition.
_CMAKE_MACROS = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


@pytest.mark.skipif(NVCC is None or CXX is None, reason="nvcc or a C++ compiler is missing")
@pytest.mark.parametrize("source", CUDA_CPP_FILES, ids=[p.parent.name for p in CUDA_CPP_FILES])
def test_cuda_wrapper_parses(source, tmp_path):
    """The torch-side CUDA wrappers parse against this torch's headers (no link)."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    cuda_include = _cuda_include()
    if cuda_include is None:
        pytest.skip("CUDA headers not found beside nvcc")
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text(_CMAKE_MACROS)
    includes = [str(ROOT / "csrc"), *include_paths(), str(cuda_include), sysconfig.get_paths()["include"]]
    includes.append(str(tmp_path))  # last: a real generated header wins
    cmd = [CXX, "-std=c++17", "-fsyntax-only", "-DWITH_CUDA", *(f"-I{p}" for p in includes), str(source)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
