"""Where should stage 2 trust the colour component? Scores the two SelfHDR labels against the training ground truth,
binned by how far apart they are.

Stage 2 keeps its colour loss (towards Y_color) where Y_color and the structure component Y_stru agree within a
threshold (the release: 10/255 in mu-law, channel mean) and leaves the rest to the structure loss. Whether that is
the right split depends on how good the structure network is. On a synthetic study (which has ground truth for its
training split) this script measures, per band of label disagreement: the share of pixels, how often Y_color is the
closer label, and each label's mean mu-law error; and, per threshold, the PSNR-mu of the stage-2 target
(Y_color inside the mask, Y_stru outside).

    python bench/label_agreement.py --work study/short_ahdrnet --epoch 20

Writes ``bench/results/label_agreement_<work name>.json`` (or ``--out``). Needs the study's data and the stage-1
structure labels (``<work>/ckpt/stage1/output_<epoch>``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from tools.study import machine_info, describe_machine  # noqa: E402
from util.exposures import scene_frames_and_times  # noqa: E402
from util.hdr_io import read_hdr, read_ldr  # noqa: E402
from util.tonemap import mu_law  # noqa: E402

BANDS = (0, 10, 20, 30, 40, 60, 1e9)  # label disagreement, in 1/255 of mu-law (channel mean)
THRESHOLDS = (5, 10, 15, 20, 25, 30, 40, 60)


REGIONS = ('all', 'medium_clipped', 'medium_not_clipped')  # medium frame: a channel above 0.95, or none


def measure(data: Path, stru: Path) -> dict:
    n_bands = len(BANDS) - 1
    acc = {r: {k: np.zeros(n_bands) for k in ('pixels', 'closer', 'err_colour', 'err_stru')} for r in REGIONS}
    target_psnr = {t: [] for t in THRESHOLDS}
    scenes = sorted(p for p in (data / 'Training').iterdir() if p.is_dir())
    if not scenes:
        raise SystemExit(f'label_agreement: no scenes in {data / "Training"}')
    for scene in scenes:
        label_path = stru / f'{scene.name}.hdr'
        if not label_path.is_file():
            raise SystemExit(f'label_agreement: no structure label {label_path} (run the study first)')
        t_gt = mu_law(read_hdr(scene / 'HDRImg.hdr'))
        y_col = read_hdr(data / 'Training_align' / scene.name / 'HDRImg.hdr')
        y_stru = read_hdr(label_path)
        t_col, t_stru = mu_law(np.clip(y_col, 0, None)), mu_law(np.clip(y_stru, 0, None))
        apart = np.abs(t_col - t_stru).mean(axis=2) * 255
        e_col, e_stru = np.abs(t_col - t_gt).mean(axis=2), np.abs(t_stru - t_gt).mean(axis=2)
        band = np.digitize(apart, BANDS) - 1
        clipped = read_ldr(scene_frames_and_times(scene, 'sig17')[0][1]).max(axis=2) > 0.95
        for region, where in (('all', np.ones_like(clipped)), ('medium_clipped', clipped),
                              ('medium_not_clipped', ~clipped)):
            a = acc[region]
            for b in range(n_bands):
                sel = (band == b) & where
                a['pixels'][b] += sel.sum()
                a['closer'][b] += (e_col[sel] < e_stru[sel]).sum()
                a['err_colour'][b] += e_col[sel].sum()
                a['err_stru'][b] += e_stru[sel].sum()
        for t in THRESHOLDS:
            mask = (apart < t)[..., None]
            target = np.where(mask, t_col, t_stru)
            target_psnr[t].append(10 * np.log10(1.0 / np.mean((target - t_gt) ** 2)))
    def table(a):
        total, bands = max(a['pixels'].sum(), 1), []
        for b in range(n_bands):
            n = max(a['pixels'][b], 1)
            bands.append({'from': BANDS[b], 'to': BANDS[b + 1] if BANDS[b + 1] < 1e9 else None,
                          'share_of_pixels': a['pixels'][b] / total, 'colour_label_closer': a['closer'][b] / n,
                          'mean_abs_error_colour_255': a['err_colour'][b] / n * 255,
                          'mean_abs_error_structure_255': a['err_stru'][b] / n * 255})
        return bands

    return {'scenes': len(scenes), 'bands': table(acc['all']),
            'bands_by_region': {r: table(acc[r]) for r in REGIONS[1:]},
            'region_share': {r: float(acc[r]['pixels'].sum() / max(acc['all']['pixels'].sum(), 1))
                             for r in REGIONS[1:]},
            'stage2_target_psnr_mu': {str(t): float(np.mean(v)) for t, v in target_psnr.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', required=True, help='the study folder (data/, ckpt/stage1/output_<epoch>)')
    p.add_argument('--epoch', type=int, required=True, help='the stage-1 epoch that made the structure labels')
    p.add_argument('--out', default='', help='JSON file (default bench/results/label_agreement_<work name>.json)')
    args = p.parse_args(argv)
    work = Path(args.work)
    result = measure(work / 'data', work / 'ckpt' / 'stage1' / f'output_{args.epoch}')
    info = machine_info()
    result.update({'work': str(work), 'stage1_epoch': args.epoch, 'machine': describe_machine(info),
                   'date': time.strftime('%Y-%m-%d %H:%M')})
    out = Path(args.out or _ROOT / 'bench' / 'results' / f'label_agreement_{work.name}.json')
    tmp = out.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    for row in result['bands']:
        to = row['to'] if row['to'] is not None else 'inf'
        print(f"{row['from']:>3}-{to:<4} /255: {row['share_of_pixels']:.4f} of pixels, Y_color closer "
              f"{row['colour_label_closer']:.2f}, mean |error| Y_color {row['mean_abs_error_colour_255']:.1f} "
              f"Y_stru {row['mean_abs_error_structure_255']:.1f} (/255)")
    for region, bands in result['bands_by_region'].items():
        print(f"{region} ({result['region_share'][region]:.3f} of pixels): Y_color closer by band: "
              + ', '.join(f"{r['from']}+: {r['colour_label_closer']:.2f} ({r['share_of_pixels']:.3f})" for r in bands))
    print('stage-2 target PSNR-mu by threshold:',
          ', '.join(f'{t}: {v:.2f}' for t, v in result['stage2_target_psnr_mu'].items()))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
