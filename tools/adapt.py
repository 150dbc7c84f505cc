"""Self-supervised adaptation: fine-tune a stage-2 SelfHDR network on your own unlabeled brackets.

    python tools/adapt.py --brackets DIR --checkpoint CKPT --network AHDRNet --iters 300 --out adapted.pth
        [--stage1 CKPT1] [--resume] [--vgg_weights auto] [--compare_dir D]

``DIR`` holds one sub-folder per bracket, as ``tools/merge_brackets.py --input_dir`` takes them (JPEG/PNG/TIFF or
camera RAW; exposures from EXIF/RAW metadata or the sub-folder's ``exposure.txt`` in stops; ``--response`` as in
merge_brackets). No ground truth is used: the brackets themselves give both labels of the method's stage 2.

1. **Read** each bracket exactly as merge_brackets does (``merge_brackets.merge``: exposure check, pre-alignment,
   camera response, frames re-encoded with the training gamma); that run of the *given* network is also the
   "before" image of the comparison. ``--max_side`` downscales the frames used for training (memory: the training
   set is cached in RAM). A bracket that fails is reported and skipped.
2. **Colour component** Y_color: the frames are written as a SIGGRAPH17-layout scene
   (``Training/<bracket>/``, 16-bit TIFFs + ``exposure.txt``) and aligned by ``data.align_split.prepare_scene``
   (DIS optical flow, Kalantari's triangle merge), the same code that builds ``Training_align`` for training.
   Then Y_color is denoised (``--denoise_labels on``, util/label_denoise.py): it carries the inputs' own noise.
3. **Structure component** Y_stru: ``test.py --stage0_inference`` runs the structure network on the aligned
   frames. That network is ``--stage1 CKPT1`` (the stage-1 network the checkpoint was trained with: the method's
   structure component) or, when ``--stage1`` is not given, the stage-2 checkpoint itself (said in the log).
4. **Fine-tune** with ``train.py`` (``--model selfhdr2``: masked L1 to Y_color + VGG19 loss to Y_stru, the medium
   frame's training noise), starting from ``--checkpoint`` (``--load_path``), random crops, for ``--iters``
   iterations split into epochs of at most ``--save_every`` iterations; each epoch is checkpointed atomically.
5. Write ``--out`` (release format ``{'state_dict': bare keys}``, atomically) and one comparison sheet per bracket
   in ``--compare_dir`` (default ``<out>_compare/``): the medium input, the network before and after, tone-mapped
   (``--tonemap``) and labelled.

Work state lives in ``<out>.partial/`` (prepared data, labels, the training run). An interrupted run (Ctrl-C,
SIGTERM, a crash) is continued with the same command plus ``--resume``: prepared brackets are kept and training
resumes from its last complete epoch. The folder is removed after success unless ``--keep_work``.

Exit codes: 0 done (skipped brackets are listed), 2 a user error whose message names the file or folder (nothing
usable in DIR, a checkpoint that does not fit the network, a leftover ``<out>.partial`` without ``--resume``, ...),
1 a training failure, 130 interrupted. ``main(argv) -> int`` is importable.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tools.merge_brackets import (MergeError, _load_network, _response_flag, find_brackets,  # noqa: E402
                                  merge)
from util.hdr_io import read_hdr, write_hdr, write_ldr16  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.synthetic import EXPOSURE_NAME, FRAME_NAMES  # noqa: E402
from util.tonemap import OPERATORS, tonemap  # noqa: E402
from util.visualizer import setup_logging  # noqa: E402

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
            'response': _response_flag(args), 'no_prealign': args.no_prealign,
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
                   response=_response_flag(args), device=args.device, tile=args.tile, tile_overlap=args.tile_overlap,
                   trust_exposures=args.trust_exposures, prealign=not args.no_prealign, net=net)
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


def device_flags(args) -> list[str]:
    return ['--gpu_ids', '0' if args.device == 'cuda' else '-1', '-j', '0', '--verbose', 'False']


def structure_labels(args, work: Work, structure_ckpt: str) -> None:
    """Step 3: the structure network on the aligned frames (test.py --stage0_inference) -> ``work.stru``."""
    import test

    argv = ['--dataroot', str(work.data), '--dataset_name', 'sig17align', '--model', 'selfhdr2',
            '--network', args.network, '--checkpoints_dir', str(work.ckpt), '--name', STAGE0_NAME,
            '--load_path', structure_ckpt, '--stage0_inference', 'True', '--save_imgs', 'False',
            '--results_csv', 'False', '--tile', str(args.tile), '--tile_overlap', str(args.tile_overlap)]
    status = test.main(argv + device_flags(args))
    setup_logging(str(work.root / 'adapt.log'))
    if status != 0:
        raise RuntimeError(f'stage-0 inference failed (exit status {status}); see {work.ckpt / STAGE0_NAME}/test.log')


# ------------------------------------------------------------------------------------------------------ training
def train_argv(args, work: Work, epochs: int, per_epoch: int, resume: bool) -> list[str]:
    argv = ['--dataroot', str(work.data), '--dataset_name', 'sig17align', '--model', 'selfhdr2',
            '--network', args.network, '--checkpoints_dir', str(work.ckpt), '--name', RUN_NAME,
            '--stru_lable_path', str(work.stru), '--batch_size', str(args.batch_size),
            '--patch_size', str(args.patch_size), '--niter', str(epochs), '--iters_per_epoch', str(per_epoch),
            '--lr', str(args.lr), '--lr_policy', args.lr_policy, '--vgg_weights', args.vgg_weights,
            '--calc_metrics', 'False', '--print_freq', str(max(1, min(per_epoch, 25))), '--seed', str(args.seed),
            '--save_epoch_freq', '1'] + device_flags(args)
    if args.vgg_path:
        argv += ['--vgg_path', args.vgg_path]
    # --continue_train picks the newest complete epoch; --load_path would restart from the input checkpoint.
    return argv + (['--continue_train', 'True'] if resume else ['--load_path', str(args.checkpoint)])


def fine_tune(args, work: Work) -> Path:
    """Step 4 (train.py in this process); returns the final epoch's checkpoint."""
    import train
    from models.base_model import saved_model_epochs

    epochs, per_epoch = epoch_plan(args.iters, args.save_every)
    done = saved_model_epochs(str(work.run))
    if done and done[-1] >= epochs:
        logger.info('fine-tuning already finished (epoch %d of %d)', done[-1], epochs)
        return work.run / f'SelfHDR_model_{epochs}.pth'
    if epochs * per_epoch != args.iters:
        logger.info('--iters %d is run as %d epochs of %d iterations (%d in all)', args.iters, epochs, per_epoch,
                    epochs * per_epoch)
    logger.info('fine-tuning %s: %d iterations of batch %d x %dx%d crops, lr %g (%s)%s', args.network,
                epochs * per_epoch, args.batch_size, args.patch_size, args.patch_size, args.lr, args.lr_policy,
                f'; resuming after epoch {done[-1]}' if done else '')
    status = train.main(train_argv(args, work, epochs, per_epoch, resume=bool(done)))
    setup_logging(str(work.root / 'adapt.log'))
    if status == EXIT_INTERRUPTED:
        raise KeyboardInterrupt
    if status != 0:
        raise RuntimeError(f'fine-tuning failed (exit status {status}); see {work.run / "train.log"}')
    return work.run / f'SelfHDR_model_{epochs}.pth'


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

    from util.photo_io import compare_sheet, write_png8

    net = _load_network(args.network, out, args.device)
    compare_dir.mkdir(parents=True, exist_ok=True)
    written = []
    ok = [j for j in jobs if state['brackets'].get(j.name, {}).get('ok')]
    for job in tqdm(ok, desc='before/after', unit='bracket', disable=not progress, file=sys.stderr):
        result = merge(job.inputs, args.network, out, exposures=job.exposures, exposures_in='stops',
                       response=_response_flag(args), device=args.device, tile=args.tile,
                       tile_overlap=args.tile_overlap, trust_exposures=True, prealign=not args.no_prealign, net=net)
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


# ------------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    from models.networks import NETWORKS

    p = argparse.ArgumentParser(description='Fine-tune a stage-2 SelfHDR network on your own unlabeled brackets '
                                            '(self-supervised: colour and structure components from the brackets).')
    p.add_argument('--brackets', type=str, required=True,
                   help='folder with one sub-folder per bracket (as merge_brackets --input_dir takes)')
    p.add_argument('--checkpoint', type=str, required=True, help="stage-2 checkpoint {'state_dict': ...} to adapt")
    p.add_argument('--network', type=str, required=True, choices=list(NETWORKS), help='backbone of the checkpoint')
    p.add_argument('--stage1', type=str, default=None,
                   help='stage-1 checkpoint that gives the structure component (default: the stage-2 checkpoint '
                        'itself serves as the structure network)')
    p.add_argument('--iters', type=int, default=300, help='fine-tuning iterations')
    p.add_argument('--denoise_labels', type=str, default='on', choices=('on', 'off'),
                   help="denoise the colour label Y_color (non-local means in the tone-mapped domain, strength "
                        "from its own noise level; util/label_denoise.py). It is merged from the inputs themselves, "
                        "so without this the network learns to keep their noise")
    p.add_argument('--out', type=str, required=True, help='the adapted checkpoint (release format)')
    p.add_argument('--resume', action='store_true', help='continue the interrupted run kept in <out>.partial/')
    p.add_argument('--keep_work', action='store_true', help='keep <out>.partial/ (data, labels, logs) after success')
    p.add_argument('--compare_dir', type=str, default=None,
                   help='folder of the before/after sheets (default: <out without extension>_compare)')
    p.add_argument('--batch_size', type=int, default=4, help='training batch size')
    p.add_argument('--patch_size', type=int, default=64, help='training crop size (random crops)')
    p.add_argument('--lr', type=float, default=1e-4,
                   help="learning rate (Adam, fresh state; the release's stage-2 rate). The first steps perturb the "
                        'network before it improves: very short runs (tens of iterations) can end worse than they '
                        'began')
    p.add_argument('--lr_policy', type=str, default='cosine', choices=('cosine', 'step', 'linear'),
                   help="learning-rate schedule over the epochs ('cosine' decays to 1e-5)")
    p.add_argument('--save_every', type=int, default=50, help='iterations between checkpoints (one epoch)')
    p.add_argument('--seed', type=int, default=0, help='random seed of the crops and the training noise')
    p.add_argument('--max_side', type=int, default=0,
                   help='downscale the training frames so that their longer side is at most this (0: full size; '
                        'the training set is held in memory, 1500 suits 20-megapixel photos)')
    p.add_argument('--vgg_weights', type=str, default='auto', choices=('imagenet', 'auto', 'random'),
                   help="VGG19 of the structure loss: 'auto' uses cached ImageNet weights or falls back to random "
                        "weights with a warning (offline); 'imagenet' requires them")
    p.add_argument('--vgg_path', type=str, default='', help='file with torchvision VGG19 ImageNet weights')
    p.add_argument('--response', type=str, default=None,
                   help='camera response, as merge_brackets: gamma2.2 (default), gamma<value>, srgb, estimate, or a '
                        'saved .npy/.csv table')
    p.add_argument('--gamma', type=float, default=None, help='shorthand for --response gamma<value>')
    p.add_argument('--trust_exposures', action='store_true',
                   help="use the exposure times even when the frames' brightness contradicts them")
    p.add_argument('--no_prealign', action='store_true', help='skip the global pre-alignment (tripod brackets)')
    p.add_argument('--tonemap', type=str, default='display', choices=sorted(OPERATORS),
                   help='tone map of the comparison sheets')
    p.add_argument('--device', type=str, default='cpu', choices=['cpu', 'cuda'], help='where the networks run')
    p.add_argument('--tile', type=int, default=0, help='tile side of the inference passes (0: whole image)')
    p.add_argument('--tile_overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--malloc', type=str, default='tuned', choices=['tuned', 'system'],
                   help="glibc malloc setting (util/malloc.py)")
    p.add_argument('-q', '--quiet', action='store_true', help='no progress bars')
    return p


def _check_args(args) -> None:
    for flag in ('iters', 'save_every', 'batch_size', 'patch_size'):
        if getattr(args, flag) < 1:
            raise AdaptError(f'--{flag} must be at least 1, got {getattr(args, flag)}')
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise AdaptError(f'--lr must be a finite positive number, got {args.lr}')
    from models.backbones import backbone

    multiple = backbone(args.network).crop_multiple
    if args.patch_size % multiple:
        raise AdaptError(f'--patch_size {args.patch_size}: {args.network} needs a multiple of {multiple}')
    out = Path(args.out)
    if out.suffix.lower() != '.pth' or out.is_dir():
        raise AdaptError(f'--out {out}: expected a .pth file name')
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            raise AdaptError('--device cuda: CUDA is not available on this machine; use --device cpu')


def run(args) -> int:
    from models.base_model import CheckpointError

    out = Path(args.out)
    compare_dir = Path(args.compare_dir) if args.compare_dir else out.with_name(out.stem + '_compare')
    try:
        _check_args(args)
        _response_flag(args)
        jobs = find_brackets(args.brackets)  # MergeError names DIR when nothing usable is in it
        net = _load_network(args.network, args.checkpoint, args.device)  # CheckpointError names the file
        structure_ckpt = args.stage1 or args.checkpoint
        if args.stage1:
            _load_network(args.network, args.stage1, 'cpu')
        work, state = open_work(args, out)
    except (AdaptError, MergeError, CheckpointError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    setup_logging(str(work.root / 'adapt.log'))
    if args.stage1:
        logger.info('structure component: the stage-1 network %s', args.stage1)
    else:
        logger.info('structure component: no --stage1 given, so the stage-2 checkpoint %s itself serves as the '
                    'structure network (the method uses the stage-1 network; pass --stage1 if you have it)',
                    args.checkpoint)
    progress = not args.quiet
    start = time.time()
    try:
        if not state['prepared']:
            prepare(jobs, args, net, work, state, progress)
            if not any(b['ok'] for b in state['brackets'].values()):
                print(summary_table(state))
                shutil.rmtree(work.root, ignore_errors=True)  # nothing worth resuming
                raise AdaptError(f'--brackets {args.brackets}: no bracket could be used (see the table above)')
            structure_labels(args, work, structure_ckpt)
            state['prepared'] = True
            write_state(work, state)
        final = fine_tune(args, work)
        write_checkpoint(final, out)
        sheets = write_comparisons(jobs, args, state, work, out, compare_dir, progress)
    except KeyboardInterrupt:
        logger.error('interrupted; the work so far is kept in %s: run the same command with --resume to continue',
                     work.root)
        return EXIT_INTERRUPTED
    except (AdaptError, MergeError, CheckpointError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, OSError) as exc:
        logger.error('%s; the work so far is kept in %s (--resume continues it)', exc, work.root)
        return 1
    print(summary_table(state))
    skipped = [(n, b) for n, b in state['brackets'].items() if not b['ok']]
    for name, b in skipped:
        print(f'skipped: {b["folder"]}: {b["message"]}', file=sys.stderr)
    print(f'wrote {out} ({time.time() - start:.0f} s) and {len(sheets)} comparison sheets in {compare_dir}')
    if not args.keep_work:
        shutil.rmtree(work.root, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags, 0 on --help; return it instead
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')
    tune_malloc(args.malloc)
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
