#!/usr/bin/env bash
# GPU checks in one run of at most 8 minutes on one CUDA device: golden forwards, bf16/fp16 steps, a one-process
# NCCL DDP step via torchrun, fp32/bf16/fp16/channels_last/compile throughput and a tiny study, each section under
# its own timeout (see bench/gpu_check.py). Figures go to $OUT/gpu_check.{json,log} when OUT is set, else to
# bench/results/. Extra arguments are passed on, e.g. --sections golden amp --networks AHDRNet.
set -u
cd "$(dirname "$0")/.." || exit 2
# The Python driver keeps to --budget_s (450 s); this outer limit only catches a driver that hangs itself.
exec timeout -k 5 470 "${PYTHON:-python}" bench/gpu_check.py "$@"
