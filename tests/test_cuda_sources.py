"""Compile-check every CUDA source for sm_90 with nvcc (nothing runs them here).

The ``.cu`` files include no torch headers (raw pointers and launchers that take
a ``cudaStream_t``), so nvcc alone can compile them on a machine without a GPU
or a CUDA build of PyTorch. ``-Xptxas -v`` reports each kernel's registers,
static shared memory and spills; a kernel that spills fails. Skipped, not
failed, where nvcc is absent.

Both checks here (nvcc on the ``.cu`` files, g++ on the torch-side wrappers) take
about 3 minutes on 2 cores, so a pass is cached under a hash of the source, every
project header it includes, the compiler's version and the flags
(``$BRAINKERN_CACHE/compile-checks``, default ``~/.cache/brainkern/compile-checks``):
a cached pass is reported as a pass at once; ``BRAINKERN_RECHECK=1`` compiles
again. ``scripts/kernel_resources.py`` prints the per-kernel figures as tables.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from scripts import kernel_resources as kr

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc").glob("*/*.cu"))
NVCC = shutil.which("nvcc")


def test_every_op_folder_has_cuda_source():
    folders = sorted(p.parent.name for p in (ROOT / "csrc").glob("*/*_cpu.cpp"))
    missing = [f for f in folders if not list((ROOT / "csrc" / f).glob("*.cu"))]
    assert not missing, f"op folders without a .cu file: {missing}"


def test_local_includes_follow_project_headers():
    """The cache key covers the op's header and csrc/cuda_common.h, not only the .cu file."""
    files = {p.relative_to(ROOT).as_posix() for p in kr.local_includes(ROOT / "csrc" / "mmd" / "mmd.cu")}
    assert {"csrc/mmd/mmd.cu", "csrc/mmd/mmd.h", "csrc/cuda_common.h"} <= files


def test_parse_ptxas_reads_spills_registers_and_smem():
    log = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 8448 bytes smem, 384 bytes cmem[0]\n"
        "ptxas info    : Compiling entry function '_Z1gv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1gv\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 12 registers, used 0 barriers\n"
    )
    funcs = kr.parse_ptxas(log)
    assert funcs["_Z1kPf"] == {
        "registers": 255,
        "stack": 24,
        "spill_stores": 8,
        "spill_loads": 12,
        "smem": 8448,
    }
    assert funcs["_Z1gv"] == {"registers": 12, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
    assert kr.spill_bytes(funcs["_Z1kPf"]) == 20


def test_parse_sass_counts_tensor_core_opcodes():
    sass = (
        "\tcode for sm_90\n"
        "\t\tFunction : _Z1kPf\n"
        "        /*0070*/                   HFMA2.MMA R43, -RZ, RZ, 0, 0 ;\n"
        "        /*0100*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;\n"
        "        /*0110*/              @!P0 HMMA.16816.F32 R4, R8, R12, R4 ;\n"
        "\t\tFunction : _Z1gv\n"
        "        /*0000*/                   FFMA R1, R2, R3, R4 ;\n"
    )
    counts = kr.parse_sass(sass)
    assert counts["_Z1kPf"] == {"HGMMA": 1, "HMMA": 1}  # HFMA2.MMA is an FMA, not a tensor-core op
    assert not counts["_Z1gv"]


@pytest.mark.parametrize(
    ("demangled", "expected"),
    [
        (
            "brainkern::(anonymous namespace)::gram_kernel<__half>(__half const*, long)",
            ("gram_kernel", "__half"),
        ),
        ("brainkern::column_chunk_kernel(float const*, long)", ("column_chunk_kernel", "")),
        (
            "void brainkern::(anonymous namespace)::gemm_kernel<brainkern::d::Fwd<float>, "
            "brainkern::d::Mma<float, 64> >(brainkern::d::Fwd<float>::Params)",
            ("gemm_kernel", "Fwd<float>, Mma<float, 64>"),
        ),
    ],
)
def test_split_cuda_name(demangled, expected):
    assert kr.split_cuda_name(demangled) == expected


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CU_FILES, ids=[p.parent.name for p in CU_FILES])
def test_cuda_source_compiles_for_sm90(source, record_property):
    result, from_cache = kr.nvcc_check(source, NVCC)
    assert result["ok"], f"{result['command']}\n{result['log']}"
    kernels = result["kernels"]
    assert kernels, f"ptxas -v reported no kernel for {source.name}:\n{result['log']}"
    lines = [
        f"{k['kernel']}<{k['template']}>: {k.get('registers', '-')} registers, {k.get('smem', 0)} B static "
        f"shared, {k['spill_stores']} B spill stores, {k['spill_loads']} B spill loads"
        for k in kernels
    ]
    record_property("kernels", "; ".join(lines))
    record_property("from_cache", from_cache)
    spilling = [line for k, line in zip(kernels, lines, strict=True) if kr.spill_bytes(k)]
    assert not spilling, f"{source.name}: kernels spill to local memory:\n" + "\n".join(spilling)


CUDA_CPP_FILES = sorted((ROOT / "csrc").glob("*/*_cuda.cpp"))
CXX = shutil.which("g++") or shutil.which("c++")


def _cuda_include() -> Path | None:
    if NVCC is None:
        return None
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    candidates += [Path(NVCC).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    return next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)


# A CPU build of torch ships c10/cuda's headers but not the one header CMake
# generates for a CUDA build; its whole content is this definition.
_CMAKE_MACROS = "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n"


def _parse_wrapper(source: Path, includes: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        stub.parent.mkdir(parents=True)
        stub.write_text(_CMAKE_MACROS)
        flags = ["-std=c++17", "-fsyntax-only", "-DWITH_CUDA", *(f"-I{p}" for p in [*includes, tmp])]
        cmd = [CXX, *flags, str(source)]  # the stub's folder last: a real generated header wins
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return {"ok": out.returncode == 0, "command": " ".join(cmd), "log": out.stdout + out.stderr}


@pytest.mark.skipif(NVCC is None or CXX is None, reason="nvcc or a C++ compiler is missing")
@pytest.mark.parametrize("source", CUDA_CPP_FILES, ids=[p.parent.name for p in CUDA_CPP_FILES])
def test_cuda_wrapper_parses(source):
    """The torch-side CUDA wrappers parse against this torch's headers (no link)."""
    import sysconfig

    import torch
    from torch.utils.cpp_extension import include_paths

    cuda_include = _cuda_include()
    if cuda_include is None:
        pytest.skip("CUDA headers not found beside nvcc")
    includes = [str(ROOT / "csrc"), *include_paths(), str(cuda_include), sysconfig.get_paths()["include"]]
    key = kr.digest(
        "wrapper",
        kr.sources_digest(kr.local_includes(source)),
        kr.tool_version(CXX),
        torch.__version__,
        includes,
        kr.tool_version(NVCC),  # the CUDA headers it parses against
        sys.version,
    )
    result, _ = kr.cached("wrapper", key, lambda: _parse_wrapper(source, includes))
    assert result["ok"], f"{result['command']}\n{result['log']}"
