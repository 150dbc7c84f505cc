#!/usr/bin/env bash
# The one prepared GPU check, under 8 minutes in one call (bench/gpu_check.py says what each section checks).
#
#   python bench/gpu_check.py --pack     # here, first: the golden tensors into bench/golden_pack/ (~25 MB, untracked
#                                        # but not ignored, so the device call carries it; delete it afterwards)
#   bash bench/gpu_check.sh              # on the GPU machine: $OUT/gpu_check.json, .log and _verdict.txt
#   bash bench/gpu_check.sh --dry_run    # on a CPU: the sections that can run there, with tiny backbones
#
# Extra arguments go to bench/gpu_check.py, e.g. --sections golden resume --networks AHDRNet.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
# The driver keeps to --budget_s (440 s); this outer limit only catches a driver that hangs itself.
exec timeout -k 5 470 "${PYTHON:-python}" bench/gpu_check.py "$@"
