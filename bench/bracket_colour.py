"""Do a model's merges keep the colours of a real bracket? Hue agreement with the medium frame, with crops.

    python bench/bracket_colour.py --inputs short.png medium.png long.png \
        --model shipped=pretrained_models/ahdrnet_short_stage2/SelfHDR_model_1.pth \
        --model old=old/SelfHDR_model_1.pth --model fshdr=FSHDR:pretrained_models/fshdr_long_mf_stage2/SelfHDR_model_1.pth \
        --scale 0.5 --out bench/results/bracket_colour

For each checkpoint (``NAME=CKPT`` runs ``--network``, AHDRNet unless told; ``NAME=NETWORK:CKPT`` names its own),
for the plain merge of the unaligned frames and for the same triangle merge of the frames after our flow alignment
(``util/align.py``; the plain merge, not the medium-first training label), it
merges the bracket with ``tools/merge_brackets.py``'s pipeline (networks trained on aligned frames, such as FSHDR,
get aligned frames, as ``--align auto`` gives them) and measures, over the pixels well exposed in the medium frame (every
channel in (0.05, 0.95)), the mean angle between the output's and the medium frame's linear RGB (degrees; 0 =
same hue and saturation), the same over the strongly coloured ones among them (HSV saturation > 0.35), and the
median red/green ratio of the red ones (R > 1.5 G in the medium frame). Writes ``<out>.json`` and ``<out>.png``
(display-tone-mapped crops of the most colourful well-exposed region, labelled).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from photo.frames import load_bracket  # noqa: E402
from models.backbones import BACKBONES  # noqa: E402
from photo.merge import merge  # noqa: E402
from util.align import align_frames  # noqa: E402
from util.colour import merge_colour_component  # noqa: E402
from util.figures import labelled_grid  # noqa: E402
from util.hdr_io import write_ldr16  # noqa: E402
from util.metrics import colour_error_deg  # noqa: E402
from util.tonemap import display_tonemap  # noqa: E402

GAMMA = 2.2


def colour_figures(out_linear: np.ndarray, mid_ldr: np.ndarray, t_mid: float) -> dict:
    mid_linear = mid_ldr ** GAMMA / t_mid
    well = ((mid_ldr > 0.05) & (mid_ldr < 0.95)).all(axis=2)
    hsv = cv2.cvtColor(mid_ldr.astype(np.float32), cv2.COLOR_BGR2HSV)
    colourful = well & (hsv[..., 1] > 0.35)
    red = well & (mid_linear[..., 2] > 1.5 * mid_linear[..., 1])

    def rg(img):
        return float(np.median(img[..., 2][red] / np.maximum(img[..., 1][red], 1e-8))) if red.any() else None

    return {'colour_error_deg_well_exposed': colour_error_deg(out_linear, mid_linear, well),
            'colour_error_deg_colourful': colour_error_deg(out_linear, mid_linear, colourful),
            'red_green_ratio_red_pixels': rg(out_linear), 'red_green_ratio_medium_frame': rg(mid_linear),
            'pixels_well_exposed': int(well.sum()), 'pixels_colourful': int(colourful.sum()),
            'pixels_red': int(red.sum())}


def colourful_crop(mid_ldr: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, side) of the square whose well-exposed pixels are the most saturated on average."""
    hsv = cv2.cvtColor(mid_ldr.astype(np.float32), cv2.COLOR_BGR2HSV)
    well = ((mid_ldr > 0.05) & (mid_ldr < 0.95)).all(axis=2)
    score = cv2.blur((hsv[..., 1] * well).astype(np.float32), (size, size))
    h, w = score.shape
    half = size // 2
    inner = score[half:h - half, half:w - half]
    y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(y), int(x), size


def parse_model(spec: str, default_network: str) -> tuple[str, str, str]:
    """``NAME=CKPT`` or ``NAME=NETWORK:CKPT`` -> (name, network, checkpoint)."""
    name, sep, rest = spec.partition('=')
    if not sep or not name or not rest:
        raise SystemExit(f'--model {spec!r}: expected NAME=CKPT or NAME=NETWORK:CKPT')
    network, sep, ckpt = rest.partition(':')
    if sep and network in BACKBONES:
        return name, network, ckpt
    return name, default_network, rest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--inputs', nargs=3, required=True, help='three frames of one bracket (any order)')
    p.add_argument('--exposures', nargs=3, default=None, help='exposure times in seconds (default: EXIF)')
    p.add_argument('--model', action='append', default=[], help='NAME=CHECKPOINT (repeatable)')
    p.add_argument('--network', default='AHDRNet')
    p.add_argument('--scale', type=float, default=0.5, help='resize factor before merging (CPU time)')
    p.add_argument('--crop', type=int, default=256, help='side of the crop in the figure, after scaling')
    p.add_argument('--out', default='bench/results/bracket_colour', help='output stem (.json, .png)')
    args = p.parse_args(argv)
    models = [parse_model(spec, args.network) for spec in args.model]

    bracket = load_bracket(args.inputs, args.exposures)
    frames = [cv2.resize(f, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA) if args.scale != 1
              else f for f in bracket.frames]
    mid, t_mid = frames[1], float(bracket.times[1])
    results, images = {}, {}
    images['medium frame'] = display_tonemap(mid ** GAMMA / t_mid)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, f in enumerate(frames):
            paths.append(Path(tmp) / f'{k}.tif')
            write_ldr16(paths[-1], f)
        times = [str(t) for t in bracket.times]
        plain = merge_colour_component(*frames, bracket.times)
        results['unaligned_merge'] = colour_figures(plain, mid, t_mid)
        images['unaligned merge'] = display_tonemap(plain)
        aligned = merge_colour_component(*align_frames(*frames, bracket.times).frames, bracket.times)
        results['aligned_merge'] = colour_figures(aligned, mid, t_mid)
        images['aligned merge'] = display_tonemap(aligned)
        for name, network, ckpt in models:
            start = time.time()
            res = merge(paths, network, ckpt, exposures=times)
            results[name] = colour_figures(res.hdr, mid, t_mid)
            results[name].update(network=network, checkpoint=ckpt, aligned_input=bool(res.aligned),
                                 seconds=time.time() - start)
            images[name] = display_tonemap(res.hdr)
    y, x, side = colourful_crop(mid, args.crop)
    crops = {k: v[y:y + side, x:x + side] for k, v in images.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(crops, out.with_suffix('.png'), columns=len(crops), max_side=side)
    report = {'inputs': [str(p) for p in bracket.paths], 'relative_times': bracket.times.tolist(),
              'scale': args.scale, 'size_hw': list(mid.shape[:2]), 'crop_yx_side': [y, x, side],
              'machine': f'{platform.processor() or platform.machine()}', 'methods': results,
              'date': time.strftime('%Y-%m-%d')}
    out.with_suffix('.json').write_text(json.dumps(report, indent=1))
    for name, r in results.items():
        print(f"{name:<18} colour error {r['colour_error_deg_well_exposed']:.2f} deg (colourful "
              f"{r['colour_error_deg_colourful']:.2f}), R/G {r['red_green_ratio_red_pixels']} "
              f"(medium {r['red_green_ratio_medium_frame']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
