#!/usr/bin/env bash
# The GPU checks of the deep models in one call: the CUDA tests, the 16-copies speed-up, the
# ResNet-18 subset-evaluation throughput (equal copies, and mixed sizes together vs alone), and
# one all-methods CNN run on each device compared method by method. Run from the repository
# root on a machine with a CUDA GPU whose python3 already holds torch; the other dependencies
# come as wheels in .whl/ when given (nothing is downloaded; installed only where valbench is
# not). Logs land in $OUT (default /tmp/device-checks), the two runs in $RUNS; each step has its
# own time limit so one slow or failing step leaves the others' numbers. DEVICE=cpu QUICK=1
# rehearses the flow on a CPU at small sizes; STEPS="gpu_tests fractions" runs only those steps.
set -u
OUT=${OUT:-/tmp/device-checks}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PY:-python3}

if ! $PY -c "import valbench.methods" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
$PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__)"

STEPS=${STEPS:-gpu_tests throughput fractions copies16 run_cuda run_cpu compare}
step() {  # step NAME LIMIT_S COMMAND...: its log in $OUT/NAME.log, its tail and rc here
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)"
    tail -n "${TAIL:-12}" "$OUT/$name.log"
}

if [ "$QUICK" = 1 ]; then
    SUBSET=64; COPIES="1 2"; TRAIN=60; FITS=4; JOBS=2; FRACTION_N=200
else
    SUBSET=2000; COPIES="1 8"; TRAIN=150; FITS=24; JOBS=8; FRACTION_N=4000
fi

RUNS=${RUNS:-/tmp/device-runs}
step gpu_tests 150 $PY -m pytest -p no:cacheprovider -n 0 -q -s -rs \
    tests/harness/test_devices.py tests/harness/test_nets.py
step throughput 150 $PY tests/benchmarks/device_checks.py throughput --device "$DEVICE" \
    --copies $COPIES --subset $SUBSET --arithmetic strict float32 tf32 --alone
step fractions 120 $PY tests/benchmarks/device_checks.py fractions --device "$DEVICE" \
    --n "$FRACTION_N" --models resnet18 cnn --repeats 2
step copies16 90 $PY -m pytest -p no:cacheprovider -n 0 -q -s -m slow \
    tests/benchmarks/test_deep_benchmark.py -k sixteen
RUN=(-m valbench run --methods all --datasets mnist-5k --model cnn --max-train "$TRAIN"
    --seeds 1 --budget "fits=$FITS" --timeout 150 --jobs "$JOBS" --metrics none)
step run_cuda 170 $PY "${RUN[@]}" --device "$DEVICE" --out "$RUNS/cuda"
step run_cpu 170 $PY "${RUN[@]}" --device cpu --out "$RUNS/cpu"
TAIL=40 step compare 40 $PY tests/benchmarks/device_checks.py compare "$RUNS/cpu" "$RUNS/cuda"
