#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md, in one go (one GPU), each row a process of its own that
# measures against a baseline in the same run and prints the ratio.
#
#   bash benchmarks/gpu_throughput.sh prepare     # here (CPU, pip reaches PyPI): into the
#        ignored .gpu/throughput/ the Python 3.12 wheels a GPU box lacks (ml_collections,
#        tensorboardX; the box has jax, flax, optax, orbax, etils, Pillow) and the CIFAR-10
#        tar (16 MB). Run it after gpu_imagenette.sh's prepare, which empties .gpu/.
#   run tool: carry [".gpu/throughput"], timeout_s 420,
#        command "bash benchmarks/gpu_throughput.sh run [SECTION]"
#        installs the wheels whose module is missing (pip --no-index --no-deps --target), then
#        runs SECTION's rows; logs, throughput.jsonl and the recipe's results.json and
#        metrics.jsonl land in $OUT (or gpu_results/).
#
# SECTION (default `replicas`: its rows end within 6 minutes, each under its own time limit):
#   replicas  issue 19: 5 replicas of ResNet-20 and of ResNet-110 against 1 in the same process
#             (goal: at most x1.5 the time of one); then ResNet-20's whole CIFAR-10 recipe (64k
#             steps, 32 evaluations, data decode and compilation included) timed from the
#             command to its exit (goal: under 90 s)
#   imagenet  the ImageNet-size rows (ResNet-50/18/152 against the minimal flax step)
#   cifar     the CIFAR step rows of earlier issues (steps per dispatch, bf16, depth)
set -uo pipefail
cd "$(dirname "$0")/.."
here=.gpu/throughput
case "${1:-}" in
  prepare)
    rm -rf "$here" && mkdir -p "$here/wheels"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
      -d "$here/wheels" ml_collections tensorboardX || exit 1
    cp ../shared/data/cifar10-train.tar.gz "$here/" || exit 1
    du -sh "$here"
    exit 0 ;;
  run) ;;
  *) echo "usage: bash benchmarks/gpu_throughput.sh prepare | run [replicas|imagenet|cifar]" >&2
     exit 2 ;;
esac

out="${OUT:-gpu_results}"
section="${2:-replicas}"
mkdir -p "$out"
py="${PYTHON:-python3}"
for module in ml_collections tensorboardX; do
  if ! "$py" -c "import $module" 2>/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      "$here"/wheels/"${module,,}"-*.whl || exit 1
  fi
done
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
jsonl="$out/throughput.jsonl"
b=("$py" benchmarks/throughput.py --json "$jsonl")
started=$SECONDS

row() {  # row SECONDS NAME COMMAND...: one row under a time limit, its output kept
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit} s, at $((SECONDS - started)) s)"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "== $name: exit $rc (124: over its ${limit} s)"
}

case "$section" in
  replicas)
    data="$here/cifar10-train.tar.gz"
    [ -f "$data" ] || { echo "missing $data (bash benchmarks/gpu_throughput.sh prepare)"; exit 2; }
    row 75 replicas_r20 "${b[@]}" --model cifar_resnet20 --batch 128 --dtype float32 \
        --steps 500 --steps-per-dispatch 50 --replicas 5
    row 90 replicas_r110 "${b[@]}" --model cifar_resnet110 --batch 128 --dtype float32 \
        --steps 100 --steps-per-dispatch 20 --replicas 5
    work="${TMPDIR:-/tmp}/gpu_recipe_r20"
    rm -rf "$work"
    # The whole recipe as a user runs it: wall time from the command to its exit.
    row 180 recipe_r20 bash -c "time $py -m resnet_jax.cli train \
        --config configs/cifar10.py:depth=20,data=$data --workdir $work"
    cp "$work/results.json" "$work/metrics.jsonl" "$out/" 2>/dev/null
    "$py" - "$work/results.json" <<'EOF' 2>&1 | tee -a "$out/recipe_r20.log"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"results.json: train_time_s {r['train_time_s']:.1f}, final val top-1 error "
      f"{r['final']['top1_error']:.2f}% (best {r['best']['top1_error']:.2f}% at step "
      f"{r['best']['step']}), {r['steps']} steps")
EOF
    ;;
  imagenet)
    "${b[@]}" --model resnet50 --batch 256 --dtype bfloat16 --steps 60
    "${b[@]}" --model resnet18 --batch 256 --dtype bfloat16 --steps 100
    "${b[@]}" --model resnet152 --batch 256 --dtype bfloat16 --steps 20 --baseline none
    ;;
  cifar)
    "${b[@]}" --model cifar_resnet20 --batch 128 --dtype float32 --steps 1000 --steps-per-dispatch 100
    "${b[@]}" --model cifar_resnet20 --batch 128 --dtype bfloat16 --steps 1000 --steps-per-dispatch 100
    "${b[@]}" --model cifar_resnet56 --batch 128 --dtype float32 --steps 500 --steps-per-dispatch 100 --baseline none
    "${b[@]}" --model cifar_resnet110 --batch 128 --dtype float32 --steps 500 --steps-per-dispatch 100 --baseline none
    "${b[@]}" --model cifar_resnet1202 --batch 128 --dtype float32 --steps 20 --steps-per-dispatch 10 --baseline none --scan-blocks
    ;;
  *) echo "unknown section $section (replicas | imagenet | cifar)"; exit 2 ;;
esac
echo "== done in $((SECONDS - started)) s"
