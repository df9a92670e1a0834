"""Every Triton kernel, compiled ahead of time for sm_90 as the ops launch it: spills and tensor cores.

No GPU is needed: ``scripts/kernel_resources.py`` records each op's launches at
Kwon et al.'s shapes in every dtype (forward and backward, through
``brainkern.ops`` with the ``triton`` backend, under Triton's interpreter,
without running them), specialises them as Triton's launcher would on an sm_90
device, compiles each unique variant and reads ``ptxas -v`` and the SASS.
Results are cached by kernel source, specialisation and compiler version
(``$BRAINKERN_CACHE/compile-checks``; ``BRAINKERN_RECHECK=1`` compiles again), so
only a changed kernel costs compile time: about 10 s with everything cached, 2 to
3 minutes from cold on 2 busy cores (about 90 variants).

What the compiled kernels must show is the table below; the lead adjusts it as
kernels change. Each compiled variant is held to the FIRST row whose kernel and
path patterns (``fnmatch``) it matches. Paths are the op's input dtype (``fp32``,
``fp64``, ``fp16``, ``bf16``) and ``fp32-tf32``: the fp32 launch with its
``tl.dot`` precision constexpr switched from ``"ieee"`` to ``"tf32"``, which is
what a launcher passes on a GPU while PyTorch allows TF32 (the CPU never does).

- tensor cores: the SASS of every variant holds tensor-core instructions
  (HMMA/HGMMA/DMMA...; see ``TENSOR_CORE_OPCODES``);
- spill budget: spill stores + loads (bytes, from ``ptxas -v``) allowed per variant;
- xfail: why a kernel does not meet its row yet. The mark is strict: when the
  kernel is fixed the test fails as XPASS, and the row's mark is to be deleted.
"""

from __future__ import annotations

import fnmatch
from typing import NamedTuple

import pytest

from scripts import kernel_resources as kr


class Row(NamedTuple):
    kernel: str  # fnmatch pattern on the @triton.jit function's name
    path: str  # fnmatch pattern on the path (dtype) that launched it
    tensor_cores: bool
    spill_budget: int  # bytes
    xfail: str | None = None


_GRAM_HALF = (
    "the Gram kernel casts half tiles to float32 and runs an IEEE tl.dot on FMA units; half "
    "products are exact in float32, so a half-input tl.dot accumulating in float32 could use "
    "tensor cores without losing accuracy"
)

# fmt: off
EXPECTATIONS = [
    #   kernel                     path         tensor cores  spill budget (B)  xfail: why not yet
    Row("_resize_conv3d_*_kernel", "bf16",      True,         0),
    Row("_resize_conv3d_*_kernel", "fp16",      True,         0),
    Row("_resize_conv3d_*_kernel", "fp32-tf32", True,         0),
    Row("_mmd_gram_fwd_kernel",    "bf16",      True,         0,                _GRAM_HALF),
    Row("_mmd_gram_fwd_kernel",    "fp16",      True,         0,                _GRAM_HALF),
    Row("*",                       "*",         False,        0),  # every other kernel and path
]
# fmt: on

KERNELS = [name for names in kr.triton_kernels().values() for name in names]


def _row_of(kernel: str, path: str) -> int:
    """Index of the first row of EXPECTATIONS that holds ``kernel`` launched on ``path``."""
    return next(
        i
        for i, r in enumerate(EXPECTATIONS)
        if fnmatch.fnmatch(kernel, r.kernel) and fnmatch.fnmatch(path, r.path)
    )


def _cases():
    for i, row in enumerate(EXPECTATIONS):
        for kernel in KERNELS:
            if not fnmatch.fnmatch(kernel, row.kernel):
                continue
            marks = []
            if row.xfail:
                # Only a failed expectation is expected; missing launches or compile errors still fail.
                marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=row.xfail)]
            yield pytest.param(i, kernel, marks=marks, id=f"{kernel}:{row.path}")


@pytest.fixture(scope="module")
def resources() -> dict:
    pytest.importorskip("triton")
    if kr.tool("cuobjdump") is None:
        pytest.skip("cuobjdump not found (neither bundled with Triton nor on PATH)")
    return kr.triton_resources()


def test_kernels_are_found():
    assert len(KERNELS) >= 5, f"found only {KERNELS} in brainkern/kernels"
    assert len(set(KERNELS)) == len(KERNELS), f"two kernel modules define one kernel name: {KERNELS}"


def test_discovery_leaves_out_device_helpers(tmp_path):
    (tmp_path / "toy.py").write_text(
        "import triton\n\n\n"
        "@triton.jit\ndef _helper(v):\n    return v * 2\n\n\n"
        "@triton.jit\ndef _toy_kernel(x_ptr):\n    _helper(x_ptr)\n\n\n"
        "@triton.jit(do_not_specialize=['n'])\ndef _other_kernel(x_ptr, n):\n    pass\n\n\n"
        "def launcher():\n    pass\n"
    )
    assert kr.triton_kernels(tmp_path) == {"toy": ["_toy_kernel", "_other_kernel"]}


@pytest.mark.parametrize("path", list(kr.PATHS.values()))
@pytest.mark.parametrize("scenario", list(kr.SCENARIOS))
def test_scenario_records(resources, scenario, path):
    """Each op runs on the Triton backend in each dtype, or its dispatch declines the dtype."""
    (status,) = [
        s["status"] for s in resources["scenarios"] if (s["scenario"], s["path"]) == (scenario, path)
    ]
    if status.startswith("error"):
        pytest.fail(f"recording {scenario} in {path} failed:\n{status}")


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_is_launched_and_compiles(resources, kernel):
    """Every kernel in brainkern/kernels is launched by some scenario and compiles for sm_90."""
    mine = [v for v in resources["variants"] if v["kernel"] == kernel]
    assert mine, f"no scenario of scripts/kernel_resources.py launches {kernel}: add one to SCENARIOS"
    failed = [v for v in mine if not v["result"].get("ok")]
    assert not failed, f"{kernel} does not compile for sm_90:\n" + "\n".join(
        f"{v.get('paths', v.get('path'))} {v.get('constexprs', '')}:\n{v['result'].get('error')}"
        for v in failed
    )


def _describe(v: dict) -> str:
    r = v["result"]
    consts = " ".join(f"{k}={val}" for k, val in sorted(v["constexprs"].items()))
    return (
        f"  {'/'.join(v['paths'])} [{consts} warps={v['num_warps']}]: {r['registers']} registers, "
        f"{kr.spill_bytes(r)} B spilled, {r['shared']} B shared, tensor cores "
        f"{kr.tensor_core_text(r['tensor_cores'])}"
    )


@pytest.mark.parametrize(("index", "kernel"), list(_cases()))
def test_compiled_kernel_meets_expectations(resources, index, kernel):
    """The kernel's variants that this row of EXPECTATIONS holds meet it."""
    row = EXPECTATIONS[index]
    mine = []
    for v in resources["variants"]:
        if v["kernel"] == kernel and v["result"].get("ok"):
            held = [p for p in v["paths"] if _row_of(kernel, p) == index]
            if held:
                mine.append({**v, "paths": held})
    if not mine:
        if row.path == "*":
            return  # every variant is held to a more specific row
        pytest.fail(f"no compiled launch of {kernel} on path {row.path} (see the other tests' failures)")
    too_many = [v for v in mine if kr.spill_bytes(v["result"]) > row.spill_budget]
    assert not too_many, f"{kernel} spills more than {row.spill_budget} B:\n" + "\n".join(
        map(_describe, too_many)
    )
    if row.tensor_cores:
        without = [v for v in mine if not v["result"]["tensor_cores"]]
        assert not without, f"{kernel} has no tensor-core instructions on sm_90:\n" + "\n".join(
            map(_describe, without)
        )
