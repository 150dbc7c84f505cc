"""Small report figures drawn with OpenCV (no plotting library needed): labelled image grids and line charts."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ['labelled_grid', 'draw_curves']

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_COLOURS = [(200, 80, 30), (40, 160, 40), (30, 30, 220), (160, 40, 160), (0, 140, 200), (90, 90, 90)]  # BGR


def _write_png(path: Path, img: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp.png')
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f'cannot write {path}')
    os.replace(tmp, path)


def labelled_grid(images: dict[str, np.ndarray], path, columns: int = 4, max_side: int = 320) -> np.ndarray:
    """Tiles of display-referred BGR images in [0, 1] (same size), each with its name above it; written as PNG."""
    names = list(images)
    first = images[names[0]]
    scale = min(1.0, max_side / max(first.shape[:2]))
    h, w = int(round(first.shape[0] * scale)), int(round(first.shape[1] * scale))
    bar = 24
    rows = -(-len(names) // columns)
    canvas = np.full((rows * (h + bar), min(columns, len(names)) * w, 3), 255, np.uint8)
    for k, name in enumerate(names):
        r, c = divmod(k, columns)
        tile = cv2.resize(np.clip(images[name], 0, 1), (w, h), interpolation=cv2.INTER_AREA)
        y = r * (h + bar)
        canvas[y + bar:y + bar + h, c * w:(c + 1) * w] = np.round(tile * 255).astype(np.uint8)
        cv2.putText(canvas, name, (c * w + 4, y + 17), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    _write_png(path, canvas)
    return canvas


def write_stacked(rows: list[np.ndarray], path) -> np.ndarray:
    """Stack 8-bit images of one width (e.g. ``labelled_grid`` rows) top to bottom and write them as PNG."""
    canvas = np.concatenate(rows, axis=0)
    _write_png(Path(path), canvas)
    return canvas


def _chart(series: dict[str, dict], title: str, size=(300, 480)) -> np.ndarray:
    h, w = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 10, 28, 30
    cv2.putText(img, title, (left, 18), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(float(x), float(y)) for s in series.values() for x, y in s.items() if np.isfinite(y)]
    if not points:
        return img
    xs, ys = zip(*points)
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for v, yy in ((y0, h - bottom), (y1, top)):
        cv2.putText(img, f'{v:.3g}', (4, yy + 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f'epoch {x0:g}', (left, h - 10), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f'{x1:g}', (w - right - 30, h - 10), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)

    def to_px(x, y):
        return (int(left + (x - x0) / (x1 - x0) * (w - left - right)),
                int(h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)))

    for k, (name, s) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        pts = [to_px(float(x), float(y)) for x, y in s.items() if np.isfinite(y)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 2, colour, -1)
        cv2.putText(img, name, (left + 6, top + 16 + 14 * k), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    return img


def draw_curves(curves: dict[str, dict], path) -> np.ndarray:
    """Two charts side by side: training loss and validation PSNR-mu per epoch, one line per run.
    ``curves`` maps run -> {'loss': {epoch: value}, 'val_psnr_mu': {epoch: value}}."""
    loss = _chart({run: c.get('loss', {}) for run, c in curves.items()}, 'training loss (mean per epoch)')
    val = _chart({run: c.get('val_psnr_mu', {}) for run, c in curves.items()}, 'validation PSNR-mu (dB)')
    img = np.hstack([loss, val])
    _write_png(path, img)
    return img
