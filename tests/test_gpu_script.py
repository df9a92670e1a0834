"""benchmarks/gpu.sh, and the test-run set-up that the GPU run relies on.

gpu.sh starts from a bare image: its set-up stage installs what is missing.

The GPU machine is lent for a few minutes with a Python that has torch (and triton)
and little else, so the script is run here the same way: in a fresh virtual
environment holding only torch, with ``GPU_SKIP_CUDA=1`` (no build, no CUDA tests)
and tiny selections. The Triton tests and the benchmarks must start (on this CPU
the tests report "no CUDA device" and skip; one benchmark runs once in smoke mode),
and every stage must leave its line in ``$OUT/summary.md``. The venv's torch is this
environment's, linked (see ``bare_python``); the set-up stage needs the package registry.

Also here, from ``tests/conftest.py``: pytest starts without pytest-benchmark,
tests run with one intra-op thread, Triton's interpreter skips the overflow checks
that it would not report anyway, and on a GPU the op calls of CUDA tests run
under ``torch.cuda.set_sync_debug_mode("error")`` (checked here with a stand-in
for CUDA's switch, since there is no GPU).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import brainkern.ops as bo
from brainkern.ops._backend import interpreter_enabled
from tests import conftest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"
TORCH = torch.__version__.split("+")[0]

pytestmark = pytest.mark.skipif(
    os.environ.get("BRAINKERN_IN_GPU_SCRIPT") == "1", reason="already inside benchmarks/gpu.sh"
)


def _summary(out: Path) -> dict[str, tuple[str, str]]:
    """``{stage: (exit, note)}`` from the rows of summary.md."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("stage", "---"):
            rows[cells[0]] = (cells[1], cells[3])
    return rows


def _run(out: Path, python: str, timeout: float, **knobs: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_", "TRITON_INTERPRET"))}
    env.update(OUT=str(out), PYTHON=python, GPU_WORK=str(out.parent / "work"), **knobs)
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _with_requirements(*names: str) -> list[importlib.metadata.Distribution]:
    """These distributions of this environment and what they require (no extras), recursively."""
    from packaging.requirements import Requirement  # noqa: PLC0415
    from packaging.utils import canonicalize_name  # noqa: PLC0415

    todo, seen, found = list(names), set(), []
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        found.append(dist)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> str:
    """A fresh venv with only torch (and what torch requires) and pip on its path.

    They are this environment's own copies, linked rather than installed: pip-installing
    the torch wheel again took 30 s (90 s on a loaded machine) and needed the registry. The
    links sit in a folder outside the venv that a ``.pth`` file puts on its path, as a GPU
    image's torch sits outside the project's folders: pip counts them as installed (the
    constraints keep them) but never uninstalls them, since they lie outside the venv.
    """
    root = tmp_path_factory.mktemp("bare")
    venv, links = root / "venv", root / "linked"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    links.mkdir()
    for dist in _with_requirements("torch", "pip"):
        for top in {f.parts[0] for f in dist.files or []} - {"..", "__pycache__"}:
            if not (links / top).exists():
                (links / top).symlink_to(dist.locate_file(top))
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "_linked_torch.pth").write_text(f"{links}\n")
    return python


@pytest.mark.slow
def test_setup_installs_what_is_missing_and_the_test_stages_start(bare_python, tmp_path):
    probe = "import importlib.util as u; print([m for m in ('pytest', 'pytest_benchmark') if u.find_spec(m)])"
    before = subprocess.run([bare_python, "-c", probe], capture_output=True, text=True, check=True)
    assert before.stdout.strip() == "[]", "the venv should start without pytest"

    out = tmp_path / "out"
    run = _run(
        out,
        bare_python,
        timeout=400,
        GPU_SKIP_CUDA="1",
        GPU_STAGES="setup,build,cuda,triton,bench,train",
        GPU_TEST_SELECT="test_pixel_shuffle3d and float32",
        GPU_BENCH_FILES="bench_pixel_shuffle3d",
        GPU_BENCH_SELECT="vol64-512ch-at8 and brainkern and forward",
        GPU_BENCH_SMOKE="1",
        GPU_TRAIN_ITERS="0",
    )
    logs = f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-2000:]}"
    assert run.returncode == 0, logs
    rows = _summary(out)
    assert list(rows) == ["setup", "build", "cuda", "triton", "bench", "train"], logs

    # Set-up: pytest, pytest-benchmark and numpy were missing and are now there;
    # the venv's torch was kept (constraints), nothing for the skipped stages came.
    setup_log = (out / "setup.log").read_text()
    assert re.search(r"\[test\] missing: pytest pytest-benchmark numpy", setup_log), setup_log
    assert rows["setup"] == ("0", "missing now: nothing"), setup_log
    check = (
        "import importlib.util as u, torch; "
        "print(torch.__version__, [m for m in ('pytest', 'pytest_benchmark', 'numpy', 'monai', 'nibabel') "
        "if u.find_spec(m) is None])"
    )
    after = subprocess.run([bare_python, "-c", check], capture_output=True, text=True, check=True)
    assert after.stdout.split()[0].startswith(TORCH), after.stdout
    assert after.stdout.strip().endswith("['nibabel']"), after.stdout  # training's packages: not asked for
    assert f"torch=={TORCH}" in setup_log
    assert "pytest" in (out / "packages.txt").read_text()

    assert rows["build"] == ("-", "skipped: GPU_SKIP_CUDA=1")
    assert rows["cuda"] == ("-", "skipped: GPU_SKIP_CUDA=1")
    assert rows["train"] == ("0", "GPU_TRAIN_ITERS=0: skipped")

    # Triton stage: pytest collected the selected triton-cuda cases and ran them
    # (skipped here for want of a GPU) with a JUnit XML per process.
    assert rows["triton"][0] == "0", (out / "triton.log").read_text()
    collected = (out / "triton" / "collect.txt").read_text()
    assert re.search(r"^(\d+)/\d+ tests collected", collected, re.M), collected
    cases = [c for x in (out / "triton").glob("*.xml") for c in ET.parse(x).getroot().iter("testcase")]
    assert cases and all("triton-cuda" in c.get("name") for c in cases)
    assert all(c.find("skipped") is not None for c in cases)
    parts = len(list((out / "triton").glob("*.xml")))
    assert rows["triton"][1] == f"{len(cases)} skipped ({parts} processes)", rows["triton"]

    # Benchmarks: the one selected case ran once (smoke mode).
    assert rows["bench"] == ("0", "1/1 files ran (smoke mode)"), (out / "bench.log").read_text()
    assert "1 passed" in (out / "bench" / "bench_pixel_shuffle3d.log").read_text()

    env = (out / "env.txt").read_text()
    assert f"torch {TORCH}" in env and "device none" in env


def test_stages_past_the_deadline_are_skipped_and_listed(tmp_path):
    out = tmp_path / "out"
    run = _run(out, sys.executable, timeout=120, GPU_DEADLINE="0", GPU_STAGES="setup,triton,train")
    assert run.returncode == 0, run.stderr
    rows = _summary(out)
    assert rows == {name: ("-", "skipped: the 0s deadline is near") for name in ("setup", "triton", "train")}
    assert (out / "env.txt").exists()


def test_an_unknown_stage_is_refused(tmp_path):
    run = _run(tmp_path / "out", sys.executable, timeout=60, GPU_STAGES="setup,tests")
    assert run.returncode == 2
    assert "unknown stage 'tests'" in run.stderr


# ---------------------------------------------------------------- tests/conftest.py


def test_pytest_starts_without_the_benchmark_plugin():
    # pyproject's addopts must not name pytest-benchmark options (a bare GPU image
    # may lack the plugin); -p no:benchmark stands in for its absence.
    args = ["-p", "no:benchmark", "-p", "no:cacheprovider", "--collect-only", "-q"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", *args, str(ROOT / "tests" / "test_build_flags.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_benchmarks_default_to_smoke_mode_in_a_test_run(request):
    if not request.config.pluginmanager.hasplugin("benchmark"):
        pytest.skip("pytest-benchmark is not installed")
    opt = request.config.getoption
    # Either the command line chose a mode, or the repository's conftest chose smoke mode.
    assert opt("benchmark_disable") or opt("benchmark_enable") or opt("benchmark_only")


def test_a_benchmark_file_run_alone_is_in_smoke_mode():
    """``pytest benchmarks/<file>`` without options runs once at small sizes, as CI does
    (no timing table: benchmarks are disabled, each provider checked once)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/bench_spectral_norm.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TRITON_INTERPRET": "1"},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "passed" in out.stdout and "ratios measured side by side" not in out.stdout


def test_tests_run_with_one_thread():
    assert torch.get_num_threads() == 1


@pytest.mark.threads
def test_marked_tests_keep_the_default_threads():
    if (os.cpu_count() or 1) == 1:
        pytest.skip("one core: the default is one thread too")
    assert torch.get_num_threads() > 1


class FakeSyncSwitch:
    """Stands in for torch.cuda's sync debug switch on a machine without CUDA."""

    def __init__(self):
        self.mode = 0
        self.history: list[object] = []

    def get(self):
        return self.mode

    def set(self, mode):
        self.mode = mode
        self.history.append(mode)


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeSyncSwitch:
    switch = FakeSyncSwitch()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", switch.get)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", switch.set)
    return switch


def test_forbid_host_sync_switches_to_error_and_back(fake_cuda):
    with conftest.forbid_host_sync("cuda"):
        assert fake_cuda.mode == "error"
        with conftest.forbid_host_sync("cuda:0"):  # nested: restores "error", not 0
            pass
        assert fake_cuda.mode == "error"
    assert fake_cuda.mode == 0
    with pytest.raises(KeyError), conftest.forbid_host_sync("cuda"):
        raise KeyError("restored on the way out")
    assert fake_cuda.mode == 0
    with conftest.forbid_host_sync("cpu"):  # nothing to guard on the CPU
        assert fake_cuda.mode == 0


def test_only_the_ops_are_guarded_and_only_during_the_call(fake_cuda, monkeypatch):
    import types

    module = types.ModuleType("a_test_module")
    module.mmd2 = bo.mmd2
    module.shuffle = bo.pixel_shuffle3d  # imported under another name
    module.mmd2_reference = bo.mmd2_reference  # references run freely
    module.use_backend = bo.use_backend  # so does the dispatch machinery
    module.helper = lambda t: t.sum()
    replaced = conftest.guard_ops_in(monkeypatch, [module])
    assert sorted(replaced) == ["mmd2", "shuffle"]

    seen = []

    def spy(x, r):
        seen.append(fake_cuda.mode)
        return x

    monkeypatch.setattr(conftest, "_guarded_ops", lambda: {id(spy): (spy, "error")})
    module.spy = spy
    conftest.guard_ops_in(monkeypatch, [module])
    x = torch.zeros(1, 8, 1, 1, 1)
    assert module.spy(x, 2) is x
    assert seen == ["error"] and fake_cuda.mode == 0  # on during the call, off after
    # A guarded op still computes what the op computes.
    y = torch.randn(1, 8, 2, 3, 2)
    torch.testing.assert_close(module.shuffle(y, 2), bo.pixel_shuffle3d(y, 2), rtol=0, atol=0)
    assert fake_cuda.history[-2:] == ["error", 0]


def test_ops_that_read_the_device_by_design_only_warn(fake_cuda, monkeypatch):
    import types

    module = types.ModuleType("a_test_module")
    module.mmd2 = bo.mmd2
    conftest.guard_ops_in(monkeypatch, [module])
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(module.mmd2(x, x + 1), bo.mmd2(x, x + 1))
    assert fake_cuda.history == ["warn", 0]


def _overflowing_kernel():
    """A Triton kernel writing ``(i + 1) * big`` computed in int32 for ``i < BLOCK``."""
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")

    @triton.jit
    def times(out_ptr, big, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, ((offs + 1) * big).to(tl.float32))

    return times


def test_the_interpreter_reports_no_overflow_without_debug(monkeypatch):
    """conftest turns off the interpreter's overflow sanitiser: with debug off, as Triton
    runs it, the sanitiser's checks are computed and never reported, so nothing is lost."""
    if not interpreter_enabled():
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    builder = interpreter.interpreter_builder
    assert builder.options.debug is False and builder.options.sanitize_overflow is False
    assert conftest._drop_unreported_overflow_checks() is False  # already off: nothing to do

    kernel = _overflowing_kernel()
    out = torch.zeros(4)
    # 2^30 * (1, 2, 3, 4) wraps around in int32 to 2^30, -2^31, -2^30, 0.
    wrapped = torch.tensor([2.0**30, -(2.0**31), -(2.0**30), 0.0])
    for sanitize in (True, False):
        options = dataclasses.replace(builder.options, sanitize_overflow=sanitize)
        monkeypatch.setattr(builder, "options", options)
        out.zero_()
        kernel[(1,)](out, 2**30, BLOCK=4)
        torch.testing.assert_close(out, wrapped, rtol=0, atol=0)

    # With debug on the sanitiser does report, and conftest would leave it on.
    debug = dataclasses.replace(builder.options, sanitize_overflow=True, debug=True)
    monkeypatch.setattr(builder, "options", debug)
    errors = pytest.importorskip("triton.runtime.errors")
    with pytest.raises(errors.InterpreterError, match="int32 overflow detected for operation mul"):
        kernel[(1,)](out, 2**30, BLOCK=4)
    assert conftest._drop_unreported_overflow_checks() is False
    assert builder.options is debug
