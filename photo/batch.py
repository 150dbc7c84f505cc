"""Batches: one bracket per sub-folder of ``--input_dir``; each is merged and written, a failing one is reported
and skipped, and a summary table (and the contact sheet ``index.html``, photo/contact_sheet.py) says what was
used."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from photo.contact_sheet import write_thumbnails
from photo.errors import MergeError
from photo.merge import MergeResult, merge
from photo.outputs import write_outputs
from photo.raw import RAW_EXTS
from photo.response_choice import response_flag
from util.hdr_io import LDR_EXTS

logger = logging.getLogger(__name__)

EXPOSURE_FILE = 'exposure.txt'


@dataclass
class BracketJob:
    name: str                        # output name: the sub-folder's name
    folder: Path
    inputs: list[Path]
    exposures: list[str] | None = None   # from the folder's exposure.txt (stops), else EXIF/RAW metadata


@dataclass
class BracketOutcome:
    job: BracketJob
    ok: bool
    message: str                     # the error, or what was used
    outputs: dict = field(default_factory=dict)
    thumbs: dict = field(default_factory=dict)  # contact-sheet thumbnails by panel (photo.contact_sheet)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in LDR_EXTS + RAW_EXTS)


def find_brackets(input_dir, flag: str = '--input_dir') -> list[BracketJob]:
    """One job per sub-folder of ``input_dir`` that holds image files (sorted by name). A sub-folder's
    ``exposure.txt`` (one value in stops per frame, in sorted file-name order, as in the SIGGRAPH17 data) gives
    the exposures; otherwise they come from EXIF or RAW metadata."""
    root = Path(input_dir)
    if not root.is_dir():
        raise MergeError(f'{flag} {root}: not a folder' if root.exists() else f'{flag} {root}: does not exist')
    jobs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        files = _image_files(sub)
        if not files:
            logger.warning('%s: no image files (JPEG/PNG/TIFF/RAW) in this folder; skipped', sub)
            continue
        exposures = None
        exp_file = sub / EXPOSURE_FILE
        if exp_file.is_file():
            try:
                exposures = exp_file.read_text(encoding='utf-8-sig').split()
            except (OSError, UnicodeDecodeError) as exc:
                raise MergeError(f'{exp_file}: cannot read exposure file ({exc})') from None
        jobs.append(BracketJob(name=sub.name, folder=sub, inputs=files, exposures=exposures))
    loose = _image_files(root)
    if jobs and loose:
        logger.warning('%s: %d image files sit directly in the batch folder (%s); not merged: each bracket goes in '
                       'its own sub-folder', root, len(loose), ', '.join(p.name for p in loose[:4]))
    if not jobs:
        hint = (f' ({len(loose)} image files sit directly in it: put each bracket in its own sub-folder)'
                if loose else '')
        raise MergeError(f'{flag} {root}: no sub-folder with image files (JPEG/PNG/TIFF/RAW){hint}')
    return jobs


def describe(result: MergeResult) -> str:
    b = result.bracket
    text = (f'short {b.paths[0].name}, medium {b.paths[1].name}, long {b.paths[2].name} '
            f'(x{b.times[1]:g}, x{b.times[2]:g}); response {result.response.name}'
            + (f' ({result.response.why})' if result.response.why else ''))
    if b.unused:
        text += f'; not used: {", ".join(p.name for p in b.unused)}'
    return text


def run_batch(jobs: Sequence[BracketJob], args, net, progress: bool = True) -> list[BracketOutcome]:
    """Merge every bracket; a failing one is reported and skipped, the others are done."""
    from tqdm import tqdm

    outcomes = []
    bar = tqdm(jobs, desc='brackets', unit='bracket', disable=not progress, file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(job.name)
        try:
            result = merge(job.inputs, args.network, args.checkpoint, exposures=job.exposures,
                           exposures_from=str(job.folder / EXPOSURE_FILE),  # errors name the file, not a flag
                           exposures_in='stops', response=response_flag(args), device=args.device,
                           tile=args.tile, tile_overlap=args.tile_overlap, align=args.align,
                           trust_exposures=args.trust_exposures, prealign=not args.no_prealign, net=net,
                           amp=args.amp, channels_last=getattr(args, 'channels_last', 'auto'),
                           max_memory=getattr(args, 'max_memory', 0))
            paths = write_outputs(result, args.output_dir, job.name, args.tonemap, args.preview_exposure,
                                  args.formats, args.exr_type, args.compare, args.preview_shadows)
            thumbs = write_thumbnails(result, args.output_dir, job.name, args.tonemap, args.preview_exposure,
                                      args.preview_shadows)
            outcomes.append(BracketOutcome(job, True, describe(result), paths, thumbs))
        except (MergeError, OSError, ValueError) as exc:  # the message names the file; go on with the others
            logger.debug('bracket %s failed', job.folder, exc_info=True)
            outcomes.append(BracketOutcome(job, False, str(exc)))
    return outcomes


def summary_table(outcomes: Sequence[BracketOutcome]) -> str:
    """A plain-text table: bracket, status, what was used or what went wrong."""
    rows = [('bracket', 'status', 'frames used / error')]
    rows += [(o.job.name, 'ok' if o.ok else 'FAILED', o.message) for o in outcomes]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f'{a:<{w0}}  {b:<{w1}}  {c}' for a, b, c in rows]
    lines.insert(1, f'{"-" * w0}  {"-" * w1}  {"-" * 20}')
    n_ok = sum(o.ok for o in outcomes)
    lines.append(f'{n_ok} of {len(outcomes)} brackets merged' + (f', {len(outcomes) - n_ok} failed' if n_ok < len(outcomes)
                                                                  else ''))
    return '\n'.join(lines)
