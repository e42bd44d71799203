#!/usr/bin/env bash
# Start N `resnet-jax train` processes on this machine, joined by jax.distributed.
# Each process gets --coordinator/--num-processes/--process-id; on CPU, --cpu-devices K
# gives each process K fake devices (N*K devices in all). SIGTERM/SIGINT to this script is
# forwarded to every process (they save a checkpoint and exit 0); the script exits with the
# first non-zero exit code of its processes.
#
#   launch/local.sh -n 2 [--port 12355] [--cpu-devices 4] [--log-dir DIR] [--dry-run] \
#       -- --config configs/smoke.py --workdir /tmp/run
#
# RESNET_JAX overrides the command (default: resnet-jax), e.g. "python -m resnet_jax.cli".
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

num=2
port=12355
cpu_devices=""
log_dir=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) num="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (put train arguments after --)" >&2; usage 2 ;;
  esac
done
if ! [[ "$num" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: -n must be a positive integer, got '$num'" >&2; exit 2
fi

read -r -a cmd <<< "${RESNET_JAX:-resnet-jax}"
extra=()
if [[ -n "$cpu_devices" ]]; then extra+=(--cpu-devices "$cpu_devices"); fi

pids=()
# shellcheck disable=SC2317,SC2329  # called by the trap below
forward() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap forward TERM INT

for ((i = 0; i < num; i++)); do
  args=("${cmd[@]}" train "$@" --coordinator "localhost:$port" --num-processes "$num"
        --process-id "$i" "${extra[@]}")
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "${args[@]}"; echo
    continue
  fi
  if [[ -n "$log_dir" ]]; then
    mkdir -p "$log_dir"
    "${args[@]}" > "$log_dir/process_$i.log" 2>&1 &
  else
    "${args[@]}" &
  fi
  pids+=("$!")
done
[[ "$dry_run" == 1 ]] && exit 0

status=0
for pid in "${pids[@]}"; do
  # `wait` returns early (>128) when a trapped signal arrives; wait again for the real code.
  while true; do
    set +e; wait "$pid"; code=$?; set -e
    if [[ $code -gt 128 ]] && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  if [[ $code -ne 0 && $status -eq 0 ]]; then status=$code; fi
done
exit "$status"
