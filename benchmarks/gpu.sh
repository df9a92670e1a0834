#!/usr/bin/env bash
# One call on a GPU machine, from a bare image (python3 with torch and triton) and
# a copy of the working tree: set up what is missing, build brainkern._C with its
# CUDA kernels, run the CUDA and Triton tests, time the benchmarks, train Kwon et
# al.'s alpha-WGAN-GP for a few iterations, and write everything under $OUT.
#
#   bash benchmarks/gpu.sh
#
# Stages, in order, each under its own time limit and all of them under one
# deadline (GPU_DEADLINE, 450 s: the whole call fits in 8 minutes):
#
#   setup   pip-installs what is missing (pytest, pytest-benchmark, numpy; setuptools
#           and ninja for the build; nibabel, nilearn, pyyaml, ... for training; monai
#           for the baselines), keeping the image's torch, triton and numpy as they are
#   build   python setup.py build_ext --inplace with BRAINKERN_FORCE_CUDA=1
#   cuda    the tests' cuda-cuda cases (the CUDA kernels of brainkern._C)
#   triton  the tests' triton-cuda cases (no build needed)
#   bench   the benchmarks, file by file, timed on the GPU
#   train   python -m brainkern.train --preset kwon2019-alpha-wgan-gp, a few
#           iterations, without and with gradient checkpointing
#   suite   the rest of the test suite, with the time that is left
#
# A stage runs even when an earlier one failed; only a failed build skips the
# cuda stage. Each stage writes $OUT/<stage>.log (test stages also each process's
# log and JUnit XML under $OUT/<stage>/) and one line of $OUT/summary.md (name, exit
# code, seconds, a note) as soon as it ends. Also written: $OUT/env.txt (date,
# commit, versions, nvidia-smi), $OUT/packages.txt, $OUT/bench.md and
# $OUT/bench.json, $OUT/train-ckpt-{false,true}/ (run.json, metrics, report).
# CUDA tests run with torch.cuda.set_sync_debug_mode("error") around every op
# call (tests/conftest.py), so an op that synchronises the host fails its test.
#
# Environment:
#   OUT               where results go (default ./gpu-out)
#   PYTHON            the interpreter to use (default python3)
#   GPU_STAGES        comma list of stages to run (default: all of the above)
#   GPU_SKIP_CUDA=1   skip the build and the cuda stage
#   GPU_DEADLINE      seconds for everything (default 450)
#   GPU_TEST_SELECT   a pytest -k expression that narrows every test stage
#   GPU_BENCH_SELECT  a pytest -k expression for the benchmarks
#   GPU_BENCH_FILES   comma list of benchmark files (default: all but bench_data)
#   GPU_BENCH_SMOKE=1 run each benchmark once at small sizes instead of timing it
#   GPU_BENCH_ARGS    extra pytest-benchmark options (default: short timing rounds)
#   GPU_TRAIN_ITERS   training iterations per run (default 40; 0 skips training)
#   GPU_TRAIN_ARGS    more arguments for brainkern.train (e.g. --set train.batch_size=8)
#   GPU_LIMIT_<STAGE> one stage's time limit in seconds (GPU_LIMIT_BENCH=200)
#   GPU_JOBS          pytest processes at once (default: the cores, at most 8)
#   GPU_PIP=0         install nothing
#   GPU_WORK          scratch folder (pip constraints, Triton cache, cohort, runs)
#   GPU_COMMIT        the commit to record in env.txt where the copy has no .git
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS: passed to the build (default 9.0 and the cores)
#
# Wheels placed in .whl/ (ignored by git; carried by hand) install without the
# registry.
#
# shellcheck disable=SC2317  # the stages run through `bash gpu.sh --stage NAME`
set -uo pipefail
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")/.." || exit 2
ROOT=$PWD
export ROOT SELF

# ---------------------------------------------------------------- helpers

# note STAGE TEXT: the note on the stage's summary line (the last one wins).
note() { printf '%s' "$2" >"$WORK/note-$1"; }

# missing SPEC...: the pip requirements not met here (SPEC = module:requirement,
# where the requirement is a name, or name>=version for a lowest version).
missing() {
    "$PY" - "$@" <<'EOF'
import importlib.metadata
import importlib.util
import re
import shutil
import sys


def release(text):
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


for spec in sys.argv[1:]:
    module, _, requirement = spec.partition(":")
    name, _, lowest = requirement.partition(">=")
    # ninja is used as a program; a ninja on PATH is as good as the package.
    if module == "ninja" and shutil.which("ninja"):
        continue
    if importlib.util.find_spec(module) is None:
        print(requirement)
    elif lowest:
        try:
            if release(importlib.metadata.version(name)) < release(lowest):
                print(requirement)
        except importlib.metadata.PackageNotFoundError:
            pass
EOF
}

# pip_install [pip options] SPEC...: quietly, briefly, never touching the pinned packages.
pip_install() {
    local links=()
    [ -d "$ROOT/.whl" ] && links=(--find-links "$ROOT/.whl")
    if [ "${PIP_OFFLINE:-0}" = 1 ]; then
        [ ${#links[@]} -gt 0 ] || return 1
        links+=(--no-index)
    fi
    echo "+ pip install $*"
    timeout -k 5 "${PIP_CALL_TIMEOUT:-150}" "$PY" -m pip install --quiet --timeout 10 --retries 1 \
        -c "$WORK/constraints.txt" "${links[@]}" "$@" 2>"$WORK/pip.err"
    local rc=$?
    # Drop pip's notes about configured package folders that this machine lacks.
    grep -v "is ignored: it is neither a file nor a directory" "$WORK/pip.err" >&2
    return $rc
}

# install_group NAME [pip options --] MODULE:SPEC...: install the missing ones, one by
# one if the group as a whole does not resolve.
install_group() {
    local group=$1 opts=()
    shift
    if [ "${1:-}" = "--opts" ]; then
        opts=("$2")
        shift 2
    fi
    local want
    mapfile -t want < <(missing "$@")
    [ ${#want[@]} -gt 0 ] || {
        echo "[$group] nothing missing"
        return 0
    }
    echo "[$group] missing: ${want[*]}"
    if pip_install "${opts[@]}" "${want[@]}"; then
        echo "[$group] installed: ${want[*]}"
        return 0
    fi
    if [ "${PIP_OFFLINE:-0}" = 0 ] && grep -qE "NewConnectionError|Name or service not known|Temporary failure in name resolution|Network is unreachable|Max retries exceeded|ConnectTimeout|Read timed out" "$WORK/pip.err" 2>/dev/null; then
        echo "[$group] the package registry is not reachable: only .whl/ from now on"
        export PIP_OFFLINE=1
        [ -d "$ROOT/.whl" ] || return 1
    fi
    local spec rc=0
    for spec in "${want[@]}"; do
        if pip_install "${opts[@]}" "$spec"; then
            echo "[$group] installed: $spec"
        else
            rc=1
        fi
    done
    return $rc
}

selected() { [[ ",$STAGES," == *",$1,"* ]]; }

# find_cuda_home: the first folder with bin/nvcc and the CUDA runtime headers.
find_cuda_home() {
    local candidates=() c nv
    [ -n "${CUDA_HOME:-}" ] && candidates+=("$CUDA_HOME")
    [ -n "${CUDA_PATH:-}" ] && candidates+=("$CUDA_PATH")
    # nvcc on PATH may be a wrapper script elsewhere: its folder must pass the test too.
    nv=$(command -v nvcc 2>/dev/null) && candidates+=("$(dirname "$(dirname "$(readlink -f "$nv")")")")
    for c in /usr/local/cuda /usr/local/cuda-*; do
        [ -d "$c" ] && candidates+=("$c")
    done
    # pip's CUDA packages: nvidia/cu13 (CUDA 13 wheels) or nvidia/cuda_nvcc (CUDA 12).
    while IFS= read -r c; do candidates+=("$c"); done < <("$PY" - <<'EOF' 2>/dev/null
import site, sys
from pathlib import Path
dirs = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
for d in dict.fromkeys(dirs):
    for sub in ("nvidia/cu13", "nvidia/cuda_nvcc"):
        if (Path(d) / sub / "bin" / "nvcc").exists():
            print(Path(d) / sub)
EOF
    )
    for c in "${candidates[@]}"; do
        if [ -x "$c/bin/nvcc" ] && { [ -f "$c/include/cuda_runtime.h" ] ||
            compgen -G "$c/targets/*/include/cuda_runtime.h" >/dev/null; }; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------- stages

stage_setup() {
    "$PY" - >"$WORK/constraints.txt" <<'EOF'
# The image's CUDA build of torch and what it was built with stay as they are.
import importlib.metadata as md

keep = {"torch", "triton", "pytorch-triton", "numpy"}
for dist in md.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name in keep or name.startswith("nvidia-"):
        print(f"{name}=={dist.version}")
EOF
    echo "constraints: $(tr '\n' ' ' <"$WORK/constraints.txt")"
    [ "${GPU_PIP:-1}" = 0 ] && {
        note setup "GPU_PIP=0: installed nothing"
        return 0
    }
    local rc=0 wanted=() still
    local test=(pytest:pytest pytest_benchmark:pytest-benchmark numpy:numpy)
    # pyproject.toml's SPDX license string needs setuptools 77.
    local build=("setuptools:setuptools>=77" ninja:ninja)
    local data=(yaml:pyyaml nibabel:nibabel nilearn:nilearn scipy:scipy tqdm:tqdm matplotlib:matplotlib
        pandas:pandas sklearn:scikit-learn)
    # The first group finds out whether the registry answers at all.
    install_group test "${test[@]}" || rc=1
    wanted+=("${test[@]}")
    if selected build && [ "${GPU_SKIP_CUDA:-0}" != 1 ]; then
        install_group build "${build[@]}" || rc=1
        wanted+=("${build[@]}")
    fi
    if { selected train && [ "${GPU_TRAIN_ITERS:-40}" -gt 0 ]; } || selected suite; then
        install_group data "${data[@]}" || rc=1
        wanted+=("${data[@]}")
    fi
    if selected bench || selected suite; then
        # monai (a baseline) needs only torch and numpy: --no-deps keeps its pins away.
        install_group baseline --opts --no-deps monai:monai || rc=1
        wanted+=(monai:monai)
    fi
    still=$(missing "${wanted[@]}" | tr '\n' ' ')
    note setup "missing now: ${still:-nothing}$([ "${PIP_OFFLINE:-0}" = 1 ] && echo '; registry unreachable')"
    return $rc
}

stage_build() {
    if [ -z "${CUDA_HOME:-}" ]; then
        note build "no CUDA toolkit (looked at CUDA_HOME, nvcc on PATH, /usr/local/cuda*, pip's nvidia packages)"
        return 3
    fi
    echo "CUDA_HOME=$CUDA_HOME"
    # pip's CUDA packages ship lib/libcudart.so.N but not the libcudart.so that the
    # link step (-lcudart) looks for: give it one.
    if [ ! -e "$CUDA_HOME/lib64/libcudart.so" ] && [ ! -e "$CUDA_HOME/lib/libcudart.so" ]; then
        local versioned
        versioned=$(compgen -G "$CUDA_HOME/lib/libcudart.so.*" | head -n 1)
        if [ -n "$versioned" ]; then
            mkdir -p "$WORK/cudalib" && ln -sf "$versioned" "$WORK/cudalib/libcudart.so"
            export LIBRARY_PATH="$WORK/cudalib${LIBRARY_PATH:+:$LIBRARY_PATH}"
        fi
    fi
    BRAINKERN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "$PY" setup.py build_ext --inplace || return $?
    # A build that quietly left CUDA out would make every cuda test skip.
    "$PY" -c "from brainkern import _C; assert _C.cuda_built(), 'brainkern._C has no CUDA kernels'; print('brainkern._C: CUDA kernels built')"
}

# pytest_files STAGE K-EXPRESSION: run the selected tests in GPU_JOBS processes at
# once; their logs and JUnit XML in $OUT/STAGE/.
pytest_files() {
    local stage=$1 expr=$2 dir="$OUT/$1"
    if ! "$PY" -c "import pytest" 2>/dev/null; then
        note "$stage" "pytest is not installed"
        return 3
    fi
    [ -n "${GPU_TEST_SELECT:-}" ] && expr="($expr) and ($GPU_TEST_SELECT)"
    rm -rf "$dir" && mkdir -p "$dir"
    echo "pytest -k \"$expr\""
    "$PY" -m pytest --collect-only -q -p no:cacheprovider --continue-on-collection-errors -k "$expr" tests \
        >"$dir/collect.txt" 2>&1
    local collected=$?
    tail -n 1 "$dir/collect.txt"
    if [ $collected -eq 5 ]; then
        note "$stage" "no test matches -k \"$expr\""
        return 0
    fi
    if [ $collected -ne 0 ]; then
        # Modules that failed to import are named here; the others still run.
        grep -E "^(ERROR|E  )" "$dir/collect.txt" | head -n 20
    fi
    # Split the selected tests into GPU_JOBS parts of about equal size, keeping each
    # test function's cases together (they share Triton specialisations, which one
    # process then compiles once); the largest functions are placed first.
    "$PY" - "$dir" "$JOBS" <<'EOF'
import sys
from collections import defaultdict
from pathlib import Path

folder, jobs = Path(sys.argv[1]), int(sys.argv[2])
groups = defaultdict(list)
for line in (folder / "collect.txt").read_text().splitlines():
    if line.startswith("tests/") and "::" in line:
        groups[line.split("[", 1)[0]].append(line)
parts = [[] for _ in range(max(1, min(jobs, len(groups))))]
for ids in sorted(groups.values(), key=len, reverse=True):
    min(parts, key=len).extend(ids)
for i, ids in enumerate(parts):
    (folder / f"part{i}.txt").write_text("".join(f"{n}\n" for n in ids))
EOF
    : >"$dir/results.txt"
    find "$dir" -name 'part*.txt' | sort | xargs -P "$JOBS" -I{} bash "$SELF" --part {}
    sort "$dir/results.txt"
    "$PY" - "$dir" "$WORK/note-$stage" "$collected" <<'EOF'
# Totals from the JUnit files: the stage's note, and the failed tests by name.
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

folder, note = Path(sys.argv[1]), sys.argv[2]
total = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
failed = []
for xml in sorted(folder.glob("*.xml")):
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag for child in case}
        name = f"{case.get('classname')}::{case.get('name')}"
        if "failure" in kinds:
            total["failed"] += 1
            failed.append(name)
        elif "error" in kinds:
            total["errors"] += 1
            failed.append(name)
        elif "skipped" in kinds:
            total["skipped"] += 1
        else:
            total["passed"] += 1
parts = len(list(folder.glob("*.xml")))
text = ", ".join(f"{v} {k}" for k, v in total.items() if v) or "no results"
collection = "" if sys.argv[3] == "0" else f"; collection errors (exit {sys.argv[3]})"
Path(note).write_text(f"{text} ({parts} processes){collection}")
(folder / "failed.txt").write_text("".join(f"{n}\n" for n in failed))
print(f"totals: {text} ({parts} processes)")
for n in failed[:50]:
    print(f"FAILED {n}")
EOF
    # Exit 0 when everything collected and every file passed (or had nothing left
    # after -k); else 1.
    [ $collected -eq 0 ] && ! awk '$1 != 0 && $1 != 5 {bad = 1} END {exit !bad}' "$dir/results.txt"
}

# run_part PART-FILE (through xargs): one pytest process for the test ids listed
# in PART-FILE; its log and JUnit XML go beside it.
run_part() {
    local part=$1 ids
    mapfile -t ids <"$part"
    # Tests use one intra-op thread each (tests/conftest.py); OpenMP pools stay small too.
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$PY" -m pytest -q -p no:cacheprovider \
        --junitxml="${part%.txt}.xml" "${ids[@]}" >"${part%.txt}.log" 2>&1
    local rc=$?
    echo "$rc $(basename "$part" .txt) (${#ids[@]} tests): $(tail -n 1 "${part%.txt}.log")" \
        >>"$(dirname "$part")/results.txt"
}

stage_cuda() { pytest_files cuda "cuda-cuda"; }

stage_triton() { pytest_files triton "triton-cuda"; }

# Everything else; not the nvcc compile checks (the build did that) nor this
# script's own test (it would run this script again).
stage_suite() { pytest_files suite "not cuda-cuda and not triton-cuda and not test_cuda_sources and not test_gpu_script"; }

stage_bench() {
    if ! "$PY" -c "import pytest_benchmark" 2>/dev/null; then
        note bench "pytest-benchmark is not installed"
        return 3
    fi
    local mode=(--benchmark-enable --benchmark-only)
    # shellcheck disable=SC2206
    local extra=(${GPU_BENCH_ARGS:---benchmark-max-time=0.25 --benchmark-min-rounds=3})
    [ "${GPU_BENCH_SMOKE:-0}" = 1 ] && mode=(--benchmark-disable) && extra=()
    local select=()
    [ -n "${GPU_BENCH_SELECT:-}" ] && select=(-k "$GPU_BENCH_SELECT")
    mkdir -p "$OUT/bench"
    rm -f "$OUT/bench.md" "$OUT/bench.json"
    local file name rc worst=0 ran=0 files=()
    # The data pipeline's benchmarks time the CPU and are left to ./dev bench.
    if [ -n "${GPU_BENCH_FILES:-}" ]; then
        for name in ${GPU_BENCH_FILES//,/ }; do files+=("benchmarks/${name%.py}.py"); done
    else
        for file in benchmarks/bench_*.py; do
            [ "$file" = benchmarks/bench_data.py ] || files+=("$file")
        done
    fi
    # One process per file, one after another (timings need the GPU to themselves):
    # a stage cut short by its time limit keeps the files already done.
    for file in "${files[@]}"; do
        name=$(basename "$file" .py)
        echo "== $file"
        rm -f "$OUT/bench/$name.md"
        BRAINKERN_BENCH_MD="$OUT/bench/$name.md" "$PY" -m pytest -q -p no:cacheprovider "$file" "${mode[@]}" \
            "${extra[@]}" --benchmark-group-by=group --benchmark-columns=min,median,mean,stddev,rounds \
            --benchmark-json="$OUT/bench/$name.json" "${select[@]}" >"$OUT/bench/$name.log" 2>&1
        rc=$?
        echo "exit $rc: $(tail -n 1 "$OUT/bench/$name.log")"
        [ -s "$OUT/bench/$name.md" ] && printf '\n## %s\n%s\n' "$name" "$(cat "$OUT/bench/$name.md")" >>"$OUT/bench.md"
        [ $rc -eq 0 ] && ran=$((ran + 1))
        [ $rc -ne 0 ] && [ $rc -ne 5 ] && worst=$rc
        "$PY" - "$OUT/bench" "$OUT/bench.json" <<'EOF'
# bench.json: the files' results so far in one document.
import json
import sys
from pathlib import Path

merged = None
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        continue
    if merged is None:
        merged = doc
    else:
        merged["benchmarks"].extend(doc.get("benchmarks", []))
if merged is not None:
    Path(sys.argv[2]).write_text(json.dumps(merged, indent=1))
EOF
    done
    note bench "$ran/${#files[@]} files ran$([ "${GPU_BENCH_SMOKE:-0}" = 1 ] && echo ' (smoke mode)')"
    return $worst
}

stage_train() {
    local iters="${GPU_TRAIN_ITERS:-40}" ckpt run rc speed worst=0 notes=""
    if [ "$iters" -le 0 ]; then
        note train "GPU_TRAIN_ITERS=0: skipped"
        return 0
    fi
    for ckpt in false true; do
        run="$WORK/train-ckpt-$ckpt"
        rm -rf "$run"
        # A small end-of-run evaluation in the first run exercises that path on the
        # GPU; the checkpointing run only measures time and memory.
        local evaluate=(--set evaluate.n_generated=64 --set evaluate.mmd_tests=8 --set evaluate.ms_ssim_pairs=32)
        [ "$ckpt" = true ] && evaluate=(--no-evaluate)
        echo "== train.checkpoint=$ckpt, $iters iterations"
        # The cohort and data set cache stays in $WORK: simulated once, not sent back.
        # 20 subjects instead of the preset's 80: simulating them is CPU work, and a
        # few iterations of batch 4 see no more than that.
        BRAINKERN_CACHE="$WORK/cache" "$PY" -m brainkern.train --preset kwon2019-alpha-wgan-gp --iters "$iters" \
            --out "$run" --quiet --set train.checkpoint=$ckpt --set log.every=10 --set data.n_per_class=10 \
            --set log.picture_every=1000000 "${evaluate[@]}" ${GPU_TRAIN_ARGS:-} >"$OUT/train-ckpt-$ckpt.log" 2>&1
        rc=$?
        tail -n 15 "$OUT/train-ckpt-$ckpt.log"
        [ $rc -ne 0 ] && worst=$rc
        # The small files only: checkpoints (GBs) and sample volumes stay here.
        mkdir -p "$OUT/train-ckpt-$ckpt"
        find "$run" -maxdepth 2 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.yaml' -o -name '*.md' \
            -o -name '*.csv' -o -name '*.png' \) -exec cp {} "$OUT/train-ckpt-$ckpt/" \; 2>/dev/null
        speed=$("$PY" - "$run/metrics.jsonl" <<'EOF' 2>/dev/null
# The last logged speed and peak memory of the run.
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
last = [r for r in rows if "it_per_s" in r][-1]
print(f"({last['it_per_s']:.2f} it/s, peak {last['peak_mem_gib']:.2f} GiB at iter {last['iter']})")
EOF
        )
        notes+="ckpt=$ckpt exit $rc${speed:+ $speed}; "
    done
    note train "${notes%; }"
    return $worst
}

# ---------------------------------------------------------------- entry points

if [ "${1:-}" = "--stage" ]; then
    "stage_$2"
    exit $?
fi
if [ "${1:-}" = "--part" ]; then
    run_part "$2"
    exit 0
fi

T0=$SECONDS
OUT="${OUT:-$ROOT/gpu-out}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK="${GPU_WORK:-${TMPDIR:-/tmp}/brainkern-gpu}"
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd)
rm -f "$WORK"/note-*
PY=$(command -v "${PYTHON:-python3}") || {
    echo "gpu.sh: ${PYTHON:-python3} not found" >&2
    exit 2
}
# Absolute (stages run elsewhere), but not through symlinks: a venv's python is one.
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
STAGES="${GPU_STAGES:-setup,build,cuda,triton,bench,train,suite}"
STAGES="${STAGES// /}"
for s in ${STAGES//,/ }; do
    case "$s" in
        setup | build | cuda | triton | bench | train | suite) ;;
        *)
            echo "gpu.sh: unknown stage '$s' in GPU_STAGES (setup,build,cuda,triton,bench,train,suite)" >&2
            exit 2
            ;;
    esac
done
DEADLINE="${GPU_DEADLINE:-450}"
cores=$(nproc)
JOBS="${GPU_JOBS:-$((cores < 8 ? cores : 8))}"
export OUT WORK PY STAGES JOBS
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
# The image's Python may be the system's (PEP 668); this machine is thrown away after.
export PIP_BREAK_SYSTEM_PACKAGES=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="$WORK/triton-cache"
export BRAINKERN_IN_GPU_SCRIPT=1
# Triton runs compiled on the GPU here, never through the CPU interpreter.
unset TRITON_INTERPRET
# Programs pip installs (ninja, pytest) land beside the interpreter or in the user's bin.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
PATH="$PATH:$("$PY" -m site --user-base 2>/dev/null)/bin"
export PATH
if [ "${GPU_SKIP_CUDA:-0}" != 1 ] && CUDA_HOME=$(find_cuda_home); then
    export CUDA_HOME
    export PATH="$CUDA_HOME/bin:$PATH"
else
    unset CUDA_HOME
fi

{
    date -u +"date: %Y-%m-%d %H:%M UTC"
    echo "commit: ${GPU_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "python: $PY ($("$PY" -V 2>&1))"
    "$PY" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (no CUDA device visible)')
"
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not installed"
    echo "CUDA_HOME: ${CUDA_HOME:-none}"
    [ -n "${CUDA_HOME:-}" ] && "$CUDA_HOME/bin/nvcc" --version | tail -n 2
    echo "cores: $cores, pytest processes at once: $JOBS, stages: $STAGES, deadline: ${DEADLINE}s"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    else
        echo "nvidia-smi: not found"
    fi
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

{
    echo "# gpu.sh: $(date -u +'%Y-%m-%d %H:%M UTC')"
    echo
    echo "| stage | exit | seconds | note |"
    echo "| --- | ---: | ---: | --- |"
} >"$OUT/summary.md"
FAILED=0

# stage NAME LIMIT: run one stage in its own process under min(LIMIT, time left);
# GPU_LIMIT_<NAME> replaces LIMIT.
stage() {
    local name=$1 limit=$2 left t0 rc text override
    selected "$name" || return 0
    override="GPU_LIMIT_${name^^}"
    limit="${!override:-$limit}"
    left=$((DEADLINE - (SECONDS - T0)))
    if [ "$left" -lt 20 ]; then
        echo "| $name | - | 0 | skipped: the ${DEADLINE}s deadline is near |" >>"$OUT/summary.md"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s)"
    t0=$SECONDS
    timeout -k 10 "$limit" bash "$SELF" --stage "$name" </dev/null >"$OUT/$name.log" 2>&1
    rc=$?
    text=$(cat "$WORK/note-$name" 2>/dev/null)
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        text="timed out after ${limit}s${text:+; $text}"
    fi
    echo "| $name | $rc | $((SECONDS - t0)) | ${text//|//} |" >>"$OUT/summary.md"
    tail -n 8 "$OUT/$name.log"
    [ $rc -ne 0 ] && FAILED=1
    return $rc
}

skip() {
    selected "$1" && echo "| $1 | - | 0 | skipped: $2 |" >>"$OUT/summary.md"
    return 0
}

stage setup 120
"$PY" -m pip list --format=freeze >"$OUT/packages.txt" 2>/dev/null
if [ "${GPU_SKIP_CUDA:-0}" = 1 ]; then
    skip build "GPU_SKIP_CUDA=1"
    skip cuda "GPU_SKIP_CUDA=1"
else
    if ! selected build || stage build 200; then
        stage cuda 90
    else
        skip cuda "the build failed"
    fi
fi
stage triton 150
stage bench 120
stage train 150
stage suite 150
echo "total: $((SECONDS - T0)) s" >>"$OUT/summary.md"
echo
cat "$OUT/summary.md"
exit $FAILED
