"""A gated checkpoint with and without its medium gate, on a study's validation split and test splits, per region.

    python bench/medium_gate.py --work study/long_FSHDR_dn --network FSHDR \\
        --checkpoint pretrained_models/fshdr_long_mf_gate/SelfHDR_model_1.pth

Scores the backbone alone (``--medium_gate off``) and with the gate (models/medium_gate.py), and where the gate
holds its output to the medium frame's noise band (``consistency`` > 0) the gate without that clamp (nor the fusion
before it, which needs the band, nor the long frame's clamp: ``gated_without_clamp``), beside the medium frame
and the colour component, as ``tools/study.py`` scores its methods: PSNR-mu / PSNR-l per split (mean over scenes)
and PSNR-mu per region (clipped / well exposed / dark in the medium frame, moving), pooled over the split's
pixels; per validation scene too, by the setting it was rendered with. The gate is chosen on the validation split;
the test splits are reported. ``--splits validation_clean`` (any split's name after ``validation_``) scores 12
validation scenes of that split's setting alone, from the training HDRIs, rendered into the work folder when missing
(``data.study_splits.ensure_setting_validation_split``). Writes ``bench/results/medium_gate.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import tools.study as study  # noqa: E402
from models.backbones import backbone  # noqa: E402
from photo.merge import load_network  # noqa: E402
from data.study_splits import SETTING_VALIDATION_PREFIX, ensure_setting_validation_split  # noqa: E402
from util import metrics  # noqa: E402
from util.hdr_io import read_hdr  # noqa: E402

# validation_<split>: a validation split of that split's setting alone (data.study_splits), as many scenes and as
# large as the long study's test splits
SETTING_VALIDATION_SCENES, SETTING_VALIDATION_SIZE = 12, (256, 384)
KEYS = ('psnr_mu', 'psnr_l', 'psnr_mu_clipped', 'psnr_mu_well_exposed', 'psnr_mu_dark', 'psnr_mu_motion')


def clipped_truth(root: Path, scenes) -> dict:
    """Per scene, the ground truth and the medium frame's clipped pixels (read once per split)."""
    from util.exposures import scene_frames_and_times
    from util.hdr_io import read_ldr

    truth = {}
    for scene in scenes:
        scene_dir = root / 'Test' / scene
        mid = read_ldr(scene_frames_and_times(scene_dir, 'sig17')[0][1])
        truth[scene] = read_hdr(scene_dir / 'HDRImg.hdr'), study.exposure_regions(mid)['clipped']
    return truth


def clipped_split(outputs: dict, truth: dict, motion: dict) -> dict:
    """PSNR-mu pooled over the medium frame's clipped pixels that move and those that do not: where the 33 dB goal
    over clipped pixels is lost. ``truth``: clipped_truth's."""
    parts = {'static': ([], []), 'moving': ([], [])}
    for scene, out in outputs.items():
        gt, clipped = truth[scene]
        for name, mask in (('static', clipped & ~motion[scene]), ('moving', clipped & motion[scene])):
            parts[name][0].append(np.clip(out, 0, 1)[mask])
            parts[name][1].append(gt[mask])
    result = {}
    for name, (outs, gts) in parts.items():
        o, g = np.concatenate(outs), np.concatenate(gts)
        result[f'psnr_mu_clipped_{name}'] = round(metrics.psnr_mu(o, g), 2) if len(o) else float('nan')
        result[f'pixels_clipped_{name}'] = int(len(o))
    return result


def split_roots(work: Path, split: str) -> tuple[Path, Path]:
    """(the split's root with Test/, the root of its aligned copy with Test/) as tools/study.py lays them out."""
    if split == 'current':
        return work / 'data', work / 'data_aligned_test'
    return work / 'splits' / split, work / 'splits_aligned' / split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work', required=True, help='a study work folder (its splits are scored)')
    p.add_argument('--network', default='FSHDR', choices=study.NAMES)
    p.add_argument('--checkpoint', required=True, help='a checkpoint with a medium gate (tools/train_gate.py)')
    p.add_argument('--splits', nargs='+', default=['validation', *study.TEST_SPLITS.keys()])
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'auto'))
    p.add_argument('--output', default=str(_ROOT / 'bench' / 'results' / 'medium_gate.json'))
    p.add_argument('--also', nargs='*', default=[], metavar='LABEL=CHECKPOINT',
                   help='more gated checkpoints of the same backbone, scored beside it under LABEL (their gates on)')
    args = p.parse_args(argv)
    known = {'validation', *study.TEST_SPLITS, *(SETTING_VALIDATION_PREFIX + name for name in study.TEST_SPLITS)}
    for split in args.splits:
        if split not in known:
            p.error(f'--splits {split!r}: not a split of the study (validation, {", ".join(study.TEST_SPLITS)}, or '
                    f'{SETTING_VALIDATION_PREFIX}<one of those>)')
    also, reserved = {}, {'on', 'off', 'unheld', 'backbone', 'gated', 'gated_without_clamp', 'medium_frame',
                           'colour_component'}
    for item in args.also:
        label, sep, path = item.partition('=')
        if not sep or not label or not path:
            p.error(f'--also {item!r}: expected LABEL=CHECKPOINT')
        if label in reserved or label in also:
            p.error(f'--also {item!r}: the label {label!r} is taken (reserved: {", ".join(sorted(reserved))})')
        also[label] = path
    study.PRECISION.update(study.precision_settings(args.amp, 'False', 'short'))
    ckpt = Path(args.checkpoint)
    nets = {mode: load_network(args.network, ckpt, 'cpu', mode) for mode in ('off', 'on')}
    gate = getattr(nets['on'], 'gate', None)
    held = gate.consistency if gate is not None else 0.0
    # the same gate without its clamps (the medium and the long frame's), to show what they add
    if held or (gate is not None and gate.long_consistency):
        nets['unheld'] = load_network(args.network, ckpt, 'cpu', 'on')
        nets['unheld'].gate.consistency = nets['unheld'].gate.long_consistency = 0.0
    for label, path in also.items():
        nets[label] = load_network(args.network, Path(path), 'cpu', 'on')
    work, aligned_input = Path(args.work), backbone(args.network).aligned_input
    results = {'checkpoint': str(ckpt), 'also': also, 'work': str(work), 'network': args.network,
               'machine': study.describe_machine(study.machine_info()), 'precision': study.PRECISION['amp'],
               'date': time.strftime('%Y-%m-%d %H:%M'), 'consistency': held, 'splits': {}}
    if gate is not None:  # the gate's other settings, so the file says what was scored
        results.update(consistency_chroma=gate.chroma, short_consistency=gate.short_consistency,
                       long_consistency=gate.long_consistency, long_within_medium=gate.long_within_medium,
                       consistency_fallback=gate.fallback, band_noise=gate.band_noise,
                       fusion_window=gate.fusion_window, fusion_prior=gate.fusion_prior)
    for split in args.splits:
        root, aligned = split_roots(work, split)
        setting = split[len(SETTING_VALIDATION_PREFIX):] if split.startswith(SETTING_VALIDATION_PREFIX) else None
        if setting in study.TEST_SPLITS:  # rendered here when missing, at the study's test-split size
            ensure_setting_validation_split(root, setting, _ROOT / 'datasets' / 'hdri', study.TEST_HDRIS,
                                            SETTING_VALIDATION_SCENES, SETTING_VALIDATION_SIZE)
            study.make_aligned_test_copy(root, aligned)
        if not (root / 'Test').is_dir():
            print(f'{split}: no {root / "Test"}, skipped (run tools/study.py --splits first)', file=sys.stderr)
            continue
        test_dir = aligned / 'Test' if aligned_input else root / 'Test'
        runs = {'backbone': 'off', 'gated': 'on', 'gated_without_clamp': 'unheld', **{label: label for label in also}}
        outputs = {name: study.network_outputs(nets[key], args.network, test_dir, root / 'Test')
                   for name, key in runs.items() if key in nets}
        anchors = study.anchor_outputs(root)
        outputs['medium_frame'], outputs['colour_component'] = anchors['medium_frame'], anchors['colour_component']
        motion = study.motion_regions(anchors)
        truth = clipped_truth(root, outputs['backbone'])
        row = {}
        for name, out in outputs.items():
            scored = study.score(out, root, motion=motion)
            row[name] = {k: round(scored[k], 2) for k in KEYS}
            row[name].update(clipped_split(out, truth, motion))
        if split == 'validation' or setting in study.TEST_SPLITS:
            settings = json.loads((root / 'split.json').read_text())['settings']
            for name in [n for n in outputs if n not in ('medium_frame', 'colour_component')]:
                row[name]['per_scene'] = {
                    f'{scene} ({setting})': round(metrics.psnr_mu(np.clip(outputs[name][scene], 0, 1),
                                                                  read_hdr(root / 'Test' / scene / 'HDRImg.hdr')), 2)
                    for scene, setting in zip(sorted(outputs[name]), settings)}
        results['splits'][split] = row
        regions = ('psnr_mu_clipped', 'psnr_mu_well_exposed', 'psnr_mu_dark', 'psnr_mu_motion')
        print(split, ' | '.join(f"{n} {r['psnr_mu']:.2f} / {r['psnr_l']:.2f} ("
                                + ' / '.join(f'{r[k]:.2f}' for k in regions) + ')' for n, r in row.items()), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
