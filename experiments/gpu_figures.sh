#!/usr/bin/env bash
# The GPU/TPU figures benchmarks.md asks for, in one run (issue 14's list): DKD resnet32x4 ->
# resnet8x4 at batch 64 in float32 and bfloat16, 1 vs 5 seeds in one program, ImageNet
# resnet34 -> resnet18 at batch 512 in bfloat16, each with its projected wall time (240 epochs
# for CIFAR, 100 for ImageNet as its recipes), then the quickstart
# with 1 and 5 seeds. Extra arguments go to every benchmark.py call, e.g. `--steps=2 --warmup=1`
# for a smoke run. Copy what it prints into experiments/results/benchmarks.md with the date,
# the device (it prints `nvidia-smi -L` where there is one) and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L || true
python -c "import jax; print('jax', jax.__version__, jax.devices())"
bench() { echo "== python experiments/benchmark.py $*"; python experiments/benchmark.py "$@" 2>&1 | grep -vE "^[IWE][0-9]{4} "; }
cifar=(--method=dkd --teacher=resnet32x4 --student=resnet8x4 --batch=64)
bench "${cifar[@]}" --dtype=float32 "$@"
bench "${cifar[@]}" --dtype=bfloat16 "$@"
bench "${cifar[@]}" --dtype=float32 --seeds=5 "$@"
bench "${cifar[@]}" --dtype=bfloat16 --seeds=5 "$@"
bench --method=dkd --teacher=imagenet_resnet34 --student=imagenet_resnet18 --batch=512 --dtype=bfloat16 \
  --epochs=100 "$@"
work=$(mktemp -d)
train() {  # name, then kdjax.main's config flags
  local name=$1; shift
  echo "== python -m kdjax.main --config=configs/quickstart.py $*"
  local start; start=$(date +%s)
  python -m kdjax.main --config=configs/quickstart.py --workdir="$work/$name" --config.progress_bar=False \
    "$@" > "$work/$name.log" 2>&1 || { tail -20 "$work/$name.log"; exit 1; }
  echo "wall $(( $(date +%s) - start )) s"; tail -3 "$work/$name.log"
}
train quickstart
train one_seed --config.teacher.checkpoint="$work/quickstart/teacher"
train five_seeds --config.teacher.checkpoint="$work/quickstart/teacher" --config.seeds=0,1,2,3,4
