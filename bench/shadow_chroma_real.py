"""Shadow chroma on a real bracket (no ground truth): the angle between each image's colour and the aligned long
frame's over the pixels that are dark in the medium frame (codes 0.03..0.2), well exposed in the long one (0.1..0.9)
and static between them (their exposure-normalised luminance within 0.3 stop). Images: the network's HDR, the
classical merge, the network's preview with its own clean shadows and with the classical merge's shadow colour (the
default, ``photo.outputs.preview``), and the classical merge's preview. Writes bench/results/shadow_chroma_real.json.

    python bench/shadow_chroma_real.py --inputs short.png medium.png long.png --exposures 1/640 1/160 1/40

The hdrmerge bracket of "Colours on a real bracket" in the README: ``bench/render_raw.py`` makes its PNGs.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from photo.merge import merge  # noqa: E402
from photo.outputs import preview  # noqa: E402
from shadow_chroma import angles  # noqa: E402
from speed_table import write_atomic  # noqa: E402
from tools.study import describe_machine, machine_info  # noqa: E402
from util.tonemap import display_tonemap  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--inputs', nargs=3, required=True, help='short, medium and long frames')
    parser.add_argument('--exposures', nargs=3, default=None, help='exposure times when the frames have no EXIF')
    parser.add_argument('--network', default='FSHDR')
    parser.add_argument('--checkpoint', default=os.path.join(ROOT, 'pretrained_models', 'fshdr_long_mf_stage2',
                                                             'SelfHDR_model_1.pth'))
    parser.add_argument('--amp', default='auto')
    parser.add_argument('--output', default=os.path.join(ROOT, 'bench', 'results', 'shadow_chroma_real.json'))
    args = parser.parse_args()
    start = time.perf_counter()
    res = merge(args.inputs, args.network, args.checkpoint, exposures=args.exposures, amp=args.amp)
    t = res.bracket.times
    medium, long_ = res.inputs[1], res.inputs[2]
    lum_m = (medium.astype(np.float64) ** 2.2 / t[1]).mean(2)
    lum_l = (long_.astype(np.float64) ** 2.2 / t[2]).mean(2)
    static = np.abs(np.log2((lum_l + 1e-6) / (lum_m + 1e-6))) < 0.3
    mask = ((medium.max(2) < 0.2) & (medium.min(2) > 0.03) & (long_.min(2) > 0.1) & (long_.max(2) < 0.9)
            & static)
    if mask.sum() < 50:
        sys.exit(f'{args.inputs[1]}: only {int(mask.sum())} dark, static pixels that the long frame sees well')
    images = {'network_hdr': res.hdr, 'classical_hdr': res.classical,
              'network_preview_clean': preview(res, shadows='network'),
              'network_preview_guided': preview(res),
              'classical_preview_clean': display_tonemap(np.maximum(res.classical, 0))}
    ref = long_.astype(np.float64) ** 2.2
    scores = {}
    for name, img in images.items():
        a = angles(img, ref, mask)
        scores[name] = {'p90': float(np.percentile(a, 90)), 'median': float(np.median(a))}
        print(f"{name:26s} p90 {scores[name]['p90']:6.2f}  median {scores[name]['median']:6.2f}")
    out = {'what': 'shadow chroma angle to the aligned long frame (degrees), dark static pixels of a real bracket '
                   '(bench/shadow_chroma_real.py)',
           'inputs': [os.path.basename(p) for p in args.inputs], 'exposures': args.exposures,
           'checkpoint': os.path.relpath(args.checkpoint, ROOT), 'network': args.network,
           'response': res.response.name, 'aligned': res.aligned, 'pixels': int(mask.sum()),
           'share': float(mask.mean()), 'machine': describe_machine(machine_info()), 'threads': torch.get_num_threads(),
           'torch': torch.__version__, 'wall_seconds': time.perf_counter() - start, 'scores': scores}
    write_atomic(args.output, json.dumps(out, indent=1) + "\n")
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
