"""Build the ``_align`` folders: short and long frames warped to the medium one, plus ``Y_color``.

    python tools/prepare_data.py --dataroot datasets/sig17 --split Training
    python tools/prepare_data.py --dataroot datasets/sig17 --split Test
    python tools/prepare_data.py --dataroot datasets/sen --dataset sen
    python tools/prepare_data.py --dataroot datasets/tursun --dataset tursun --flow raft \
        --raft_weights raft_large_C_T_SKHT_V2-ff5fadd5.pth

Source -> destination (``specs/method.md``, "Folder layout"):

* sig17:  ``<dataroot>/<split>/<scene>/`` -> ``<dataroot>/<split>_align/<scene>/`` (split Training or Test)
* sen:    ``<dataroot>/Scenes/<scene>/``  -> ``<dataroot>/Scenes_align/<scene>/``
* tursun: ``<dataroot>/dataset/<scene>/`` -> ``<dataroot>/dataset_align/<scene>/``

Each destination scene holds exactly three frames (short, long warped; medium copied byte for
byte), under the source's file names and at the source's bit depth, so sorted names still go
short, medium, long. For training splits it also holds ``HDRImg.hdr`` = ``Y_color``: the medium-first
triangle merge of the aligned frames (as they are stored, i.e. after quantisation) with the exposures of
the *source* folder, then denoised (``util/label_denoise.py``, ``AlignConfig.label_denoise``). The rule it
was made with, the denoiser's settings included, is recorded in ``<split>_align/.colour_label.json``. It
is not written for Test/Sen/Tursun by default (``--colour_label``), because ``Test_align`` must not carry an
``HDRImg.hdr`` that a test loader could take for ground truth.

A scene is written to a hidden temporary folder and renamed at the end, so a scene folder that
exists is complete; existing scenes are skipped unless ``--overwrite``, with a warning when their labels
were made by another rule.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from data.align_split import (COLOUR_NAME, DEFAULT_SPLIT, SceneError, prepare_scene, prepare_split,  # noqa: E402,F401
                              split_dirs)
from util.align import LABEL_NOISE, AlignConfig  # noqa: E402
from util.label_denoise import DENOISE_METHODS  # noqa: E402
from util.exposures import DATASETS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--dataroot', type=str, required=True, help='data set root')
    p.add_argument('--split', type=str, default=None,
                   help='source folder under dataroot (default: Training for sig17, Scenes for sen, dataset for tursun)')
    p.add_argument('--dataset', type=str, default='sig17', choices=list(DATASETS), help='data set layout')
    p.add_argument('--flow', type=str, default='dis', choices=['dis', 'raft'], help='optical flow method')
    p.add_argument('--raft_weights', type=str, default=None, help='local torchvision RAFT state_dict (for --flow raft)')
    p.add_argument('--raft_model', type=str, default='large', choices=['large', 'small'], help='RAFT variant')
    p.add_argument('--device', type=str, default='cpu', help='device for RAFT, e.g. cpu or cuda')
    p.add_argument('--colour_label', type=str, default='auto', choices=['auto', 'yes', 'no'],
                   help='write HDRImg.hdr = Y_color (auto: only for the Training split)')
    p.add_argument('--label_noise', type=str, default='immerkaer', choices=list(LABEL_NOISE),
                   help="the noise estimate behind Y_color's medium-first tolerance (immerkaer: the release's "
                        "estimator, default; weak_texture reads it from texture-free patches, closer on clean frames)")
    p.add_argument('--label_denoise_method', type=str, default='robust', choices=list(DENOISE_METHODS),
                   help="the noise estimate the label's denoiser uses (default robust)")
    p.add_argument('--overwrite', action='store_true', help='redo scenes that already exist')
    p.add_argument('--keep_going', action='store_true', help='log failing scenes and continue')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    colour = {'auto': None, 'yes': True, 'no': False}[args.colour_label]
    try:
        cfg = AlignConfig(flow=args.flow, raft_weights=args.raft_weights, raft_model=args.raft_model,
                          device=args.device, label_noise=args.label_noise,
                          label_denoise_method=args.label_denoise_method)
        reports = prepare_split(args.dataroot, args.split, args.dataset, colour_label=colour,
                                overwrite=args.overwrite, keep_going=args.keep_going, cfg=cfg)
    except (SceneError, FileNotFoundError, ValueError) as exc:
        print(f'prepare_data: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # each scene is written whole (a temporary folder renamed), so none is half there
        print('prepare_data: interrupted; the scenes finished so far are kept and skipped when the same command runs '
              'again', file=sys.stderr)
        return 130
    counts = {s: sum(r['status'] == s for r in reports) for s in ('done', 'skipped', 'failed')}
    src, dst = split_dirs(args.dataroot, args.split, args.dataset)
    print(f'prepare_data: {counts["done"]} done, {counts["skipped"]} skipped, {counts["failed"]} failed -> {dst}')
    return 1 if counts['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
