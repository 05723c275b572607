#!/usr/bin/env bash
# Classifier guidance and imputation on shapes, after the Quickstart run (runs/quickstart).
set -euo pipefail
diffuse train --task classifier --preset wrn-10-2 --image-size 16 --steps 2500 --lr 1e-3 --lr-decay cosine --name shapes-clf
diffuse condition --model runs/quickstart --classifier runs/shapes-clf --class triangle --scale 2 --sampler ei --steps 30 -n 64 --out triangles.png
python -c "from pathlib import Path; from diffusers_cli.data import load_dataset; from diffusers_cli.support.image_grids import save_png, to_uint8; ds, _ = load_dataset('shapes', 32, split='test'); save_png(to_uint8(ds[0][0][None])[0], Path('shape.png'))"
diffuse impute shape.png --mask half --model runs/quickstart -n 4 --out filled.png
