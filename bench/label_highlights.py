"""The colour component (Y_color) against the plain flow-aligned merge, per study split and per region.

For every split of ``data/study_splits.py`` (scenes rendered from the hold-out HDRIs with the split's settings,
the same generator streams as the study's) and for the validation split (training HDRIs), it merges each bracket
several ways and scores them against the ground truth:

* ``unaligned_merge``: the triangle merge of the frames as shot;
* ``flow_merge``: after a plain DIS-flow alignment (no validity check, no fallback);
* ``label_release_fallback``: our alignment with the fallback everywhere a warp is rejected (``clip_aware=False,
  photometric=False``,
  the behaviour before round 3);
* ``colour_component``: our alignment and label as shipped (the fallback does not replace a warp that agrees with
  a clipped medium frame; the label medium-first, then denoised);
* ``colour_component_not_denoised``: the same label before denoising (before round 3's fifth session);
* ``colour_component_merge``: the same alignment, the label before round 3's fourth session (``label_medium_first``
  off: the triangle merge of the aligned frames as they are); medium-first means: where the medium frame is not
  clipped, an aligned frame enters only where it agrees with it within the frames' noise, and ``--label_floor``
  adds one medium-first variant per floor of that tolerance (not denoised);
* ``colour_component_robust_tolerance``: medium-first with the tolerance from the texture-robust noise estimate
  per band (``AlignConfig.label_noise='robust'``), where the others use Immerkaer's (not denoised);
  ``colour_component_weak_texture_tolerance`` the same from weak-texture patches (``label_noise='weak_texture'``),
  and ``..._denoised`` that label denoised as shipped;
* ``colour_component_weak_texture``: the label with both the tolerance and the denoiser's noise from weak-texture
  patches (``label_noise`` and ``label_denoise_method`` 'weak_texture');
* ``medium_frame``: the medium frame alone, for reference;
* ``--denoise``: ``colour_component_denoised_immerkaer``, the label denoised with one NL-means strength from
  Immerkaer's whole-label estimate (the method ``tools/adapt.py`` used before), and
  ``colour_component_denoised_weak_texture``, the shipped denoising with the weak-texture noise per band; with ``--robust_h`` and
  ``--robust_percentile``, the shipped denoising with other strengths or percentiles; all applied, as
  ``colour_label`` applies it, to ``colour_component_not_denoised``.

PSNR-mu and PSNR-l are means over scenes; per region (clipped / well exposed / dark in the medium frame, moving =
where alignment changes the merge by 10/255 in mu-law), PSNR-mu is pooled over the split's pixels. Also the share
of clipped pixels where the merge is off by more than 0.1 (linear, ground truth in [0, 1]).

    python bench/label_highlights.py                  # 12 scenes per split, 256x384, about 2 minutes
    python bench/label_highlights.py --validation_only --label_floor 0.005 0.02 0.04 --out /tmp/v.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from data.demo import DEFAULT_HDRI_DIR, TEST_HDRIS  # noqa: E402
from data.study_splits import TEST_SPLITS, split_config  # noqa: E402
from tools.study import MOTION_THRESHOLD, describe_machine, exposure_regions, machine_info  # noqa: E402
from util import metrics  # noqa: E402
from util.align import AlignConfig, align_frames, colour_label  # noqa: E402
from util.colour import ldr_to_hdr, merge_colour_component  # noqa: E402
from util.label_denoise import denoise_colour_label  # noqa: E402
from util.synthetic import list_hdr_files, load_sources, synthesize_scene  # noqa: E402
from util.tonemap import mu_law  # noqa: E402

MERGES = {'flow_merge': AlignConfig(consistency=False, fallback=False, label_medium_first=False, label_denoise=False),
          'label_release_fallback': AlignConfig(clip_aware=False, photometric=False, label_medium_first=False,
                                                label_denoise=False),
          'colour_component_merge': AlignConfig(label_medium_first=False, label_denoise=False),
          'colour_component_robust_tolerance': AlignConfig(label_noise='robust', label_denoise=False),
          'colour_component_weak_texture_tolerance': AlignConfig(label_noise='weak_texture', label_denoise=False),
          'colour_component_not_denoised': AlignConfig(label_denoise=False),
          'colour_component': AlignConfig(),
          'colour_component_weak_texture_tolerance_denoised': AlignConfig(label_noise='weak_texture'),
          'colour_component_weak_texture': AlignConfig(label_noise='weak_texture',
                                                       label_denoise_method='weak_texture')}
REGIONS = ('clipped', 'well_exposed', 'dark', 'motion')
DENOISED = {'colour_component_denoised_immerkaer': {'method': 'immerkaer'},
            'colour_component_denoised_weak_texture': {'method': 'weak_texture'}}


def quantise16(x: np.ndarray) -> np.ndarray:
    """What the aligned frames read back as after data/align_split.py writes them."""
    return (np.clip(np.rint(x.astype(np.float64) * 65536), 0, 65535) / 65536).astype(np.float32)


# AlignConfig fields that only shape the label
LABEL_FIELDS = ('label_medium_first', 'label_floor', 'label_grow', 'label_noise', 'label_denoise')


def alignment_key(cfg: AlignConfig) -> tuple:
    """What decides the aligned frames: configs that differ only in the label's rule share one alignment."""
    return tuple((k, v) for k, v in sorted(dataclasses.asdict(cfg).items()) if k not in LABEL_FIELDS)


def score_split(scenes, merges: dict, denoised: dict | None = None) -> tuple[dict, dict]:
    """The split's scores per method, and each method's PSNR-mu per scene (in the order of ``scenes``);
    ``denoised`` names denoised variants of the label: name -> keyword arguments of denoise_colour_label."""
    denoised = denoised or {}
    names = ('unaligned_merge', 'medium_frame') + tuple(merges) + tuple(denoised)
    rows = {n: {'psnr_mu': [], 'psnr_l': [], 'off_clipped': []} for n in names}
    pooled = {n: {r: ([], []) for r in REGIONS} for n in names}
    for scene in scenes:
        t = [2.0 ** v for v in scene.exposures]
        mid, gt = scene.ldrs[1], scene.gt
        outs = {'unaligned_merge': merge_colour_component(*scene.ldrs, t), 'medium_frame': ldr_to_hdr(mid, t[1])}
        alignments = {}
        for name, cfg in merges.items():
            key = alignment_key(cfg)
            if key not in alignments:
                res = align_frames(*scene.ldrs, t, cfg)
                alignments[key] = (quantise16(res.frames[0]), mid, quantise16(res.frames[2]))
            outs[name] = colour_label(alignments[key], scene.ldrs, t, cfg)
        for name, kwargs in denoised.items():  # NL-means in the mu-law domain, one strength or per band
            outs[name] = denoise_colour_label(outs['colour_component_not_denoised'], **kwargs)[0]  # as colour_label
        # the study's moving regions: where the plain merge of the aligned frames differs from the unaligned one
        motion = np.abs(mu_law(np.clip(outs['unaligned_merge'], 0, 1))
                        - mu_law(np.clip(outs['colour_component_merge'], 0, 1))).mean(axis=2) >= MOTION_THRESHOLD
        masks = dict(exposure_regions(mid), motion=motion)  # the study's regions
        for name, out in outs.items():
            out = np.clip(out, 0, 1)
            rows[name]['psnr_mu'].append(metrics.psnr_mu(out, gt))
            rows[name]['psnr_l'].append(metrics.psnr_l(out, gt))
            if masks['clipped'].any():
                rows[name]['off_clipped'].append(float((np.abs(out - gt).max(axis=2) > 0.1)[masks['clipped']].mean()))
            for region, mask in masks.items():
                pooled[name][region][0].append(out[mask])
                pooled[name][region][1].append(gt[mask])
    result = {}
    for name in names:
        row = {k: float(np.mean(v)) if v else None for k, v in rows[name].items()}
        for region, (outs, gts) in pooled[name].items():
            o, g = np.concatenate(outs), np.concatenate(gts)
            row[f'psnr_mu_{region}'] = metrics.psnr_mu(o, g) if len(o) else None
        result[name] = row
    return result, {name: rows[name]['psnr_mu'] for name in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scenes', type=int, default=12)
    p.add_argument('--size', default='256x384')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=str(_ROOT / 'bench' / 'results' / 'label_highlights.json'))
    p.add_argument('--validation_only', action='store_true', help='score the validation split only (recipe choices)')
    p.add_argument('--label_floor', type=float, nargs='*', default=[],
                   help='also score the medium-first label with these tolerance floors (not denoised)')
    p.add_argument('--denoise', action='store_true',
                   help='also score denoising variants of the label (colour_component_denoised_*)')
    p.add_argument('--label_grow', type=int, nargs='*', default=[],
                   help='also score the medium-first label with disagreements grown by these many pixels '
                        '(not denoised)')
    p.add_argument('--robust_h', type=float, nargs='*', default=[],
                   help='with --denoise: also score the robust denoising with these NL-means strengths')
    p.add_argument('--robust_percentile', type=float, nargs='*', default=[],
                   help='with --denoise: also score the robust denoising with these percentiles of block estimates')
    args = p.parse_args(argv)
    if (args.robust_h or args.robust_percentile) and not args.denoise:
        p.error('--robust_h and --robust_percentile score denoising variants: add --denoise')
    denoised = dict(DENOISED) if args.denoise else {}
    for h in args.robust_h if args.denoise else []:
        denoised[f'colour_component_denoised_h{h:g}'] = {'method': 'robust', 'strength': h}
    for q in args.robust_percentile if args.denoise else []:
        denoised[f'colour_component_denoised_p{q:g}'] = {'method': 'robust', 'percentile': q}
    merges = dict(MERGES)
    for floor in args.label_floor:
        merges[f'colour_component_floor_{floor:g}'] = AlignConfig(label_floor=floor, label_denoise=False)
    for grow in args.label_grow:
        merges[f'colour_component_grow_{grow}'] = AlignConfig(label_grow=grow, label_denoise=False)
    size = tuple(int(v) for v in args.size.split('x'))
    files = list_hdr_files(DEFAULT_HDRI_DIR)
    held = load_sources([f for f in files if f.stem in TEST_HDRIS])
    train = load_sources([f for f in files if f.stem not in TEST_HDRIS])
    names = list(TEST_SPLITS)
    results = {}
    start = time.time()
    for k, split in enumerate([] if args.validation_only else names):
        cfg = split_config(split, size)
        # the study's streams (data/study_splits.py): [seed, 1, scene, 100 + split number]
        scenes = [synthesize_scene(held, np.random.default_rng([args.seed, 1, i, 100 + k]), cfg)
                  for i in range(args.scenes)]
        results[split] = score_split(scenes, merges, denoised)[0]
        print(split, {n: round(r['psnr_l'], 2) for n, r in results[split].items()}, flush=True)
    val = [synthesize_scene(train, np.random.default_rng([args.seed, 1, i, 100 + len(names)]),
                            split_config(names[i % len(names)], size)) for i in range(args.scenes)]
    results['validation'], per_scene = score_split(val, merges, denoised)
    # per setting (the validation scenes cycle through the splits' settings): where a recipe choice wins or loses
    by_setting = {}
    for k, split in enumerate(names):
        if k < len(val):
            by_setting[split] = {n: round(float(np.mean(v[k::len(names)])), 2) for n, v in per_scene.items()}
    results['validation']['by_setting_psnr_mu'] = by_setting
    for split, row in by_setting.items():
        print(f'validation {split:<14}', row, flush=True)
    for name, row in results['validation'].items():
        if name == 'by_setting_psnr_mu':
            continue
        print(f"validation {name:<32} {row['psnr_mu']:.2f} / {row['psnr_l']:.2f}  regions "
              + ' / '.join(f"{row[f'psnr_mu_{r}']:.2f}" if row[f'psnr_mu_{r}'] is not None else '-' for r in REGIONS),
              flush=True)
    record = {'splits': results, 'scenes_per_split': args.scenes, 'size': list(size), 'seed': args.seed,
              'seconds': time.time() - start, 'machine': describe_machine(machine_info()),
              'note': 'label_release_fallback = the aligner before round 3 (fallback wherever a warp is rejected); '
                      '"current" here is rendered with the split streams, not the study data\'s own Test scenes'}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print('wrote', args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
