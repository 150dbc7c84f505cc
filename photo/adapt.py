"""Self-supervised adaptation of a stage-2 network to a user's own brackets (``tools/adapt.py`` is its command line):
the work folder and its resumable state, the preparation of each bracket (merge, SIGGRAPH17 scene, alignment,
colour label), the written checkpoint and the before/after sheets. Training and the structure labels run
through the entry points ``train.py`` and ``test.py``, which only the command line calls."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from photo.errors import MergeError
from photo.merge import load_network, merge
from photo.outputs import compare_sheet, write_png8
from photo.response_choice import response_flag
from util.hdr_io import read_hdr, write_hdr, write_ldr16
from util.synthetic import EXPOSURE_NAME, FRAME_NAMES
from util.tonemap import tonemap

logger = logging.getLogger('adapt')

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RUN_NAME = 'adapt'       # the training run inside <out>.partial/ckpt
STAGE0_NAME = 'stage0'   # the structure-label run inside <out>.partial/ckpt
STATE_FILE = 'state.json'
# Settings a resumed run must share with the run it continues (the prepared data and the schedule depend on them).
RESUME_KEYS = ('brackets', 'checkpoint', 'stage1', 'network', 'iters', 'save_every', 'batch_size', 'patch_size',
               'lr', 'lr_policy', 'max_side', 'response', 'no_prealign', 'trust_exposures', 'vgg_weights', 'seed',
               'denoise_labels')


class AdaptError(ValueError):
    """A user error: the message names the file or folder."""


# ------------------------------------------------------------------------------------------------------ schedule
def epoch_plan(iters: int, save_every: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) for a budget of ``iters``, checkpointing at least every ``save_every``.

    Epochs are equal (train.py's data set length is iterations per epoch x batch), so the total is
    ``epochs * per_epoch``, which exceeds ``iters`` by less than ``epochs`` when it does not divide evenly."""
    if iters < 1 or save_every < 1:
        raise AdaptError(f'--iters {iters} and --save_every {save_every} must be at least 1')
    epochs = math.ceil(iters / save_every)
    return epochs, math.ceil(iters / epochs)


# ------------------------------------------------------------------------------------------------------ state
@dataclass
class Work:
    """The folders of ``<out>.partial``."""
    root: Path

    @property
    def data(self) -> Path:
        return self.root / 'data'

    @property
    def ckpt(self) -> Path:
        return self.root / 'ckpt'

    @property
    def before(self) -> Path:
        return self.root / 'before'

    @property
    def stru(self) -> Path:
        return self.ckpt / STAGE0_NAME / 'output_0'

    @property
    def run(self) -> Path:
        return self.ckpt / RUN_NAME

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE


def read_state(work: Work) -> dict:
    try:
        return json.loads(work.state_path.read_text())
    except (OSError, ValueError) as exc:
        raise AdaptError(f'{work.state_path}: cannot read the state of the interrupted run ({exc}); delete '
                         f'{work.root} to start again') from exc


def write_state(work: Work, state: dict) -> None:
    tmp = work.state_path.with_name(f'.{STATE_FILE}.{os.getpid()}.tmp')
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, work.state_path)


def settings_of(args) -> dict:
    return {'brackets': str(Path(args.brackets).resolve()), 'checkpoint': str(Path(args.checkpoint).resolve()),
            'stage1': str(Path(args.stage1).resolve()) if args.stage1 else None, 'network': args.network,
            'iters': args.iters, 'save_every': args.save_every, 'batch_size': args.batch_size,
            'patch_size': args.patch_size, 'lr': args.lr, 'lr_policy': args.lr_policy, 'max_side': args.max_side,
            'response': response_flag(args), 'no_prealign': args.no_prealign,
            'trust_exposures': args.trust_exposures, 'vgg_weights': args.vgg_weights, 'seed': args.seed,
            'denoise_labels': args.denoise_labels}


def open_work(args, out: Path) -> tuple[Work, dict]:
    """The work folder and its state: fresh, or (``--resume``) the interrupted run's, checked against the flags."""
    work = Work(out.with_name(out.name + '.partial'))
    settings = settings_of(args)
    if work.root.exists():
        if not args.resume:
            raise AdaptError(f'{work.root} holds an interrupted adaptation: add --resume to continue it, or delete '
                             'the folder to start again')
        state = read_state(work)
        changed = [f'{k}: {state["settings"].get(k)!r} -> {settings[k]!r}' for k in RESUME_KEYS
                   if state['settings'].get(k) != settings[k]]
        if changed:
            raise AdaptError(f'{work.state_path}: --resume with different settings ({"; ".join(changed)}); use the '
                             f'same flags, or delete {work.root} to start again')
        logger.info('resuming the adaptation in %s', work.root)
        return work, state
    if args.resume:
        logger.info('--resume: no interrupted run at %s; starting', work.root)
    work.root.mkdir(parents=True)
    state = {'settings': settings, 'brackets': {}, 'prepared': False}
    write_state(work, state)
    return work, state


# ------------------------------------------------------------------------------------------------------ preparation
def _downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def prepare_bracket(job, args, net, work: Work) -> str:
    """Read one bracket (and its "before" merge), write its SIGGRAPH17 scene, align it and build Y_color.

    Returns a description; raises MergeError/OSError/ValueError naming the file when the bracket cannot be used."""
    from data.align_split import SceneError, prepare_scene

    result = merge(job.inputs, args.network, args.checkpoint, exposures=job.exposures, exposures_in='stops',
                   response=response_flag(args), device=args.device, tile=args.tile, tile_overlap=args.tile_overlap,
                   trust_exposures=args.trust_exposures, prealign=not args.no_prealign, net=net,
                   amp=getattr(args, 'amp', 'none'), max_memory=getattr(args, 'max_memory', 0))
    frames = [_downscale(np.clip(f, 0, 1), args.max_side) for f in result.inputs]
    h, w = frames[1].shape[:2]
    if min(h, w) < args.patch_size:
        raise MergeError(f'{result.bracket.paths[1]}: {w}x{h} frames are smaller than the {args.patch_size}-pixel '
                         'training crop (--patch_size)')
    scene = work.data / 'Training' / job.name
    tmp = scene.with_name(f'.{job.name}.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, frame in zip(FRAME_NAMES, frames):
        write_ldr16(tmp / name, frame)
    stops = np.log2(result.bracket.times)
    (tmp / EXPOSURE_NAME).write_text(''.join(f'{v!r}\n' for v in stops.tolist()))
    shutil.rmtree(scene, ignore_errors=True)
    os.replace(tmp, scene)
    try:
        prepare_scene(scene, work.data / 'Training_align' / job.name, 'sig17', overwrite=True)
    except SceneError as exc:
        shutil.rmtree(scene, ignore_errors=True)
        raise MergeError(f'{job.folder}: alignment failed ({exc})') from exc
    denoised = ''
    if args.denoise_labels == 'on':
        from data.align_split import COLOUR_NAME
        from util.label_denoise import denoise_colour_label

        label_path = work.data / 'Training_align' / job.name / COLOUR_NAME
        label, sigma = denoise_colour_label(read_hdr(label_path))
        write_hdr(label_path, label)
        denoised = f'; Y_color denoised (noise {sigma * 255:.1f}/255 tone-mapped)'
    work.before.mkdir(parents=True, exist_ok=True)
    write_hdr(work.before / f'{job.name}.hdr', result.hdr)
    b = result.bracket
    return (f'short {b.paths[0].name}, medium {b.paths[1].name}, long {b.paths[2].name} '
            f'(x{b.times[1]:g}, x{b.times[2]:g}); response {result.response.name}; {w}x{h} for training{denoised}')


def prepare(jobs, args, net, work: Work, state: dict, progress: bool) -> None:
    """Steps 1-2 for every bracket not prepared yet; the state is saved after each one."""
    from tqdm import tqdm

    todo = [j for j in jobs if j.name not in state['brackets']]
    bar = tqdm(todo, desc='preparing brackets', unit='bracket', disable=not progress, file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(job.name)
        try:
            message = prepare_bracket(job, args, net, work)
            state['brackets'][job.name] = {'ok': True, 'message': message, 'folder': str(job.folder)}
        except (MergeError, OSError, ValueError) as exc:  # the message names the file; go on with the others
            logger.debug('bracket %s failed', job.folder, exc_info=True)
            logger.warning('skipped bracket %s: %s', job.folder, exc)
            state['brackets'][job.name] = {'ok': False, 'message': str(exc), 'folder': str(job.folder)}
        write_state(work, state)




# ------------------------------------------------------------------------------------------------------ outputs
def write_checkpoint(src: Path, out: Path) -> None:
    """Copy the final weights to ``out`` in release format, atomically."""
    import torch

    from models.base_model import atomic_torch_save, clean_state_dict

    state = torch.load(src, map_location='cpu', weights_only=True)['state_dict']
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({'state_dict': clean_state_dict(state)}, str(out))


def write_comparisons(jobs, args, state: dict, work: Work, out: Path, compare_dir: Path, progress: bool) -> list:
    """One labelled sheet per prepared bracket: medium input, before, after (merge_brackets with the new weights)."""
    from tqdm import tqdm

    net = load_network(args.network, out, args.device)
    compare_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ok = [j for j in jobs if state['brackets'].get(j.name, {}).get('ok')]
    for job in tqdm(ok, desc='before/after', unit='bracket', disable=not progress, file=sys.stderr):
        result = merge(job.inputs, args.network, out, exposures=job.exposures, exposures_in='stops',
                       response=response_flag(args), device=args.device, tile=args.tile,
                       tile_overlap=args.tile_overlap, trust_exposures=True, prealign=not args.no_prealign, net=net,
                       amp=getattr(args, 'amp', 'none'), max_memory=getattr(args, 'max_memory', 0))
        before = read_hdr(work.before / f'{job.name}.hdr')
        panels = [(f'input (medium): {result.bracket.paths[1].name}', np.clip(result.inputs[1], 0, 1)),
                  (f'before: {Path(args.checkpoint).name}', tonemap(np.maximum(before, 0), args.tonemap)),
                  (f'after: adapted, {args.iters} iterations', tonemap(np.maximum(result.hdr, 0), args.tonemap))]
        written.append(write_png8(compare_dir / f'{job.name}.png', compare_sheet(panels)))
    return written


def summary_table(state: dict) -> str:
    rows = [('bracket', 'status', 'frames used / error')]
    rows += [(name, 'ok' if b['ok'] else 'SKIPPED', b['message']) for name, b in state['brackets'].items()]
    w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
    lines = [f'{a:<{w0}}  {b:<{w1}}  {c}' for a, b, c in rows]
    lines.insert(1, f'{"-" * w0}  {"-" * w1}  {"-" * 20}')
    n_ok = sum(b['ok'] for b in state['brackets'].values())
    lines.append(f'{n_ok} of {len(state["brackets"])} brackets used')
    return '\n'.join(lines)
