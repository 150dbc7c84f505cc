#!/bin/sh
# SelfHDR training in the release's three steps, then an evaluation of the result.
# By default it runs on the bundled demo data (made on first use from datasets/hdri/ and scikit-image's photos, no
# download) with a budget that finishes in about ten minutes on a 2-core CPU; `budget=short sh train.sh` trains the
# study's recipe and data at its short budget (the shipped model is the same recipe at the long budget:
# python tools/study.py --budget long --network FSHDR). For the paper's settings see README.md ("Training").
# Every variable can be overridden from the environment, e.g.  net=SCTNet gpu=0 sh train.sh
set -e

budget=${budget:-demo}                 # demo: ~10 min, proves the pipeline; short: the study's recipe (~2 h on 2 cores)
case "$budget" in
    demo)  d_root=./datasets/demo;        d_train=32; d_test=8;  d_niter=2;  d_iters=60;  d_every=1; d_lr=0.0002; d_lr2=0.0002; d_thr=30; d_compile=False; d_variety=standard ;;
    short) d_root=./datasets/study_short; d_train=192; d_test=12; d_niter=20; d_iters=100; d_every=2; d_lr=0.001;  d_lr2=0.0002; d_thr=60; d_compile=auto; d_variety=wide ;;
    *) echo "train.sh: unknown budget '$budget' (demo, short)" >&2; exit 2 ;;
esac
dataroot=${dataroot:-$d_root}          # SIGGRAPH17 layout: Training/ Training_align/ Test/ [Test_align/]
ckpt=${ckpt:-./ckpt}
gpu=${gpu:-auto}                       # '0', '0,1', '-1' (CPU), 'auto' (GPU 0 when CUDA exists)
name=${name:-$budget}
net=${net:-AHDRNet}                    # AHDRNet, FSHDR, HDR-Transformer, SCTNet
batch=${batch:-4}
patch=${patch:-64}
niter=${niter:-$d_niter}               # epochs per stage
iters=${iters:-$d_iters}               # iterations per epoch (the paper: 1200)
lr=${lr:-$d_lr}                        # short: 1e-3, cosine decay to 1e-5 (README); demo: 2e-4, because 120
                                       # iterations at 1e-3 collapse AHDRNet to a constant output (5.45 dB)
policy=${policy:-cosine}               # the paper: step, with lr_decay
lr_decay=${lr_decay:-50}               # step policy only: halve the learning rate every lr_decay epochs
every=${every:-$d_every}               # epochs between validations
workers=${workers:-0}
vgg=${vgg:-auto}                       # imagenet (paper; needs the weights), auto or random (offline)
init=${init:-stage1}                   # stage 2's initial weights: stage1 (our small-budget recipe) or scratch (paper)
lr2=${lr2:-$d_lr2}                     # stage 2's learning rate when it starts from stage 1 (from scratch: lr)
colour_threshold=${colour_threshold:-$d_thr}  # stage 2 keeps L_color where the colour and structure components
                                       # agree within this many 1/255; the paper: 10 (README, "Study")
amp=${amp:-auto}                       # auto: bf16 where the hardware has it (CUDA with bf16, a CPU with
                                       # avx512_bf16/AMX), fp32 elsewhere; none: the release's fp32 (README, "Speed")
compile=${compile:-$d_compile}         # torch.compile the training network; auto (short budget): on where it pays
                                       # over 4000 iterations, off in channels_last on AMX, where eager is as fast;
                                       # the demo's 240 iterations do not repay its warm-up (README, "Speed")

if [ "$dataroot" = "$d_root" ]; then
    python tools/make_demo_data.py --root "$dataroot" --train $d_train --test $d_test --variety $d_variety
fi

common="--dataroot $dataroot --dataset_name sig17align --network $net --checkpoints_dir $ckpt --gpu_ids $gpu \
 -j $workers --verbose False --amp $amp"
train_common="$common --batch_size $batch --patch_size $patch --niter $niter --lr_decay_iters $lr_decay --lr $lr \
 --lr_policy $policy --iters_per_epoch $iters --print_freq 25 --test_every $every --compile $compile"
echo "train.sh: budget $budget, --amp $amp (train.py logs what it resolves to), --compile $compile for training"

# 1. Structure-focused network (stage 1), on unaligned frames with the colour component as label.
python train.py $train_common --model selfhdr1 --name ${name}_stage1

# 2. Structure component: run the stage-1 network on the aligned training frames.
python test.py $common --model selfhdr2 --name ${name}_stage1 --load_iter $niter \
    --stage0_inference True --save_imgs True

# 3. Reconstruction network (stage 2), with the colour and structure components; it starts from the stage-1
#    network (init=stage1) or, as in the paper, from scratch (init=scratch).
case "$init" in
    stage1)  init_flags="--load_path $ckpt/${name}_stage1/SelfHDR_model_$niter.pth --lr $lr2" ;;
    scratch) init_flags="" ;;
    *) echo "train.sh: unknown init '$init' (stage1, scratch)" >&2; exit 2 ;;
esac
python train.py $train_common --model selfhdr2 --name ${name}_stage2 --vgg_weights $vgg \
    --stru_lable_path $ckpt/${name}_stage1/output_$niter --colour_threshold $colour_threshold $init_flags

# Evaluate the reconstruction network on the test scenes.
python test.py $common --model selfhdr2 --name ${name}_stage2 --load_iter $niter --save_imgs True
