"""Shadow chroma noise of the preview: the network's HDR and the classical merge, tone-mapped with the display
operator as MATLAB has it, with clean shadows (``util.tonemap.shadow_chroma``) and, for the network, with the
shadow colour of the classical merge where the two agree (``network_preview_guided``: ``guided_shadow_chroma``,
the default of merge_brackets' preview), against the long frame's colour in the static dark regions. Writes
bench/results/shadow_chroma.json.

    python bench/shadow_chroma.py [--checkpoint pretrained_models/ahdrnet_short_stage2/SelfHDR_model_1.pth]

Brackets: bench/response_estimate.py's ``auto_exposed`` ones (a crop of each CC0 HDRI in datasets/hdri, the medium
frame auto-exposed, -2/0/+2 EV, camera noise, tripod: everything is static), encoded with gamma 2.2 and quantised
to 8 bits, merged with the known response (so only the merge and the preview differ). Dark region: pixels whose
medium-frame code is below 0.2 (about 5 stops under white) and whose long-frame code is within 0.1..0.9 (well
exposed there). The score of an image is the angle (degrees) between its RGB at such a pixel and a reference:
``vs_truth`` the true radiance (synthetic brackets have it), ``vs_long`` the long frame's linear RGB (the measure
of real brackets, which have no truth: the long frame sees the shadow 2 stops brighter, but carries its own noise,
and the classical merge is mostly the long frame there, so this measure favours it); per bracket the 90th
percentile and the median, then the mean over brackets. The previews' colour is compared before
their display clipping (the operator's ``C / L * L_new``), the HDRs as they are.
"""
import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))
os.environ.setdefault('OMP_NUM_THREADS', '1')

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.medium_gate import bracket_noise  # noqa: E402
from photo.merge import _build_inputs, load_network  # noqa: E402
from tools.study import describe_machine, machine_info  # noqa: E402
from photo.response import encode, gamma_table  # noqa: E402
from response_estimate import auto_exposed_brackets  # noqa: E402
from util.colour import merge_colour_component  # noqa: E402
from util.tonemap import display_tonemap, luminance, shadow_chroma  # noqa: E402


def angles(img, ref, mask):
    a, b = img[mask].astype(np.float64), ref[mask].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-20)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def preview_colour(hdr, clean, guide=None):
    """The display preview (gamma 1: ratio * new luminance; the ratio is what clean_shadows and the chroma guide
    change)."""
    return display_tonemap(np.maximum(hdr, 0), clean_shadows=clean, chroma_guide=guide)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', default=os.path.join(ROOT, 'pretrained_models', 'ahdrnet_short_stage2',
                                                             'SelfHDR_model_1.pth'))
    parser.add_argument('--network', default='AHDRNet')
    parser.add_argument('--crops', type=int, default=8)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 192), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--noise_scale', type=float, default=1.0,
                        help='sensor noise x this (1: a camera at base ISO; 8: a high-ISO or small-sensor bracket)')
    parser.add_argument('--radius_fractions', type=float, nargs='*', default=[],
                        help="also score the clean-shadow colour with these window radii (share of the shorter "
                             "side; util.tonemap.SHADOW_RADIUS_FRACTION is the default's)")
    parser.add_argument('--save_dir', default='', help='also save each bracket and the network output (.npz)')
    parser.add_argument('--output', default=os.path.join(ROOT, 'bench', 'results', 'shadow_chroma.json'))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    net = load_network(args.network, args.checkpoint, 'cpu')
    g22 = gamma_table(2.2)
    rows = []
    brackets = auto_exposed_brackets(args.crops, args.size, args.seed, noise_scale=args.noise_scale)
    for i, b in enumerate(brackets):
        frames = [(np.rint(encode(lin, g22) * 255) / 255).astype(np.float32) for lin in b['linear']]
        times = np.asarray(b['times'], np.float64)
        with torch.inference_mode(), bracket_noise(net, frames):  # the frames as shot: a tripod bracket
            out = net(*_build_inputs(frames, times))
        hdr = out[0].permute(1, 2, 0).numpy().astype(np.float32)
        if args.save_dir:
            os.makedirs(args.save_dir, exist_ok=True)
            np.savez(os.path.join(args.save_dir, f'{i}.npz'), hdr=hdr, frames=np.stack(frames), times=times)
        classical = merge_colour_component(*frames, times)
        medium, long_ = frames[1], frames[2]
        mask = (medium.max(axis=2) < 0.2) & (long_.min(axis=2) > 0.1) & (long_.max(axis=2) < 0.9)
        row = {'bracket': i, 'source': b['source'], 'dark_fraction': float(mask.mean())}
        if mask.sum() < 50:
            row['skipped'] = 'fewer than 50 dark, well-exposed-in-long pixels'
            rows.append(row)
            print(f'{i} {b["source"]}: skipped ({int(mask.sum())} dark pixels)')
            continue
        refs = {'vs_truth': b['gt'], 'vs_long': long_.astype(np.float64) ** 2.2}
        images = {'network_hdr': hdr, 'classical_hdr': classical,
                  'network_preview_matlab': preview_colour(hdr, False),
                  'network_preview_clean': preview_colour(hdr, True),
                  'network_preview_guided': preview_colour(hdr, True, np.maximum(classical, 0)),
                  'classical_preview_matlab': preview_colour(classical, False),
                  'classical_preview_clean': preview_colour(classical, True)}
        for frac in args.radius_fractions:  # the preview's colour is its ratio times a luminance: the ratio decides
            r = max(2, round(frac * min(args.size)))
            for name, img in (('network', hdr), ('classical', classical)):
                img = np.maximum(img, 0)
                images[f'{name}_preview_clean_r{frac:g}'] = shadow_chroma(img, luminance(img), radius=r)
        for ref_name, ref in refs.items():
            for name, img in images.items():
                a = angles(img, ref, mask)
                row[f'{ref_name}/{name}'] = {'p90': float(np.percentile(a, 90)), 'median': float(np.median(a))}
        rows.append(row)
        print(f"{i} {b['source']:10s} dark {mask.mean():.1%}  p90 vs truth: " + '  '.join(
            f"{k} {row['vs_truth/' + k]['p90']:.2f}" for k in images), flush=True)
    scored = [r for r in rows if 'skipped' not in r]
    names = [k for k in scored[0] if isinstance(scored[0][k], dict)] if scored else []
    summary = {k: {'p90_mean': float(np.mean([r[k]['p90'] for r in scored])),
                   'median_mean': float(np.mean([r[k]['median'] for r in scored]))} for k in names}
    out = {'what': 'shadow chroma angle to the long frame (degrees), static dark regions, synthetic 8-bit tripod '
                   'brackets (bench/shadow_chroma.py)',
           'checkpoint': os.path.relpath(args.checkpoint, ROOT), 'network': args.network, 'size_hw': list(args.size),
           'crops': args.crops, 'seed': args.seed, 'noise_scale': args.noise_scale, 'n_scored': len(scored),
           'machine': {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
                       'cpus': os.cpu_count(), 'described': describe_machine(machine_info())},
           'torch': torch.__version__, 'wall_seconds': time.perf_counter() - start, 'summary': summary, 'rows': rows}
    tmp = args.output + '.tmp'
    with open(tmp, 'w') as fh:
        json.dump(out, fh, indent=1)
    os.replace(tmp, args.output)
    print(f'wrote {args.output} ({out["wall_seconds"]:.0f} s)')
    for k, v in summary.items():
        print(f"{k:36s} p90 {v['p90_mean']:6.2f}  median {v['median_mean']:6.2f}")


if __name__ == '__main__':
    main()
