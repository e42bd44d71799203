#!/usr/bin/env bash
# TPU VMs and pod slices with gcloud: create (on demand, --spot, or --queued resources),
# install the project on every worker, train on all workers, and delete.
#
#   launch/tpu_pod.sh create  --name NAME --zone ZONE --type v4-32 [--spot] [--queued]
#   launch/tpu_pod.sh install --name NAME --zone ZONE
#   launch/tpu_pod.sh train   --name NAME --zone ZONE --workdir gs://B/runs/r50 \
#       --data-dir gs://B/tfds -- --config configs/imagenet_modern.py
#   launch/tpu_pod.sh delete  --name NAME --zone ZONE [--queued]
#
# Add --dry-run to print the gcloud commands instead of running them. Every worker runs the
# same `resnet-jax train --distributed`; jax.distributed.initialize() finds the pod by itself,
# and a preemption's SIGTERM makes all workers save at the same step and exit 0. Run `train`
# again on a new slice with the same workdir to resume.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
[[ $# -ge 1 ]] || usage 2
mode="$1"; shift

name="" zone="" type="v4-32" version="tpu-ubuntu2204-base" spot=0 queued=0 dry_run=0
workdir="" data_dir="" repo_dir="resnet-jax"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --queued) queued=1; shift ;;
    --workdir) workdir="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (put train arguments after --)" >&2; usage 2 ;;
  esac
done
if [[ -z "$name" || -z "$zone" ]]; then
  echo "tpu_pod.sh: --name and --zone are required" >&2; exit 2
fi

run() {
  if [[ "$dry_run" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"
}

spot_flag=()
if [[ "$spot" == 1 ]]; then spot_flag=(--spot); fi

case "$mode" in
  create)
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources create "$name" --node-id "$name" \
        --zone "$zone" --accelerator-type "$type" --runtime-version "$version" "${spot_flag[@]}"
    else
      run gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
        --accelerator-type "$type" --version "$version" "${spot_flag[@]}"
    fi
    ;;
  install)
    here="$(cd "$(dirname "$0")/.." && pwd)"
    run gcloud compute tpus tpu-vm scp --recurse "$here" "$name:~/$repo_dir" \
      --zone "$zone" --worker=all
    on_all_workers "pip install -U 'jax[tpu]' && pip install -e ~/$repo_dir'[tf,gcs]'"
    ;;
  train)
    if [[ -z "$workdir" ]]; then echo "tpu_pod.sh: train needs --workdir" >&2; exit 2; fi
    train_args=(--workdir "$workdir")
    if [[ -n "$data_dir" ]]; then train_args+=("--config.data.data_dir=$data_dir"); fi
    quoted="$(printf '%q ' "$@" "${train_args[@]}")"
    on_all_workers "cd ~/$repo_dir && nohup resnet-jax train --distributed $quoted > train.log 2>&1 &"
    ;;
  delete)
    if [[ "$queued" == 1 ]]; then
      run gcloud compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
    fi
    ;;
  *) echo "tpu_pod.sh: mode must be one of create, install, train, delete; got '$mode'" >&2
     exit 2 ;;
esac
