"""A regular (non-editable) install works on its own, from any folder.

Builds a wheel of the working tree (``pip wheel --no-build-isolation --no-deps``),
installs it with ``--no-deps`` into a fresh virtual environment, and from a folder
outside the repository runs that environment's ``python -m brainkern.train
--preset quick`` for two iterations at 16^3 (with its end-of-run evaluation,
which comes from the installed ``brainkern.experiment``), then the experiment's
own command line on the run.

Kept cheap, on purpose:

- The wheel is built with ``BRAINKERN_NO_EXTENSION=1``, pure Python: compiling
  ``brainkern._C`` takes about three minutes on a 2-core machine, and the
  editable install that every test run starts from (``./dev setup``) already
  compiles it with the same ``setup.py``. The installed copy's ops run on their
  ``reference`` backend. What this test guards is what only a regular install
  can break: which files the wheel carries (the presets in
  ``brainkern/configs/`` are package data) and code that finds files relative to
  the checkout.
- Nothing is downloaded: torch, numpy, nibabel and the rest come from the
  environment running the tests, through a ``.pth`` file in the fresh
  environment that appends that environment's site-packages to its path. They
  come after the fresh site-packages, so the installed brainkern is the one
  imported (asserted), not the checkout that the test environment's editable
  install points at (that install's import hook sits in a ``.pth`` file, which
  Python does not run from a folder added this way).
- Only the files a build needs are copied to a temporary folder first, so the
  build never writes into the checkout (``build/``, ``*.egg-info``) and stale
  build output there never ends up in the wheel.

Measured on the 2-core development machine: about 5 s to build and install, 20
to 30 s to train and evaluate (most of it simulating the tiny cohort, shared
with the other test modules through ``BRAINKERN_CACHE``).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# What `pip wheel` needs from the checkout (csrc/ only for a build with the extension).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "brainkern", "csrc")

TINY = [
    "--iters", "2",
    "--batch-size", "2",
    "--set", "data.shape=[16,16,16]",
    "--set", "data.cohort_shape=[16,16,16]",
    "--set", "data.n_per_class=3",
    "--set", "data.folds=null",
    "--set", "model.width=4",
    "--set", "model.latent_dim=8",
    "--set", "model.code_hidden=16",
    "--set", "train.threads=1",
    "--set", "log.checkpoint_every=2",
    "--set", "log.picture_every=2",
    "--set", "log.n_samples=1",
    "--set", "log.n_pictures=2",
    "--set", "evaluate.n_generated=8",
    "--set", "evaluate.mmd_tests=2",
    "--set", "evaluate.mmd_batch=2",
    "--set", "evaluate.ms_ssim_pairs=4",
]  # fmt: skip


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, f"{' '.join(args)}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh environment with brainkern installed from a wheel."""
    pytest.importorskip("setuptools", reason="a --no-build-isolation build needs setuptools installed")
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
        else:
            shutil.copy2(path, src / name)
    env = _clean_env(BRAINKERN_NO_EXTENSION="1")
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(root / "wheels"), "."],
         cwd=src, env=env)  # fmt: skip
    wheels = sorted((root / "wheels").glob("brainkern-*.whl"))
    assert len(wheels) == 1, wheels

    # The fresh environment gets its pip from this one (--python), so it needs none itself.
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    _run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheels[0])],
        cwd=root,
        env=env,
    )
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    return python


def test_the_wheel_carries_the_presets(installed, tmp_path):
    shipped = sorted(p.stem for p in (REPO / "brainkern" / "configs").glob("*.yaml"))
    assert "quick" in shipped
    code = (
        "import brainkern, json\n"
        "from brainkern.train.config import configs_dir, preset_names\n"
        "print(json.dumps([brainkern.__file__, str(configs_dir()), preset_names()]))\n"
    )
    out = _run([str(installed), "-c", code], cwd=tmp_path, env=_clean_env())
    module, configs, presets = json.loads(out.stdout)
    venv = installed.parents[1]
    assert Path(module).is_relative_to(venv), f"imported {module}, not the installed copy in {venv}"
    assert Path(configs).is_relative_to(venv)
    assert presets == shipped


def test_train_and_evaluate_from_another_folder(installed, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    # The cohort cache of the whole session: the other modules make the same tiny cohort.
    env = _clean_env(BRAINKERN_CACHE=str(tmp_path_factory.getbasetemp() / "cache"))
    python = str(installed)

    listing = _run([python, "-m", "brainkern.train", "--list"], cwd=elsewhere, env=env).stdout
    assert "quick" in listing.splitlines()[-1] and "kwon2019-alpha-wgan-gp" in listing

    _run([python, "-m", "brainkern.train", "--preset", "quick", *TINY, "--out", "run", "--quiet"],
         cwd=elsewhere, env=env)  # fmt: skip
    run = elsewhere / "run"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "config.yaml").is_file()
    assert (run / "report.md").is_file() and (run / "pictures" / "losses.png").is_file()
    # The pure-Python install reports its missing extension (not the checkout's build).
    assert isinstance(json.loads((run / "run.json").read_text())["versions"]["extension"], str)

    experiments = _run([python, "-m", "brainkern.experiment", "--list"], cwd=elsewhere, env=env).stdout
    names = [line.split()[0] for line in experiments.splitlines()]
    assert names == ["augmentation", "compare", "diagnosis", "kwon2019-table1"]
    # The experiment presets ship inside the package too.
    presets = _run(
        [python, "-c", "from brainkern.experiment.zhuang import augmentation_presets as p; print(p())"],
        cwd=elsewhere,
        env=env,
    ).stdout
    assert "quick" in presets and "zhuang2019" in presets
    (run / "evaluation.json").unlink()
    table = _run(
        [python, "-m", "brainkern.experiment", "kwon2019-table1", "run", "--quiet"], cwd=elsewhere, env=env
    )
    assert "| trained |" in table.stdout and (run / "evaluation.json").is_file()
