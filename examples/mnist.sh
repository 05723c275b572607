#!/usr/bin/env bash
# Train on the real MNIST test split (IDX files in ../shared/data/mnist) for about 30 CPU minutes, then sample.
set -euo pipefail
DATA=${1:-../shared/data/mnist}
diffuse train --dataset mnist --data-dir "$DATA" --split test --image-size 28 --preset small --steps 4000 \
  --batch-size 64 --name mnist --sample-every 1000
diffuse sample --model runs/mnist --sampler ei --steps 30 -n 64 --out mnist-samples.png
