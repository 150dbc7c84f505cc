"""Make (or reuse) the bundled CPU-sized demo data set.

    python tools/make_demo_data.py [--root datasets/demo] [--force]

Renders synthetic dynamic brackets from the CC0 HDRIs in ``datasets/hdri`` and aligns them (see
``data/demo.py``). Does nothing when an up-to-date copy already exists, unless ``--force``.
Prints the data root on the last line of stdout so scripts can capture it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Allow `python tools/make_demo_data.py` from anywhere as well as `python -m tools.make_demo_data`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from data.demo import DEFAULT_HDRI_DIR, DEFAULT_ROOT, TEST_HDRIS, VARIETIES, ensure_demo_dataset  # noqa: E402
from util.synthetic import parse_size  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Make or reuse the synthetic demo data set.')
    p.add_argument('--root', type=str, default=str(DEFAULT_ROOT), help='data root to create')
    p.add_argument('--force', action='store_true', help='regenerate even if an up-to-date copy exists')
    p.add_argument('--train', type=int, default=32, help='number of training scenes')
    p.add_argument('--test', type=int, default=8, help='number of test scenes')
    p.add_argument('--size', type=parse_size, default=(256, 384), help='scene size HxW')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--hdri_dir', type=str, default=str(DEFAULT_HDRI_DIR), help='folder of source HDRIs')
    p.add_argument('--holdout', type=str, nargs='*', default=list(TEST_HDRIS),
                   help='HDRIs (file stems) used only for test scenes')
    p.add_argument('--no_align', action='store_true', help='skip building the _align folders')
    p.add_argument('--variety', type=str, default='standard', choices=sorted(VARIETIES),
                   help="the generator's settings: standard (2-3 stop brackets, highlight brightness, moderate "
                        "noise) or wide (1-4 stops, clipped skies, auto-exposure, clean to high-ISO; data.demo)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        root = ensure_demo_dataset(args.root, n_train=args.train, n_test=args.test, size=args.size,
                                   seed=args.seed, hdri_dir=args.hdri_dir, holdout=args.holdout,
                                   align=not args.no_align, force=args.force, variety=args.variety)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a scene the aligner could not do
        print(f'make_demo_data: error: {exc}', file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == '__main__':
    sys.exit(main())
