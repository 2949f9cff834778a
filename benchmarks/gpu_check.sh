#!/usr/bin/env bash
# Everything GPU-side in one call on a lent GPU (issues 23, 32, 35). The stages' limits add up to
# 535 s (under 9 minutes) on an H100/H200:
#   1. the machine: nvidia-smi, torch / timm / triton versions;
#   2. the GPU tests: tests/test_gpu.py (bf16 step of every zoo family, FastGPSA against eq. 6 on
#      CUDA in fp32 and bf16, torch.compile training against eager, torchrun + NCCL collectives,
#      resume on CUDA, a small study training on the GPU in bf16 from splits held there) and
#      tests/test_triton_gpsa.py (the fused GPSA kernel compiled on CUDA against eq. 6 in fp32 /
#      fp16 / bf16, its gradients, torch.compile);
#   3. a small CUDA study (issue 32): CIFAR-10's JPEGs as an image folder (500 training and 100
#      test images per class, 32 px), `convit study --device cuda --models convit_tiny,deit_tiny,resnet
#      --sizes 500 --seeds 1`, planned (--dry-run) and then run with 5 epochs per run, then
#      benchmarks/study_speed.py: each run's training images/s against bench_speed.py's training
#      step of the same model and batch (the ratio); the plan, logs and configs are copied to
#      $OUT/study/ (the weights are not);
#   4. benchmarks/bench_speed.py --device cuda for tiny, small and base (bf16, eager), with the
#      fused GPSA kernel on and off side by side (ours_convit, ours_convit_nokernel) and, for
#      small, a DeiT of ConViT-S's width (ours_deit_w432);
#   5. benchmarks/profile_gpsa.py: torch.profiler tables of ConViT (kernel on and off) and DeiT,
#      small and base, inference and training, into $OUT/profile_*.txt;
#   6. bench_speed.py --compile for base, training only, ours only (last: compiling is what runs
#      long; on an H200 the training step of 4 competitors alone took 158 s).
# Optional (RUN_CIFAR=1, 100 s more): 2 epochs of the cifar10-gpu scale at f = 1, ConViT and DeiT.
# Each stage has its own time limit, so a slow one cannot take the others' results with it.
#
#   OUT=folder [CIFAR=path/to/cifar10_jpeg.npz RUN_CIFAR=1] [WHEELS=folder of .whl] bash benchmarks/gpu_check.sh
#
# Writes $OUT/gpu_check.log (every stage's output), $OUT/study_speed.json, $OUT/study/,
# $OUT/speed_eager.json, $OUT/speed_compile_train.json, $OUT/tests.xml (JUnit), $OUT/profile_*.txt
# and, with RUN_CIFAR=1, the CIFAR sweep's results.{md,csv}.
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

stage machine 20 bash -c "nvidia-smi; $PY -c 'import torch, timm, torchvision, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"timm\", timm.__version__, \"torchvision\", torchvision.__version__, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
stage tests 130 "$PY" -m pytest -q -m '' -p no:cacheprovider -rs tests/test_gpu.py tests/test_triton_gpsa.py --junitxml "$OUT/tests.xml"
study_stage() {  # issue 32: a small CUDA study of CIFAR-10 JPEGs, then its runs against the bare step
    local dir=/tmp/gpu_study
    rm -rf /tmp/cifar_folder /tmp/gpu_plan "$dir"
    "$PY" benchmarks/bench_in_memory.py --npz "$CIFAR" --write-folder /tmp/cifar_folder --per-class 500 --test-per-class 100 \
    && "$PY" -m convit.cli study /tmp/cifar_folder --device cuda --models convit_tiny,deit_tiny,resnet --img-size 32 \
        --sizes 500 --seeds 1 --budget 10m --output /tmp/gpu_plan --dry-run \
    && "$PY" -c "import json, sys; p = sys.argv[1]; plan = json.load(open(p))
for lv in plan['levels']: lv.update(epochs=5, warmup_epochs=1, eval_every=5)
json.dump(plan, open(p, 'w'))" /tmp/gpu_plan/plan.json \
    && "$PY" -m convit.cli study /tmp/cifar_folder --plan /tmp/gpu_plan/plan.json --output "$dir" \
    && "$PY" benchmarks/study_speed.py "$dir" --json "$OUT/study_speed.json"
    mkdir -p "$OUT/study" && (cd "$dir" && cp --parents plan.json results.csv verdict.txt runs/*/log.jsonl runs/*/config.yaml \
        runs/*/train.log "$OUT/study/")
}
export -f study_stage
export PY CIFAR OUT
stage study 110 bash -c study_stage
stage speed_eager 110 "$PY" benchmarks/bench_speed.py --device cuda --models tiny,small,base --gpsa-kernel both --deit-w432 \
    --json "$OUT/speed_eager.json"
stage profile 45 "$PY" benchmarks/profile_gpsa.py --device cuda --models small,base --gpsa-kernel both --out "$OUT"
stage speed_compile 120 "$PY" benchmarks/bench_speed.py --device cuda --models base --compile --modes train --gpsa-kernel both \
    --only ours_convit,ours_convit_nokernel,ours_deit --json "$OUT/speed_compile_train.json"
if [ "${RUN_CIFAR:-0}" = 1 ]; then
    stage cifar10_gpu 100 "$PY" -m convit.cli experiment sample-efficiency --preset cifar10-gpu --fractions 1.0 --seeds 1 \
        --epochs 2 --data-path "$CIFAR" --output /tmp/cifar10_gpu --verbose
    cp /tmp/cifar10_gpu/results.md /tmp/cifar10_gpu/results.csv "$OUT/" 2>/dev/null
fi
echo "=== done $(date -u +%FT%TZ)" | tee -a "$LOG"
