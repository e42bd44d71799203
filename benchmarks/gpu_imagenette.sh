#!/usr/bin/env bash
# shared/GPU.md item 1: the imagenette recipe on a GPU (ResNet-18/-50 at 224, real vs synthetic
# input in one process, ResNet-18's held-out top-1 error after ~4 minutes of training).
#
#   bash benchmarks/gpu_imagenette.sh prepare [PHOTOS]   # here (CPU, with internet to PyPI):
#        wheels the GPU box lacks (Python 3.12) and a seeded subset of PHOTOS photographs
#        (default 2000, ~22 MB) of ../shared/data/imagenette-224-train.tar, into .gpu/
#   run tool: carry [".gpu"], command "bash benchmarks/gpu_imagenette.sh run", timeout ~480
#        installs only the wheels whose module is missing there (pip --no-index --no-deps),
#        then benchmarks/gpu_imagenette.py; results in $OUT/gpu_imagenette.json and the log.
#
# The carry limit is 64 MiB: opencv-python-headless alone is a 61 MB wheel. `prepare` leaves
# it out when SKIP_OPENCV=1 (for a box known to have cv2) and otherwise keeps the photo subset
# small enough to fit (it says how many photos it kept).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in
prepare)
  photos="${2:-2000}"
  rm -rf .gpu && mkdir -p .gpu/wheels
  pkgs=(grain simplejpeg ml_collections cloudpickle array_record)
  [ "${SKIP_OPENCV:-0}" = 1 ] || pkgs+=(opencv-python-headless)
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels "${pkgs[@]}"
  wheels_mb=$(du -sm .gpu/wheels | cut -f1)
  budget_mb=$((60 - wheels_mb))        # MiB left for photos under the 64 MiB carry limit
  python - "$photos" "$budget_mb" <<'EOF'
import io, sys, tarfile
import numpy as np
photos, budget = int(sys.argv[1]), int(sys.argv[2]) * 2**20
src = "../shared/data/imagenette-224-train.tar"
with tarfile.open(src) as tar:
    members = [m for m in tar if m.isfile() and m.name.count("/") == 2]
    order = np.random.default_rng(0).permutation(len(members))
    kept, size = [], 0
    for i in order[:photos]:
        if size + members[i].size + 1024 > budget:
            break
        kept.append(members[i]); size += members[i].size + 1024
    with tarfile.open(".gpu/imagenette-subset.tar", "w") as out:
        for m in sorted(kept, key=lambda m: m.name):
            out.addfile(m, tar.extractfile(m))
print(f"kept {len(kept)} photographs ({size / 2**20:.1f} MiB) in .gpu/imagenette-subset.tar")
EOF
  du -sh .gpu
  ;;
run)
  have() { python -c "import $1" 2>/dev/null; }
  for pair in grain:grain simplejpeg:simplejpeg ml_collections:ml_collections \
              cloudpickle:cloudpickle array_record:array_record cv2:opencv_python_headless; do
    module="${pair%%:*}" wheel="${pair##*:}"
    if ! have "$module"; then
      python -m pip install -q --no-index --no-deps .gpu/wheels/"$wheel"-*.whl
    fi
  done
  n=$(python -c "import tarfile; print(sum(m.isfile() for m in tarfile.open('.gpu/imagenette-subset.tar')))")
  val=$((n / 10))
  python -c "import jax; print(jax.__version__, jax.devices())"
  python benchmarks/gpu_imagenette.py --data .gpu/imagenette-subset.tar --val "$val" \
    --out "${OUT:-.}" 2>&1 | tee "${OUT:-.}/gpu_imagenette.log"
  ;;
*)
  echo "usage: bash benchmarks/gpu_imagenette.sh prepare [PHOTOS] | run" >&2
  exit 2
  ;;
esac
