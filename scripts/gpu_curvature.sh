#!/usr/bin/env bash
# The curvature comparison of the paper (Fig. 7) on CIFAR-10, prepared for a CUDA machine:
#   1. train resnet56 and resnet56_noshort with one recipe (SGD, flip+crop, bf16 autocast on CUDA)
#   2. |lambda_min/lambda_max| maps of both on one grid, side by side, with the loss surface.
# Each step is resumable or cheap to redo; every step has a time cap (SECONDS_* below).
# Usage: scripts/gpu_curvature.sh DATA_DIR [OUT]
#   DATA_DIR: folder with cifar10_train_jpeg50k.npz (or cifar-10-batches-py/)
# Environment (defaults for an H200): DEVICE=cuda DATASET=cifar10 EPOCHS=60 BATCH=128 LR=0.1
#   GRID=-1:1:11 HSAMPLES=2048 SECONDS_TRAIN=240 SECONDS_MAP=150 (per model)
# A CPU dry run of the whole pipeline in about a minute:
#   DEVICE=cpu DATASET=digits EPOCHS=1 GRID=-0.5:0.5:2 HSAMPLES=32 scripts/gpu_curvature.sh "" /tmp/curv
set -uo pipefail
data=${1-}
out=${2:-${OUT:-results/curvature_cifar}}
dev=${DEVICE:-cuda}; dataset=${DATASET:-cifar10}; grid=${GRID:--1:1:11}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
root=(); [ -n "$data" ] && root=(--data-root "$data")
{
for arch in resnet56 resnet56_noshort; do
    echo "== train $arch"
    start=$(date +%s)
    [ -f "$out/${dataset}_$arch.pt" ] || timeout -s TERM "${SECONDS_TRAIN:-240}" python3 scripts/train.py \
        --model "$arch" --dataset "$dataset" "${root[@]}" --augment --epochs "${EPOCHS:-60}" \
        --batch-size "${BATCH:-128}" --lr "${LR:-0.1}" --warmup-epochs 5 --no-test --device "$dev" \
        --out "$out" --name "${dataset}_$arch" --manifest "$out/MANIFEST.json"
    echo "train $arch: exit $?, $(( $(date +%s) - start )) s"
done
maps=()
for arch in resnet56 resnet56_noshort; do
    echo "== curvature map $arch"
    start=$(date +%s)
    timeout -s TERM "${SECONDS_MAP:-150}" python3 scripts/plot_hessian_eig.py --ckpt "$out/${dataset}_$arch.pt" \
        "${root[@]}" --hessian-samples "${HSAMPLES:-2048}" --x="$grid" --y="$grid" --device "$dev" \
        --surf_file "$out/${arch}_eig.h5" --out "$out" --no-progress
    echo "map $arch: exit $?, $(( $(date +%s) - start )) s"
    maps+=("$out/${arch}_eig.h5")
done
python3 scripts/plot_hessian_eig.py --compare "${maps[@]}" --titles "ResNet-56" "ResNet-56, no shortcuts" \
    --out "$out" --name ratio_resnet56_vs_noshort
} 2>&1 | tee "$out/gpu_curvature.log"
