"""The backend machinery: availability report, forcing, and errors with reasons."""

import pytest
import torch

from brainkern.ops import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops._backend import OpDispatch


def test_backends_reports_every_backend():
    status = backends()
    assert tuple(status) == BACKENDS
    assert status["reference"] is True
    for name, value in status.items():
        assert value is True or (isinstance(value, str) and value), name


def test_use_backend_nests_and_restores(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    assert forced_backend() is None
    with use_backend("reference"):
        assert forced_backend() == "reference"
        with use_backend("cpu"):
            assert forced_backend() == "cpu"
        assert forced_backend() == "reference"
    assert forced_backend() is None


def test_environment_variable_forces_and_context_overrides(monkeypatch):
    monkeypatch.setenv("BRAINKERN_BACKEND", "reference")
    assert forced_backend() == "reference"
    with use_backend("auto"):
        assert forced_backend() is None
    monkeypatch.setenv("BRAINKERN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="BRAINKERN_BACKEND"):
        forced_backend()


def test_unknown_backend_name_raises():
    with pytest.raises(ValueError, match="unknown brainkern backend 'fast'"):
        with use_backend("fast"):
            pass


def test_forced_backend_that_declines_lists_every_reason(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    dispatch = OpDispatch("toy", checks={"reference": lambda x: "toy refuses odd sizes"})
    x = torch.zeros(3)
    with use_backend("reference"), pytest.raises(BackendError) as info:
        dispatch.select(x.device, x)
    message = str(info.value)
    assert "brainkern.ops.toy" in message and "'reference' was forced" in message
    for name in BACKENDS:
        assert f"  {name}: " in message
    assert "toy refuses odd sizes" in message
    assert "runs on CUDA devices only" in message or "unavailable" in message


def test_automatic_choice_skips_backends_that_decline(monkeypatch):
    monkeypatch.delenv("BRAINKERN_BACKEND", raising=False)
    dispatch = OpDispatch("toy", checks={"cpu": lambda x: "no"})
    x = torch.zeros(3)
    assert dispatch.select(x.device, x) == "reference"
    chosen = OpDispatch("toy").select(x.device, x)
    assert chosen == ("cpu" if backends()["cpu"] is True else "reference")


def test_import_needs_no_extension_triton_or_gpu():
    import subprocess
    import sys

    # A None entry in sys.modules makes any import of that name raise ImportError.
    code = (
        "import sys\n"
        "sys.modules['triton'] = None\n"
        "sys.modules['brainkern._C'] = None\n"
        "import brainkern, brainkern.ops, brainkern.nn\n"
        "status = brainkern.ops.backends()\n"
        "assert status['reference'] is True\n"
        "assert isinstance(status['cpu'], str) and isinstance(status['triton'], str), status\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
