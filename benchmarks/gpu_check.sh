#!/usr/bin/env bash
# Everything GPU-side in one call on a lent GPU (issue 23), under 10 minutes on an H100/H200:
#   1. the machine: nvidia-smi, torch / timm versions;
#   2. the GPU tests (tests/test_gpu.py): bf16 step of every zoo family, FastGPSA against eq. 6
#      on CUDA in fp32 and bf16, torch.compile training against eager, torchrun + NCCL
#      collectives, resume on CUDA;
#   3. benchmarks/bench_speed.py --device cuda for tiny, small and base (bf16, eager);
#   4. 2 epochs of the cifar10-gpu scale at f = 1, ConViT and DeiT (on-device data pipeline);
#   5. bench_speed.py --compile for base, training only (last: compiling is what runs long; on an
#      H200 the training step alone took 158 s, both modes did not fit 150 s).
# Each stage has its own time limit, so a slow one cannot take the others' results with it.
#
#   OUT=folder CIFAR=path/to/cifar10_jpeg.npz [WHEELS=folder of .whl] bash benchmarks/gpu_check.sh
#
# Writes $OUT/gpu_check.log (every stage's output), $OUT/speed_eager.json,
# $OUT/speed_compile_train.json, $OUT/tests.xml (JUnit) and the CIFAR sweep's results.{md,csv}.
set -u -o pipefail
OUT=${OUT:-benchmarks/results/gpu}
CIFAR=${CIFAR:-../shared/data/cifar10_jpeg.npz}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ -n "${WHEELS:-}" ]; then  # packages carried to a machine without an index (e.g. the timm we test with)
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
LOG="$OUT/gpu_check.log"

stage() {  # stage NAME SECONDS CMD...: run with a limit, log it, never stop the script
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit}s) $(date -u +%FT%TZ): $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
}

stage machine 30 bash -c "nvidia-smi; $PY -c 'import torch, timm, torchvision; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"timm\", timm.__version__, \"torchvision\", torchvision.__version__, torch.cuda.get_device_name())'"
stage tests 140 "$PY" -m pytest -q -m '' -p no:cacheprovider -rs tests/test_gpu.py --junitxml "$OUT/tests.xml"
stage speed_eager 110 "$PY" benchmarks/bench_speed.py --device cuda --models tiny,small,base --json "$OUT/speed_eager.json"
stage cifar10_gpu 100 "$PY" -m convit.cli experiment sample-efficiency --preset cifar10-gpu --fractions 1.0 --seeds 1 \
    --epochs 2 --data-path "$CIFAR" --output /tmp/cifar10_gpu --verbose
cp /tmp/cifar10_gpu/results.md /tmp/cifar10_gpu/results.csv "$OUT/" 2>/dev/null
stage speed_compile 200 "$PY" benchmarks/bench_speed.py --device cuda --models base --compile --modes train \
    --json "$OUT/speed_compile_train.json"
echo "=== done $(date -u +%FT%TZ)" | tee -a "$LOG"
