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

from photo.batch import EXPOSURE_FILE
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
               'denoise_labels', 'decide', 'recipe')
# The fine-tuning's loss and the decision's mask, as a version: 2 since round 3's fourteenth session (no colour loss
# and no score where the medium frame clips). A run interrupted under another recipe is not resumed under this one.
RECIPE = 2


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
            'denoise_labels': args.denoise_labels, 'decide': getattr(args, 'decide', 'off'), 'recipe': RECIPE}


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
    from util.align import AlignConfig

    result = merge(job.inputs, args.network, args.checkpoint, exposures=job.exposures, exposures_in='stops',
                   exposures_from=str(job.folder / EXPOSURE_FILE),
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
        # the label is denoised (or not) as it is made: AlignConfig.label_denoise, util/label_denoise.py
        prepare_scene(scene, work.data / 'Training_align' / job.name, 'sig17', overwrite=True,
                      cfg=AlignConfig(label_denoise=args.denoise_labels == 'on'))
    except SceneError as exc:
        shutil.rmtree(scene, ignore_errors=True)
        raise MergeError(f'{job.folder}: alignment failed ({exc})') from exc
    denoised = '; Y_color denoised' if args.denoise_labels == 'on' else ''
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
def write_checkpoint(src: Path, out: Path, gate_from=None) -> None:
    """Copy the final weights to ``out`` in release format, atomically, with the medium gate of checkpoint
    ``gate_from`` when it has one (the adapted backbone keeps the gate it was shipped with)."""
    import torch

    from models.base_model import atomic_torch_save, clean_state_dict
    from models.medium_gate import GATE_KEY

    state = torch.load(src, map_location='cpu', weights_only=True)['state_dict']
    checkpoint = {'state_dict': clean_state_dict(state)}
    if gate_from is not None:
        original = torch.load(str(gate_from), map_location='cpu', weights_only=True)
        if isinstance(original, dict) and GATE_KEY in original:
            checkpoint[GATE_KEY] = original[GATE_KEY]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(checkpoint, str(out))


def after_label(state: dict, iters: int) -> str:
    """The "after" panel's label: what the written model is (the decision may have kept the original)."""
    kept = state.get('decision', {}).get('kept')
    if kept == 'original':
        return 'after: the original kept (fine-tuning did not help)'
    return f'after: adapted ({kept})' if kept else f'after: adapted, {iters} iterations'


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
                  (after_label(state, args.iters), tonemap(np.maximum(result.hdr, 0), args.tonemap))]
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


# ------------------------------------------------------------------------------------------------------ the decision
# Adaptation that never hurts: some of the user's brackets are held out of fine-tuning, and the original network
# and every fine-tuned epoch are scored on them against their colour labels, only where a label can be trusted.
HOLDOUT_FRACTION = 0.25  # of the usable brackets, at least one when there are two or more
MIN_GAIN_DB = 0.05       # a fine-tuned epoch must beat the original by this much on the held-out brackets
HOLDOUT = 'Holdout'      # <out>.partial/data/Holdout/<bracket> and Holdout_align/<bracket>


def choose_holdout(names, fraction: float = HOLDOUT_FRACTION) -> list[str]:
    """Evenly spaced names of the (sorted) usable brackets to hold out; none when fewer than two."""
    names = sorted(names)
    n = len(names)
    if n < 2 or fraction <= 0:
        return []
    k = min(n - 1, max(1, round(n * fraction)))
    return [names[int((i + 0.5) * n / k)] for i in range(k)]


def hold_out(work: Work, state: dict, fraction: float = HOLDOUT_FRACTION) -> list[str]:
    """Move the held-out brackets' prepared scenes out of the training data (once; recorded in the state)."""
    if 'holdout' in state:
        return state['holdout']
    ok = [n for n, b in state['brackets'].items() if b['ok']]
    held = choose_holdout(ok, fraction)
    for name in held:
        for split in ('', '_align'):
            src, dst = work.data / f'Training{split}' / name, work.data / f'{HOLDOUT}{split}' / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(src, dst)
    state['holdout'] = held
    write_state(work, state)
    if held:
        logger.info('held out of fine-tuning, to decide whether it helps: %s', ', '.join(held))
    else:
        logger.info('one usable bracket only: nothing can be held out, so the decision is scored on the training '
                    'bracket itself (a weaker test)')
    return held


def trusted_mask(aligned, times, clip: float = 0.95, dark: float = 0.05, tol_stops: float = 0.3) -> np.ndarray:
    """Pixels whose colour label (the merge of the aligned frames) can be trusted, H x W bool: the medium frame sees
    the pixel well exposed, or the long frame does where the medium is dark, and every pair of frames that both see
    it unclipped agrees on its radiance within ``tol_stops`` (static, well aligned: no ghost or flow error in the
    label). Not where the medium frame clips: the label is the short frame alone there, the bracket's noisiest, and
    the fine-tuning does not learn from it (``--colour_skip_clipped``); scored against it, a fine-tuned epoch that
    copied its noise looked 2 dB better and was 0.2 dB worse (README, "Adapting the model to your own photos")."""
    lin = [np.power(np.clip(x, 0, 1).astype(np.float64), 2.2) / t for x, t in zip(aligned, times)]
    good_mid, good_long = (((x > dark) & (x < clip)).all(axis=2) for x in aligned[1:])
    unclipped = [((x > 0.01) & (x < clip)).all(axis=2) for x in aligned]
    medium_dark = (aligned[1] <= dark).all(axis=2)
    supported = good_mid | (medium_dark & good_long)
    consistent = np.ones(supported.shape, bool)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        both = unclipped[a] & unclipped[b]
        ratio = np.abs(np.log2(np.maximum(lin[a].mean(axis=2), 1e-9) / np.maximum(lin[b].mean(axis=2), 1e-9)))
        consistent &= ~(both & (ratio > tol_stops))
    return supported & consistent


def masked_psnr_mu(pred: np.ndarray, label: np.ndarray, mask: np.ndarray) -> float:
    """PSNR-mu (dB) of ``pred`` against ``label`` over the pixels of ``mask``."""
    from util.tonemap import mu_law

    diff = mu_law(np.clip(pred, 0, 1)) - mu_law(np.clip(label, 0, 1))
    mse = float(np.mean(diff[mask] ** 2)) if mask.any() else float('nan')
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def load_holdout(work: Work, names, split: str = HOLDOUT) -> list[dict]:
    """Each held-out bracket's network inputs (the frames as merged, training encoding), times, label and mask."""
    from util.hdr_io import read_ldr

    items = []
    for name in names:
        src, aligned_dir = work.data / split / name, work.data / f'{split}_align' / name
        if not (aligned_dir / 'HDRImg.hdr').is_file():
            continue
        times = 2.0 ** np.loadtxt(src / EXPOSURE_NAME, ndmin=1)
        aligned = [read_ldr(aligned_dir / f) for f in FRAME_NAMES]
        mask = trusted_mask(aligned, times)
        if not mask.any():  # e.g. a medium frame clipped wherever it is not black: nothing to score it on
            logger.info('held-out bracket %s has no pixel whose label can be trusted; not scored', name)
            continue
        frames = [read_ldr(src / f) for f in FRAME_NAMES]
        items.append({'name': name, 'frames': frames, 'aligned': aligned, 'times': times,
                      'label': read_hdr(aligned_dir / 'HDRImg.hdr'), 'mask': mask})
    return items


def score(net, network: str, items, device: str = 'cpu', tile: int | str = 0, tile_overlap: int = 32) -> float:
    """Mean masked PSNR-mu of the network over the held-out brackets (the network as merge_brackets runs it)."""
    import torch

    from models.backbones import BACKBONES
    from models.medium_gate import bracket_noise
    from photo.merge import _build_inputs
    from util.tiling import auto_tile, padded, tiled_forward

    multiple = BACKBONES[network].pad_multiple if network in BACKBONES else 0
    aligned_input = network in BACKBONES and BACKBONES[network].aligned_input  # FSHDR: as merge_brackets feeds it
    fn = padded(net, multiple=multiple, mode='release') if multiple else net
    values = []
    for item in items:
        xs = [x.to(device) for x in _build_inputs(item['aligned' if aligned_input else 'frames'], item['times'])]
        size = tile
        if tile == 'auto':  # tools/adapt.py's default: chosen as merge_brackets chooses it (fp32 here)
            per_pixel = BACKBONES[network].infer_bytes_per_pixel[0] if network in BACKBONES else 16384
            size = auto_tile(*xs[0].shape[-2:], per_pixel, overlap=tile_overlap, multiple=multiple, device=device,
                             log=False)
        with torch.inference_mode(), bracket_noise(net, item['frames']):  # merge_brackets passes the frames as shot
            out = tiled_forward(fn, xs, size, tile_overlap)
        pred = out[0].float().permute(1, 2, 0).cpu().numpy()
        values.append(masked_psnr_mu(pred, item['label'], item['mask']))
    return float(np.mean(values)) if values else float('nan')


def decide(args, work: Work, state: dict, epochs: int) -> tuple[Path, dict]:
    """Score the original network and every fine-tuned epoch on the held-out brackets; keep the best epoch if it
    beats the original by ``MIN_GAIN_DB``, else the original. Returns the checkpoint to write and the decision."""
    import torch

    from models.medium_gate import with_gate

    names = state.get('holdout') or [n for n, b in state['brackets'].items() if b['ok']]
    where = 'held-out' if state.get('holdout') else 'training (none could be held out)'
    items = load_holdout(work, names, HOLDOUT if state.get('holdout') else 'Training')
    if not items:  # nothing to tell a fine-tuned epoch from the original by: never hurt, keep it
        return Path(args.checkpoint), {
            'scored_on': where, 'brackets': [], 'trusted_fraction': 0.0, 'psnr_mu_by_epoch': {}, 'best_epoch': None,
            'kept': 'original', 'why': f'no {where} bracket has a pixel whose label can be trusted (well exposed in '
                                       'the medium frame, or in the long one where the medium is dark, and static): '
                                       'the original weights are kept'}
    candidates = [(0, Path(args.checkpoint))] + [(e, work.run / f'SelfHDR_model_{e}.pth') for e in range(1, epochs + 1)]
    # every candidate with the original's medium gate, if it has one: the backbones are compared, not the gate
    original = torch.load(str(args.checkpoint), map_location='cpu', weights_only=True)  # read once, not per epoch
    scores = {}
    for epoch, path in candidates:
        if not path.is_file():
            continue
        net = with_gate(load_network(args.network, path, args.device, 'off'), args.checkpoint, 'auto', original,
                        args.network)
        tile = args.tile if isinstance(args.tile, int) else 0  # 'auto': held-out frames are training-sized
        scores[epoch] = score(net, args.network, items, args.device, tile, args.tile_overlap)
        logger.info('%s: PSNR-mu %.3f dB on the trusted pixels of the %s brackets', 'original' if epoch == 0 else
                    f'epoch {epoch}', scores[epoch], where)
    best = max((e for e in scores if e > 0), key=lambda e: scores[e], default=None)
    keep_tuned = best is not None and scores[best] >= scores[0] + MIN_GAIN_DB
    decision = {'scored_on': where, 'brackets': [i['name'] for i in items],
                'trusted_fraction': float(np.mean([i['mask'].mean() for i in items])) if items else 0.0,
                'psnr_mu_by_epoch': {str(e): s for e, s in scores.items()}, 'best_epoch': best,
                'kept': f'epoch {best}' if keep_tuned else 'original'}
    if keep_tuned:
        decision['why'] = (f'epoch {best} of {epochs} scores {scores[best]:.2f} dB against {scores[0]:.2f} for the '
                           f'original (+{scores[best] - scores[0]:.2f} dB)')
        return work.run / f'SelfHDR_model_{best}.pth', decision
    gain = scores[best] - scores[0] if best is not None else float('nan')
    decision['why'] = (f'no fine-tuned epoch beats the original by {MIN_GAIN_DB} dB (best: epoch {best}, '
                       f'{gain:+.2f} dB): the original weights are kept')
    return Path(args.checkpoint), decision
