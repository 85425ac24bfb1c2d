#!/usr/bin/env bash
# The CUDA benches, as one script for a machine with one GPU (the README's "On a GPU" table comes from it).
#   bash bench/gpu.sh [OUT_DIR]
# Needs the image's torch with CUDA and the project's requirements importable (PYTHONPATH=src plus pydantic,
# aio-pika, boto3, zstandard). With one GPU a ring has one rank: NCCL refuses two ranks on one device, so the
# multi-rank ring-vs-DDP ratio needs a machine of several GPUs (bench/train_step.py --device cuda --world N).
set -uo pipefail
out=${1:-${OUT:-/tmp/ringfleet-gpu}}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
PY
status=0
# A commit every step: step-time inflation and the exactness of the overlapped device-to-host copy.
python3 bench/commit_stall.py --device cuda 2>&1 | grep -v "^20..-" | tee "$out/commit_stall.txt" || status=1
python3 bench/commit_stall.py --device cuda --d-model 2048 --layers 8 --batch 32 --rounds 3 2>&1 | grep -v "^20..-" \
  | tee "$out/commit_stall_large.txt" || status=1
# Our DistributedOptimizer's own cost on the GPU (world 1): fusion buckets, gradient views, the step boundary.
python3 bench/train_step.py --device cuda --world 1 --width 8192 --batch 512 --lm-width 1024 --lm-layers 12 \
  --lm-batch 64 --threads 4 2>&1 | tee "$out/train_step.txt" || status=1
exit $status
