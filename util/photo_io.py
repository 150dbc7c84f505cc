"""Output files of ``tools/merge_brackets.py`` that ``util/hdr_io.py`` does not write: half or float OpenEXR,
16-bit linear TIFF, 8-bit PNG, and a labelled side-by-side comparison sheet.

Every writer is atomic: it writes a temporary file in the destination folder and ``os.replace``s it onto the
final name, so an interrupted run never leaves a half-written file under that name. Images are float ``H x W x 3``
**BGR** (the project's order); files store RGB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from util.hdr_io import ImageWriteError
from util.hdr_io import atomic_write as _atomic_write

__all__ = ['OutputError', 'atomic_write', 'write_exr', 'write_tiff16', 'write_png8', 'compare_sheet',
           'EXR_TYPES']

EXR_TYPES = ('half', 'float')


class OutputError(ImageWriteError):
    """An output file could not be written; the message names it."""


def atomic_write(path, write_fn: Callable[[str], None]) -> Path:
    """``util.hdr_io.atomic_write`` (temporary file, then ``os.replace``), its failures raised as OutputError."""
    try:
        _atomic_write(Path(path), write_fn)
    except ImageWriteError as exc:
        raise exc if isinstance(exc, OutputError) else OutputError(str(exc)) from exc
    return Path(path)


def _check(img, path) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f'{path}: expected an H x W x 3 BGR image, got shape {img.shape}')
    if not np.isfinite(img).all():
        raise ValueError(f'{path}: refusing to write NaN/Inf values')
    return img


def _cv2_write(tmp: str, img: np.ndarray, params: Sequence[int], path: Path) -> None:
    if not cv2.imwrite(tmp, img, list(params)):
        raise OutputError(f'cannot write {path}: OpenCV could not encode the image')


def write_exr(path, img_bgr: np.ndarray, pixel_type: str = 'float') -> Path:
    """Linear radiance as a ZIP-compressed scanline OpenEXR with R, G, B channels of ``half`` or ``float``."""
    import OpenEXR

    if pixel_type not in EXR_TYPES:
        raise ValueError(f'EXR pixel type must be one of {EXR_TYPES}, got {pixel_type!r}')
    path = Path(path)
    img = _check(img_bgr, path)
    dtype = np.float16 if pixel_type == 'half' else np.float32
    if pixel_type == 'half' and np.abs(img).max() > np.finfo(np.float16).max:
        raise ValueError(f'{path}: values above {np.finfo(np.float16).max:g} do not fit a half EXR; use float')
    rgb = np.ascontiguousarray(img[:, :, ::-1].astype(dtype))
    header = {'compression': OpenEXR.ZIP_COMPRESSION, 'type': OpenEXR.scanlineimage}

    def _write(tmp: str) -> None:
        try:
            with OpenEXR.File(header, {'RGB': rgb}) as f:
                f.write(tmp)
        except Exception as exc:  # the binding raises RuntimeError and others
            raise OutputError(f'cannot write {path}: OpenEXR failed ({exc})') from exc

    return atomic_write(path, _write)


def write_tiff16(path, img_bgr: np.ndarray) -> Path:
    """Linear values in [0, 1] as a 16-bit RGB TIFF: ``round(clip(x, 0, 1) * 65535)`` (no gamma)."""
    path = Path(path)
    if path.suffix.lower() not in ('.tif', '.tiff'):
        raise ValueError(f'{path}: a 16-bit TIFF must end in .tif or .tiff')
    img = _check(img_bgr, path)
    v = np.clip(np.rint(np.clip(img.astype(np.float64), 0, 1) * 65535.0), 0, 65535).astype(np.uint16)
    params = [cv2.IMWRITE_TIFF_COMPRESSION, cv2.IMWRITE_TIFF_COMPRESSION_LZW]
    return atomic_write(path, lambda tmp: _cv2_write(tmp, v, params, path))


def write_png8(path, img01_bgr: np.ndarray) -> Path:
    """A [0, 1] (float) or uint8 BGR image as an 8-bit PNG."""
    path = Path(path)
    if path.suffix.lower() != '.png':
        raise ValueError(f'{path}: expected a .png name')
    img = _check(img01_bgr, path)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return atomic_write(path, lambda tmp: _cv2_write(tmp, img, [], path))


def compare_sheet(panels: Sequence[tuple[str, np.ndarray]], max_height: int = 360, gap: int = 6) -> np.ndarray:
    """Panels ``(label, [0, 1] BGR image)`` side by side on one uint8 sheet, each under a label bar.

    Panels are resized to a common height (at most ``max_height``, never enlarged) keeping their aspect."""
    if not panels:
        raise ValueError('compare_sheet needs at least one panel')
    h0 = min(max_height, min(p[1].shape[0] for p in panels))
    tiles = []
    for _, img in panels:
        h, w = img.shape[:2]
        nw = max(1, round(w * h0 / h))
        small = cv2.resize(np.asarray(img, np.float32), (nw, h0), interpolation=cv2.INTER_AREA)
        tiles.append(np.clip(np.rint(small * 255), 0, 255).astype(np.uint8))
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    scale = 0.45 if h0 >= 120 else 0.3
    (_, th), base = cv2.getTextSize('Ag', font, scale, thick)
    bar = th + base + 8
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    sheet = np.full((bar + h0, width, 3), 24, np.uint8)
    x = 0
    for (label, _), tile in zip(panels, tiles):
        sheet[bar:, x:x + tile.shape[1]] = tile
        text = label
        while len(text) > 1 and cv2.getTextSize(text, font, scale, thick)[0][0] > tile.shape[1] - 4:
            text = text[:-1]  # cut labels wider than their panel
        cv2.putText(sheet, text, (x + 2, th + 3), font, scale, (235, 235, 235), thick, cv2.LINE_AA)
        x += tile.shape[1] + gap
    return sheet
