"""Exposure files and frame selection for the three data sets (``specs/method.md``, "Data conventions").

All readers return exposure **times** as a float32 array ordered short, medium, long.

File formats assumed (the data sets ship plain text files; we parse them strictly):

Every value must be finite and, in stops, within ``util.flags.STOPS_RANGE`` ([-32, 32]); in seconds within
``util.flags.SECONDS_RANGE`` ([1e-9, 1e6]); anything else is an :class:`ExposureFileError` naming the file and value.

* **SIGGRAPH17 (Kalantari)** ``<scene>/exposure.txt``: one number per frame, in **stops**
  (whitespace- or newline-separated, blank lines ignored). ``t_i = 2 ** value_i``. The scene's
  three ``.tif`` frames sorted by file name are short, medium, long, so the values must be
  strictly increasing; anything else is an error. No normalisation (the release uses the values
  as they are).
* **Sen (2012)** ``<scene>/exposures.txt``: one number per frame, in stops, for every frame of the
  scene (3 or more, sorted by file name). The middle three are used (indices
  ``(n-3)//2 .. (n-3)//2 + 2``)
  and their times are normalised by the first of the three, i.e. ``t = 2 ** (v - v_first)``, so
  the short frame has ``t = 1``.
  *Assumption*: the values are stops like SIGGRAPH17's. Pass ``unit='seconds'`` if a copy of the
  data stores exposure times (fractions such as ``1/250`` are accepted then).
* **Tursun (2016)** ``<scene>/exposure.txt``: one number per frame, in stops, for all frames of
  the scene (at least 9); frames 5, 7, 9 (1-based) are used, ``t = 2 ** v`` without normalisation
  (the spec names none). The same ``unit`` switch applies.

Frames are matched to values by position in the sorted list of image files (plain ``sorted`` on
the names, as the release does), so a file count that differs from the value count is an error.
"""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

from util.flags import SECONDS_RANGE, STOPS_RANGE, NumberRangeError, checked_number

logger = logging.getLogger(__name__)

__all__ = [
    'ExposureFileError', 'DATASETS', 'EXPOSURE_FILE', 'FRAME_EXTS',
    'parse_values', 'read_sig17_exposures', 'read_sen_exposures', 'read_tursun_exposures',
    'sen_middle_indices', 'list_frames', 'select_frames', 'scene_frames_and_times',
]

DATASETS = ('sig17', 'sen', 'tursun')
EXPOSURE_FILE = {'sig17': 'exposure.txt', 'sen': 'exposures.txt', 'tursun': 'exposure.txt'}
FRAME_EXTS = {'sig17': ('.tif', '.tiff'), 'sen': ('.tif', '.tiff'), 'tursun': ('.tif', '.tiff')}
TURSUN_FRAMES = (5, 7, 9)  # 1-based, from the spec


class ExposureFileError(ValueError):
    """An exposure file or a scene's frame list is missing or malformed."""


def parse_values(path, unit: str = 'stops') -> np.ndarray:
    """Read all numbers of an exposure file as float64 (stops, or seconds if ``unit='seconds'``)."""
    path = Path(path)
    if unit not in ('stops', 'seconds'):
        raise ValueError(f"unit must be 'stops' or 'seconds', got {unit!r}")
    if not path.is_file():
        raise ExposureFileError(f'{path}: exposure file does not exist')
    try:
        text = path.read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as exc:
        raise ExposureFileError(f'{path}: cannot read exposure file ({exc})') from exc
    values = []
    for tok in text.split():
        try:
            # Fractions ('1/250') only make sense for times; stops are plain numbers.
            v = float(Fraction(tok)) if (unit == 'seconds' and '/' in tok) else float(tok)
        except (ValueError, ZeroDivisionError, OverflowError):
            raise ExposureFileError(f'{path}: non-numeric value {tok!r}') from None
        # The one check at the door: finite, and in the range whose times stay finite in float32 (2**200 would
        # overflow to inf and train silently on it).
        if not np.isfinite(v):
            raise ExposureFileError(f'{path}: non-finite value {tok!r}')
        if unit == 'seconds' and v <= 0:
            raise ExposureFileError(f'{path}: exposure times must be positive, got {tok!r}')
        lo, hi = STOPS_RANGE if unit == 'stops' else SECONDS_RANGE
        what = 'exposure value (stops)' if unit == 'stops' else 'exposure time (seconds)'
        try:
            values.append(checked_number(v, what, lo, hi, source=str(path)))
        except NumberRangeError as exc:
            raise ExposureFileError(f'{exc} (token {tok!r})') from None
    if not values:
        raise ExposureFileError(f'{path}: exposure file is empty')
    return np.asarray(values, dtype=np.float64)


def _to_times(values: np.ndarray, unit: str) -> np.ndarray:
    return np.power(2.0, values) if unit == 'stops' else values.copy()


def _check_increasing(times: np.ndarray, path: Path) -> None:
    if not np.all(np.diff(times) > 0):
        raise ExposureFileError(
            f'{path}: exposures must increase strictly from short to long (frames sort short to long), '
            f'got times {times.tolist()}')


def read_sig17_exposures(path) -> np.ndarray:
    """SIGGRAPH17 ``exposure.txt``: three values in stops -> times ``2**v`` (float32, increasing)."""
    path = Path(path)
    values = parse_values(path, 'stops')
    if values.size != 3:
        raise ExposureFileError(f'{path}: expected 3 exposure values (short, medium, long), got {values.size}')
    times = _to_times(values, 'stops')
    _check_increasing(times, path)
    return times.astype(np.float32)


def sen_middle_indices(n: int) -> tuple[int, int, int]:
    """Indices of the middle three of ``n`` frames (``n >= 3``); for even ``n`` the earlier three
    of the two central triples (``n = 4`` -> 0, 1, 2)."""
    if n < 3:
        raise ValueError(f'need at least 3 frames, got {n}')
    start = (n - 3) // 2
    return (start, start + 1, start + 2)


def read_sen_exposures(path, n_frames: int | None = None, unit: str = 'stops') -> np.ndarray:
    """Sen ``exposures.txt``: middle three values, times normalised by the first of the three."""
    path = Path(path)
    values = parse_values(path, unit)
    if values.size < 3:
        raise ExposureFileError(f'{path}: expected at least 3 exposure values, got {values.size}')
    if n_frames is not None and values.size != n_frames:
        raise ExposureFileError(f'{path}: {values.size} exposure values for {n_frames} frames')
    times = _to_times(values[list(sen_middle_indices(values.size))], unit)
    _check_increasing(times, path)
    return (times / times[0]).astype(np.float32)


def read_tursun_exposures(path, n_frames: int | None = None, unit: str = 'stops') -> np.ndarray:
    """Tursun ``exposure.txt``: values of frames 5, 7, 9 (1-based) as times."""
    path = Path(path)
    values = parse_values(path, unit)
    if values.size < max(TURSUN_FRAMES):
        raise ExposureFileError(f'{path}: expected at least {max(TURSUN_FRAMES)} exposure values, got {values.size}')
    if n_frames is not None and values.size != n_frames:
        raise ExposureFileError(f'{path}: {values.size} exposure values for {n_frames} frames')
    times = _to_times(values[[i - 1 for i in TURSUN_FRAMES]], unit)
    _check_increasing(times, path)
    return times.astype(np.float32)


def list_frames(scene_dir, dataset: str = 'sig17') -> list[Path]:
    """All LDR frames of a scene, sorted by file name (the release's order)."""
    scene_dir = Path(scene_dir)
    if dataset not in DATASETS:
        raise ValueError(f'unknown dataset {dataset!r}; choose from {DATASETS}')
    if not scene_dir.is_dir():
        raise ExposureFileError(f'{scene_dir}: scene folder does not exist')
    exts = FRAME_EXTS[dataset]
    return sorted((p for p in scene_dir.iterdir() if p.is_file() and p.suffix.lower() in exts),
                  key=lambda p: p.name)


def select_frames(frames: list[Path], dataset: str, scene_dir=None) -> list[Path]:
    """Pick the short, medium, long frames used by ``dataset`` from the sorted frame list."""
    where = scene_dir if scene_dir is not None else (frames[0].parent if frames else '?')
    n = len(frames)
    if dataset == 'sig17':
        if n != 3:
            raise ExposureFileError(f'{where}: expected 3 frames for sig17, found {n} '
                                    f'({" or ".join(FRAME_EXTS[dataset])} files; other images are not read)')
        return list(frames)
    if dataset == 'sen':
        if n < 3:
            raise ExposureFileError(f'{where}: expected at least 3 frames for sen, found {n}')
        return [frames[i] for i in sen_middle_indices(n)]
    if dataset == 'tursun':
        if n < max(TURSUN_FRAMES):
            raise ExposureFileError(f'{where}: expected at least {max(TURSUN_FRAMES)} frames for tursun, found {n}')
        return [frames[i - 1] for i in TURSUN_FRAMES]
    raise ValueError(f'unknown dataset {dataset!r}; choose from {DATASETS}')


def scene_frames_and_times(scene_dir, dataset: str = 'sig17', unit: str = 'stops') -> tuple[list[Path], np.ndarray]:
    """The three frames (short, medium, long) of a scene and their exposure times (float32)."""
    scene_dir = Path(scene_dir)
    frames = list_frames(scene_dir, dataset)
    chosen = select_frames(frames, dataset, scene_dir)
    expo_path = scene_dir / EXPOSURE_FILE[dataset]
    if dataset == 'sig17':
        times = read_sig17_exposures(expo_path)
    elif dataset == 'sen':
        times = read_sen_exposures(expo_path, n_frames=len(frames), unit=unit)
    else:
        times = read_tursun_exposures(expo_path, n_frames=len(frames), unit=unit)
    return chosen, times
