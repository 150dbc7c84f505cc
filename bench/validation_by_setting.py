"""PSNR-mu of trained networks on each scene of the study's validation split, by the setting it was rendered with.

The validation split (``data/study_splits.py``) cycles through every test split's settings over the training HDRIs;
its mean hides a network that fails one setting. This lists each scene's setting and score, for choosing a recipe
by its worst case as well as its mean, without looking at a test split.

    python bench/validation_by_setting.py --run standard=study/short_ahdrnet:stage2_colour_threshold_60 \\
        --run wide=study/short_ahdrnet_wide:stage2 --epoch 20 --output bench/results/validation_by_setting.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import tools.study as study  # noqa: E402
from util import metrics  # noqa: E402
from util.hdr_io import read_hdr  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', action='append', required=True, metavar='LABEL=WORK:RUN',
                   help='a study work folder and the training run in its ckpt/ (e.g. wide=study/x:stage2)')
    p.add_argument('--epoch', type=int, default=20, help='the checkpoint epoch of every run')
    p.add_argument('--network', default='AHDRNet', choices=study.NAMES)
    p.add_argument('--validation', default='', help='the validation split folder (default: the first run\'s)')
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'auto'))
    p.add_argument('--output', default=str(_ROOT / 'bench' / 'results' / 'validation_by_setting.json'))
    args = p.parse_args(argv)
    runs = []
    for spec in args.run:
        label, _, rest = spec.partition('=')
        work, _, run = rest.partition(':')
        if not (label and work and run):
            p.error(f'--run {spec!r}: expected LABEL=WORK:RUN')
        runs.append((label, Path(work), run))
    val = Path(args.validation) if args.validation else runs[0][1] / 'splits' / 'validation'
    marker = val / 'split.json'
    if not marker.is_file():
        p.error(f'{val}: no validation split there (run tools/study.py first)')
    settings = json.loads(marker.read_text())['settings']
    study.PRECISION.update(study.precision_settings(args.amp, 'False', 'short'))
    scenes = sorted(d.name for d in (val / 'Test').iterdir() if d.is_dir())
    gts = {s: read_hdr(val / 'Test' / s / 'HDRImg.hdr') for s in scenes}
    test_dir = (study.make_aligned_test_copy(val, val.parent.parent / 'splits_aligned' / 'validation') / 'Test'
                if study.backbone(args.network).aligned_input else val / 'Test')
    results = {'settings': dict(zip(scenes, settings)), 'runs': {}, 'machine': study.describe_machine(study.machine_info())}
    for label, work, run in runs:
        net = study.load_network(work / 'ckpt', run, args.epoch, args.network)
        outs = study.network_outputs(net, args.network, test_dir, val / 'Test')
        scores = {s: metrics.psnr_mu(np.clip(outs[s], 0, 1), gts[s]) for s in scenes}
        results['runs'][label] = {'work': str(work), 'run': run, 'psnr_mu': scores,
                                  'mean': float(np.mean(list(scores.values()))),
                                  'worst': float(min(scores.values()))}
        print(f'{label:>12s} mean {results["runs"][label]["mean"]:.2f} worst {results["runs"][label]["worst"]:.2f}  ' +
              ' '.join(f'{settings[i]}:{scores[s]:.2f}' for i, s in enumerate(scenes)))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
