"""The contact sheet of a batch: ``<output_dir>/index.html``, one row per bracket with the preview, the classical
merge, the input frames and the bracket's log line (or its error), to look over a batch in a browser.

Images are small JPEG thumbnails in ``<output_dir>/index_files/`` (the longer side at most ``THUMB_SIDE``), with
relative links, so the folder can be moved or copied as a whole; each preview links to the full-size ``.png``
when that was written. The page is plain HTML and CSS (no script), written to a temporary name and renamed.
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import quote

import cv2
import numpy as np

from photo.outputs import _display_frame, atomic_write, preview
from util.tonemap import tonemap

if TYPE_CHECKING:
    from photo.merge import MergeResult

INDEX_NAME = 'index.html'
THUMB_FOLDER = 'index_files'
THUMB_SIDE = 480


def _write_thumb(path: Path, img01: np.ndarray) -> Path:
    h, w = img01.shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    if scale < 1.0:
        img01 = cv2.resize(img01, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    img8 = np.clip(np.rint(np.asarray(img01, np.float32) * 255), 0, 255).astype(np.uint8)

    def write(tmp: str) -> None:
        ok, data = cv2.imencode('.jpg', img8, [cv2.IMWRITE_JPEG_QUALITY, 88])
        if not ok:
            raise OSError(f'{path}: JPEG encoding failed')
        Path(tmp).write_bytes(data.tobytes())

    return atomic_write(path, write)


def write_thumbnails(result: MergeResult, output_dir, name: str, operator: str = 'display',
                     preview_exposure: float = 0.0, preview_shadows: str = 'merge') -> dict[str, str]:
    """Thumbnails of one merged bracket: preview, classical merge and the three inputs. Returns their paths
    relative to ``output_dir`` by panel name."""
    folder = Path(output_dir) / THUMB_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    b = result.bracket
    panels = {'preview': preview(result, operator, preview_exposure, preview_shadows),
              'classical merge': tonemap(np.maximum(result.classical, 0), operator, exposure=preview_exposure)}
    for label, x, path in zip(('short', 'medium', 'long'), b.frames, b.paths):
        panels[f'{label}: {path.name}'] = _display_frame(x, b.kind)
    rel = {}
    for k, (panel, img) in enumerate(panels.items()):
        written = _write_thumb(folder / f'{name}_{k}.jpg', img)
        rel[panel] = os.path.relpath(written, output_dir).replace(os.sep, '/')
    return rel


_STYLE = """body{font-family:sans-serif;margin:1em;background:#fafafa;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}
img{max-width:240px;max-height:240px;display:block}figure{margin:0}figcaption{font-size:80%;color:#555}
.failed{background:#fee}.log{font-size:80%;max-width:28em;font-family:monospace;white-space:pre-wrap}"""


def write_index(outcomes: Sequence, output_dir) -> Path:
    """``index.html`` in ``output_dir`` for the batch's outcomes (``photo.batch.BracketOutcome``, each with the
    ``thumbs`` of :func:`write_thumbnails` when it was merged)."""
    output_dir = Path(output_dir)
    n_ok = sum(o.ok for o in outcomes)
    rows = []
    for o in outcomes:
        name = html.escape(o.job.name)
        log = html.escape(o.message)
        if not o.ok:
            rows.append(f'<tr class="failed"><th>{name}</th><td colspan="6" class="log">FAILED: {log}</td></tr>')
            continue
        cells = []
        for panel, src in o.thumbs.items():
            # links are URLs: a '#', '?' or '%' in a bracket's name would otherwise end or change the path
            img = f'<img src="{html.escape(quote(src))}" alt="{html.escape(panel)}">'
            png = o.outputs.get('png')
            if panel == 'preview' and png is not None:
                href = os.path.relpath(png, output_dir).replace(os.sep, '/')
                img = f'<a href="{html.escape(quote(href))}">{img}</a>'
            cells.append(f'<td><figure>{img}<figcaption>{html.escape(panel)}</figcaption></figure></td>')
        rows.append(f'<tr><th>{name}</th>{"".join(cells)}<td class="log">{log}</td></tr>')
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>HDR batch</title>'
            f'<style>{_STYLE}</style></head><body>\n<h1>HDR batch: {n_ok} of {len(outcomes)} brackets merged</h1>\n'
            '<table><tr><th>bracket</th><th>preview (SelfHDR)</th><th>classical merge</th><th colspan="3">inputs'
            '</th><th>log</th></tr>\n' + '\n'.join(rows) + '\n</table></body></html>\n')
    return atomic_write(output_dir / INDEX_NAME, lambda tmp: Path(tmp).write_text(page, encoding='utf-8'))
