#!/usr/bin/env bash
# All GPU checks in one go, on a CUDA machine, within TOTAL_SECONDS (default 560: one 10-minute
# device command):
#   1. the CUDA tests (CPU vs CUDA agreement of the loop and of Hessian-vector products; cuDNN
#      fusion and K points per launch against the plain loop on CUDA)
#   2. the benchmark on CUDA: plain eager vs our modes, ratios and errors -> $out/bench*.json
#      (K points per launch and CUDA graphs on the small cases too: a point of digits' 1,437
#      images is a few milliseconds, where launches count)
#   3. the full 51x51 ResNet-56 surface over the 50,000-image CIFAR-10 train set (akamaster
#      checkpoint) in bf16, timed, in the bf16 mode the benchmark found fastest on ResNet-56
#      (eager or compiled, with or without cuDNN fusion / benchmark mode; its `surface_flags`).
#      Stopped with SIGTERM after SURFACE_SECONDS (default 300, less if the steps before left less
#      of TOTAL_SECONDS): the file keeps every point and a rerun resumes.
#   4. the whole test suite with CUDA visible (8 processes, capped at SUITE_SECONDS, default 120)
# Usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]
#   DATA_DIR: folder with cifar10_train_jpeg50k.npz (or cifar-10-batches-py/)
#   CKPT:     resnet56-4bfd9763.th (akamaster; recognised by its sha256)
# Environment: GRID (default -1:1:51), TOTAL_SECONDS, SURFACE_SECONDS, SUITE_SECONDS, BENCH_SAMPLES
#   (default 16384),
#   AUTOTUNE=1 (also measure compile-bf16-autotune, inductor's max-autotune: minutes of tuning; and
#   compile-bf16-cudagraphs, CUDA graphs: little to gain at batch 8192),
#   BENCH_POINTS / BENCH_REPEATS (default 8 / 3), DEVICE (default cuda; cpu for a dry run of the
#   script itself with a tiny GRID and BENCH_SAMPLES).
set -uo pipefail
data=${1:?usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]}
ckpt=${2:?usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]}
out=${3:-${OUT:-results/gpu_check}}
grid=${GRID:--1:1:51}
device=${DEVICE:-cuda}
bench=(--n-samples "${BENCH_SAMPLES:-16384}" --points "${BENCH_POINTS:-8}" --repeats "${BENCH_REPEATS:-3}")
t_start=$(date +%s)
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

echo "== 1. CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_multipoint.py tests/test_hessian.py -k cuda

echo "== 2. benchmark"
python3 scripts/benchmark.py --device "$device" --case digits-resnet56 --case cifar-resnet20 \
    --modes fp32,tf32,bf16,bf16-cudafuse,fp32-vmap4,bf16-vmap4,bf16-vmap8,compile-bf16-cudagraphs "${bench[@]}" \
    --json "$out/bench_small.json"
bf16_modes=bf16,bf16-cudafuse,bf16-cudnnbench,bf16-cudafuse-cudnnbench,compile-bf16,compile-bf16-cudnnbench,bf16-vmap4,bf16-vmap8
[ "${AUTOTUNE:-0}" = 1 ] && bf16_modes="$bf16_modes,compile-bf16-autotune,compile-bf16-cudagraphs"
python3 scripts/benchmark.py --device "$device" --case cifar-resnet56 --modes "fp32,tf32,$bf16_modes" \
    "${bench[@]}" --json "$out/bench_resnet56.json"
# the fastest bf16 mode whose error is bf16's (a mode that failed is not in the file)
flags=$(python3 - "$out/bench_resnet56.json" <<'EOF'
import json, sys
case = json.load(open(sys.argv[1]))["cases"][0]
ok = {m: r for m, r in case["modes"].items() if r["surface_flags"][1] == "bf16" and r["max_rel_err"] < 2e-2}
best = max(ok, key=lambda m: ok[m]["ips"]) if ok else None
print(" ".join(ok[best]["surface_flags"]) if best else "--precision bf16 --compile")
print(f"fastest bf16 mode on ResNet-56: {best} ({ok[best]['ips']:.0f} ips)" if best else "no bf16 mode measured",
      file=sys.stderr)
EOF
)
echo "surface flags: ${flags}"

surface_s=${SURFACE_SECONDS:-300}
left=$(( ${TOTAL_SECONDS:-560} - ($(date +%s) - t_start) - ${SUITE_SECONDS:-120} - 15 ))
[ "$left" -lt "$surface_s" ] && surface_s=$left
[ "$surface_s" -lt 30 ] && surface_s=30
echo "== 3. ${grid} x ${grid} surface, ResNet-56, CIFAR-10 train (at most ${surface_s} s)"
start=$(date +%s.%N)
timeout -s TERM "$surface_s" python3 scripts/plot_surface.py --ckpt "$ckpt" --dataset cifar10 \
    --data-root "$data" --x="$grid" --y="$grid" $flags --device "$device" --out "$out" --no-progress
echo "surface exit status $?; wall time $(python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$start") s"
python3 - "$out" <<'EOF'
import glob, json, sys, h5py
for f in glob.glob(f"{sys.argv[1]}/*x*_y*.h5"):
    with h5py.File(f) as h:
        done = h["done"][()]
        eng = json.loads(h.attrs["engine"]) if isinstance(h.attrs.get("engine"), str) else h.attrs.get("engine")
        print(f, "points done", int(done.sum()), "of", done.size, "engine", eng, "batch", h.attrs.get("batch_size"))
        runs = json.loads(h.attrs.get("runs", "[]"))
        if runs:
            pts, sec = sum(r["points"] for r in runs), sum(r["seconds"] for r in runs)
            print(f"points computed {pts} in {sec:.1f} s over {len(runs)} run(s): {sec / pts:.4f} s a point; "
                  f"the whole grid at that rate {sec / pts * done.size / 60:.2f} min plus one start-up")
EOF

echo "== 4. test suite with CUDA visible (at most ${SUITE_SECONDS:-120} s)"
timeout -s TERM "${SUITE_SECONDS:-120}" python3 -m pytest -q -x -p no:cacheprovider -n 8 tests 2>&1 | tail -25
} 2>&1 | tee "$log"
