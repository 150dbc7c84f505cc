#!/bin/sh
# SelfHDR training in the release's three steps, then an evaluation of the result.
# By default it runs on the bundled demo data (made on first use from datasets/hdri/, no download) with a budget
# that finishes in about ten minutes on a 2-core CPU. For the paper's settings see README.md ("Training").
# Every variable can be overridden from the environment, e.g.  net=SCTNet gpu=0 sh train.sh
set -e

dataroot=${dataroot:-./datasets/demo}  # SIGGRAPH17 layout: Training/ Training_align/ Test/ [Test_align/]
ckpt=${ckpt:-./ckpt}
gpu=${gpu:-auto}                       # '0', '0,1', '-1' (CPU), 'auto' (GPU 0 when CUDA exists)
name=${name:-demo}
net=${net:-AHDRNet}                    # AHDRNet, FSHDR, HDR-Transformer, SCTNet
batch=${batch:-4}
patch=${patch:-64}
niter=${niter:-2}                      # epochs per stage
lr_decay=${lr_decay:-1}                # halve the learning rate every lr_decay epochs
lr=${lr:-0.0001}
iters=${iters:-60}                     # iterations per epoch (the paper: 1200)
workers=${workers:-0}
vgg=${vgg:-auto}                       # imagenet (paper; needs the weights), auto or random (demo, offline)

if [ "$dataroot" = "./datasets/demo" ]; then
    python tools/make_demo_data.py --root "$dataroot"
fi

common="--dataroot $dataroot --dataset_name sig17align --network $net --checkpoints_dir $ckpt --gpu_ids $gpu \
 -j $workers --verbose False"
train_common="$common --batch_size $batch --patch_size $patch --niter $niter --lr_decay_iters $lr_decay --lr $lr \
 --iters_per_epoch $iters --print_freq 20 --test_every 1"

# 1. Structure-focused network (stage 1), on unaligned frames with the colour component as label.
python train.py $train_common --model selfhdr1 --name ${name}_stage1

# 2. Structure component: run the stage-1 network on the aligned training frames.
python test.py $common --model selfhdr2 --name ${name}_stage1 --load_iter $niter \
    --stage0_inference True --save_imgs True

# 3. Reconstruction network (stage 2), from scratch, with the colour and structure components.
python train.py $train_common --model selfhdr2 --name ${name}_stage2 --vgg_weights $vgg \
    --stru_lable_path $ckpt/${name}_stage1/output_$niter

# Evaluate the reconstruction network on the test scenes.
python test.py $common --model selfhdr2 --name ${name}_stage2 --load_iter $niter --save_imgs True
