#!/usr/bin/env bash
# The throughput rows of benchmarks/README.md, in one go (one GPU). Each line is one process:
# this codebase's step and its baseline measured in the same run, ratio printed.
#   bash benchmarks/gpu_throughput.sh [OUT_JSONL]
set -uo pipefail
out="${1:-throughput.jsonl}"
b=(python benchmarks/throughput.py --json "$out")
"${b[@]}" --model resnet50 --batch 256 --dtype bfloat16 --steps 60
"${b[@]}" --model resnet18 --batch 256 --dtype bfloat16 --steps 100
"${b[@]}" --model cifar_resnet20 --batch 128 --dtype float32 --steps 1000 --steps-per-dispatch 100
"${b[@]}" --model cifar_resnet20 --batch 128 --dtype bfloat16 --steps 1000 --steps-per-dispatch 100
"${b[@]}" --model cifar_resnet56 --batch 128 --dtype float32 --steps 500 --steps-per-dispatch 100 --baseline none
"${b[@]}" --model cifar_resnet110 --batch 128 --dtype float32 --steps 500 --steps-per-dispatch 100 --baseline none
"${b[@]}" --model resnet152 --batch 256 --dtype bfloat16 --steps 20 --baseline none
"${b[@]}" --model cifar_resnet1202 --batch 128 --dtype float32 --steps 20 --steps-per-dispatch 10 --baseline none --scan-blocks
