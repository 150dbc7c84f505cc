"""Does `--amp auto` (bf16 on a native-bf16 CPU), compiled or not, learn and infer what fp32 does?

    python bench/amp_agreement.py --demo_root datasets/demo      # writes bench/results/amp_agreement.json

1. **Training**: `train.py` stage 1 (`--model selfhdr1`, the full AHDRNet) on the tests' tiny data set (3 training
   scenes of 48x64, tests/tiny_data.py), batch 2 of 32x32 crops, `--iters` iterations, the same seed for every
   configuration (so the same crops and initial weights), the loss logged at every iteration and the validation
   PSNR-mu after every epoch. Configurations: `--amp none` (the release's fp32), `--amp bf16`, and
   `--amp bf16 --compile True`. Reported: each loss curve, the largest and mean relative gap to the fp32 curve, and
   the mean loss of the last quarter of the iterations.
2. **Inference**: `test.py` with the shipped checkpoint (pretrained_models/ahdrnet_short_stage2) on the demo test
   scenes, `--amp none` against `--amp bf16`: the metrics of each, and the PSNR-mu of the bf16 outputs against the
   fp32 outputs (how far bf16 moves an output, in the metric's own unit).

Each run is a fresh process (`train.py`/`test.py` as a user runs them). On a CPU without native bf16, bf16 is
emulated and very slow: run this on one that has it (the file records the CPU flags).
"""
import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

CONFIGS = {'fp32': ['--amp', 'none'], 'bf16': ['--amp', 'bf16'], 'bf16+compile': ['--amp', 'bf16', '--compile', 'True']}


def cpu_info():
    from models.base_model import read_cpu_flags
    text = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
    model = re.search(r'model name\s*:\s*(.*)', text)
    family = re.search(r'cpu family\s*:\s*(\d+)', text)
    number = re.search(r'\nmodel\s*:\s*(\d+)', text)
    flags = read_cpu_flags()
    return {'model': model.group(1) if model else '', 'family': family.group(1) if family else None,
            'model_number': number.group(1) if number else None, 'cpus': os.cpu_count(),
            'avx512_bf16': 'avx512_bf16' in flags, 'amx_bf16': 'amx_bf16' in flags}


def run(argv, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.time()
    proc = subprocess.run([sys.executable] + argv, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode:
        raise SystemExit(f'{" ".join(argv)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}')
    return proc.stdout + proc.stderr, time.time() - start


def training(work, iters, per_epoch, threads, configs):
    from tiny_data import make_tiny_dataset
    data = str(make_tiny_dataset(os.path.join(work, 'tiny')))
    curves = {}
    for name in configs:
        flags = CONFIGS[name]
        argv = ['train.py', '--dataroot', data, '--dataset_name', 'sig17align', '--model', 'selfhdr1',
                '--network', 'AHDRNet', '--name', name, '--checkpoints_dir', os.path.join(work, 'ckpt'),
                '--gpu_ids', '-1', '-j', '0', '--verbose', 'False', '--batch_size', '2', '--patch_size', '32',
                '--iters_per_epoch', str(per_epoch), '--niter', str(iters // per_epoch), '--print_freq', '1',
                '--test_every', '1', '--lr', '0.001', '--lr_policy', 'cosine', '--seed', '0'] + flags
        log, seconds = run(argv, threads)
        losses = [float(v) for v in re.findall(r'iters: \d+, time: [0-9.]+.*? Total: ([0-9.eE+-]+)', log)]
        val = [float(v) for v in re.findall(r'validation PSNR-mu ([0-9.]+) dB', log)]
        steps = [float(v) for v in re.findall(r'iters: \d+, time: ([0-9.]+)', log)]
        curves[name] = {'loss': losses, 'val_psnr_mu': val, 'wall_seconds': round(seconds, 1),
                        'median_step_seconds': statistics.median(steps[1:]) if len(steps) > 1 else None,
                        'log_lines': re.findall(r'--(?:amp|compile)[^\n]*', log)[:3]}
    ref = np.array(curves['fp32']['loss'])
    tail = max(1, len(ref) // 4)
    for name, row in curves.items():
        loss = np.array(row['loss'])
        if len(loss) != len(ref) or not len(ref):
            row['note'] = 'curve length differs from fp32'
            continue
        gap = np.abs(loss - ref) / np.abs(ref)
        row['max_rel_gap_to_fp32'] = float(gap.max())
        row['mean_rel_gap_to_fp32'] = float(gap.mean())
        row['last_quarter_mean_loss'] = float(loss[-tail:].mean())
    return {'data': 'tests/tiny_data.py: 3 training + 2 test scenes of 48x64', 'iterations': iters,
            'batch': '2 x 32x32', 'model': 'selfhdr1 (stage 1), full AHDRNet, lr 1e-3 cosine, seed 0',
            'curves': curves}


def inference(work, demo_root, threads):
    from util.hdr_io import read_hdr
    from util.metrics import psnr_mu
    ckpt = os.path.join(work, 'shipped')
    os.makedirs(os.path.join(ckpt, 'model'))
    shutil.copy(os.path.join(ROOT, 'pretrained_models', 'ahdrnet_short_stage2', 'SelfHDR_model_1.pth'),
                os.path.join(ckpt, 'model', 'SelfHDR_model_1.pth'))
    summaries, outputs = {}, {}
    for name, amp in (('fp32', 'none'), ('bf16', 'bf16')):
        out_root = os.path.join(work, f'infer_{name}')
        shutil.copytree(ckpt, out_root)
        argv = ['test.py', '--dataroot', demo_root, '--dataset_name', 'sig17align', '--model', 'selfhdr2',
                '--network', 'AHDRNet', '--checkpoints_dir', out_root, '--name', 'model', '--load_iter', '1',
                '--gpu_ids', '-1', '-j', '0', '--verbose', 'False', '--amp', amp, '--save_imgs', 'True']
        run(argv, threads)
        with open(glob.glob(os.path.join(out_root, 'model', '**', 'metrics_*_epoch_1.json'), recursive=True)[0]) as f:
            summaries[name] = json.load(f)
        outputs[name] = {os.path.basename(p): read_hdr(p) for p in
                         glob.glob(os.path.join(out_root, 'model', '**', 'output_1', '*.hdr'), recursive=True)}
    pairs = [psnr_mu(outputs['bf16'][k], outputs['fp32'][k]) for k in sorted(outputs['fp32'])]
    return {'checkpoint': 'pretrained_models/ahdrnet_short_stage2/SelfHDR_model_1.pth', 'data': demo_root,
            'metrics': {name: {k: v for k, v in s.items() if isinstance(v, float)} for name, s in summaries.items()},
            'bf16_vs_fp32_output_psnr_mu': {'mean': float(np.mean(pairs)), 'min': float(np.min(pairs)),
                                            'scenes': len(pairs)}}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--iters', type=int, default=48)
    p.add_argument('--per_epoch', type=int, default=16)
    p.add_argument('--demo_root', default=os.path.join(ROOT, 'datasets', 'demo'))
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--skip', nargs='*', default=[], choices=('training', 'inference'))
    p.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS),
                   help='training configurations (fp32 first: the others are compared with it)')
    p.add_argument('--load_note', default='')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'amp_agreement.json'))
    args = p.parse_args()
    import torch
    result = {'cpu': cpu_info(), 'torch': torch.__version__, 'threads': args.threads, 'load_note': args.load_note,
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    def save():  # after each part, so that a long run keeps what it has measured
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, 'w') as handle:
            json.dump(result, handle, indent=1)

    with tempfile.TemporaryDirectory() as work:
        if 'training' not in args.skip:
            result['training'] = training(work, args.iters, args.per_epoch, args.threads, args.configs)
            print(json.dumps({k: {m: v for m, v in c.items() if m != 'loss'}
                              for k, c in result['training']['curves'].items()}), flush=True)
            save()
        if 'inference' not in args.skip:
            result['inference'] = inference(work, args.demo_root, args.threads)
            print(json.dumps(result['inference']), flush=True)
            save()
    print(args.out)


if __name__ == '__main__':
    main()
