"""Compile-time resources of brainkern's GPU kernels for sm_90, measured without a GPU.

Run with the project's Python to print one Markdown table per kernel family::

    .venv/bin/python scripts/kernel_resources.py            # Triton and CUDA tables
    .venv/bin/python scripts/kernel_resources.py --recheck  # ignore cached results

Each row gives a kernel's registers per thread, spill bytes, shared memory and
tensor-core instructions, read from the compiler itself: ``ptxas -v`` for the
registers, spills and static shared memory, ``cuobjdump -sass`` for the
tensor-core instructions (HMMA / HGMMA and the other ``*MMA`` opcodes of the
machine code, which is what runs; the PTX may hold ``mma`` that ptxas lowers
otherwise). ``tests/test_gpu_compile.py`` and ``tests/test_cuda_sources.py``
assert on the same figures through the helpers of this module.

Triton kernels are compiled ahead of time for ``GPUTarget("cuda", 90, 32)`` with
the arguments the ops really launch them with, found in two steps, each in its
own process:

1. ``record``: under ``TRITON_INTERPRET=1``, every op runs through
   :mod:`brainkern.ops` with the ``triton`` backend forced on representative
   inputs (Kwon et al.'s layer shapes) in each dtype, forward and backward, with
   the interpreter's launch replaced by a recorder: each launch keeps its
   kernel, argument types and values, constexprs and options, and does not run.
   Launch arguments depend on shapes and dtypes, never on values, so the real
   (large) shapes cost little: big buffers are left untouched, and the heavy
   ATen ops around the kernels (convolutions, matrix products) are evaluated on
   the meta device. An fp32 launch whose ``tl.dot`` precision constexpr is
   ``"ieee"`` (the CPU's choice) is recorded a second time with ``"tf32"``,
   path ``fp32-tf32``: what the launcher passes on a GPU while PyTorch allows
   TF32 (its default for convolutions).
2. ``compile``: in a normal process (compiling needs real ``JITFunction``s),
   each launch is specialised exactly as Triton's launcher would on an sm_90
   device (integer divisibility, pointer alignment, constexprs) and every unique
   (kernel, specialisation, options) is compiled once.

Results are cached in ``$BRAINKERN_CACHE/compile-checks`` (default
``~/.cache/brainkern/compile-checks``) under a hash of everything that decides
them (kernel source and its dependencies, specialisation, compiler versions,
flags); ``BRAINKERN_RECHECK=1`` (or ``--recheck``) compiles again.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
KERNEL_DIR = ROOT / "brainkern" / "kernels"
ARCH = "sm_90"

# Tensor-core opcodes of sm_80/sm_90 machine code: warp-level MMA (HMMA, IMMA, DMMA,
# BMMA) and Hopper's warpgroup MMA (HGMMA, IGMMA, QGMMA, BGMMA).
TENSOR_CORE_OPCODES = frozenset({"HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA"})

# Scenario dtypes and the path names the tables and the test's expectations use.
PATHS = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16"}
TF32_PATH = "fp32-tf32"


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$BRAINKERN_CACHE/compile-checks``, or ``~/.cache/brainkern/compile-checks``."""
    base = os.environ.get("BRAINKERN_CACHE") or str(Path.home() / ".cache" / "brainkern")
    return Path(base) / "compile-checks"


def recheck() -> bool:
    """Whether ``BRAINKERN_RECHECK=1`` asks to ignore cached results."""
    return os.environ.get("BRAINKERN_RECHECK", "0").lower() in ("1", "true", "yes", "on")


def digest(*parts: object) -> str:
    """A stable hash of strings, bytes and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def _cache_path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{key}.json"


def load_cached(kind: str, key: str) -> dict | None:
    """The stored result for ``key``, or ``None`` (also under ``BRAINKERN_RECHECK=1``)."""
    path = _cache_path(kind, key)
    if recheck() or not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def store(kind: str, key: str, result: dict) -> None:
    """Keep ``result`` for ``key`` if it is a pass (``"ok": True``): failures always run again."""
    if not result.get("ok"):
        return
    path = _cache_path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(result, sort_keys=True))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


def cached(kind: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``(result, from_cache)``: the stored pass for ``key``, else ``compute()`` (stored if a pass)."""
    hit = load_cached(kind, key)
    if hit is not None:
        return hit, True
    result = compute()
    store(kind, key, result)
    return result, False


# --------------------------------------------------------------------------- compiler output


def parse_ptxas(log: str) -> dict[str, dict]:
    """Per-function resources from ``ptxas -v`` output (nvcc's ``-Xptxas -v`` or Triton's).

    Returns ``{mangled_name: {"registers", "stack", "spill_stores", "spill_loads",
    "smem"}}`` (bytes; ``smem`` is static shared memory); a function ptxas gave no
    register line for (a non-inlined device function) has only its frame figures.
    """
    funcs: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = funcs.setdefault(m.group(1), {})
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = funcs.setdefault(m.group(1), {})
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m[1])
            smem = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(smem[1]) if smem else 0
    for f in funcs.values():
        f.setdefault("stack", 0)
        f.setdefault("spill_stores", 0)
        f.setdefault("spill_loads", 0)
    return funcs


def spill_bytes(res: dict) -> int:
    """Bytes a function spills to local memory (stores plus loads)."""
    return res.get("spill_stores", 0) + res.get("spill_loads", 0)


def tool(name: str) -> str | None:
    """A CUDA binary tool: Triton's bundled copy first (it matches Triton's ptxas), then PATH."""
    with contextlib.suppress(ImportError):
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    return shutil.which(name)


def parse_sass(text: str) -> dict[str, Counter]:
    """Tensor-core instructions in ``cuobjdump -sass`` text: ``{mangled_function: Counter(opcode)}``."""
    counts: dict[str, Counter] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = counts.setdefault(m.group(1), Counter())
            continue
        # "/*0120*/   @!P0 HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], ..." -> HGMMA
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", line)
        if m and current is not None and m.group(1) in TENSOR_CORE_OPCODES:
            current[m.group(1)] += 1
    return counts


def sass_tensor_cores(binary: Path) -> dict[str, Counter]:
    """:func:`parse_sass` of a cubin or an object file."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found (neither bundled with Triton nor on PATH)")
    out = subprocess.run([cuobjdump, "-sass", str(binary)], capture_output=True, text=True, check=True)
    return parse_sass(out.stdout)


def tensor_core_text(counts: dict[str, int]) -> str:
    """``"yes: HGMMA 16"`` or ``"no"``."""
    if not counts:
        return "no"
    return "yes: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))


def _demangle(names: Iterable[str]) -> dict[str, str]:
    names = list(names)
    filt = shutil.which("c++filt")
    if filt is None or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    return dict(zip(names, lines, strict=True)) if len(lines) == len(names) else {n: n for n in names}


def split_cuda_name(demangled: str) -> tuple[str, str]:
    """``"brainkern::(anonymous namespace)::gram_kernel<__half>(...)"`` -> ``("gram_kernel", "__half")``."""
    depth, cut = 0, len(demangled)
    for i, ch in enumerate(demangled):  # the parameter list is the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not demangled.startswith("(anonymous", i):
            cut = i
            break
    head = demangled[:cut].removeprefix("void ")
    m = re.match(r"(.*?)<(.*)>$", head.strip())
    name, targs = (m.group(1), m.group(2)) if m else (head.strip(), "")
    # Namespaces inside template arguments only lengthen the tables.
    return name.split("::")[-1], re.sub(r"\b[A-Za-z_]\w*::", "", targs).strip()


# --------------------------------------------------------------------------- CUDA (nvcc)

NVCC_FLAGS = ["-std=c++17", "-O2", f"-arch={ARCH}", "-Werror", "all-warnings", "-Xptxas", "-v"]


def local_includes(source: Path, search: Iterable[Path] = (CSRC,)) -> list[Path]:
    """``source`` and every project file it includes with ``#include "..."``, recursively.

    Every include is followed, also those under ``#if`` (a superset is harmless
    for a cache key); system headers (``<...>``) are the compiler's, keyed by
    its version.
    """
    seen: dict[Path, None] = {}
    todo = [source.resolve()]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen[path] = None
        for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), re.MULTILINE):
            for base in (path.parent, *search):
                if (base / name).exists():
                    todo.append((base / name).resolve())
                    break
    return sorted(seen)


def sources_digest(files: Iterable[Path]) -> list[tuple[str, str]]:
    """``[(path relative to the repo, sha256 of its bytes)]`` for a cache key."""
    out = []
    for f in files:
        rel = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
        out.append((str(rel), hashlib.sha256(f.read_bytes()).hexdigest()))
    return out


def tool_version(exe: str) -> str:
    """The ``--version`` text of a compiler, for cache keys."""
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()


def nvcc_check(source: Path, nvcc: str) -> tuple[dict, bool]:
    """Compile ``source`` for sm_90 with ``-Xptxas -v`` (cached); ``(result, from_cache)``.

    ``result``: ``ok``, ``command``, ``log`` (compiler output) and ``kernels``:
    ``[{"kernel", "template", "mangled", "registers", "stack", "spill_stores",
    "spill_loads", "smem", "tensor_cores": {opcode: count}}]``.
    """
    key = digest("nvcc", sources_digest(local_includes(source)), tool_version(nvcc), NVCC_FLAGS)

    def compile_it() -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            obj = Path(tmp) / "out.o"
            cmd = [nvcc, *NVCC_FLAGS, "-I", str(CSRC), "-c", str(source), "-o", str(obj)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            result = {"ok": out.returncode == 0, "command": " ".join(cmd), "log": out.stdout + out.stderr}
            if not result["ok"]:
                return result
            funcs = parse_ptxas(result["log"])
            sass = sass_tensor_cores(obj)
        names = _demangle(funcs)
        kernels = []
        for mangled, res in sorted(funcs.items(), key=lambda kv: names[kv[0]]):
            name, targs = split_cuda_name(names[mangled])
            kernels.append(
                {
                    "kernel": name,
                    "template": targs,
                    "mangled": mangled,
                    **res,
                    "tensor_cores": sass.get(mangled, {}),
                }
            )
        result["kernels"] = kernels
        return result

    return cached("nvcc", key, compile_it)


# --------------------------------------------------------------------------- Triton: discovery


def _is_jit(dec: ast.expr) -> bool:
    target = dec.func if isinstance(dec, ast.Call) else dec
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name in ("jit", "autotune", "heuristics")


def triton_kernels(kernel_dir: Path = KERNEL_DIR) -> dict[str, list[str]]:
    """``{module_stem: [kernel names]}`` of the ``@triton.jit`` kernels in ``brainkern/kernels``.

    A kernel is a jit function no other jit function of its file calls (those are
    device helpers, inlined into their callers and compiled with them).
    """
    found = {}
    for path in sorted(kernel_dir.glob("*.py")):
        tree = ast.parse(path.read_text())
        jit = [f for f in tree.body if isinstance(f, ast.FunctionDef) and any(map(_is_jit, f.decorator_list))]
        names = {f.name for f in jit}
        called = {
            node.func.id
            for f in jit
            for node in ast.walk(f)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
        }
        kernels = [f.name for f in jit if f.name not in called]
        if kernels:
            found[path.stem] = kernels
    return found


# --------------------------------------------------------------------------- Triton: recording

# Kwon et al. (2019), generator at 64^3: three resize-conv blocks (no bias; BatchNorm and
# ReLU follow outside the op) and the output block with bias and tanh, batch 4.
KWON_GENERATOR = (
    (512, 256, 4, False, None),
    (256, 128, 8, False, None),
    (128, 64, 16, False, None),
    (64, 1, 32, True, "tanh"),
)
# Kwon et al.'s discriminator at 64^3, width 64: four stride-2 4x4x4 convolutions and a
# 4x4x4 head; spectral norm reads each weight as (out, in * 4^3).
KWON_DISCRIMINATOR = ((64, 1), (128, 64), (256, 128), (512, 256), (1, 512))
BATCH = 4
MMD_TESTS, MMD_SAMPLES, MMD_SIZE = 100, 8, 64  # Kwon et al.'s evaluation: 100 tests of 8 vs 8 at 64^3
GP_SHAPE = (4, 1, 64, 64, 64)
PIXEL_SHUFFLE = ((4, 512, 8, 8, 8), 2)
# Allocations at least this large stay untouched (the kernels that would fill them do not
# run); smaller ones are zeroed so value checks in the ops (finite sums) see zeros.
_UNTOUCHED_BYTES = 64 << 20


def _is_big(shape, dtype) -> bool:
    numel = 1
    for s in shape:
        numel *= int(s)
    return numel * torch.empty((), dtype=dtype).element_size() >= _UNTOUCHED_BYTES


def _blank(shape, dtype, device="cpu", stride=None) -> torch.Tensor:
    """An output buffer: untouched memory when large, zeros otherwise."""
    shape = tuple(int(s) for s in shape)
    if stride is None:
        t = torch.empty(shape, dtype=dtype, device=device)
    else:
        t = torch.empty_strided(shape, tuple(stride), dtype=dtype, device=device)
    return t if _is_big(shape, dtype) else t.zero_()


def _inputs(shape, dtype) -> torch.Tensor:
    """A leaf tensor that requires grad: random when small, untouched memory when large."""
    t = torch.empty(shape, dtype=dtype) if _is_big(shape, dtype) else torch.randn(shape, dtype=dtype)
    return t.requires_grad_()


def _scenario_resize_conv3d(dtype) -> None:
    from brainkern import ops

    for c_in, c_out, size, bias, act in KWON_GENERATOR:
        x = _inputs((BATCH, c_in, size, size, size), dtype)
        w = _inputs((c_out, c_in, 3, 3, 3), dtype)
        b = _inputs((c_out,), dtype) if bias else None
        y = ops.resize_conv3d(x, w, b, act)
        y.backward(torch.ones_like(y))


def _scenario_pixel_shuffle3d(dtype) -> None:
    from brainkern import ops

    shape, r = PIXEL_SHUFFLE
    y = ops.pixel_shuffle3d(_inputs(shape, dtype), r)
    y.backward(torch.ones_like(y))


def _scenario_mmd(dtype) -> None:
    from brainkern import ops

    shape = (MMD_TESTS, MMD_SAMPLES, 1, MMD_SIZE, MMD_SIZE, MMD_SIZE)
    for kernel in ("linear", "rbf"):
        x, y = _inputs(shape, dtype), _inputs(shape, dtype)
        ops.mmd2_batched(x, y, kernel=kernel).sum().backward()


def _scenario_spectral_norm(dtype) -> None:
    from brainkern import ops

    ws = [torch.randn(o, i * 64, dtype=dtype) for o, i in KWON_DISCRIMINATOR]
    us = [torch.randn(w.shape[0], dtype=dtype) for w in ws]
    vs = [torch.randn(w.shape[1], dtype=dtype) for w in ws]
    ops.spectral_norm_step(ws, us, vs)


def _scenario_gradient_penalty(dtype) -> None:
    from brainkern import ops

    # A discriminator whose input gradient depends on its input (2 w x), so the penalty's
    # backward reaches the interpolation; real and fake both require grad to reach its kernel.
    w = _inputs(GP_SHAPE[1:], dtype)

    def disc(v):
        return (w * v * v).sum(dim=(1, 2, 3, 4))

    # "one-sided" differs from "two-sided" only in a constexpr branch of two small kernels.
    for mode in ("two-sided", "r1"):
        real, fake = _inputs(GP_SHAPE, dtype), _inputs(GP_SHAPE, dtype)
        ops.gradient_penalty(disc, real, fake, mode=mode).backward()


def _scenario_diff_augment3d(dtype) -> None:
    from brainkern import ops

    # King et al.'s batch of 4 at 64^3, every augmentation drawn (a shift, a box, a scale).
    x = _inputs((4, 1, 64, 64, 64), dtype)
    shift = torch.tensor([[3, -5, 0], [-8, 2, 7], [0, 0, 0], [1, 1, -1]])
    lo = torch.tensor([[0, 10, 5], [20, 0, 0], [0, 0, 0], [31, 31, 31]])
    hi = torch.tensor([[32, 40, 30], [52, 17, 9], [0, 0, 0], [63, 64, 40]])
    scale = torch.tensor([0.8, 1.0, 0.7, 0.95])
    y = ops.diff_augment3d(x, shift, lo, hi, scale, background=-1.0)
    y.backward(torch.ones_like(y))


# name -> run(dtype): one call of the op forward and backward at the shapes a model uses.
SCENARIOS: dict[str, Callable] = {
    "resize_conv3d": _scenario_resize_conv3d,
    "pixel_shuffle3d": _scenario_pixel_shuffle3d,
    "mmd": _scenario_mmd,
    "spectral_norm": _scenario_spectral_norm,
    "gradient_penalty": _scenario_gradient_penalty,
    "diff_augment3d": _scenario_diff_augment3d,
}


def _encode(value):
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return {"tuple": [_encode(v) for v in value]}
    return {"unsupported": repr(value)}


def _shapes_only_mode():
    """A dispatch mode that evaluates heavy ATen ops on the meta device.

    Convolutions and matrix products around the kernels cost minutes on the CPU in
    half precision at the models' shapes (fp16 convolution backward has no fast CPU
    path); their values never reach a launch, only their shapes, so they return
    blank tensors of the right shape, dtype and strides.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    aten = torch.ops.aten
    heavy = {
        aten.convolution,
        aten.convolution_backward,
        aten._convolution,
        aten.mm,
        aten.bmm,
        aten.addmm,
        aten.baddbmm,
    }

    def to_meta(t):
        return t.to("meta") if isinstance(t, torch.Tensor) else t

    def to_blank(t):
        return _blank(t.shape, t.dtype, stride=t.stride()) if isinstance(t, torch.Tensor) else t

    class ShapesOnly(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket in heavy:
                return tree_map(to_blank, func(*tree_map(to_meta, args), **tree_map(to_meta, kwargs)))
            return func(*args, **kwargs)

    return ShapesOnly()


class _BlankTorch:
    """``torch`` for the kernel modules while recording: output buffers from :func:`_blank`."""

    def __init__(self, torch_module) -> None:
        self._torch = torch_module

    def __getattr__(self, name: str):
        return getattr(self._torch, name)

    @staticmethod
    def _shape(size):
        return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size

    def empty(self, *size, dtype=None, device=None, **_kw):
        return _blank(self._shape(size), dtype or self._torch.get_default_dtype(), device or "cpu")

    zeros = empty

    def empty_like(self, t, *, dtype=None, device=None, **_kw):
        return _blank(t.shape, dtype or t.dtype, device or t.device)

    zeros_like = empty_like


def _tf32_variant(launch: dict) -> dict | None:
    """The launch with its ``"ieee"`` dot-precision constexpr as ``"tf32"``, if it has one."""
    kwargs = launch["kwargs"]
    names = [k for k, v in kwargs.items() if v == "ieee"]
    args = [i for i, v in enumerate(launch["args"]) if v == "ieee"]
    if not names and not args:
        return None
    new = json.loads(json.dumps(launch))
    new["path"] = TF32_PATH
    for k in names:
        new["kwargs"][k] = "tf32"
    for i in args:
        new["args"][i] = "tf32"
    return new


def record_launches(scenarios: dict[str, Callable] | None = None) -> dict:
    """Run every scenario in every dtype with launches recorded, not run (needs ``TRITON_INTERPRET=1``).

    ``scenarios`` defaults to :data:`SCENARIOS`.

    Returns ``{"launches": [...], "scenarios": [{"scenario", "path", "status"}]}``;
    ``status`` is ``"ok"``, ``"declined: <reason>"`` (the op's dispatch refuses the
    dtype on the Triton backend) or ``"error: <traceback>"``.
    """
    import importlib
    import pkgutil

    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction

    import brainkern.kernels
    from brainkern import ops

    if not ops._backend.interpreter_enabled():
        raise RuntimeError("record_launches needs TRITON_INTERPRET=1")
    launches: list[dict] = []
    where: dict[str, str] = {}

    def record(self, *args, grid, warmup, **kwargs):
        if not warmup:
            launches.append(
                {
                    **where,
                    "module": self.fn.__module__,
                    "kernel": self.fn.__name__,
                    "args": [_encode(a) for a in args],
                    "kwargs": {k: _encode(v) for k, v in kwargs.items()},
                    "grid": _encode(grid if isinstance(grid, tuple) else None),
                }
            )

    def record_every_config(self, *args, **kwargs):
        # A GPU run benchmarks every (pruned) config: each is a launch to compile.
        self.nargs = dict(zip(self.arg_names, args, strict=False))
        for config in self.prune_configs(kwargs):
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    saved = InterpretedFunction.run, Autotuner.run
    InterpretedFunction.run, Autotuner.run = record, record_every_config
    modules = []
    for info in pkgutil.iter_modules(brainkern.kernels.__path__):
        module = importlib.import_module(f"brainkern.kernels.{info.name}")
        if hasattr(module, "torch"):
            modules.append(module)
            module.torch = _BlankTorch(torch)
    try:
        statuses = _run_scenarios(SCENARIOS if scenarios is None else scenarios, launches, where)
    finally:
        InterpretedFunction.run, Autotuner.run = saved
        for module in modules:
            module.torch = torch
    return {"launches": launches, "scenarios": statuses}


def _run_scenarios(scenarios: dict[str, Callable], launches: list[dict], where: dict[str, str]) -> list[dict]:
    from brainkern import ops

    statuses = []
    for name, run in scenarios.items():
        for dtype_name, path in PATHS.items():
            where.update(scenario=name, path=path)
            first = len(launches)
            start = time.perf_counter()
            torch.manual_seed(0)
            try:
                with _shapes_only_mode(), ops.use_backend("triton"):
                    run(getattr(torch, dtype_name))
                status = "ok"
            except ops.BackendError as exc:
                status = "declined: " + " ".join(str(exc).split("\n")[1:]).strip()
            except Exception:  # reported in full by the caller
                status = "error: " + traceback.format_exc()
            if path == PATHS["float32"]:
                launches.extend(v for v in map(_tf32_variant, launches[first:]) if v is not None)
            seconds = round(time.perf_counter() - start, 2)
            statuses.append({"scenario": name, "path": path, "status": status, "seconds": seconds})
    return statuses


# --------------------------------------------------------------------------- Triton: compiling


def _decode(value):
    import triton.language as tl

    if not isinstance(value, dict):
        return value
    if "tensor" in value:
        # Only the dtype and the address modulo 16 matter to Triton's specialisation.
        buf = torch.empty(16, dtype=getattr(torch, value["tensor"]))
        return buf if value["aligned"] else buf[1:]
    if "tl_dtype" in value:
        return tl.dtype(value["tl_dtype"])
    if "tuple" in value:
        return tuple(_decode(v) for v in value["tuple"])
    raise TypeError(f"cannot rebuild launch argument {value}")


def _jit_function(module: str, name: str):
    import importlib

    from triton.runtime.jit import JITFunction

    obj = getattr(importlib.import_module(module), name)
    while not isinstance(obj, JITFunction):  # through @autotune / @heuristics wrappers
        obj = obj.fn
    return obj


def _target():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def specialise(launch: dict):
    """``(kernel, signature, constexprs, attrs, options)`` as Triton's launcher derives them on sm_90."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = _jit_function(launch["module"], launch["kernel"])
    backend = make_backend(_target())
    args = [_decode(a) for a in launch["args"]]
    kwargs = {k: _decode(v) for k, v in launch["kwargs"].items()}
    kwargs.setdefault("debug", False)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return kernel, signature, constexprs, attrs, options


def variant_key(launch: dict) -> tuple[str, dict]:
    """The cache key of a launch's compiled variant, and a readable description of it."""
    import triton

    kernel, signature, constexprs, attrs, options = specialise(launch)
    names = list(kernel.arg_names)
    described = {
        "kernel": launch["kernel"],
        "module": launch["module"],
        "signature": {k: v for k, v in signature.items() if v != "constexpr"},
        "constexprs": {names[path[0]]: str(v) for path, v in constexprs.items() if len(path) == 1},
        "attrs": {names[path[0]]: v for path, v in attrs.items() if v and len(path) == 1},
        "num_warps": options.num_warps,
        "num_stages": options.num_stages,
    }
    key = digest("triton", kernel.cache_key, described, repr(options), triton.__version__, str(_target()))
    return key, described


def compile_variant(launch: dict) -> dict:
    """Compile one launch for sm_90: registers, spills, shared memory, tensor-core instructions."""
    import triton
    from triton.compiler import ASTSource

    start = time.perf_counter()
    try:
        kernel, signature, constexprs, attrs, options = specialise(launch)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            compiled = triton.compile(
                ASTSource(kernel, signature, constexprs, attrs), target=_target(), options=options.__dict__
            )
        funcs = parse_ptxas(log.getvalue())
        name = compiled.metadata.name
        if name not in funcs:
            raise RuntimeError(f"no ptxas -v figures for {name} (is TRITON_DUMP_PTXAS_LOG=1 set?)")
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            sass = sass_tensor_cores(cubin).get(name, Counter())
        ptx = compiled.asm["ptx"]
        return {
            "ok": True,
            **funcs[name],
            "shared": compiled.metadata.shared,  # dynamic shared memory of a launch, bytes
            "tensor_cores": dict(sass),
            "seconds": round(time.perf_counter() - start, 2),
            "ptx_mma": len(re.findall(r"^\s*(?:@\S+\s+)?(?:wgmma\.mma_async|mma\.sync)", ptx, re.MULTILINE)),
        }
    except Exception:  # the caller reports it against the kernel
        return {"ok": False, "error": traceback.format_exc()}


def _compile_job(job: tuple[str, dict]) -> tuple[str, dict]:
    key, launch = job
    result = compile_variant(launch)
    store("triton", key, result)
    return key, result


def compile_launches(launches: list[dict], workers: int = 2) -> list[dict]:
    """Compile every unique variant among ``launches`` (cached); one entry per variant.

    Each entry: the variant's description (kernel, module, signature, constexprs,
    attrs, options), the ``paths`` and ``scenarios`` that launch it, and ``result``
    (see :func:`compile_variant`) with ``cached``. A launch that cannot even be
    specialised comes back as its record with a failed ``result``.
    """
    from concurrent.futures import ProcessPoolExecutor

    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a cache hit inside Triton prints no ptxas log
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    variants: dict[str, dict] = {}
    errors = []
    for launch in launches:
        try:
            key, described = variant_key(launch)
        except Exception:  # reported as the launch's failed result
            errors.append({**launch, "result": {"ok": False, "error": traceback.format_exc()}})
            continue
        entry = variants.setdefault(key, {**described, "paths": [], "scenarios": [], "launch": launch})
        for field in ("path", "scenario"):
            if launch[field] not in entry[field + "s"]:
                entry[field + "s"].append(launch[field])
    todo = []
    for key, entry in variants.items():
        hit = load_cached("triton", key)
        if hit is None:
            todo.append((key, entry["launch"]))
        else:
            entry["result"] = {**hit, "cached": True}
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(_compile_job, todo))
    else:
        done = [_compile_job(job) for job in todo]
    for key, result in done:
        variants[key]["result"] = {**result, "cached": False}
    for entry in variants.values():
        del entry["launch"]
    return [*variants.values(), *errors]


def _run_stage(args: list[str], env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *args, str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return json.loads(out.read_text())


def _recording_key() -> str:
    import triton

    # What a launch can depend on: the ops, their kernels and the package's top-level modules.
    pkg = ROOT / "brainkern"
    files = sorted([*pkg.glob("*.py"), *(pkg / "ops").glob("*.py"), *(pkg / "kernels").glob("*.py")])
    files.append(Path(__file__).resolve())
    return digest("record", sources_digest(files), torch.__version__, triton.__version__)


def triton_resources(workers: int = 2) -> dict:
    """Record the ops' launches and compile them for sm_90 (both cached).

    Returns ``{"scenarios": [...], "variants": [...], "recorded_from_cache": bool,
    "seconds": {"record": s, "compile": s}}``.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

    def record() -> dict:
        return {"ok": True, **_run_stage(["record"], {**env, "TRITON_INTERPRET": "1"})}

    start = time.perf_counter()
    recorded, hit = cached("record", _recording_key(), record)
    recorded_at = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "launches.json"
        src.write_text(json.dumps(recorded["launches"]))
        variants = _run_stage(["compile", str(src), "--workers", str(workers)], env)
    return {
        "scenarios": recorded["scenarios"],
        "variants": variants,
        "recorded_from_cache": hit,
        "seconds": {"record": recorded_at - start, "compile": time.perf_counter() - recorded_at},
    }


# --------------------------------------------------------------------------- report


def _table(header: list[str], rows: list[list[str]], right: Iterable[int] = ()) -> str:
    right = set(right)
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _varying(variants: list[dict]) -> set[str]:
    """Constexpr names whose value differs between a kernel's variants."""
    values: dict[str, set] = {}
    for v in variants:
        for k, val in v["constexprs"].items():
            values.setdefault(k, set()).add(val)
    return {k for k, vals in values.items() if len(vals) > 1}


def _path_order(paths: list[str]) -> list[int]:
    order = [PATHS["float32"], TF32_PATH, *list(PATHS.values())[1:]]
    return sorted(order.index(p) if p in order else len(order) for p in paths)


def _constexpr_order(variant: dict) -> list[tuple]:
    # Numbers in numeric order (C_IN=64 before C_IN=128), the rest as text.
    return [
        (k, (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))
        for k, v in sorted(variant["constexprs"].items())
    ]


def triton_tables(variants: list[dict]) -> str:
    """One Markdown table per kernel module: a row per compiled variant."""
    out = []
    by_module: dict[str, list[dict]] = {}
    for v in variants:
        by_module.setdefault(v["module"].rsplit(".", 1)[-1], []).append(v)
    for module, items in sorted(by_module.items()):
        rows = []
        for kernel in sorted({v["kernel"] for v in items}):
            mine = [v for v in items if v["kernel"] == kernel]
            shown = _varying(mine)
            for v in sorted(mine, key=lambda v: (_path_order(v["paths"]), _constexpr_order(v))):
                r = v["result"]
                variant = " ".join(f"{k}={val}" for k, val in sorted(v["constexprs"].items()) if k in shown)
                variant += f" w{v['num_warps']}/s{v['num_stages']}"
                if not r.get("ok"):
                    rows.append([kernel, "/".join(v["paths"]), variant, "failed", "-", "-", "-"])
                    continue
                rows.append(
                    [
                        kernel,
                        ", ".join(v["paths"]),
                        variant.strip(),
                        str(r["registers"]),
                        str(spill_bytes(r)),
                        str(r["shared"]),
                        tensor_core_text(r["tensor_cores"]),
                    ]
                )
        header = ["kernel", "path", "variant", "registers", "spill bytes", "shared (B)", "tensor cores"]
        out.append(f"### Triton: {module}\n\n" + _table(header, rows, right=(3, 4, 5)))
    return "\n\n".join(out)


def cuda_tables(results: dict[str, dict]) -> str:
    """One Markdown table per ``.cu`` file: a row per kernel instantiation."""
    out = []
    for op, res in sorted(results.items()):
        if not res.get("ok"):
            out.append(f"### CUDA: {op}\n\ncompile failed:\n\n```\n{res.get('log', '')[-2000:]}\n```")
            continue
        rows = [
            [
                k["kernel"],
                k["template"] or "-",
                str(k.get("registers", "-")),
                str(spill_bytes(k)),
                str(k.get("smem", 0)),
                tensor_core_text(k["tensor_cores"]),
            ]
            for k in res["kernels"]
        ]
        header = ["kernel", "dtype/path", "registers", "spill bytes", "static shared (B)", "tensor cores"]
        out.append(f"### CUDA: {op}\n\n" + _table(header, rows, right=(2, 3, 4)))
    return "\n\n".join(out)


def report(workers: int = 2) -> str:
    """The whole Markdown report (Triton then CUDA), with versions and how to regenerate it."""
    import triton

    nvcc = shutil.which("nvcc")
    release = re.compile(r"release [\d.]+, V[\d.]+")
    nvcc_release = release.search(tool_version(nvcc)) if nvcc else None
    nvcc_text = nvcc_release[0] if nvcc_release else "(not found)"
    ptxas_release = release.search(tool_version(tool("ptxas") or "ptxas"))
    ptxas_text = ptxas_release[0] if ptxas_release else "version unknown"
    tri = triton_resources(workers)
    cu = {p.parent.name: nvcc_check(p, nvcc)[0] for p in sorted(CSRC.glob("*/*.cu"))} if nvcc else {}
    ok = [v["result"] for v in tri["variants"] if v["result"].get("ok")]
    cuda_kernels = [k for res in cu.values() for k in res.get("kernels", [])]
    parts = [
        "## Compile-time resources (sm_90, no GPU)",
        f"{datetime.date.today().isoformat()}, no GPU: every kernel compiled for sm_90 by Triton "
        f"{triton.__version__} (its bundled ptxas, {ptxas_text}) and nvcc {nvcc_text}. Regenerate with "
        "`.venv/bin/python scripts/kernel_resources.py` (cached by source; `--recheck` compiles "
        "everything again) and replace this section with its output.",
        "Triton rows are the launches the ops make at Kwon et al.'s shapes (generator resize-convs "
        "512->256 at 4^3 to 64->1 at 32^3, batch 4; pixel shuffle (4, 512, 8^3) r=2; MMD over 100 tests "
        "of 8 vs 8 at 64^3, linear and RBF; spectral norm over a 64^3 discriminator's 5 weights; gradient "
        "penalty on (4, 1, 64^3), two-sided and R1), forward and backward, specialised as Triton's "
        "launcher does on an sm_90 device; `fp32-tf32` is the fp32 launch with TF32 allowed (PyTorch's "
        "default for convolutions on a GPU). Registers are per thread; spill bytes are ptxas's spill "
        "stores plus loads; Triton's shared memory is what a launch requests, CUDA's the static part "
        "(dynamic shared memory is set at launch); tensor cores count HMMA/HGMMA/DMMA... in the SASS.",
        f"Summary: {len(tri['variants'])} Triton variants of "
        f"{len({v['kernel'] for v in tri['variants']})} kernels, {len(ok)} compiled, "
        f"{sum(spill_bytes(r) > 0 for r in ok)} spill, {sum(bool(r['tensor_cores']) for r in ok)} use tensor "
        f"cores; {len(cuda_kernels)} CUDA kernel instantiations, "
        f"{sum(spill_bytes(k) > 0 for k in cuda_kernels)} spill, "
        f"{sum(bool(k['tensor_cores']) for k in cuda_kernels)} use tensor cores.",
    ]
    declined = [
        f"{s['scenario']} {s['path']}" for s in tri["scenarios"] if s["status"].startswith("declined")
    ]
    if declined:
        parts.append("Paths an op's dispatch keeps off Triton (no launch): " + ", ".join(declined) + ".")
    for s in tri["scenarios"]:
        if s["status"].startswith("error"):
            parts.append(f"Recording {s['scenario']} {s['path']} failed:\n\n```\n{s['status'][-1500:]}\n```")
    parts.append(triton_tables(tri["variants"]))
    parts.append(cuda_tables(cu) if cu else "nvcc is not on PATH: no CUDA tables.")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage")
    rec = sub.add_parser("record", help="(internal) record launches under TRITON_INTERPRET=1")
    rec.add_argument("out")
    comp = sub.add_parser("compile", help="(internal) compile recorded launches for sm_90")
    comp.add_argument("launches")
    comp.add_argument("--workers", type=int, default=2)
    comp.add_argument("out")
    parser.add_argument("--recheck", action="store_true", help="ignore cached results (BRAINKERN_RECHECK=1)")
    parser.add_argument("--workers", type=int, default=2, help="parallel Triton compiles")
    args = parser.parse_args(argv)
    if args.recheck:
        os.environ["BRAINKERN_RECHECK"] = "1"
    if args.stage == "record":
        Path(args.out).write_text(json.dumps(record_launches()))
    elif args.stage == "compile":
        launches = json.loads(Path(args.launches).read_text())
        Path(args.out).write_text(json.dumps(compile_launches(launches, args.workers)))
    else:
        sys.stdout.write(report(args.workers))
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
