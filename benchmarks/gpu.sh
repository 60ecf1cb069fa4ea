#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md in one go, for a machine with a CUDA GPU (a few minutes; not yet run):
# (a) extraction with real-size random-weight towers in fp32 and in the registry's CUDA precision,
# and every registry encoder's fp16/bf16 speed and similarity against fp32.
#     bash benchmarks/gpu.sh > gpu.txt 2>&1
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import sys, torch; print('torch', torch.__version__); torch.cuda.is_available() or sys.exit('no CUDA GPU visible')"
python benchmarks/extraction.py --device cuda --images 64 --models ViT-B-32,ViT-L-14-336-quickgelu --precision fp32
python benchmarks/extraction.py --device cuda --images 64 --models ViT-L-14-336-quickgelu --precision fp16
python benchmarks/precision.py --device cuda --images 32
