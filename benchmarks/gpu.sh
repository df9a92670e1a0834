#!/usr/bin/env bash
# One call on a GPU machine: build brainkern._C with CUDA, run the test suite
# (CUDA and Triton tests included) and the benchmarks at full size, and write
# the logs and tables under $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu.sh [pytest -k expression for the benchmarks]
#
# Uses the machine's own python3/torch/triton. Pure-Python packages missing
# there (monai for a baseline, nibabel, nilearn) can travel as wheels in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
{
    date -u +"date: %Y-%m-%d %H:%M UTC"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('device', torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} 2>&1 | tee "$OUT/env.txt"

# Build in place with the CUDA kernels (sm_90 only: H100/H200).
BRAINKERN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
    python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1
build=$?
tail -n 30 "$OUT/build.log"
[ "$build" -eq 0 ] || { echo "build failed ($build)"; exit "$build"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -n 60 | tee "$OUT/tests.log"

BRAINKERN_BENCH_MD="$OUT/bench.md" python3 -m pytest -q -p no:cacheprovider benchmarks \
    --benchmark-enable --benchmark-only --benchmark-json="$OUT/bench.json" ${1:+-k "$1"} \
    >"$OUT/bench.log" 2>&1
echo "benchmarks exit $?"
tail -n 40 "$OUT/bench.log"

# Kwon et al.'s alpha-WGAN-GP at 64^3 (the paper's recipe), with and without gradient
# checkpointing: time per iteration and peak memory from the run's metrics and run.json.
# GPU_TRAIN_ITERS=0 skips it; needs nibabel/nilearn/pyyaml (in .whl/ if missing).
ITERS="${GPU_TRAIN_ITERS:-300}"
if [ "$ITERS" -gt 0 ]; then
    for ckpt in false true; do
        BRAINKERN_CACHE="$OUT/cache" python3 -m brainkern.train --preset kwon2019-alpha-wgan-gp --iters "$ITERS" \
            --out "$OUT/train-ckpt-$ckpt" --quiet --set train.checkpoint=$ckpt --set log.picture_every=100 \
            >"$OUT/train-ckpt-$ckpt.log" 2>&1
        echo "train checkpoint=$ckpt exit $?"
        tail -n 12 "$OUT/train-ckpt-$ckpt.log"
    done
fi
