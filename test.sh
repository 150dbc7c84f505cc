#!/bin/sh
# Evaluate a SelfHDR stage-2 checkpoint and print the metric table.
# By default: the FSHDR SelfHDR checkpoint shipped in pretrained_models/ (budget `long`, with its medium gate; it
# takes flow-aligned frames, the data sets' Test_align folders) on the demo test set. Without the gate:
#   extra="--medium_gate off" sh test.sh
# The AHDRNet one (unaligned frames):
#   net=AHDRNet name=ahdrnet_short_stage2 sh test.sh
# The authors' published models work the same way once placed at
#   pretrained_models/<backbone>_stage2/SelfHDR_model_1.pth
# e.g.  dataroot=/data/sig17 net=SCTNet name=sctnet_stage2 sh test.sh
set -e

dataroot=${dataroot:-./datasets/demo}
ckpt=${ckpt:-./pretrained_models}
gpu=${gpu:-auto}
net=${net:-FSHDR}
name=${name:-fshdr_long_na_gate}
epoch=${epoch:-1}
dataset=${dataset:-sig17align}         # sig17align, sen, tursun
amp=${amp:-auto}                       # auto: bf16 where the hardware has it (a CPU with avx512_bf16/AMX, CUDA
                                       # with bf16), fp32 elsewhere; none: the release's fp32 (README, "Speed")
tile=${tile:-auto}                     # auto: the whole image (as the release) when it fits in memory and, on a
                                       # CPU, has at most 768x768 pixels; else tiles. 0: always the whole image
extra=${extra:-}                       # e.g. "--max_memory 8" or "--extra_metrics pu21"

if [ "$dataroot" = "./datasets/demo" ]; then
    python tools/make_demo_data.py --root "$dataroot"
fi

python test.py --dataroot $dataroot --dataset_name $dataset --model selfhdr2 --network $net \
    --checkpoints_dir $ckpt --name $name --load_iter $epoch --gpu_ids $gpu -j 0 --verbose False \
    --save_imgs True --amp $amp --tile $tile $extra
