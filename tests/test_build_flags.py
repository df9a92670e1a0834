"""setup.py's build switches: what each combination builds, and which fail loudly.

``setup.py`` cannot be imported as a module (it has no package), so it is loaded
from its path; its ``setup()`` call sits under ``if __name__ == "__main__"`` and
does not run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_setup():
    spec = importlib.util.spec_from_file_location("brainkern_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SETUP = _load_setup()
build_plan = SETUP.build_plan
BuildPlan = SETUP.BuildPlan

TOOLKIT = "/usr/local/cuda"
CUDA_TORCH = (TOOLKIT, "13.0")


def probe_of(cuda_home, torch_cuda):
    return lambda: (cuda_home, torch_cuda)


def no_probe():
    raise AssertionError("the switches alone decide this plan; torch must not be probed")


@pytest.mark.parametrize(
    "found, cuda",
    [
        (CUDA_TORCH, True),
        ((TOOLKIT, None), False),  # CPU-only torch beside a toolkit
        ((None, "13.0"), False),  # CUDA torch without a toolkit
        ((None, None), False),
    ],
    ids=["toolkit-cuda-torch", "toolkit-cpu-torch", "no-toolkit-cuda-torch", "nothing"],
)
def test_automatic_choice_builds_cuda_only_with_toolkit_and_cuda_torch(found, cuda):
    plan = build_plan({}, probe_of(*found))
    assert plan == BuildPlan(extension=True, cuda=cuda, arch_list=SETUP.DEFAULT_ARCH_LIST if cuda else None)


def test_force_cuda_without_a_visible_gpu_gets_the_default_architectures():
    # The case that failed inside torch's arch detection: the probe never asks for
    # a GPU, and the plan names sm_80 and sm_90 (+ PTX) so torch does not have to.
    plan = build_plan({"BRAINKERN_FORCE_CUDA": "1"}, probe_of(*CUDA_TORCH))
    assert plan == BuildPlan(extension=True, cuda=True, arch_list="8.0;9.0+PTX")


@pytest.mark.parametrize("given", ["9.0", "8.6;9.0", "9.0a"])
def test_an_explicit_arch_list_is_left_alone(given):
    env = {"BRAINKERN_FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": given}
    assert build_plan(env, probe_of(*CUDA_TORCH)).arch_list is None


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_arch_list_counts_as_unset(blank):
    plan = build_plan({"TORCH_CUDA_ARCH_LIST": blank}, probe_of(*CUDA_TORCH))
    assert plan.arch_list == SETUP.DEFAULT_ARCH_LIST


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_no_extension_builds_nothing_and_never_imports_torch(value):
    plan = build_plan({"BRAINKERN_NO_EXTENSION": value}, no_probe)
    assert plan == BuildPlan(extension=False, cuda=False, arch_list=None)


def test_no_cuda_builds_the_cpu_kernels_only():
    plan = build_plan({"BRAINKERN_NO_CUDA": "1"}, no_probe)
    assert plan == BuildPlan(extension=True, cuda=False, arch_list=None)


def test_no_extension_wins_over_no_cuda():
    env = {"BRAINKERN_NO_EXTENSION": "1", "BRAINKERN_NO_CUDA": "1"}
    assert build_plan(env, no_probe) == BuildPlan(extension=False, cuda=False, arch_list=None)


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_false_values_switch_nothing(value):
    env = {name: value for name in ("BRAINKERN_NO_EXTENSION", "BRAINKERN_NO_CUDA", "BRAINKERN_FORCE_CUDA")}
    assert build_plan(env, probe_of(*CUDA_TORCH)) == build_plan({}, probe_of(*CUDA_TORCH))


@pytest.mark.parametrize("other", ["BRAINKERN_NO_CUDA", "BRAINKERN_NO_EXTENSION"])
def test_force_cuda_contradicting_a_skip_is_an_error(other):
    with pytest.raises(ValueError, match=f"BRAINKERN_FORCE_CUDA=1 and {other}=1 contradict"):
        build_plan({"BRAINKERN_FORCE_CUDA": "1", other: "1"}, no_probe)


def test_force_cuda_without_a_toolkit_says_so():
    with pytest.raises(ValueError, match="no CUDA toolkit: set CUDA_HOME"):
        build_plan({"BRAINKERN_FORCE_CUDA": "1"}, probe_of(None, "13.0"))


@pytest.mark.parametrize("cuda_home", [TOOLKIT, None], ids=["toolkit", "no-toolkit"])
def test_force_cuda_with_a_cpu_only_torch_says_so(cuda_home):
    # A CPU-only torch reports no toolkit either way; its own absence is the reason to give.
    with pytest.raises(ValueError, match="CPU-only build"):
        build_plan({"BRAINKERN_FORCE_CUDA": "yes"}, probe_of(cuda_home, None))


@pytest.mark.parametrize("name", ["BRAINKERN_NO_EXTENSION", "BRAINKERN_NO_CUDA", "BRAINKERN_FORCE_CUDA"])
def test_a_switch_that_is_neither_true_nor_false_is_an_error(name):
    with pytest.raises(ValueError, match=f"{name} must be one of .* got 'maybe'"):
        build_plan({name: "maybe"}, probe_of(*CUDA_TORCH))


def _run_setup(**switches):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINKERN_", "TORCH_CUDA_ARCH"))}
    env.update(switches)
    # --version needs no build; the plan is made (and checked) before setup() runs.
    return subprocess.run(
        [sys.executable, str(ROOT / "setup.py"), "--version"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_setup_script_reports_an_impossible_force_in_one_line():
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build: forcing CUDA is possible here")
    out = _run_setup(BRAINKERN_FORCE_CUDA="1")
    assert out.returncode != 0
    assert "brainkern setup.py: BRAINKERN_FORCE_CUDA=1 but this PyTorch is a CPU-only build" in out.stderr
    assert "Traceback" not in out.stderr


def test_setup_script_without_extension_runs_setup():
    out = _run_setup(BRAINKERN_NO_EXTENSION="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0.1.0"
