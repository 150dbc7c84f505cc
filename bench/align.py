"""Benchmark of the aligner (``util/align.py``) on synthetic scenes with known ground truth.

Scenes come from ``util.synthetic.synthesize_scene`` (camera shake as a homography per frame and
moving textured objects) fed with a *procedural* HDR source, so nothing has to be downloaded.

For each scene we report PSNR-mu of ``Y_color`` against two references:

* ``ideal``: ``Y_color`` from ideally aligned frames, i.e. the ground-truth radiance rendered at each
  exposure in the reference geometry (clipped, gamma, 16-bit, noise-free). This isolates alignment.
* ``gt``: the ground-truth radiance itself.

for ``Y_color`` built from unaligned frames and from frames aligned with each configuration, plus
seconds per scene (alignment only, after one warm-up). Results go to ``bench/results/align.json``.

    python bench/align.py                      # 3 scenes of 1000x1500
    python bench/align.py --scenes 1 --size 256x384 --presets fast
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.align import AlignConfig, align_frames, make_flow_estimator  # noqa: E402
from util.colour import merge_colour_component  # noqa: E402
from util.metrics import psnr_mu  # noqa: E402
from util.synthetic import HDRSource, SynthConfig, parse_size, synthesize_scene  # noqa: E402

logger = logging.getLogger('bench.align')


def procedural_hdr(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured HDR radiance map (float32 BGR): multi-octave log-noise, edges, bright lights."""
    log2 = np.zeros((h, w), np.float32)
    for octave, amp in ((64, 2.5), (16, 1.0), (4, 0.5), (1, 0.25)):
        n = rng.standard_normal((max(2, h // octave), max(2, w // octave))).astype(np.float32)
        log2 += amp * cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.exp2(log2)[:, :, None] * rng.uniform(0.5, 1.0, size=(1, 1, 3)).astype(np.float32)
    for _ in range(40):  # rectangles with their own brightness and colour: sharp edges
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        y1, x1 = y0 + int(rng.integers(8, h // 4)), x0 + int(rng.integers(8, w // 4))
        img[y0:y1, x0:x1] *= rng.uniform(0.2, 4.0, size=3).astype(np.float32)
    for _ in range(6):  # light sources, far above the rest
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(5, 40))
        cv2.circle(img, (cx, cy), r, tuple(float(v) for v in rng.uniform(50, 200, size=3)), -1)
    return np.ascontiguousarray(img)


def ideal_frames(gt: np.ndarray, times) -> list[np.ndarray]:
    """The ground truth seen by each exposure, noise-free, in the reference geometry."""
    out = []
    for t in times:
        x = np.clip(gt.astype(np.float64) * t, 0, 1) ** (1 / 2.2)
        out.append((np.minimum(np.rint(x * 2 ** 16), 65535) / 2 ** 16).astype(np.float32))
    return out


def run(args) -> dict:
    h, w = parse_size(args.size)
    rng = np.random.default_rng(args.seed)
    sources = [HDRSource(f'procedural{i}', procedural_hdr(rng, int(h * 1.8), int(w * 1.8))) for i in range(2)]
    cfg_s = SynthConfig(size=(h, w))
    configs = {}
    for preset in args.presets:
        for scale in args.scales:
            for cons in args.consistency:
                name = f'dis-{preset}-s{scale:g}' + ('' if cons else '-nofb')
                configs[name] = AlignConfig(flow='dis', dis_preset=preset, flow_scale=scale, consistency=cons)

    scenes = []
    for i in range(args.scenes):
        sc = synthesize_scene(sources, np.random.default_rng([args.seed, 7, i]), cfg_s)
        times = [2.0 ** v for v in sc.exposures]
        y_ideal = merge_colour_component(*ideal_frames(sc.gt, times), times)
        y_unal = merge_colour_component(*sc.ldrs, times)
        rec = {'scene': i, 'stops': sc.exposures,
               'unaligned': {'psnr_mu_vs_ideal': psnr_mu(y_unal, y_ideal), 'psnr_mu_vs_gt': psnr_mu(y_unal, sc.gt)},
               'ideal_vs_gt_psnr_mu': psnr_mu(y_ideal, sc.gt)}
        for name, cfg in configs.items():
            est = make_flow_estimator(cfg)
            if i == 0:
                align_frames(*sc.ldrs, times, cfg, est)  # warm-up (allocation, thread pools)
            t0 = time.perf_counter()
            res = align_frames(*sc.ldrs, times, cfg, est)
            sec = time.perf_counter() - t0
            y = merge_colour_component(*res.frames, times)
            rec[name] = {'psnr_mu_vs_ideal': psnr_mu(y, y_ideal), 'psnr_mu_vs_gt': psnr_mu(y, sc.gt), 'seconds': sec,
                         'fallback_fraction': [float(1 - v.mean()) for v in res.valid]}
            logger.info('scene %d %s: %.2f dB vs ideal, %.2f s', i, name, rec[name]['psnr_mu_vs_ideal'], sec)
        logger.info('scene %d unaligned: %.2f dB vs ideal', i, rec['unaligned']['psnr_mu_vs_ideal'])
        scenes.append(rec)

    summary = {}
    for name in ['unaligned', *configs]:
        summary[name] = {k: float(np.mean([s[name][k] for s in scenes]))
                         for k in scenes[0][name] if k != 'fallback_fraction'}
    import torch
    return {
        'device': {'cpu': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
                   'opencv_threads': cv2.getNumThreads(),
                   # other jobs on the machine inflate the timings; recorded so readers can judge
                   'loadavg_1_5_15_at_end': list(os.getloadavg())},
        'versions': {'python': platform.python_version(), 'numpy': np.__version__, 'opencv': cv2.__version__,
                     'torch': torch.__version__},
        'size_hw': [h, w], 'dtype': 'float32', 'n_scenes': args.scenes, 'seed': args.seed,
        'summary_mean': summary, 'scenes': scenes,
        'default_config': AlignConfig().__dict__,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scenes', type=int, default=3, help='number of synthetic scenes')
    p.add_argument('--size', type=str, default='1000x1500', help='scene size HxW')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--presets', nargs='+', default=['medium', 'fast'], choices=['ultrafast', 'fast', 'medium'],
                   help='DIS presets to compare')
    p.add_argument('--scales', nargs='+', type=float, default=[0.5, 1.0], help='flow scales to compare')
    p.add_argument('--consistency', nargs='+', type=int, default=[1], choices=[0, 1],
                   help='forward-backward check on (1) / off (0)')
    p.add_argument('--out', type=str, default=str(Path(__file__).resolve().parent / 'results' / 'align.json'),
                   help='output JSON path')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f'.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps(result['summary_mean'], indent=2))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
