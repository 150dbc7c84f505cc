"""Scores of plain exposure merges on a test split with ground truth: the reference point a trained network
should beat. Writes bench/results/merge_baseline_<tag>.json.

    python bench/merge_baseline.py --dataroot datasets/demo --tag demo

'merge_unaligned' merges the Test frames as they are; 'merge_aligned' merges the Test_align frames (Y_color as
SelfHDR builds its colour label); 'reference_only' is the medium frame linearised. Same metrics as test.py.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from util import metrics  # noqa: E402
from util.colour import ldr_to_hdr, merge_colour_component  # noqa: E402
from util.exposures import list_frames, read_sig17_exposures  # noqa: E402
from util.hdr_io import read_hdr, read_ldr  # noqa: E402

METRICS = {'psnr_mu': metrics.psnr_mu, 'psnr_l': metrics.psnr_l, 'ssim_mu': metrics.ssim_mu, 'ssim_l': metrics.ssim_l}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataroot', required=True)
    parser.add_argument('--split', default='Test')
    parser.add_argument('--tag', default='demo')
    parser.add_argument('--output', default=None)
    args = parser.parse_args()
    split_dir = os.path.join(args.dataroot, args.split)
    align_dir = split_dir + '_align'
    rows = []
    for scene in sorted(os.listdir(split_dir)):
        scene_dir = os.path.join(split_dir, scene)
        if not os.path.isdir(scene_dir):
            continue
        times = read_sig17_exposures(os.path.join(scene_dir, 'exposure.txt'))
        gt = np.clip(read_hdr(os.path.join(scene_dir, 'HDRImg.hdr')), 0, None)
        raw = [read_ldr(p, expect_bits=16) for p in list_frames(scene_dir)]
        candidates = {'reference_only': np.clip(ldr_to_hdr(raw[1], times[1]), 0, 1),
                      'merge_unaligned': merge_colour_component(*raw, times)}
        if os.path.isdir(os.path.join(align_dir, scene)):
            aligned = [read_ldr(p, expect_bits=16) for p in list_frames(os.path.join(align_dir, scene))]
            candidates['merge_aligned'] = merge_colour_component(*aligned, times)
        row = {'scene': scene}
        for method, image in candidates.items():
            image = np.clip(image, 0, 1)  # the networks' outputs are in [0, 1] too
            for name, fn in METRICS.items():
                row[f'{method}/{name}'] = fn(image, gt)
        rows.append(row)
    keys = [k for k in rows[0] if k != 'scene']
    summary = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    report = {'dataroot': args.dataroot, 'split': args.split, 'scenes': len(rows), 'time': time.strftime('%c'),
              'mean': summary, 'per_scene': rows}
    out = args.output or os.path.join(ROOT, 'bench', 'results', f'merge_baseline_{args.tag}.json')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + '.tmp', 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(out + '.tmp', out)
    for key, value in summary.items():
        print(f'{key:>28}: {value:.4f}')


if __name__ == '__main__':
    main()
