"""Camera RAW frames (DNG, CR2/CR3, NEF, ARW, RAF, ORF, RW2, ...) through rawpy (LibRaw), for merging brackets.

A RAW frame is decoded as **linear** radiance, so it needs no camera response curve:

* LibRaw's demosaicing (AHD) with the camera's as-shot white balance (``use_camera_wb``), converted to linear
  sRGB primaries (the camera matrix of the file), no gamma (``gamma=(1, 1)``), no automatic brightening, 16
  bits per channel. ``1.0`` is the file's white level (after white balance); values there are clipped. The
  white level is the file's, never the brightest pixel's (LibRaw's ``adjust_maximum_thr`` is off), so every
  frame of a bracket has the same scale and the exposure ratios hold.
* Returned as float32 ``H x W x 3`` **BGR** in [0, 1] like every other frame of this project, with the exposure
  metadata LibRaw read (shutter time in seconds, ISO, f-number; 0 where the file has none).

Errors (not a RAW file, unsupported camera, truncated file) raise :class:`RawReadError` naming the file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from util.flags import SECONDS_RANGE, NumberRangeError, checked_number

logger = logging.getLogger(__name__)

__all__ = ['RAW_EXTS', 'RawReadError', 'RawFrame', 'is_raw', 'read_raw', 'relative_exposure']

RAW_EXTS = ('.dng', '.cr2', '.cr3', '.crw', '.nef', '.nrw', '.arw', '.srf', '.sr2', '.raf', '.orf', '.rw2', '.rwl',
            '.pef', '.srw', '.raw', '.3fr', '.erf', '.kdc', '.mrw', '.x3f', '.iiq', '.mos')


class RawReadError(OSError, ValueError):
    """A RAW file that LibRaw cannot read or that lacks what the merge needs."""


@dataclass
class RawFrame:
    path: Path
    linear: np.ndarray          # float32 H x W x 3 BGR in [0, 1], linear
    shutter_s: float            # 0 when the file has no exposure time
    iso: float                  # 0 when unknown
    aperture: float             # f-number, 0 when unknown
    camera_wb: tuple[float, ...]  # as-shot multipliers (R, G, B, G2) as LibRaw read them


def is_raw(path) -> bool:
    return Path(path).suffix.lower() in RAW_EXTS


def read_raw(path) -> RawFrame:
    """Decode a RAW file to linear float32 BGR in [0, 1] with its exposure metadata."""
    try:
        import rawpy
    except ImportError as exc:  # pragma: no cover - rawpy is in requirements.txt
        raise RawReadError(f'{path}: reading RAW files needs the rawpy package (pip install rawpy)') from exc
    path = Path(path)
    if not path.is_file():
        raise RawReadError(f'{path}: file does not exist' if not path.exists() else f'{path}: not a regular file')
    try:
        with rawpy.imread(str(path)) as raw:
            wb = tuple(float(v) for v in raw.camera_whitebalance)
            if not any(v > 0 for v in wb[:3]):
                logger.warning('%s: no as-shot white balance in the file; LibRaw uses its daylight default', path)
            other = raw.other
            # adjust_maximum_thr=0: LibRaw would otherwise lower the white level to the brightest pixel whenever
            # that exceeds 75% of it, so each frame of a bracket would get its own scale.
            rgb = raw.postprocess(gamma=(1, 1), no_auto_bright=True, output_bps=16, use_camera_wb=True,
                                  output_color=rawpy.ColorSpace.sRGB, adjust_maximum_thr=0.0)
    except rawpy.LibRawError as exc:
        raise RawReadError(f'{path}: LibRaw cannot read this RAW file ({type(exc).__name__}: {exc})') from exc
    except (OSError, ValueError) as exc:
        raise RawReadError(f'{path}: cannot read RAW file ({exc})') from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise RawReadError(f'{path}: LibRaw returned shape {rgb.shape}, expected H x W x 3')
    bgr = np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.float32) / np.float32(65535.0)
    return RawFrame(path=path, linear=bgr, shutter_s=float(other.shutter_speed), iso=float(other.iso_speed),
                    aperture=float(other.aperture), camera_wb=wb)


ISO_RANGE = (1.0, 1e7)          # ISO speeds a camera writes
F_NUMBER_RANGE = (0.3, 1000.0)  # f-numbers (pinholes included)


def _plausible(value, bounds) -> bool:
    try:
        checked_number(value, 'metadata', *bounds)
    except NumberRangeError:
        return False
    return True


def relative_exposure(frames) -> tuple[list[float | None], str]:
    """Exposure of each frame from its metadata (`RawFrame`s, or `photo.exposures.ExifExposure`s of JPEG/TIFF
    frames: anything with shutter_s, iso and aperture): shutter time, times ISO (when every frame has one and they
    differ) and divided by the f-number squared (likewise). A frame without a shutter time gives None.

    Returns the exposures and a description of what entered them."""
    # Metadata checked at the door: a value that is not finite or not plausible counts as missing.
    use_iso = all(_plausible(f.iso, ISO_RANGE) for f in frames) and len({f.iso for f in frames}) > 1
    use_ap = all(_plausible(f.aperture, F_NUMBER_RANGE) for f in frames) and len({f.aperture for f in frames}) > 1
    out = []
    for f in frames:
        if not _plausible(f.shutter_s, SECONDS_RANGE):
            out.append(None)
            continue
        e = f.shutter_s * (f.iso / 100.0 if use_iso else 1.0) / (f.aperture ** 2 if use_ap else 1.0)
        out.append(e)
    what = 'shutter time' + (' x ISO' if use_iso else '') + (' / f-number^2' if use_ap else '')
    return out, what
