"""Reading a bracket: frames (8/16-bit JPEG/PNG/TIFF or camera RAW), their exposure times, their order, and the
three frames used (short, medium = reference, long)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from photo.errors import MergeError
from photo.exposures import parse_exposures, read_exif_exposure, read_exif_tags, select_frames
from photo.raw import is_raw, read_raw, relative_exposure
from util.flags import NumberRangeError, checked_number
from util.hdr_io import read_ldr_bits

logger = logging.getLogger(__name__)

N_FRAMES = 3
MIN_SIDE = 16  # pixels: smaller frames are an error naming the file (1x1 was a raw OpenCV assertion)


@dataclass
class BracketFrames:
    """The three frames used, short, medium (reference), long, with their times (``times[0] == 1``)."""

    paths: list[Path]               # sorted order
    frames: list[np.ndarray]        # H x W x 3 BGR float32 in [0, 1], sorted order
    times: np.ndarray               # float64 (3,), normalised by the shortest
    times_source: str               # 'exif' ('exif (shutter time x ISO)' ...), 'seconds', 'stops', 'raw metadata (...)'
    order: list[int]                # order[k] = index in the given inputs of the k-th sorted frame
    raw_times: list[float] = field(default_factory=list)  # as read/given, in the given input order
    kind: str = 'ldr'               # 'ldr' (camera-encoded codes) or 'raw' (linear radiance from rawpy)
    unused: list[Path] = field(default_factory=list)  # frames of a longer bracket that were not selected
    times_from: str = '--exposures'  # where the times came from, as an error tells the user to check it
    bits: int = 0                   # the files' bit depth, 8 or 16 ('ldr'); 0 for RAW

    @property
    def reordered(self) -> bool:
        return self.order != sorted(self.order)


def _check_distinct_files(paths: Sequence[Path]) -> None:
    import hashlib

    seen = {}
    for p in paths:
        key = hashlib.sha256(p.read_bytes()).hexdigest()
        if key in seen:
            raise MergeError(f'{seen[key]} and {p} are the same image; a bracket needs three different exposures')
        seen[key] = p




EXIF_ORIENTATION = 0x0112  # 1 = upright; 2-8: the mirrorings and quarter turns a viewer applies to show it upright


def exif_orientation(path: Path) -> int:
    """The file's EXIF Orientation (1..8); 1 where it has none or an unusable one."""
    (value,) = read_exif_tags(path, (EXIF_ORIENTATION,))
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` (H x W x C) turned as a viewer shows a frame with this EXIF Orientation (OpenCV's unchanged read
    does not apply it): 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise, 7 transverse,
    8 quarter turn anticlockwise."""
    turned = {1: image, 2: image[:, ::-1], 3: image[::-1, ::-1], 4: image[::-1], 5: image.transpose(1, 0, 2),
              6: np.rot90(image, -1), 7: image[::-1, ::-1].transpose(1, 0, 2), 8: np.rot90(image, 1)}[orientation]
    return np.ascontiguousarray(turned)


def bracket_orientation(paths: Sequence[Path]) -> int:
    """The EXIF Orientation the bracket is turned by: one for all frames, since their pixels were taken in the
    sensor's order and line up as stored; where the camera's tilt sensor changed its mind within the bracket (a
    tripod pointing up or down), the most common value (the medium frame's on a tie), with a warning."""
    values = [exif_orientation(p) for p in paths]
    if len(set(values)) > 1:
        chosen = max(values, key=lambda v: (values.count(v), v == values[len(values) // 2]))
        logger.warning('the frames carry different EXIF orientations (%s); all are turned by %d, as their pixels '
                       'line up as stored', ', '.join(f'{p.name}: {v}' for p, v in zip(paths, values)), chosen)
        return chosen
    return values[0]


def _how_to_give_times(exposures_from: str) -> str:
    """Where a bracket without exposure metadata takes its times: the flag, or a batch folder's exposure file."""
    if exposures_from == '--exposures':
        return 'give the times with --exposures (seconds, e.g. 1/200 1/50 1/12, or stops with --exposures_in stops)'
    return (f'write them to {exposures_from}: one value in stops per frame, in file-name order, one per line (e.g. '
            '0, 2 and 4)')


# The networks were trained with 2 or 3 stops between neighbouring frames.
MAX_GAP_STOPS = 4.0


def load_bracket(inputs: Sequence, exposures: Sequence | None = None, exposures_in: str = 'seconds',
                 strict_order: bool = False, reference=None, exposures_from: str = '--exposures') -> BracketFrames:
    """Read three or more frames and their exposure times, check them, sort them by exposure time and pick
    short, medium (reference) and long (:func:`select_frames`; ``reference``: the medium frame's path).
    ``exposures_from``: where ``exposures`` came from (a flag, or a batch folder's exposure file), for messages."""
    paths = [Path(p) for p in inputs]
    if len(paths) < N_FRAMES:
        raise MergeError(f'a bracket needs at least {N_FRAMES} frames (short, medium, long exposure), '
                         f'got {len(paths)}: {", ".join(map(str, paths)) or "none"}')
    for p in paths:
        if not p.is_file():
            raise MergeError(f'{p}: file does not exist' if not p.exists() else f'{p}: not a regular file')
    _check_distinct_files(paths)
    raw_flags = [is_raw(p) for p in paths]
    kind = 'raw' if all(raw_flags) else 'ldr'
    if any(raw_flags) and not all(raw_flags):
        raise MergeError('a bracket must be all RAW or all JPEG/PNG/TIFF; RAW: '
                         f'{", ".join(str(p) for p, r in zip(paths, raw_flags) if r)}; others: '
                         f'{", ".join(str(p) for p, r in zip(paths, raw_flags) if not r)}')
    raws = [read_raw(p) for p in paths] if kind == 'raw' else []  # RawReadError names the file
    bits = []
    if kind == 'raw':
        frames = [r.linear for r in raws]
    else:
        frames, bits = map(list, zip(*(read_ldr_bits(p) for p in paths)))  # ImageReadError names the file
        orientation = bracket_orientation(paths)
        if orientation != 1:
            logger.info('EXIF orientation %d: frames turned upright as a viewer shows them', orientation)
            frames = [upright(f, orientation) for f in frames]
    for p, f in zip(paths, frames):  # sizes are numbers from the files: checked at the door too
        try:
            checked_number(min(f.shape[:2]), f'frame size {f.shape[1]}x{f.shape[0]} pixels: its shorter side',
                           MIN_SIDE, None, source=str(p))
        except NumberRangeError as exc:
            raise MergeError(f'{exc}; a bracket to merge needs frames of at least {MIN_SIDE}x{MIN_SIDE} pixels '
                             '(the alignment and the networks work on windows of 8 and more)') from None
    if kind == 'ldr':
        eight = [b == 8 for b in bits]
        if any(eight) and not all(eight):  # one response cannot linearise both: the JPEG curve is not 16-bit's
            raise MergeError('a bracket must be all 8-bit (JPEG, 8-bit PNG/TIFF) or all 16-bit; 8-bit: '
                             f'{", ".join(str(p) for p, e in zip(paths, eight) if e)}; 16-bit: '
                             f'{", ".join(str(p) for p, e in zip(paths, eight) if not e)}')
    shapes = {tuple(f.shape[:2]) for f in frames}
    if len(shapes) != 1:
        sizes = ', '.join(f'{p} is {f.shape[1]}x{f.shape[0]}' for p, f in zip(paths, frames))
        raise MergeError(f'frames differ in size ({sizes}); all three must have the same width and height')

    if exposures is not None:
        if len(exposures) != len(paths):
            raise MergeError(f'{exposures_from}: expected {len(paths)} values, one per input, got {len(exposures)}'
                             + ('' if exposures_from == '--exposures' else
                                f' (one per frame, in file-name order: {", ".join(p.name for p in paths)})'))
        raw = parse_exposures(exposures, exposures_in, source=exposures_from)
        source = exposures_in
        times_from = exposures_from
        if exposures_from != '--exposures':
            logger.info('exposures from %s (%s); any EXIF times of the frames are not used', exposures_from,
                        exposures_in)
    elif kind == 'raw':
        raw, what = relative_exposure(raws)
        missing = [str(p) for p, t in zip(paths, raw) if t is None]
        if missing:
            raise MergeError(f'{", ".join(missing)}: no exposure time in the RAW metadata; '
                             f'{_how_to_give_times(exposures_from)}')
        source = f'raw metadata ({what})'
        times_from = 'the RAW metadata, or give --exposures'
    else:
        exif = [read_exif_exposure(p) for p in paths]
        missing = [str(p) for p, e in zip(paths, exif) if e is None]
        if missing:
            raise MergeError(f'{", ".join(missing)}: no EXIF ExposureTime; {_how_to_give_times(exposures_from)}')
        # the ISO speed and f-number count where every frame has one and they differ, as for RAW frames
        raw, what = relative_exposure(exif)
        source = 'exif' if what == 'shutter time' else f'exif ({what})'
        times_from = 'the EXIF, or give --exposures'

    n = len(paths)
    for i in range(n):
        for j in range(i + 1, n):
            if math.isclose(raw[i], raw[j], rel_tol=1e-6):
                raise MergeError(f'{paths[i]} and {paths[j]} have the same exposure ({raw[i]:g} '
                                 f'{"s" if source != "stops" else "relative"}); a bracket needs three '
                                 'different exposures')

    order = sorted(range(n), key=lambda k: raw[k])
    if order != list(range(n)):
        used = ', '.join(f'{paths[k]} ({raw[k]:g})' for k in order)
        if strict_order:
            raise MergeError(f'--strict_order: inputs are not given from shortest to longest exposure; by exposure '
                             f'they are {used}')
        logger.warning('inputs were not in short, medium, long order; sorted by exposure time: %s', used)
    ref_k = None
    if reference is not None:
        ref_path = Path(reference)
        matches = [k for k, p in enumerate(order) if paths[p] == ref_path or paths[p].resolve() == ref_path.resolve()]
        if not matches and ref_path.name == str(reference):  # a bare file name: the input of that name, if one
            matches = [k for k, p in enumerate(order) if paths[p].name == ref_path.name]
            if len(matches) > 1:
                raise MergeError(f'--reference {reference}: several inputs have that name; give its path')
        if not matches:
            raise MergeError(f'--reference {reference}: not one of the inputs')
        ref_k = matches[0]
        if ref_k in (0, n - 1):
            raise MergeError(f'--reference {reference}: it is the {"shortest" if ref_k == 0 else "longest"} '
                             'exposure; the reference must have a shorter and a longer frame beside it')
    sel = select_frames([raw[k] for k in order], ref_k)
    chosen = [order[k] for k in sel]
    times = np.array([raw[k] for k in chosen], dtype=np.float64)
    times = times / times[0]  # the networks expect t_short = 1 (training data's radiance scale)
    unused = [paths[k] for k in order if k not in chosen]
    if unused:
        logger.info('%d frames: using short = %s, medium (reference) = %s, long = %s; not used: %s', n,
                    *(paths[k] for k in chosen), ', '.join(map(str, unused)))
    gaps = np.diff(np.log2(times))
    if gaps.max() > MAX_GAP_STOPS:
        logger.warning('%.1f stops between %s and %s; the networks were trained with 2-3 stops between frames',
                       gaps.max(), *(paths[chosen[k]] for k in (int(gaps.argmax()), int(gaps.argmax()) + 1)))
    return BracketFrames(paths=[paths[k] for k in chosen], frames=[frames[k] for k in chosen], times=times,
                         times_source=source, order=chosen, raw_times=list(raw), kind=kind, unused=unused,
                         times_from=times_from, bits=bits[0] if bits else 0)

