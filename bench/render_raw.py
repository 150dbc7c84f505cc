"""Render RAW frames to 8-bit sRGB PNGs the way a camera's JPEG engine would start: the inputs of
``bench/bracket_colour.py``.

    python bench/render_raw.py sample1.dng sample2.dng sample3.dng --out_dir /tmp/bracket

LibRaw through rawpy: the camera's as-shot white balance, no auto-brightening (so the exposure ratios between the
frames hold), sRGB primaries, LibRaw's default output curve (BT.709: power 1/2.222, linear toe of slope 4.5), 8 bits, ``half_size`` demosaic unless ``--full_size``. Each PNG is
named after its RAW file. The README's real-bracket figures were made from hdrmerge's test DNGs rendered this way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import rawpy

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from util.hdr_io import write_ldr8  # noqa: E402


def render(path: Path, half_size: bool = True):
    """(H, W, 3) uint8 BGR rendering of one RAW file."""
    with rawpy.imread(str(path)) as raw:
        rgb = raw.postprocess(use_camera_wb=True, no_auto_bright=True, half_size=half_size, output_bps=8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('raws', nargs='+', help='RAW files (DNG, CR2, NEF, ...)')
    p.add_argument('--out_dir', required=True)
    p.add_argument('--full_size', action='store_true', help='full demosaic instead of half size')
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for raw in map(Path, args.raws):
        try:
            img = render(raw, half_size=not args.full_size)
        except (rawpy.LibRawError, OSError) as exc:
            print(f'error: {raw}: cannot render this RAW file ({exc})', file=sys.stderr)
            return 2
        dst = out_dir / f'{raw.stem}.png'
        write_ldr8(dst, img.astype('float32') / 255.0)  # exact: round(x / 255 * 255) == x
        print(f'{raw} -> {dst} ({img.shape[1]}x{img.shape[0]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
