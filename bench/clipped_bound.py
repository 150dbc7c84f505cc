"""How much of the medium frame's clipped region the inputs can recover at all, per split, and who recovers it.

    python bench/clipped_bound.py --work study/long_FSHDR_dn --network FSHDR \\
        --checkpoint pretrained_models/fshdr_long_na_gate/SelfHDR_model_1.pth \\
        --supervised study/long_FSHDR_dn/ckpt/supervised/SelfHDR_model_30.pth

Issue 23 asks for 33 dB PSNR-mu over the pixels clipped in the medium frame. Where the short frame is clipped too,
no input says how bright the scene is. This bench splits the medium frame's clipped pixels by the ground truth:
``short_holds`` where every channel of the scene point stays below the short frame's clipping level
(``H * t_short < 0.95 ** 2.2``), ``beyond_short`` where a channel does not. It scores every method on both parts and
an **inputs bound**: the ground truth with each channel held at the short frame's clipping radiance, i.e. a perfect,
noise-free, perfectly aligned merge of the three frames that guesses nothing above what the short frame shows.
A goal above the bound is beyond the inputs, not beyond the method.

Writes ``bench/results/clipped_bound.json``; the splits are tools/study.py's (validation and test splits).
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
from bench.medium_gate import split_roots  # noqa: E402
from models.backbones import backbone  # noqa: E402
from photo.merge import load_network  # noqa: E402
from util import metrics  # noqa: E402
from util.colour import GAMMA  # noqa: E402
from util.exposures import scene_frames_and_times  # noqa: E402
from util.hdr_io import read_hdr, read_ldr  # noqa: E402

SHORT_CLIP = study.CLIPPED_LEVEL ** GAMMA  # linear value at which an LDR code counts as clipped


def scene_parts(scene_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(ground truth, masks 'short_holds' / 'beyond_short' over the medium frame's clipped pixels, inputs bound)."""
    frames, times = scene_frames_and_times(scene_dir, 'sig17')
    gt = read_hdr(scene_dir / 'HDRImg.hdr')
    clipped = study.exposure_regions(read_ldr(frames[1]))['clipped']
    ceiling = SHORT_CLIP / float(times[0])  # the brightest radiance the short frame still tells apart
    beyond = (gt >= ceiling).any(axis=2)
    masks = {'short_holds': clipped & ~beyond, 'beyond_short': clipped & beyond, 'clipped': clipped}
    return gt, masks, np.minimum(gt, ceiling).astype(np.float32)


def pooled(outputs: dict, truth: dict) -> dict:
    """PSNR-mu per part, pooled over a split's pixels, and each part's share of the clipped pixels."""
    row = {}
    for part in ('clipped', 'short_holds', 'beyond_short'):
        o = [np.clip(outputs[s], 0, 1)[truth[s][1][part]] for s in outputs]
        g = [truth[s][0][truth[s][1][part]] for s in outputs]
        o, g = np.concatenate(o), np.concatenate(g)
        row[f'psnr_mu_{part}'] = round(metrics.psnr_mu(o, g), 2) if len(o) else None
        row[f'pixels_{part}'] = int(len(o))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work', required=True, help='a study work folder (its splits are scored)')
    p.add_argument('--network', default='FSHDR', choices=study.NAMES)
    p.add_argument('--checkpoint', required=True, help='the model to score (its medium gate on, when it has one)')
    p.add_argument('--supervised', help='the study\'s supervised checkpoint of the same backbone, scored beside it')
    p.add_argument('--splits', nargs='+', default=['validation', *study.TEST_SPLITS.keys()])
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'auto'))
    p.add_argument('--output', default=str(_ROOT / 'bench' / 'results' / 'clipped_bound.json'))
    args = p.parse_args(argv)
    study.PRECISION.update(study.precision_settings(args.amp, 'False', 'short'))
    nets = {'model': load_network(args.network, Path(args.checkpoint), 'cpu', 'auto')}
    if args.supervised:
        nets['supervised'] = load_network(args.network, Path(args.supervised), 'cpu', 'off')
    work, aligned_input = Path(args.work), backbone(args.network).aligned_input
    results = {'what': 'PSNR-mu over the medium frame\'s clipped pixels, split by whether the short frame holds '
                       'them (bench/clipped_bound.py)',
               'checkpoint': args.checkpoint, 'supervised': args.supervised, 'network': args.network,
               'machine': study.describe_machine(study.machine_info()), 'precision': study.PRECISION['amp'],
               'date': time.strftime('%Y-%m-%d %H:%M'), 'splits': {}}
    for split in args.splits:
        root, aligned = split_roots(work, split)
        if not (root / 'Test').is_dir():
            print(f'{split}: no {root / "Test"}, skipped', file=sys.stderr)
            continue
        test_dir = aligned / 'Test' if aligned_input else root / 'Test'
        truth = {d.name: scene_parts(d) for d in sorted(p for p in (root / 'Test').iterdir() if p.is_dir())}
        anchors = study.anchor_outputs(root)
        outputs = {name: study.network_outputs(net, args.network, test_dir, root / 'Test')
                   for name, net in nets.items()}
        outputs.update({k: anchors[k] for k in ('medium_frame', 'flow_merge', 'colour_component')})
        outputs['inputs_bound'] = {s: t[2] for s, t in truth.items()}
        row = {name: pooled(out, truth) for name, out in outputs.items()}
        results['splits'][split] = row
        print(split, ' | '.join(f"{n} {r['psnr_mu_clipped']} ({r['psnr_mu_short_holds']} / {r['psnr_mu_beyond_short']}"
                                f", {r['pixels_beyond_short'] / max(r['pixels_clipped'], 1):.0%} beyond)"
                                for n, r in row.items()), flush=True)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
