"""Exposure times of a bracket: EXIF ``ExposureTime``, ``--exposures`` values, the check that they agree with the
frames' brightness, and which frames of a longer bracket are used."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from photo.errors import MergeError
from photo.response import Response, resolve_response
from util.colour import GAMMA
from util.flags import SECONDS_RANGE, STOPS_RANGE, NumberRangeError, checked_number

logger = logging.getLogger(__name__)

EXIF_IFD = 0x8769        # pointer to the Exif sub-IFD
EXPOSURE_TIME = 0x829A   # ExposureTime, seconds, RATIONAL
F_NUMBER = 0x829D        # FNumber, RATIONAL
ISO_SPEED = 0x8827       # ISOSpeedRatings (PhotographicSensitivity), SHORT, one or more values


@dataclass
class ExifExposure:
    """What a frame's EXIF says about its exposure: the shutter time in seconds, the ISO speed and the f-number (0
    where the file has none or an unusable one). The same fields as a RAW frame's, so `photo.raw.relative_exposure`
    turns either into relative exposures by one rule."""

    shutter_s: float
    iso: float = 0.0
    aperture: float = 0.0


def _exif_number(value) -> float:
    """A secondary EXIF value (ISO, f-number) as a float; 0 where it is missing or not a finite number: these only
    refine the exposure, so an odd one is left out rather than refused."""
    if isinstance(value, (tuple, list)):  # several values (ISOSpeedRatings may hold two): the first is the frame's;
        value = value[0] if value else 0.0  # Pillow gives rationals as IFDRational, never as an int pair
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


def _exif_value_to_seconds(value, path: Path) -> float:
    """EXIF RATIONAL (Pillow's IFDRational, a (num, den) pair, or a plain number) -> seconds."""
    raw = value
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            num, den = value
            value = Fraction(num, den) if den else math.nan
        elif len(value) >= 1:
            return _exif_value_to_seconds(value[0], path)  # several values: the first is the frame's
        else:
            value = math.nan
    elif isinstance(value, bytes):
        value = value.decode('ascii', errors='replace').strip('\x00 ')
    try:
        seconds = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise MergeError(f'{path}: EXIF ExposureTime {raw!r} is not a positive number of seconds; '
                         'pass the times with --exposures')
    try:  # the one check at the door: a time float32 arithmetic can divide by
        return checked_number(seconds, 'EXIF ExposureTime (seconds)', *SECONDS_RANGE, source=str(path))
    except NumberRangeError as exc:
        raise MergeError(f'{exc}; pass the times with --exposures') from None


def read_exposure_time(path) -> float | None:
    """Exposure time in seconds from the file's EXIF ``ExposureTime``; None when the file has none.

    Raises :class:`MergeError` when the tag exists but holds no valid time."""
    exposure = read_exif_exposure(path)
    return None if exposure is None else exposure.shutter_s


def read_exif_tags(path, tags: Sequence[int]) -> list:
    """The values of EXIF ``tags`` in the file (None for each one it lacks, all None where Pillow cannot parse it:
    OpenCV may still read such a frame, it just has no usable EXIF). Looks in the Exif sub-IFD (JPEG, camera
    TIFFs), then IFD0 (some TIFF writers put the tags there; Orientation lives there)."""
    from PIL import Image, UnidentifiedImageError  # lazy: only EXIF reading needs Pillow

    def lookup(exif, tag):
        value = exif.get_ifd(EXIF_IFD).get(tag)
        return exif.get(tag) if value is None else value

    try:
        with Image.open(path) as img:
            exif = img.getexif()
            if not exif and img.format == 'PNG':
                img.load()  # a PNG's eXIf chunk may follow the image data
                exif = img.getexif()
            return [lookup(exif, tag) for tag in tags]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        logger.debug('%s: no EXIF read (%s)', path, exc)
        return [None] * len(tags)


def read_exif_exposure(path) -> ExifExposure | None:
    """The file's EXIF exposure (:class:`ExifExposure`); None when it has no ``ExposureTime``.

    Raises :class:`MergeError` when the time tag exists but holds no valid time.
    """
    path = Path(path)
    value, iso, f_number = read_exif_tags(path, (EXPOSURE_TIME, ISO_SPEED, F_NUMBER))
    if value is None:
        return None
    return ExifExposure(_exif_value_to_seconds(value, path), _exif_number(iso), _exif_number(f_number))


def parse_exposures(values: Sequence, unit: str = 'seconds', source: str = '--exposures') -> list[float]:
    """``--exposures`` values -> exposure times in seconds (``unit='seconds'``; fractions such as
    ``1/100`` allowed) or relative times ``2 ** v`` (``unit='stops'``). ``source`` names where the values came
    from in the errors (the flag, or a bracket's ``exposure.txt``)."""
    if unit not in ('seconds', 'stops'):
        raise MergeError(f"--exposures_in must be 'seconds' or 'stops', got {unit!r}")
    times = []
    for v in values:
        try:
            number = float(Fraction(str(v).strip()))
        except (ValueError, ZeroDivisionError, OverflowError):
            raise MergeError(f'{source}: {v!r} is not a number') from None
        if not math.isfinite(number):
            raise MergeError(f'{source}: {v!r} is not finite')
        if unit == 'seconds' and number <= 0:
            raise MergeError(f'{source}: exposure time {v!r} s must be positive')
        lo, hi = SECONDS_RANGE if unit == 'seconds' else STOPS_RANGE
        try:
            number = checked_number(number, f'exposure value ({unit})', lo, hi, source=source)
        except NumberRangeError as exc:
            raise MergeError(f'{exc} (given as {v!r})') from None
        times.append(number if unit == 'seconds' else 2.0 ** number)
    return times



# Tolerance of the exposure check: JPEG tone curves bend the gamma-2.2 estimate, but not by this much.
EXPOSURE_TOLERANCE_STOPS = 1.5


def measured_exposure_ratio(xa: np.ndarray, xb: np.ndarray, response: Response, low: float = 0.1,
                            high: float = 0.9, max_pixels: int = 1 << 20) -> float | None:
    """Exposure of frame b over frame a, from their brightness distributions (None when they share too little).

    Comparametric: the q-quantile of frame b's codes is the same scene point's code as frame a's q-quantile, so
    ``f(Qb(q)) / f(Qa(q))`` is the ratio wherever both quantiles are well exposed (``low``..``high``). Motion moves
    pixels, not the distribution: pixel-by-pixel ratios of a handheld or moving bracket lean towards 1 (what is
    well exposed in both frames is often not the same scene point), by up to 2.5 stops on 3-stop brackets with
    large clipped skies. The median over channels and quantiles is returned; frames are subsampled to
    ``max_pixels``."""
    step = max(1, int(np.ceil(np.sqrt(xa.shape[0] * xa.shape[1] / max_pixels))))
    qs = np.linspace(0.0005, 0.9995, 1000)
    ratios = []
    for c in range(3):
        qa = np.quantile(xa[::step, ::step, c], qs)
        qb = np.quantile(xb[::step, ::step, c], qs)
        ok = (qa > low) & (qa < high) & (qb > low) & (qb < high)
        if ok.sum() < 20:  # under 2 % of the pixels well exposed in both
            continue
        codes = np.zeros((int(ok.sum()), 2, 3), dtype=np.float32)
        codes[:, 0, c], codes[:, 1, c] = qa[ok], qb[ok]
        lin = response.linear(codes)[:, :, c]
        ratios.append(lin[:, 1] / np.maximum(lin[:, 0], 1e-8))
    return float(np.median(np.concatenate(ratios))) if ratios else None


def check_exposures_match_frames(paths: Sequence[Path], frames: Sequence[np.ndarray], times: np.ndarray,
                                 response: Response | None = None,
                                 tolerance_stops: float = EXPOSURE_TOLERANCE_STOPS,
                                 times_from: str = '--exposures (or the EXIF)') -> None:
    """Raise when the exposure times contradict the frames' brightness (sorted by exposure).

    The ratio between neighbouring frames is measured from their brightness distributions
    (:func:`measured_exposure_ratio`, through the response ``f``, gamma 2.2 by default) and must agree with
    ``t_b / t_a`` within ``tolerance_stops``; frames that share too little well-exposed range are not judged.
    ``times_from``: where the times came from, named in the error."""
    response = response if response is not None else resolve_response(f'gamma{GAMMA:g}')
    for a in range(len(frames) - 1):
        b = a + 1
        measured = measured_exposure_ratio(frames[a], frames[b], response)
        if measured is None:
            continue  # too little common well-exposed range to judge
        expected = float(times[b] / times[a])
        stops = math.log2(max(measured, 1e-8))
        if abs(stops - math.log2(expected)) > tolerance_stops:
            raise MergeError(f'exposure times contradict the images: {paths[b]} is {stops:.1f} stops '
                             f'brighter than {paths[a]}, but the times say {math.log2(expected):.1f} stops; check '
                             f'{times_from}, or pass --trust_exposures to use them anyway')


def select_frames(times: Sequence[float], reference: int | None = None) -> tuple[int, int, int]:
    """Indices (short, medium, long) into frames sorted by exposure: the shortest, the longest, and as the
    reference ``reference`` or the frame nearest the middle of the two in stops."""
    n = len(times)
    if reference is None:
        mid = (math.log2(times[0]) + math.log2(times[-1])) / 2
        reference = min(range(1, n - 1), key=lambda k: abs(math.log2(times[k]) - mid))
    return 0, reference, n - 1


