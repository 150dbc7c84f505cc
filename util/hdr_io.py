"""Image I/O for SelfHDR: Radiance ``.hdr``, OpenEXR, and 8/16-bit LDR frames.

Conventions (see ``specs/method.md``, "Data conventions"):

* Every array returned is ``float32``, ``H x W x 3``, channel order **BGR**.
* Radiance files are read with OpenCV as float32 (never through an 8-bit path; the release's
  fallback to Pillow silently gave 8-bit labels). OpenCV flips the file's RGB to BGR.
* LDR decode: 16-bit ``clip(v / 2**16, 0, 1)`` (2**16, not 65535: the release's convention, so
  65535 decodes to 0.99998); 8-bit ``v / 255``.
* Writers are atomic: they write a temporary file in the destination folder, then ``os.replace``
  it, so an interrupted run never leaves a half-written image under the final name.

Every reader raises :class:`ImageReadError` naming the path and what is wrong.
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from util.fs import write_failure_cause

logger = logging.getLogger(__name__)

__all__ = [
    'ImageReadError', 'ChannelLayoutError', 'ImageWriteError',
    'read_hdr', 'write_hdr', 'read_exr', 'write_exr', 'read_radiance', 'write_radiance',
    'read_ldr', 'read_ldr_bits', 'write_ldr16', 'write_ldr8', 'atomic_write', 'LDR16_SCALE', 'RADIANCE_EXTS', 'LDR_EXTS',
]

LDR16_SCALE = 2.0 ** 16  # release decodes 16-bit frames as v / 2**16
RADIANCE_EXTS = ('.hdr', '.exr')
LDR_EXTS = ('.tif', '.tiff', '.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm')


class ImageReadError(OSError, ValueError):
    """A file could not be read as the expected image (missing, corrupt, wrong type, bad values).

    Subclasses both ``OSError`` and ``ValueError`` so callers may catch either.
    """


class ChannelLayoutError(ImageReadError):
    """A grey or alpha frame where strict reading wants exactly three colour channels."""


class ImageWriteError(OSError):
    """An image could not be written."""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(f'{path}: file does not exist')
    if not path.is_file():
        raise ImageReadError(f'{path}: not a regular file')
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f'{path}: cannot read file ({exc})') from exc
    if not data:
        raise ImageReadError(f'{path}: file is empty')
    return data


def _decode(path: Path, flags: int) -> np.ndarray:
    # imdecode from bytes rather than imread(path): works for any path encoding and lets us
    # separate "missing" from "corrupt".
    data = _read_bytes(path)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ImageReadError(f'{path}: corrupt or unsupported image ({exc})') from exc
    if img is None:
        raise ImageReadError(f'{path}: not a readable image (corrupt, truncated, or not an image file)')
    return img


def _to_bgr3(img: np.ndarray, path: Path, convert: bool = True) -> np.ndarray:
    """Grey -> replicated to 3 channels; BGRA -> alpha dropped (alpha is not colour); each with a warning.

    With ``convert=False`` both are a :class:`ChannelLayoutError` instead (data sets use that by default)."""
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    grey = img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1)
    alpha = img.ndim == 3 and img.shape[2] == 4
    if (grey or alpha) and not convert:
        what = 'a grey (1-channel) image' if grey else 'a 4-channel image (colour + alpha)'
        raise ChannelLayoutError(f'{path}: {what}, expected 3 colour channels')
    if grey:
        logger.warning('%s: grey image, replicated to 3 channels', path)
        return np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    if alpha:
        logger.warning('%s: 4-channel image, alpha channel dropped', path)
        return img[:, :, :3]
    raise ImageReadError(f'{path}: unsupported image shape {img.shape} (expected grey, BGR or BGRA)')


def _check_finite(img: np.ndarray, path: Path) -> None:
    if not np.isfinite(img).all():
        n_nan = int(np.isnan(img).sum())
        n_inf = int(np.isinf(img).sum())
        raise ImageReadError(f'{path}: radiance contains {n_nan} NaN and {n_inf} Inf values')


def _check_write_input(img: np.ndarray, path: Path) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'{path}: expected an H x W x 3 BGR image, got shape {img.shape}')
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f'{path}: image is empty (shape {img.shape})')
    return img


def atomic_write(path: Path, write_fn: Callable[[str], None]) -> None:
    """Call ``write_fn(tmp_path)`` then move the temporary file onto ``path``.

    The temporary name keeps the real suffix because OpenCV picks the encoder from it.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir():
        raise ImageWriteError(f'{path}: destination folder {folder} does not exist')
    # Not tempfile.mkstemp: it creates the file 0600, while outputs should get the umask's
    # permissions like any other file.
    tmp = str(folder / f'.{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}')
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, ImageWriteError):
            raise ImageWriteError(f'cannot write {path}: {write_failure_cause(exc, path)}') from exc
        raise


def _cv2_write(tmp: str, img: np.ndarray, params: list[int], path: Path) -> None:
    try:
        ok = cv2.imwrite(tmp, img, params)
    except cv2.error as exc:
        raise ImageWriteError(f'{path}: OpenCV could not write the image ({exc})') from exc
    if not ok:  # OpenCV gives no reason: name the likely one (a full disk, a folder that is not writable)
        raise ImageWriteError(f'cannot write {path}: OpenCV could not write the image '
                              f'({write_failure_cause(None, tmp)})')


# ----------------------------------------------------------------------------------------------
# Radiance RGBE (.hdr)
# ----------------------------------------------------------------------------------------------

def read_hdr(path) -> np.ndarray:
    """Read a Radiance RGBE file (flat or run-length encoded) as float32 H x W x 3 BGR."""
    path = Path(path)
    img = _decode(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR)
    if img.dtype != np.float32:
        raise ImageReadError(f'{path}: decoded as {img.dtype}, expected float32 radiance (not a Radiance .hdr file?)')
    img = _to_bgr3(img, path)
    _check_finite(img, path)
    return np.ascontiguousarray(img)


def write_hdr(path, img_bgr: np.ndarray) -> None:
    """Write float BGR radiance as run-length encoded Radiance RGBE (RGB in the file).

    OpenCV's encoder (Ward's algorithm) stores black pixels as exact zeros and handles the full
    RGBE range (about 1e-38 .. 1.7e38, 8-bit mantissa relative to the pixel's largest channel);
    the tests check that. It truncates the mantissa and decodes ``m * 2**(e - 136)`` (no +0.5,
    as FreeImage does too), so a round trip loses at most one mantissa step (< 1/128 of the
    pixel's largest channel), always downwards. Values RGBE cannot hold are refused or clipped: NaN/Inf raise,
    negative values are clipped to 0 with a warning (RGBE has no sign).
    """
    path = Path(path)
    img = _check_write_input(img_bgr, path).astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ValueError(f'{path}: refusing to write NaN/Inf radiance')
    if (img < 0).any():
        logger.warning('%s: %d negative values clipped to 0 (RGBE cannot store them)', path, int((img < 0).sum()))
        img = np.maximum(img, 0)
    img = np.ascontiguousarray(img)
    params = [cv2.IMWRITE_HDR_COMPRESSION, cv2.IMWRITE_HDR_COMPRESSION_RLE]
    atomic_write(path, lambda tmp: _cv2_write(tmp, img, params, path))


# ----------------------------------------------------------------------------------------------
# OpenEXR
# ----------------------------------------------------------------------------------------------

def read_exr(path) -> np.ndarray:
    """Read an OpenEXR file's R, G, B (or Y) channels as float32 H x W x 3 BGR."""
    import OpenEXR  # imported lazily: only EXR users need it

    path = Path(path)
    _read_bytes(path)  # existence / emptiness checks with our messages
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = {name: np.asarray(ch.pixels) for name, ch in f.channels().items()}
    except Exception as exc:  # the binding raises RuntimeError / OSError / ValueError
        raise ImageReadError(f'{path}: not a readable OpenEXR file ({exc})') from exc
    if all(c in channels for c in 'RGB'):
        img = np.stack([channels['B'], channels['G'], channels['R']], axis=2)
    elif 'Y' in channels:
        img = np.repeat(channels['Y'][:, :, None], 3, axis=2)
    else:
        raise ImageReadError(f'{path}: no R, G, B or Y channels (found {sorted(channels)})')
    if img.dtype.kind != 'f':
        raise ImageReadError(f'{path}: channels have dtype {img.dtype}, expected half or float')
    img = np.ascontiguousarray(img.astype(np.float32))
    _check_finite(img, path)
    return img


def write_exr(path, img_bgr: np.ndarray) -> None:
    """Write float BGR radiance as a float32, ZIP-compressed scanline OpenEXR (RGB channels)."""
    import OpenEXR

    path = Path(path)
    img = _check_write_input(img_bgr, path)
    rgb = np.ascontiguousarray(img[:, :, ::-1].astype(np.float32))
    header = {'compression': OpenEXR.ZIP_COMPRESSION, 'type': OpenEXR.scanlineimage}

    def _write(tmp: str) -> None:
        try:
            with OpenEXR.File(header, {'RGB': rgb}) as f:
                f.write(tmp)
        except Exception as exc:
            raise ImageWriteError(f'{path}: OpenEXR could not write the image ({exc})') from exc

    atomic_write(path, _write)


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------

def read_radiance(path) -> np.ndarray:
    """Read ``.hdr`` or ``.exr`` radiance as float32 H x W x 3 BGR."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == '.hdr':
        return read_hdr(path)
    if ext == '.exr':
        return read_exr(path)
    raise ImageReadError(f'{path}: unknown radiance extension {ext!r} (expected .hdr or .exr)')


def write_radiance(path, img_bgr: np.ndarray) -> None:
    """Write radiance to ``.hdr`` or ``.exr`` depending on the extension."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == '.hdr':
        write_hdr(path, img_bgr)
    elif ext == '.exr':
        write_exr(path, img_bgr)
    else:
        raise ValueError(f'{path}: unknown radiance extension {ext!r} (expected .hdr or .exr)')


# ----------------------------------------------------------------------------------------------
# LDR
# ----------------------------------------------------------------------------------------------

def read_ldr(path, expect_bits: int | None = None, convert_channels: bool = True) -> np.ndarray:
    """Read an 8- or 16-bit LDR frame as float32 H x W x 3 BGR in [0, 1].

    16-bit: ``clip(v / 2**16, 0, 1)`` (release convention; 65535 -> 0.99998).
    8-bit: ``v / 255``.
    ``expect_bits`` (8 or 16) makes any other bit depth an error. Grey images are replicated
    to 3 channels and a 4th (alpha) channel is dropped, each with a warning; ``convert_channels=False`` makes
    both a :class:`ChannelLayoutError`.
    """
    return read_ldr_bits(path, expect_bits, convert_channels)[0]


def read_ldr_bits(path, expect_bits: int | None = None, convert_channels: bool = True) -> tuple[np.ndarray, int]:
    """:func:`read_ldr` that also returns the file's bit depth (8 or 16)."""
    path = Path(path)
    if expect_bits not in (None, 8, 16):
        raise ValueError(f'expect_bits must be None, 8 or 16, got {expect_bits!r}')
    img = _decode(path, cv2.IMREAD_UNCHANGED)
    if img.dtype == np.uint16:
        bits = 16
    elif img.dtype == np.uint8:
        bits = 8
    else:
        raise ImageReadError(f'{path}: pixel dtype {img.dtype} is not an 8- or 16-bit LDR image')
    if expect_bits is not None and bits != expect_bits:
        raise ImageReadError(f'{path}: {bits}-bit image, expected {expect_bits}-bit')
    img = _to_bgr3(img, path, convert_channels)
    if bits == 16:
        out = np.clip(img.astype(np.float32) / np.float32(LDR16_SCALE), 0.0, 1.0)
    else:
        out = img.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(out, dtype=np.float32), bits


def _check_ldr_input(img01: np.ndarray, path: Path) -> np.ndarray:
    img = _check_write_input(img01, path).astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ValueError(f'{path}: refusing to write NaN/Inf values to an LDR image')
    return img


def write_ldr16(path, img01: np.ndarray) -> None:
    """Write [0,1] BGR as 16-bit TIFF/PNG: ``round(x * 2**16)`` clipped to [0, 65535].

    Inverse of :func:`read_ldr` within 1/2**16 for x in [0, 1] (x = 1 maps to 65535).
    """
    path = Path(path)
    if path.suffix.lower() not in ('.tif', '.tiff', '.png'):
        raise ValueError(f'{path}: 16-bit LDR must be .tif, .tiff or .png')
    img = _check_ldr_input(img01, path)
    v = np.clip(np.rint(img.astype(np.float64) * LDR16_SCALE), 0, 65535).astype(np.uint16)
    params: list[int] = []
    if path.suffix.lower() in ('.tif', '.tiff'):
        params = [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_LZW]
    atomic_write(path, lambda tmp: _cv2_write(tmp, v, params, path))


def write_ldr8(path, img01: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write [0,1] BGR as an 8-bit PNG/JPEG/TIFF: ``round(x * 255)`` clipped to [0, 255]."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp'):
        raise ValueError(f'{path}: 8-bit LDR must be .png, .jpg, .jpeg, .tif, .tiff or .bmp')
    img = _check_ldr_input(img01, path)
    v = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in ('.jpg', '.jpeg') else []
    atomic_write(path, lambda tmp: _cv2_write(tmp, v, params, path))
