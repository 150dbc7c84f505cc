"""Make a synthetic dynamic-scene HDR data set (SIGGRAPH17 layout) from HDR radiance maps.

    python tools/make_synthetic.py --src datasets/hdri --out datasets/synthetic \
        --train 32 --test 8 --size 256x384 --seed 0 --holdout courtyard sunset

Writes ``<out>/Training/<scene>/`` and ``<out>/Test/<scene>/`` with ``0_short.tif``,
``1_medium.tif``, ``2_long.tif`` (16-bit), ``exposure.txt`` (stops) and ``HDRImg.hdr`` (ground
truth in the medium frame's geometry, short exposure's scale). See ``util/synthetic.py``. Run
``tools/prepare_data.py`` afterwards to build the ``_align`` folders.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

# Allow `python tools/make_synthetic.py` from anywhere as well as `python -m tools.make_synthetic`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from util.photo_sources import PHOTOS, load_photo_sources  # noqa: E402
from util.synthetic import SynthConfig, make_synthetic_dataset, parse_size  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--src', type=str, required=True, help='folder of .exr/.hdr radiance maps')
    p.add_argument('--out', type=str, required=True, help='output data root')
    p.add_argument('--train', type=int, default=32, help='number of training scenes')
    p.add_argument('--test', type=int, default=8, help='number of test scenes')
    p.add_argument('--size', type=parse_size, default=(256, 384), help='output size HxW, e.g. 256x384')
    p.add_argument('--seed', type=int, default=0, help='random seed (same seed -> same files)')
    p.add_argument('--holdout', type=str, nargs='*', default=[],
                   help='source names (file stems) used only for the test split')
    p.add_argument('--no_noise', action='store_true', help='disable sensor noise')
    p.add_argument('--no_colour_aug', action='store_true',
                   help='no random colour transforms (white balance, hue, saturation, channel order) in training')
    p.add_argument('--colour_aug_test', action='store_true', help='colour transforms in the test split too')
    p.add_argument('--photos', type=str, nargs='*', default=[], choices=list(PHOTOS),
                   help="scikit-image photos lifted to radiance, added to the training sources (e.g. --photos "
                        + ' '.join(PHOTOS) + ')')
    p.add_argument('--overwrite', action='store_true', help='replace existing Training/Test folders')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    start = time.time()
    try:
        if args.seed < 0:
            raise ValueError(f'--seed {args.seed}: must be 0 or more')
        cfg = SynthConfig(size=args.size, noise=not args.no_noise, colour_aug=not args.no_colour_aug)
        written = make_synthetic_dataset(args.src, args.out, args.train, args.test, args.size, args.seed,
                                         holdout=args.holdout, config=cfg, overwrite=args.overwrite,
                                         extra_train_sources=load_photo_sources(args.photos),
                                         colour_aug_test=args.colour_aug_test)
    except (OSError, ValueError) as exc:  # a missing source, an --out that exists or is a file, a bad size
        print(f'make_synthetic: error: {exc}', file=sys.stderr)
        return 2
    print(f'make_synthetic: wrote {len(written["Training"])} training and {len(written["Test"])} test scenes '
          f'to {args.out} in {time.time() - start:.1f}s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
