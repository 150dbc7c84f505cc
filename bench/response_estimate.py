"""How well does ``--response estimate`` recover a camera curve that is not gamma 2.2, and what does it buy the
classical merge? Writes bench/results/response_estimate.json (a few seconds on one core).

    python bench/response_estimate.py [--scenes 3] [--size 128 192]

Brackets come from util/synthetic.py's scene generator (CC0 HDRIs in datasets/hdri, camera shake, moving
objects, shot and read noise; exposures 1, 4, 16 or 1, 8, 64). Its frames are gamma 2.2 before 16-bit
quantisation, so the noisy linear signal is ``X ** 2.2``; each bracket is re-encoded with a known curve
and quantised to 8 bits, as a JPEG camera would:

* ``srgb``: the IEC 61966-2-1 transfer function;
* ``filmic``: Hable's filmic S-curve (toe and shoulder, white point 11.2) followed by the 1/2.2 display gamma;
* ``gamma2.2``: the control, where assuming 2.2 is right.

For each bracket and each way of getting the response (``ratio``: our fit, the default of ``estimate``;
OpenCV's ``debevec`` and ``robertson``; ``gamma2.2`` assumed; ``true``: the curve itself) it reports

* the curve's error over codes 8..250 of all channels: RMS of ``log f_est - log f_true``
  as used (normalised at code 255, the saturation point) and scale-free (per-channel mean log offset removed:
  the exposure ratios fix the shape, not where code 255 sits when the top codes are clipped);
* the classical merge (Kalantari's triangle weights on the unaligned frames, ``H = f(X) / t``, re-encoded as
  ``X' = f(X) ** (1/2.2)`` for the weights, as ``tools/merge_brackets.py`` feeds the networks) scored against the
  ground truth with PSNR-mu and PSNR-l.
"""
import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from util import metrics  # noqa: E402
from photo.response import (ESTIMATE_METHODS, Response, ResponseError, encode, estimate_response, gamma_table,  # noqa: E402
                                  normalise_table, srgb_table)
from util.colour import merge_colour_component  # noqa: E402
from util.synthetic import SynthConfig, list_hdr_files, load_sources, scene_rng, synthesize_scene  # noqa: E402

CODES = np.arange(8, 251)


def hable_filmic_table(white: float = 11.2) -> np.ndarray:
    """Inverse (code -> radiance) of Hable's filmic curve + 1/2.2 display gamma, radiance 1 at the white point."""
    a, b, c, d, e, f = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30

    def curve(x):
        return (x * (a * x + c * b) + d * e) / (x * (a * x + b) + d * f) - e / f

    x = np.linspace(0.0, 1.0, 400001)
    y = (curve(x * white) / curve(white)) ** (1 / 2.2)
    lin = np.interp(np.arange(256) / 255.0, y, x)
    return normalise_table(np.repeat(lin[:, None], 3, axis=1))


CURVES = {'srgb': srgb_table, 'filmic': hable_filmic_table, 'gamma2.2': lambda: gamma_table(2.2)}


def curve_errors(est: np.ndarray, true: np.ndarray) -> dict:
    d = np.log(np.maximum(est[CODES], 1e-12)) - np.log(true[CODES])
    return {'rms_log_error': float(np.sqrt(np.mean(d ** 2))),
            'rms_log_error_scale_free': float(np.sqrt(np.mean((d - d.mean(axis=0)) ** 2)))}


def classical_merge(frames8, times, table) -> np.ndarray:
    resp = Response('bench', table)
    x = [resp.to_training_ldr(f) for f in frames8]
    return merge_colour_component(x[0], x[1], x[2], times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scenes', type=int, default=4)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 192), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', default=os.path.join(ROOT, 'bench', 'results', 'response_estimate.json'))
    args = parser.parse_args()

    sources = load_sources(list_hdr_files(os.path.join(ROOT, 'datasets', 'hdri')))
    cfg = SynthConfig(size=tuple(args.size))
    start = time.perf_counter()
    rows = []
    for i in range(args.scenes):
        scene = synthesize_scene(sources, scene_rng(args.seed, 'Test', i), cfg)
        times = [2.0 ** v for v in scene.exposures]
        linear = [np.asarray(x, np.float64) ** 2.2 for x in scene.ldrs]  # noisy, clipped, unquantised-ish signal
        for curve_name, make in CURVES.items():
            true = make()
            frames8 = [(np.rint(encode(lin, true) * 255) / 255).astype(np.float32) for lin in linear]
            ways = {m: None for m in ESTIMATE_METHODS}
            ways['gamma2.2'] = gamma_table(2.2)
            ways['true'] = true
            for way in ways:
                t0 = time.perf_counter()
                try:
                    table = ways[way] if ways[way] is not None else estimate_response(frames8, times, method=way)
                except ResponseError as exc:
                    rows.append({'scene': i, 'curve': curve_name, 'response': way, 'failed': str(exc)})
                    print(f'scene {i} {curve_name:9s} {way:10s} failed: {exc}')
                    continue
                seconds = time.perf_counter() - t0
                merged = classical_merge(frames8, times, table)
                row = {'scene': i, 'background': scene.meta['background'], 'stop': scene.meta['stop'],
                       'curve': curve_name, 'response': way, 'seconds': seconds,
                       'psnr_mu': metrics.psnr_mu(np.clip(merged, 0, 1), scene.gt),
                       'psnr_l': metrics.psnr_l(np.clip(merged, 0, 1), scene.gt), **curve_errors(table, true)}
                rows.append(row)
                print(f"scene {i} {curve_name:9s} {way:10s} curve rms log {row['rms_log_error']:.4f} "
                      f"(scale-free {row['rms_log_error_scale_free']:.4f})  merge PSNR-mu {row['psnr_mu']:.2f} "
                      f"PSNR-l {row['psnr_l']:.2f}")
    summary = {}
    for curve_name in CURVES:
        for way in [*ESTIMATE_METHODS, 'gamma2.2', 'true']:
            sel = [r for r in rows if r['curve'] == curve_name and r['response'] == way and 'failed' not in r]
            n_failed = sum(1 for r in rows if r['curve'] == curve_name and r['response'] == way and 'failed' in r)
            summary[f'{curve_name}/{way}'] = {
                'n_scored': len(sel), 'n_failed': n_failed,
                **{k: float(np.mean([r[k] for r in sel])) if sel else None for k in
                   ('rms_log_error', 'rms_log_error_scale_free', 'psnr_mu', 'psnr_l', 'seconds')}}
    out = {'what': 'camera response recovery on synthetic 8-bit brackets (bench/response_estimate.py)',
           'size_hw': list(args.size), 'scenes': args.scenes, 'seed': args.seed, 'codes_scored': [8, 250],
           'numpy': np.__version__, 'machine': platform.machine(), 'python': platform.python_version(),
           'wall_seconds': time.perf_counter() - start, 'summary_mean_over_scenes': summary, 'rows': rows}
    tmp = args.output + '.tmp'
    with open(tmp, 'w') as fh:
        json.dump(out, fh, indent=1)
    os.replace(tmp, args.output)
    print(f'wrote {args.output} ({out["wall_seconds"]:.1f} s)')
    for key, v in summary.items():
        if v['n_scored']:
            print(f"{key:22s} curve {v['rms_log_error']:.4f} / {v['rms_log_error_scale_free']:.4f}  "
                  f"PSNR-mu {v['psnr_mu']:.2f}  PSNR-l {v['psnr_l']:.2f}  ({v['n_failed']} failed)")
        else:
            print(f'{key:22s} all {v["n_failed"]} failed')


if __name__ == '__main__':
    main()
