"""Tone-map a radiance file (.hdr or .exr) to an 8-bit PNG.

    python tools/tonemap.py INPUT.hdr -o OUT.png --operator mu|reinhard|display --exposure E --gamma G

``--exposure`` is in stops; ``--gamma`` defaults to the operator's own (mu 1.0, reinhard 2.2,
display 1.0). The output keeps the input's colours (BGR in memory, RGB on disk as usual).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Allow `python tools/tonemap.py` from the repository root as well as `python -m tools.tonemap`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from util.tonemap import OPERATORS, tonemap, write_png  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Tone-map an .hdr/.exr radiance image to an 8-bit PNG.')
    parser.add_argument('input', type=Path, help='input radiance file (.hdr or .exr)')
    parser.add_argument('-o', '--output', type=Path, default=None,
                        help='output PNG (default: the input path with .png)')
    parser.add_argument('--operator', type=str, default='mu', choices=sorted(OPERATORS),
                        help='mu: mu-law of the losses; reinhard: Reinhard 2002 global; display: MATLAB-like tonemap')
    parser.add_argument('--exposure', type=float, default=0.0,
                        help='exposure adjustment in stops, -32..32 (reinhard normalises by the log-average '
                             'luminance, so it changes little there; use --gamma or the key)')
    parser.add_argument('--gamma', type=float, default=None,
                        help="display gamma, 0.1..10 (default: the operator's own)")
    return parser


# The numeric flags and their ranges, checked before anything is read (util.flags.checked_number).
NUMBER_FLAGS = {'exposure': (-32.0, 32.0, False), 'gamma': (0.1, 10.0, False)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from util.flags import NumberRangeError, check_number_flags
    try:
        check_number_flags(args, NUMBER_FLAGS)
    except NumberRangeError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    from util.hdr_io import ImageReadError, read_radiance

    output = args.output if args.output is not None else args.input.with_suffix('.png')
    try:
        img = read_radiance(args.input)
        out = tonemap(img, args.operator, exposure=args.exposure, gamma=args.gamma)
        write_png(output, out)
    except (ImageReadError, ValueError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'{args.input} -> {output} ({args.operator})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
