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
