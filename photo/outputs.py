"""The outputs of a merged bracket (``write_outputs``: .hdr, .exr, .tif, the tone-mapped preview .png and the
comparison sheet), and the writers ``util/hdr_io.py`` does not have: half or float OpenEXR, 16-bit linear TIFF,
8-bit PNG, and a labelled side-by-side comparison sheet.

Every writer is atomic: it writes a temporary file in the destination folder and ``os.replace``s it onto the
final name, so an interrupted run never leaves a half-written file under that name. Images are float ``H x W x 3``
**BGR** (the project's order); files store RGB.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from photo.errors import MergeError
from util.colour import GAMMA
from util.hdr_io import ImageWriteError
from util.hdr_io import atomic_write as _atomic_write
from util.hdr_io import write_hdr
from util.tonemap import OPERATORS, tonemap

if TYPE_CHECKING:  # only an annotation: photo.merge imports nothing of this file
    from photo.merge import MergeResult

__all__ = ['OutputError', 'atomic_write', 'write_exr', 'write_tiff16', 'write_png8', 'compare_sheet',
           'EXR_TYPES', 'OUTPUT_FORMATS', 'DEFAULT_FORMATS', 'PREVIEW_SHADOWS', 'preview', 'write_outputs']

EXR_TYPES = ('half', 'float')
# Where the display preview's shadow colour comes from: 'merge' (default) the classical merge of the same frames
# wherever it agrees with the network (util.tonemap.guided_shadow_chroma), 'network' the network's output alone.
PREVIEW_SHADOWS = ('merge', 'network')


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


OUTPUT_FORMATS = ('hdr', 'exr', 'tiff', 'png')
FORMAT_SUFFIX = {'hdr': '.hdr', 'exr': '.exr', 'tiff': '.tif', 'png': '.png'}  # the file each format writes
DEFAULT_FORMATS = ('hdr', 'exr', 'png')


def _display_frame(x: np.ndarray, kind: str) -> np.ndarray:
    """An input frame for viewing: camera codes as they are, RAW linear values with the display gamma."""
    return np.clip(x, 0, 1) ** (1 / GAMMA) if kind == 'raw' else np.clip(x, 0, 1)


def _check_shadows(shadows: str) -> None:
    if shadows not in PREVIEW_SHADOWS:
        raise MergeError(f'--preview_shadows {shadows!r}: choose {" or ".join(PREVIEW_SHADOWS)}')


def preview(result: MergeResult, operator: str = 'display', exposure: float = 0.0,
            shadows: str = 'merge') -> np.ndarray:
    """The tone-mapped preview of the network's result, [0, 1] BGR. With the ``display`` operator and
    ``shadows='merge'`` its static shadows take the classical merge's colour (``PREVIEW_SHADOWS``; a result without
    its input frames has no classical merge and gets the network's own); the radiance files are never processed."""
    _check_shadows(shadows)
    key = (operator, float(exposure), shadows)
    if key not in result.previews:  # computed once per result: the .png, --compare and the contact sheet share it
        extra = {}
        if operator == 'display' and shadows == 'merge' and result.inputs:
            extra['chroma_guide'] = result.classical  # negative values are clipped by the operator
        result.previews[key] = tonemap(np.maximum(result.hdr, 0), operator, exposure=exposure, **extra)
    return result.previews[key]


def ensure_output_folder(output_dir) -> Path:
    """Create `output_dir` if needed and prove it takes a file (one written and removed), so that a folder the
    merge cannot write to is an error before the network runs, not after it. Returns the folder."""
    import tempfile

    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix='.write_test_'):
            pass
    except OSError as exc:
        raise MergeError(f'{output_dir}: the output folder cannot be written to ({exc.strerror or exc}); '
                         'choose another --output_dir') from exc
    return output_dir


def write_outputs(result: MergeResult, output_dir, name: str, operator: str = 'display',
                  preview_exposure: float = 0.0, formats: Sequence[str] = DEFAULT_FORMATS,
                  exr_type: str = 'float', compare: bool = False, preview_shadows: str = 'merge') -> dict[str, Path]:
    """Write the requested ``formats`` of ``<name>``: ``.hdr`` (RGBE), ``.exr`` (``exr_type`` half or float),
    ``.tif`` (16-bit linear), ``.png`` (tone-mapped preview), and with ``compare`` ``<name>_compare.png`` (the
    three inputs, the classical merge and the network's result side by side, labelled). ``preview_shadows``: see
    :func:`preview`. Every file is written to a temporary name and renamed into place. Returns the paths by
    format."""
    if operator not in OPERATORS:
        raise MergeError(f'--tonemap {operator!r} is unknown; choose from {sorted(OPERATORS)}')
    if not name or Path(name).name != name:
        raise MergeError(f'--name {name!r} must be a plain file name without folders')
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats:
        raise MergeError(f'--formats {" ".join(formats)}: choose one or more of {", ".join(OUTPUT_FORMATS)}')
    if exr_type not in EXR_TYPES:
        raise MergeError(f'--exr_type {exr_type!r}: choose half or float')
    _check_shadows(preview_shadows)  # before any file is written
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergeError(f'{output_dir}: cannot create the output folder ({exc})') from exc
    paths = {f: output_dir / f'{name}{FORMAT_SUFFIX[f]}' for f in OUTPUT_FORMATS if f in formats}
    if 'hdr' in paths:
        write_hdr(paths['hdr'], result.hdr)
    if 'exr' in paths:
        write_exr(paths['exr'], result.hdr, exr_type)
    if 'tiff' in paths:
        write_tiff16(paths['tiff'], result.hdr)
    shown = preview(result, operator, preview_exposure, preview_shadows) if 'png' in paths or compare else None
    if 'png' in paths:
        write_png8(paths['png'], shown)
    if compare:
        b = result.bracket
        labels = [f'short x1: {b.paths[0].name}', f'medium x{b.times[1]:g} (ref): {b.paths[1].name}',
                  f'long x{b.times[2]:g}: {b.paths[2].name}']
        panels = [(lab, _display_frame(x, b.kind)) for lab, x in zip(labels, b.frames)]
        panels.append(('classical merge', tonemap(np.maximum(result.classical, 0), operator,
                                                  exposure=preview_exposure)))
        panels.append((f'{result.network} (SelfHDR)', shown))
        paths['compare'] = write_png8(output_dir / f'{name}_compare.png', compare_sheet(panels))
    return paths
