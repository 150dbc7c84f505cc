"""How well does the bracket's own camera curve come out, and does the default (``--response auto``) get colours
right? Writes bench/results/response_estimate.json (seconds to a minute on one core).

    python bench/response_estimate.py [--crops 8] [--scenes 6] [--size 128 192]

Two kinds of synthetic 8-bit brackets, from the CC0 HDRIs in datasets/hdri:

* ``auto_exposed``: a random crop per HDRI, exposed like a camera's auto-exposure (the medium frame's median
  linear luminance at 10-20 %), frames at -2/0/+2 EV, shot and read noise of a camera sensor (read noise
  1e-4..5e-4, shot-noise gain 1e-5..1e-4 of full scale), no motion: a tripod bracket with exposure overlap;
* ``training_style``: util/synthetic.py's generator (the training data's: the brightest 0.5 % at the short
  frame's top, so the medium and long frames clip on 30-95 % of the pixels; camera shake, moving objects,
  stronger noise; 2- or 3-stop steps): brackets that often lack the overlap to estimate a curve.

Each bracket's noisy linear frames are encoded with a known camera curve and quantised to 8 bits: ``srgb``,
``gamma1.8`` ... ``gamma2.4``, two filmic S-curves (``filmic_hable``: Hable's, white point 11.2, then the 1/2.2
display gamma; ``filmic_aces``: Narkowicz's ACES fit, white 4) and ``jpeg_shoulder`` (sRGB with a soft shoulder
above code 204, as JPEG engines roll off highlights).

Reported per curve and bracket kind:

* **curve error** of the estimate (``photo.response.estimate_response``, shared curve; ``separate``: one per
  channel) over codes 20..235, RMS of ``log2 f_est - log2 f_true`` in stops: ``as_used`` (both normalised at
  code 255, the clipping point) and ``shape`` (one offset common to the three channels removed: a common scale
  is an exposure change of the whole HDR, a relative quantity; a per-channel one would be a tint and is kept);
* **colour error** of the classical merge (Kalantari's triangle weights, frames linearised with the response
  and re-encoded with the training gamma, as photo/merge.py feeds the networks) against the true radiance:
  the median over pixels (all but the darkest 5 % of the ground truth) of the angle between the RGB vectors,
  in degrees, then the median over brackets, for the default (``auto``) and each fixed choice (``gamma1.8`` ..
  ``gamma2.4``, ``srgb``), ``estimate`` and the true curve; ``auto_minus_best_fixed`` is the default's distance
  to the best fixed choice for that curve (done when <= 0.5 degrees);
* how often ``auto`` kept the estimate and how often it fell back (to a fitted power law or sRGB);
* ``rules``: the default's gap to the best fixed choice redone for a grid of its rule's limits (chosen on seed 1).
"""
import argparse
import json
import logging
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# One BLAS thread: the curve fit's 256 x 256 solves are tiny, and threads spinning beside a busy core make each
# one take seconds instead of milliseconds.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from photo.response import Response, encode, estimate_response, gamma_table, normalise_table, srgb_table  # noqa: E402
from photo.response import bracket_pairs, curve_residual, fit_power_law  # noqa: E402
from photo.response_choice import (GAMMA_RANGE, MAX_CHANNEL_SPREAD, MAX_RESIDUAL_STOPS, PARAMETRIC_GAIN,  # noqa: E402
                                   choose_response, unreliable_reasons)
from util import metrics  # noqa: E402
from util.colour import merge_colour_component  # noqa: E402
from util.synthetic import SynthConfig, list_hdr_files, load_sources, scene_rng, synthesize_scene  # noqa: E402

CODES = np.arange(20, 236)
FIXED = ('gamma1.8', 'gamma2.0', 'gamma2.2', 'gamma2.4', 'srgb')


def table_from_forward(forward) -> np.ndarray:
    """Code -> radiance table of a camera curve given as radiance (0..1) -> display value, normalised at 1."""
    x = np.linspace(0.0, 1.0, 400001)
    y = forward(x)
    lin = np.interp(np.arange(256) / 255.0, y / y[-1], x)
    return normalise_table(np.repeat(lin[:, None], 3, axis=1))


def hable(x, white=11.2):
    a, b, c, d, e, f = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30

    def curve(v):
        return (v * (a * v + c * b) + d * e) / (v * (a * v + b) + d * f) - e / f

    return (curve(x * white) / curve(white)) ** (1 / 2.2)


def aces(x, white=4.0):
    def curve(v):
        return (v * (2.51 * v + 0.03)) / (v * (2.43 * v + 0.59) + 0.14)

    return (curve(x * white) / curve(white)) ** (1 / 2.2)


def jpeg_shoulder(x, knee=0.8):
    s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.where(s < knee, s, knee + (1 - knee) * np.tanh((s - knee) / (1 - knee)) / np.tanh(1.0))


CURVES = {'srgb': srgb_table, 'gamma1.8': lambda: gamma_table(1.8), 'gamma2.0': lambda: gamma_table(2.0),
          'gamma2.2': lambda: gamma_table(2.2), 'gamma2.4': lambda: gamma_table(2.4),
          'filmic_hable': lambda: table_from_forward(hable), 'filmic_aces': lambda: table_from_forward(aces),
          'jpeg_shoulder': lambda: table_from_forward(jpeg_shoulder)}


def auto_exposed_brackets(n, size, seed, noise_scale=1.0):
    """(true radiance, times, noisy linear frames) per crop: auto-exposed medium frame, -2/0/+2 EV, no motion."""
    sources = load_sources(list_hdr_files(os.path.join(ROOT, 'datasets', 'hdri')))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = np.asarray(sources[i % len(sources)].radiance, np.float32)
        H, W = img.shape[:2]
        s = rng.uniform(0.5, 0.9)
        h, w = int(H * s), int(W * s * 0.9)
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        crop = cv2.resize(img[y0:y0 + h, x0:x0 + w], size[::-1], interpolation=cv2.INTER_AREA).astype(np.float64)
        crop = np.maximum(crop, 1e-7)
        crop *= rng.uniform(0.1, 0.2) / np.median(crop.mean(axis=2))
        times = [1.0, 4.0, 16.0]
        crop /= 4.0  # short-exposure scale: the medium frame (t = 4) is the auto-exposed one
        shot, read = 10 ** rng.uniform(-5, -4) * noise_scale ** 2, 10 ** rng.uniform(-4, -3.3) * noise_scale
        frames = []
        for t in times:
            e = crop * t
            e = e + np.sqrt(shot * e + read ** 2) * rng.standard_normal(e.shape)
            frames.append(np.clip(e, 0, 1))
        out.append({'gt': crop, 'times': times, 'linear': frames, 'source': sources[i % len(sources)].name})
    return out


def training_style_brackets(n, size, seed):
    sources = load_sources(list_hdr_files(os.path.join(ROOT, 'datasets', 'hdri')))
    out = []
    for i in range(n):
        scene = synthesize_scene(sources, scene_rng(seed, 'Test', i), SynthConfig(size=tuple(size)))
        out.append({'gt': np.asarray(scene.gt, np.float64), 'times': [2.0 ** v for v in scene.exposures],
                    'linear': [np.asarray(x, np.float64) ** 2.2 for x in scene.ldrs],
                    'source': scene.meta['background']})
    return out


def curve_errors(est, true) -> dict:
    d = np.log2(np.maximum(est[CODES], 1e-12)) - np.log2(true[CODES])
    return {'as_used': float(np.sqrt(np.mean(d ** 2))), 'shape': float(np.sqrt(np.mean((d - d.mean()) ** 2)))}


def colour_error(merged, gt) -> float:
    """Median angle (degrees) between merged and true RGB over all but the darkest 5 % of the ground truth."""
    lum = gt.mean(axis=2)
    ok = lum > np.percentile(lum, 5)
    a, b = merged[ok].astype(np.float64), gt[ok]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-20)
    return float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))))


def classical(frames8, times, table):
    resp = Response('bench', table)
    x = [resp.to_training_ldr(f) for f in frames8]
    return merge_colour_component(x[0], x[1], x[2], np.asarray(times, np.float64))


# The default's rule, tried on validation brackets: the fallback's PARAMETRIC_GAIN and the reliability check's
# limits on the fit residual and the channel spread.
RULE_GAINS = (0.7, 0.8, 0.9, 1.0)
RULE_RESIDUALS = (0.15, 0.2, 0.25)
RULE_SPREADS = (0.03, 0.04, 0.06, 0.08)


def rule_choice(row, gain, max_residual, max_channel_spread) -> str:
    """What ``--response auto`` picks for a bracket under the given rule: 'estimate' when its estimate passes the
    reliability check (photo.response_choice.unreliable_reasons with these limits), otherwise the fitted power law
    when its residual is under ``gain`` times sRGB's (photo.response_choice.parametric_fallback), else 'srgb'."""
    info = row.get('estimate_info')
    if info is not None and not unreliable_reasons(info, max_residual, max_channel_spread):
        return 'estimate'
    law = row.get('power_law')
    return 'power_law' if law and law['residual_stops'] < gain * law['srgb_residual_stops'] else 'srgb'


def rule_gaps(rows) -> dict:
    """For each rule of the grid: the default's median colour error minus the best fixed choice's, per bracket kind
    and curve, with the default's choice redone from the rows (the same functions, on the same data)."""
    out = {}
    for gain in RULE_GAINS:
        for max_residual in RULE_RESIDUALS:
            for spread in RULE_SPREADS:
                gaps = {}
                for key in sorted({(r['kind'], r['curve']) for r in rows}):
                    sel = [r for r in rows if (r['kind'], r['curve']) == key]
                    auto = float(np.median([r['colour_error_deg'][rule_choice(r, gain, max_residual, spread)]
                                            for r in sel]))
                    best = min(float(np.median([r['colour_error_deg'][w] for r in sel])) for w in FIXED)
                    gaps['/'.join(key)] = auto - best
                out[f'gain {gain:g}, residual {max_residual:g}, spread {spread:g}'] = {
                    'worst_gap_deg': max(gaps.values()), 'mean_gap_deg': float(np.mean(list(gaps.values()))),
                    'gaps_deg': gaps}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--crops', type=int, default=8, help='auto-exposed brackets (one crop per HDRI, cycled)')
    parser.add_argument('--scenes', type=int, default=6, help='training-style brackets')
    parser.add_argument('--size', type=int, nargs=2, default=(128, 192), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--output', default=os.path.join(ROOT, 'bench', 'results', 'response_estimate.json'))
    parser.add_argument('--note', default='', help='how the machine was loaded (recorded)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the fallback warnings are counted, not printed

    start = time.perf_counter()
    kinds = {'auto_exposed': auto_exposed_brackets(args.crops, args.size, args.seed),
             'training_style': training_style_brackets(args.scenes, args.size, args.seed)}
    fixed_tables = {name: CURVES[name]() for name in FIXED}
    rows = []
    for kind, brackets in kinds.items():
        for i, b in enumerate(brackets):
            for curve_name, make in CURVES.items():
                true = make()
                frames8 = [(np.rint(encode(lin, true) * 255) / 255).astype(np.float32) for lin in b['linear']]
                row = {'kind': kind, 'bracket': i, 'source': b['source'], 'curve': curve_name}
                try:
                    info = {}
                    est = estimate_response(frames8, b['times'], info=info)
                    row['estimate_info'] = {k: v for k, v in info.items() if k != 'overlap'}
                    row['curve_error'] = curve_errors(est, true)
                except ValueError as exc:
                    est, row['estimate_failed'] = None, str(exc)
                    row.pop('estimate_info', None)  # no estimate: the rules must fall back, as auto did
                if est is not None:
                    try:
                        row['curve_error_separate'] = curve_errors(estimate_response(frames8, b['times'],
                                                                                     channels='separate'), true)
                    except ValueError as exc:
                        row['estimate_separate_failed'] = str(exc)
                auto = choose_response('auto', frames8, b['times'], ['short', 'medium', 'long'])
                row['auto_choice'] = auto.name
                row['auto_why'] = auto.why
                tables = {'auto': auto.table, **fixed_tables, 'true': true}
                # The fallback's two candidates, so that its rule (PARAMETRIC_GAIN) can be judged from the rows
                pairs = bracket_pairs(frames8, b['times'])
                gamma = fit_power_law(pairs, *GAMMA_RANGE)
                if gamma is not None:
                    gamma = round(gamma, 2)
                    tables['power_law'] = gamma_table(gamma)
                    row['power_law'] = {'gamma': gamma, 'residual_stops': curve_residual(pairs, gamma_table(gamma)),
                                        'srgb_residual_stops': curve_residual(pairs, srgb_table())}
                if est is not None:
                    tables['estimate'] = est
                row['colour_error_deg'] = {}
                for way, table in tables.items():
                    merged = classical(frames8, b['times'], table)
                    row['colour_error_deg'][way] = colour_error(merged, b['gt'])
                    if way in ('auto', 'true'):
                        row[f'psnr_mu_{way}'] = metrics.psnr_mu(np.clip(merged, 0, 1).astype(np.float32),
                                                                (b['gt'] / max(b['gt'].max(), 1.0)).astype(np.float32))
                rows.append(row)
                ce = row.get('curve_error', {})
                print(f"{kind:14s} {i} {curve_name:13s} shape {ce.get('shape', float('nan')):.3f} as-used "
                      f"{ce.get('as_used', float('nan')):.3f}  auto={auto.name:8s} colour auto "
                      f"{row['colour_error_deg']['auto']:.2f} best fixed "
                      f"{min(row['colour_error_deg'][w] for w in FIXED):.2f}", flush=True)

    summary = {}
    for kind in kinds:
        for curve_name in CURVES:
            sel = [r for r in rows if r['kind'] == kind and r['curve'] == curve_name]
            est_ok = [r for r in sel if 'curve_error' in r]
            colour = {way: float(np.median([r['colour_error_deg'][way] for r in sel if way in r['colour_error_deg']]))
                      for way in ('auto', *FIXED, 'estimate', 'true') if any(way in r['colour_error_deg'] for r in sel)}
            best = min(FIXED, key=lambda w: colour[w])
            summary[f'{kind}/{curve_name}'] = {
                'n': len(sel), 'estimate_failed': len(sel) - len(est_ok),
                'curve_shape_stops_mean': float(np.mean([r['curve_error']['shape'] for r in est_ok])) if est_ok else None,
                'curve_shape_stops_max': float(np.max([r['curve_error']['shape'] for r in est_ok])) if est_ok else None,
                'curve_as_used_stops_mean': float(np.mean([r['curve_error']['as_used'] for r in est_ok])) if est_ok else None,
                'curve_shape_separate_stops_mean': (float(np.mean([r['curve_error_separate']['shape'] for r in est_ok
                                                                   if 'curve_error_separate' in r]))
                                                    if any('curve_error_separate' in r for r in est_ok) else None),
                'auto_kept_estimate': sum(r['auto_choice'] == 'estimate' for r in sel),
                'auto_fell_back': sum(r['auto_choice'] != 'estimate' for r in sel),
                'colour_error_deg_median': colour, 'best_fixed': best,
                'auto_minus_best_fixed_deg': colour['auto'] - colour[best]}
    out = {'what': 'camera-curve estimate and default-response colour error on synthetic 8-bit brackets '
                   '(bench/response_estimate.py)',
           'size_hw': list(args.size), 'crops': args.crops, 'scenes': args.scenes, 'seed': args.seed,
           'codes_scored': [int(CODES[0]), int(CODES[-1])], 'units': 'curve errors in stops (log2), colour in degrees',
           'machine': {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
                       'cpus': os.cpu_count(), 'note': args.note},
           'rule': {'parametric_gain': PARAMETRIC_GAIN, 'max_residual_stops': MAX_RESIDUAL_STOPS,
                    'max_channel_spread_stops': MAX_CHANNEL_SPREAD}, 'numpy': np.__version__, 'python': platform.python_version(),
           'wall_seconds': time.perf_counter() - start, 'summary': summary,
           'rules': rule_gaps(rows), 'rows': rows}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    tmp = args.output + '.tmp'
    with open(tmp, 'w') as fh:
        json.dump(out, fh, indent=1)
    os.replace(tmp, args.output)
    print(f'wrote {args.output} ({out["wall_seconds"]:.0f} s)')
    print(f'{"kind/curve":30s} {"shape":>6s} {"max":>6s} {"as-used":>7s} {"sep.":>6s}  kept/fell  '
          f'{"auto":>5s} {"best fixed":>16s} {"gap":>5s}')
    for key, v in summary.items():
        c = v['colour_error_deg_median']
        f = (lambda x: f'{x:6.3f}' if x is not None else '   n/a')  # noqa: E731
        print(f"{key:30s} {f(v['curve_shape_stops_mean'])} {f(v['curve_shape_stops_max'])} "
              f"{f(v['curve_as_used_stops_mean']):>7s} {f(v['curve_shape_separate_stops_mean'])}  "
              f"{v['auto_kept_estimate']:4d}/{v['auto_fell_back']:<4d}  {c['auto']:5.2f} "
              f"{v['best_fixed']:>9s} {c[v['best_fixed']]:5.2f} {v['auto_minus_best_fixed_deg']:+5.2f}")
    ranked = sorted(out['rules'].items(), key=lambda kv: (round(kv[1]['worst_gap_deg'], 3), kv[1]['mean_gap_deg']))
    print('rules of --response auto by worst gap to the best fixed choice (degrees), best first:')
    for name, v in ranked[:6]:
        print(f'  {name}: worst {v["worst_gap_deg"]:+.3f}, mean {v["mean_gap_deg"]:+.3f}')
    current = f'gain {PARAMETRIC_GAIN:g}, residual {MAX_RESIDUAL_STOPS:g}, spread {MAX_CHANNEL_SPREAD:g}'
    if current in out['rules']:
        print(f'  current ({current}): worst {out["rules"][current]["worst_gap_deg"]:+.3f}')


if __name__ == '__main__':
    main()
