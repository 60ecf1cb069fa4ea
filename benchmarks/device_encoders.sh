#!/usr/bin/env bash
# The encoder rows of benchmarks/README.md measured on a machine with a CPU that has bf16 instructions and a
# CUDA GPU (random weights, no download). Writes each part to OUT (default: .), so a cut-off run keeps the rest.
#     OUT=results bash benchmarks/device_encoders.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
export PYTHONUNBUFFERED=1
{ nproc; grep -m1 "model name" /proc/cpuinfo; grep -o -m1 -w "amx_bf16\|avx512_bf16" /proc/cpuinfo | sort -u;
  python3 -c "import torch, timm, open_clip; print('torch', torch.__version__, 'timm', timm.__version__, 'open_clip', open_clip.__version__, 'threads', torch.get_num_threads())";
  python3 -c "from otolith_core.encoders import cpu_has_bf16; print('cpu_has_bf16', cpu_has_bf16())";
  nvidia-smi --query-gpu=name --format=csv,noheader; } 2>&1 | tee "$OUT/machine.txt"
# (c) CLIP ViT-L/14-336 on the CPU: fp32 vs bf16 (timm twin) vs bf16 before (open_clip's tower), local-dir path
timeout 200 python3 benchmarks/extraction.py --device cpu --images 8 --models ViT-L-14-336-quickgelu --precision bf16 \
    --old-bf16 --skip-bare 2>&1 | grep -v Warning | tee "$OUT/clip_cpu.txt"
# every registry entry: bf16 on the CPU against fp32, speed and cosine
timeout 220 python3 benchmarks/precision.py --device cpu --images 2 --both 2>&1 | grep -v Warning | tee "$OUT/precision_cpu.txt"
# and on the GPU: fp16 / bf16 against fp32
timeout 150 python3 benchmarks/precision.py --device cuda --images 16 2>&1 | grep -v Warning | tee "$OUT/precision_cuda.txt"
