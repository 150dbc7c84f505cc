"""Train the medium gate (models/medium_gate.py) of a finished stage-2 checkpoint; the backbone stays frozen.

    python tools/train_gate.py --dataroot study/long_FSHDR_dn/data --network FSHDR \
        --checkpoint pretrained_models/fshdr_long_mf_stage2/SelfHDR_model_1.pth \
        --out pretrained_models/fshdr_long_mf_gate/SelfHDR_model_1.pth

No ground truth, as the rest of SelfHDR: the gate learns from the colour component Y_color of the training split
(``<dataroot>/Training_align/<scene>/HDRImg.hdr``, the stage-2 label), with the frames the backbone takes at test
time (``Training_align`` for a backbone trained on aligned frames, ``Training`` otherwise) and the exposures of
``Training``. The backbone runs once per scene as ``test.py --tile auto`` runs it (the whole image when it fits, on a
CPU up to 768x768 pixels, else tiles); the gate then trains on random crops of those
outputs (L1 in mu-law, Adam with a cosine schedule); every scene's output, medium frame, label and noise map stay
in memory (52 bytes per pixel: 1 GB for 192 scenes of 256x384, 4 GB for Kalantari's 74 training scenes). The output is the input checkpoint plus the gate
(``state_dict`` unchanged, so it still loads as a plain backbone), written atomically.

About 9 minutes for 192 scenes of 256x384 and 1500 iterations on 2 CPU cores (FSHDR, bf16): 6 for the backbone's
outputs and the noise maps, 3 for the iterations.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from data.base_dataset import add_sensor_noise, log_uniform  # noqa: E402
from models.backbones import NAMES, backbone  # noqa: E402
from models.base_model import CheckpointError, atomic_torch_save, load_backbone_state, resolve_amp  # noqa: E402
from models.medium_gate import (BAND_NOISE, DEFAULT_BAND_NOISE, DEFAULT_CHROMA, DEFAULT_CONSISTENCY,  # noqa: E402
                                DEFAULT_FALLBACK, DEFAULT_FUSION_PRIOR, DEFAULT_FUSION_WINDOW,
                                DEFAULT_LONG_CONSISTENCY, MediumGate, fusion_prior_problem, fusion_window_problem,
                                gated_checkpoint, medium_noise_map, witness_clamp_refusal)
from models import networks  # noqa: E402
from photo.merge import _build_inputs  # noqa: E402
from util.exposures import list_frames, scene_frames_and_times  # noqa: E402
from util.hdr_io import read_hdr, read_ldr  # noqa: E402
from util.tiling import MemoryBudgetError, auto_tile, padded, tiled_forward  # noqa: E402
from util.tonemap import mu_law_torch  # noqa: E402

logger = logging.getLogger('train_gate')
TILE_OVERLAP = 32  # pixels, as test.py's default, for images too large for one forward


class GateDataError(ValueError):
    """A training split the gate cannot learn from (missing folders, labels, mismatched sizes)."""


def scene_names(root: Path) -> list[str]:
    train = root / 'Training'
    if not train.is_dir():
        raise GateDataError(f'{train}: no Training folder (the gate trains on a sig17align-layout data root)')
    names = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not names:
        raise GateDataError(f'{train}: no scene folders')
    return names


def load_scene(root: Path, name: str, aligned_input: bool, noise: tuple[float, float] | None = None,
               rng: np.random.Generator | None = None):
    """(the backbone's inputs: three (1, 6, H, W) tensors, label (H, W, 3)) of one training scene; with ``noise`` =
    (shot, read), every frame gets that much more sensor noise (``data.base_dataset.add_sensor_noise``), the
    label stays."""
    frames, times = scene_frames_and_times(root / 'Training' / name, 'sig17')
    label_dir = root / 'Training_align' / name
    if aligned_input:
        frames = list_frames(label_dir, 'sig17')
        if len(frames) != 3:
            raise GateDataError(f'{label_dir}: expected 3 aligned frames, found {len(frames)}')
    ldrs = [read_ldr(p) for p in frames]
    label = read_hdr(label_dir / 'HDRImg.hdr')
    shapes = {x.shape for x in ldrs} | {label.shape}
    if len(shapes) != 1:
        raise GateDataError(f'{name}: frames and label differ in size ({sorted(shapes)})')
    if noise is not None:
        ldrs = add_sensor_noise(ldrs, *noise, rng)
    return _build_inputs(ldrs, times), label


def backbone_outputs(net, network: str, root: Path, names: list[str], amp_dtype, noisy_copies: int = 0,
                     shot: tuple[float, float] = (1e-3, 1e-2), read: tuple[float, float] = (1e-3, 1e-2),
                     seed: int = 0):
    """Per scene (and per noisy copy of it): the backbone's output, the medium input, the label and the noise map
    (float32 tensors). The noisy copies teach the gate what noisier frames than the training split's look like: their
    label is the scene's own, cleaner than what the gate sees."""
    row = backbone(network)
    fn = padded(net, multiple=row.pad_multiple, mode='release') if row.pad_multiple else net

    def forward(xs):  # as test.py --tile auto runs a backbone: the release's padding, tiles as util.tiling chooses
        height, width = xs[0].shape[-2:]
        per_pixel = row.infer_bytes_per_pixel[0 if amp_dtype is None else 1]
        tile = auto_tile(height, width, per_pixel, 0, TILE_OVERLAP, multiple=row.pad_multiple, log=False)
        return tiled_forward(fn, xs, tile, TILE_OVERLAP)

    records = []
    jobs = [(name, None) for name in names] + [(name, copy) for copy in range(noisy_copies) for name in names]
    for k, (name, copy) in enumerate(jobs):
        rng = np.random.default_rng((seed, k))
        noise = None if copy is None else (log_uniform(rng, shot), log_uniform(rng, read))
        xs, label = load_scene(root, name, row.aligned_input, noise, rng)
        with torch.inference_mode(), torch.autocast('cpu', dtype=amp_dtype or torch.bfloat16,
                                                     enabled=amp_dtype is not None):
            y = forward(xs)[0].float()
        if not torch.isfinite(y).all():
            raise GateDataError(f'{name}: the backbone gives a NaN/Inf output on this scene')
        x_mid = xs[1][0]
        mid = x_mid.permute(1, 2, 0).numpy()
        noise = medium_noise_map(mid[..., 3:6], mid[..., 0:3])
        records.append((y.clone(), x_mid, torch.from_numpy(label.transpose(2, 0, 1).copy()),
                        torch.from_numpy(noise)[None]))
        if (k + 1) % 50 == 0:
            logger.info('backbone outputs: %d / %d scenes', k + 1, len(jobs))
    return records


def random_batch(records, rng: np.random.Generator, batch: int, crop: int):
    ys, xs, labels, noises = [], [], [], []
    for i in rng.integers(0, len(records), batch):
        y, x_mid, label, noise = records[i]
        h, w = y.shape[-2:]
        top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        window = (slice(None), slice(top, top + crop), slice(left, left + crop))
        ys.append(y[window]), xs.append(x_mid[window]), labels.append(label[window]), noises.append(noise[window])
    return torch.stack(ys), torch.stack(xs), torch.stack(labels), torch.stack(noises)


def train_gate(records, iters: int, batch: int, crop: int, lr: float, seed: int) -> tuple[MediumGate, float]:
    """Train a gate on the records; returns it and the mean loss over the last 10 % of the iterations."""
    smallest = min(min(r[0].shape[-2:]) for r in records)
    if crop > smallest:
        raise GateDataError(f'--crop {crop} is larger than the smallest training image side ({smallest})')
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gate = MediumGate()
    optimizer = torch.optim.Adam(gate.parameters(), lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters, eta_min=lr / 100)
    tail, start = [], time.perf_counter()
    for it in range(iters):
        y, x_mid, label, noise = random_batch(records, rng, batch, crop)
        out, _ = gate(y, x_mid, noise)
        loss = (mu_law_torch(out.clamp(0, 1)) - mu_law_torch(label)).abs().mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f'non-finite gate loss at iteration {it + 1} (labels with NaN/Inf?)')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if it >= iters - max(1, iters // 10):
            tail.append(float(loss.detach()))
        if (it + 1) % 300 == 0:
            logger.info("iteration %d / %d: loss %.5f (%.0f s)", it + 1, iters, float(loss.detach()),
                        time.perf_counter() - start)
    return gate.eval(), float(np.mean(tail))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataroot', required=True, help='sig17align-layout root with Training and Training_align')
    p.add_argument('--network', required=True, choices=NAMES, help='backbone of the checkpoint')
    p.add_argument('--checkpoint', required=True, help='the stage-2 checkpoint (release format) to gate')
    p.add_argument('--out', required=True, help='the gated checkpoint to write')
    p.add_argument('--iters', type=int, default=1500)
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--crop', type=int, default=64)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'auto'),
                   help="the backbone's precision (auto: bf16 where the CPU has it natively); the gate is fp32")
    p.add_argument('--max_scenes', type=int, default=0, help='use the first N scenes only (0: all)')
    p.add_argument('--noisy_copies', type=int, default=0,
                   help='add this many copies of every scene with more sensor noise (shot 1e-3..1e-2, read noise '
                        '1e-3..1e-2, log-uniform), so that the gate learns to distrust a noisy medium frame')
    p.add_argument('--consistency', type=float, default=DEFAULT_CONSISTENCY,
                   help="at inference, hold the gated output to the medium frame's noise band, within this many of "
                        "its noise sigmas (0: no clamp); the gate trains without it. Default chosen on the study's "
                        'validation split (README, "Study and shipped model")')
    p.add_argument('--consistency_chroma', type=float, default=DEFAULT_CHROMA,
                   help='with --consistency: hold the brightness to the band and each channel within this many times '
                        'the band (0: each channel to the band alone, as gates made before round 3\'s thirteenth '
                        'session)')
    p.add_argument('--consistency_fallback', type=float, default=DEFAULT_FALLBACK,
                   help='with --consistency: where the output strays this many sigmas from the medium frame it becomes '
                        'that frame, linearly from the clamp on (0, or not above --consistency: off)')
    p.add_argument('--band_noise', default=DEFAULT_BAND_NOISE, choices=BAND_NOISE,
                   help="how the clamp estimates the medium frame's noise: weak_texture_modelled (weak_texture with no "
                        "brightness band above 1.5 times the largest physical noise curve (flat, read and shot noise) "
                        "under all the bands: gates since round 3's eighteenth session), weak_texture_capped (no band "
                        "above 1.5 times the darker bands' smallest: the seventeenth), weak_texture (patches' "
                        "covariance; reads "
                        'little texture as noise on clean frames) or robust (Immerkaer over the flattest blocks, the '
                        'gates made before round 3\'s fifteenth session). Default chosen on the validation split')
    p.add_argument('--bracket_noise', default='on', choices=('on', 'off'),
                   help='on: the band\'s noise is also capped by the estimates of the bracket\'s other (unwarped) '
                        'frames, where the tools have them (models.medium_gate.bracket_noise_bounds). Default '
                        'chosen on the validation splits')
    p.add_argument('--fusion_window', type=int, default=DEFAULT_FUSION_WINDOW,
                   help='with --consistency: first fuse the output with the medium frame, keeping the share of its '
                        "deviation the frame's noise explains over this many pixels a side (odd; 0: off). Default "
                        'chosen on the validation split')
    p.add_argument('--fusion_prior', type=float, default=DEFAULT_FUSION_PRIOR,
                   help="the fusion's estimate of the output's own error at a pixel weighs the image's mean by this "
                        '(0 to 1; 0: the local estimate alone; acts with --fusion_window only). Default chosen on '
                        'the validation splits')
    p.add_argument('--short_consistency', default='auto',
                   help="at inference, hold the pixels the medium frame clips to the aligned short frame's noise band, "
                        'within this many sigmas, where the two frames agree (0: off). auto: --consistency for a '
                        'backbone that takes aligned frames, 0 for one that takes them unaligned (their ghosts)')
    p.add_argument('--long_consistency', default='auto',
                   help="at inference, hold the output to the aligned long frame's noise band, within this many "
                        'sigmas, where that frame is well exposed, agrees with the medium frame and is 3 times cleaner '
                        f'(0: off). auto: {DEFAULT_LONG_CONSISTENCY:g} (chosen on the validation split) for a backbone '
                        'that takes aligned frames, 0 for one that takes them unaligned or with --consistency 0')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    return p


def witness_consistency_of(value: str, network: str, auto: float, frame: str = 'short') -> float:
    """--short_consistency or --long_consistency (``frame``) as a number, ``auto`` for 'auto' where the backbone
    takes aligned frames (0 where it does not); ValueError for a bad value or one set for an unaligned-input
    backbone."""
    refusal = witness_clamp_refusal(network, frame)
    if value == 'auto':
        return 0.0 if refusal else auto
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f'--{frame}_consistency {value!r}: expected auto or a number >= 0') from None
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f'--{frame}_consistency {value!r}: expected auto or a number >= 0')
    if number and refusal:
        raise ValueError(f'--{frame}_consistency {value}: {refusal}')
    return number


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    for flag in ('iters', 'batch_size', 'crop'):
        if getattr(args, flag) < 1:
            print(f'error: --{flag} must be at least 1', file=sys.stderr)
            return 2
    for flag in ('max_scenes', 'threads', 'seed'):  # 0 means all / torch's default; a negative value is a mistake
        if getattr(args, flag) < 0:                   # (--max_scenes -1 sliced one scene off, silently)
            print(f'error: --{flag} must be 0 or more', file=sys.stderr)
            return 2
    for flag in ('consistency', 'consistency_chroma', 'consistency_fallback'):
        if not (getattr(args, flag) >= 0 and math.isfinite(getattr(args, flag))):
            print(f'error: --{flag} must be a number >= 0', file=sys.stderr)
            return 2
    try:
        short_consistency = witness_consistency_of(args.short_consistency, args.network, args.consistency, 'short')
        # auto: off with --consistency 0 too (a gate asked for no clamp gets none), as --short_consistency
        long_consistency = witness_consistency_of(args.long_consistency, args.network,
                                                  DEFAULT_LONG_CONSISTENCY if args.consistency else 0.0, 'long')
    except ValueError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    for problem in (fusion_window_problem(args.fusion_window), fusion_prior_problem(args.fusion_prior)):
        if problem:
            print(f'error: --{problem}', file=sys.stderr)
            return 2
    if args.noisy_copies < 0:
        print('error: --noisy_copies must be 0 or more', file=sys.stderr)
        return 2
    if not (args.lr > 0 and math.isfinite(args.lr)):
        print('error: --lr must be a positive number', file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.resolve() == Path(args.checkpoint).resolve():
        print('error: --out must not overwrite --checkpoint', file=sys.stderr)
        return 2
    try:
        net = networks.define_network(args.network)
        load_backbone_state(net, args.checkpoint, device='cpu')
        net.eval()
        root = Path(args.dataroot)
        names = scene_names(root)[:args.max_scenes or None]
        amp_dtype = resolve_amp(args.amp, torch.device('cpu'))
        logger.info('%s backbone (%s) on %d training scenes of %s; backbone precision %s', args.network,
                    args.checkpoint, len(names), root, 'bf16' if amp_dtype is not None else 'fp32')
        records = backbone_outputs(net, args.network, root, names, amp_dtype, args.noisy_copies, seed=args.seed)
        gate, loss = train_gate(records, args.iters, args.batch_size, args.crop, args.lr, args.seed)
    except (CheckpointError, GateDataError, FloatingPointError, MemoryBudgetError, OSError, ValueError,
            RuntimeError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    gate.consistency, gate.chroma, gate.short_consistency = args.consistency, args.consistency_chroma, short_consistency
    gate.fallback, gate.band_noise = args.consistency_fallback, args.band_noise
    gate.fusion_window, gate.long_consistency = args.fusion_window, long_consistency
    gate.fusion_prior = args.fusion_prior
    gate.bracket_noise = args.bracket_noise == 'on'
    if gate.idle_fusion:
        logger.warning('--fusion_window %d acts with --consistency only, and it is 0', gate.fusion_window)
    if gate.idle_fallback:
        logger.warning('--consistency_fallback %g is not above --consistency %g, so it does nothing', gate.fallback,
                       gate.consistency)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {'network': args.network, 'trained_on': str(root), 'scenes': len(names), 'noisy_copies': args.noisy_copies,
            'iters': args.iters,
            'final_loss': loss,
            'backbone_checkpoint': str(args.checkpoint)}
    atomic_torch_save(gated_checkpoint(net.state_dict(), gate, **info), str(out))
    logger.info('wrote %s (final loss %.5f)', out, loss)
    return 0


if __name__ == '__main__':
    sys.exit(main())
