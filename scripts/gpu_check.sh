#!/usr/bin/env bash
# All GPU checks in one go (run on a CUDA machine; about 5 minutes on an H200):
#   1. the benchmark on CUDA (plain eager vs our modes, ratios and errors) -> $OUT/bench.json
#   2. a full 51x51 ResNet-56 surface over the 50,000-image CIFAR-10 JPEG train set in bf16, timed.
# Usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]
#   DATA_DIR: folder with cifar10_train_jpeg50k.npz (or cifar-10-batches-py/)
#   CKPT:     e.g. resnet56-4bfd9763.th (akamaster; recognised by its sha256)
set -euo pipefail
data=${1:?usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]}
ckpt=${2:?usage: scripts/gpu_check.sh DATA_DIR CKPT [OUT]}
out=${3:-${OUT:-results/gpu_check}}
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python3 scripts/benchmark.py --device cuda --modes fp32,tf32,bf16,compile-bf16 --points 16 --repeats 3 \
    --json "$out/bench.json" | tee "$out/bench.md"
start=$(date +%s)
python3 scripts/plot_surface.py --ckpt "$ckpt" --dataset cifar10 --data-root "$data" \
    --x=-1:1:51 --y=-1:1:51 --precision bf16 --device cuda --out "$out" --no-progress --plot | tee "$out/surface.txt"
echo "51x51 surface wall time: $(( $(date +%s) - start )) s" | tee -a "$out/surface.txt"
