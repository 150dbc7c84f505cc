"""Does ``--response auto`` get the colours of a real bracket right? RAW files give the answer: each frame is rendered
twice by LibRaw, once to 8 bits through the camera-like curve of ``bench/render_raw.py`` (what a JPEG bracket
would hold) and once linear (16 bits, same white balance and primaries: the truth). The 8-bit frames are linearised
with the response ``auto`` chooses and with each fixed choice, and compared pixel by pixel with the linear render.

    python bench/real_response.py sample1.dng sample2.dng sample3.dng   # -> bench/results/real_response.json

Colour error: the median angle (degrees) between the linearised 8-bit RGB and the linear RAW RGB over the pixels
whose 8-bit codes are within 20..235 in every channel, per frame, then the median over the frames. No alignment is
needed: both renders of a frame share its pixels. Exposure times come from the RAW metadata.
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

import numpy as np
import rawpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

from photo.raw import read_raw, relative_exposure  # noqa: E402
from photo.response import gamma_table, linearise, srgb_table  # noqa: E402
from photo.response_choice import choose_response  # noqa: E402
from render_raw import render  # noqa: E402
from util.metrics import colour_angles_deg  # noqa: E402

FIXED = {'gamma1.8': gamma_table(1.8), 'gamma2.0': gamma_table(2.0), 'gamma2.2': gamma_table(2.2),
         'gamma2.4': gamma_table(2.4), 'srgb': srgb_table()}
CODES = (20, 235)


def linear_render(path: Path) -> np.ndarray:
    """(H, W, 3) float BGR, linear: the same LibRaw pipeline as render_raw.render without the output curve."""
    with rawpy.imread(str(path)) as raw:
        rgb = raw.postprocess(use_camera_wb=True, no_auto_bright=True, half_size=True, output_bps=16, gamma=(1, 1))
    return rgb[..., ::-1].astype(np.float64) / 65535.0


def colour_error(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(colour_angles_deg(estimate, truth, mask)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('raws', nargs='+', help='the RAW files of one bracket')
    p.add_argument('--output', default=str(ROOT / 'bench' / 'results' / 'real_response.json'))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    start = time.perf_counter()
    paths = [Path(x) for x in args.raws]
    times, source = relative_exposure([read_raw(x) for x in paths])
    if any(t is None for t in times):
        raise SystemExit(f'{", ".join(map(str, paths))}: no exposure time in the RAW metadata')
    order = np.argsort(times)
    paths, times = [paths[k] for k in order], [float(times[k]) for k in order]
    eight = [render(x).astype(np.float32) / 255.0 for x in paths]
    truth = [linear_render(x) for x in paths]
    auto = choose_response('auto', eight, times, [str(x) for x in paths])
    tables = {'auto': auto.table, **FIXED}
    per_frame = []
    for path, x8, lin in zip(paths, eight, truth):
        codes = np.rint(x8 * 255)
        mask = ((codes >= CODES[0]) & (codes <= CODES[1])).all(axis=2) & (lin < 0.999).all(axis=2)
        per_frame.append({'frame': path.name, 'pixels': int(mask.sum()),
                          'colour_error_deg': {name: colour_error(linearise(x8, t), lin, mask)
                                               for name, t in tables.items()}})
    median = {name: float(np.median([f['colour_error_deg'][name] for f in per_frame])) for name in tables}
    best = min(FIXED, key=lambda name: median[name])
    result = {'what': 'colour error of 8-bit renders of a real RAW bracket, linearised with the default response and '
                      'with each fixed one, against the linear render of the same RAW files (bench/real_response.py)',
              'raws': [str(x) for x in paths], 'relative_times': times, 'time_source': source,
              'render': 'LibRaw via rawpy: camera white balance, no auto-brightening, half size; 8-bit with the '
                        'BT.709 output curve vs 16-bit linear',
              'auto_choice': auto.name, 'auto_why': auto.why, 'codes': list(CODES), 'per_frame': per_frame,
              'colour_error_deg_median': median, 'best_fixed': best, 'auto_minus_best_fixed_deg': median['auto'] - median[best],
              'machine': {'processor': platform.processor() or platform.machine(), 'cpus': os.cpu_count()},
              'seconds': time.perf_counter() - start, 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp')
    tmp.write_text(json.dumps(result, indent=1) + '\n')
    os.replace(tmp, out)
    print(f"auto = {auto.name} ({auto.why})")
    print('colour error (deg), median over frames: ' + ', '.join(f'{k} {v:.2f}' for k, v in median.items()))
    print(f"auto - best fixed ({best}): {result['auto_minus_best_fixed_deg']:+.2f}; wrote {out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
