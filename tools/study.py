"""The study: SelfHDR against supervised training and the classical anchors, at one budget.

    python tools/study.py --budget short                       # about two hours on a 2-core CPU (AHDRNet)
    python tools/study.py --budget tiny --work /tmp/s          # seconds: the pipeline, not the method
    python tools/study.py --budget short --ablations no_stru_loss stage1_half no_align stage2_from_scratch

On one synthetic data set (training scenes with colour augmentation and lifted photos; test scenes from HDR maps
training never sees) and with the same number of iterations per network, it

1. trains the supervised baseline (ground truth labels);
2. trains SelfHDR: stage 1, the structure labels (stage-0 inference), stage 2 (initialised from stage 1);
3. scores on the test split and on a channel-permuted copy of it: both networks, and the anchors (medium frame
   alone, unaligned triangle merge, the colour component Y_color, the structure component);
4. scores the labels themselves against the training split's ground truth (Y_color, Y_structure, the stage-2
   target they make together);
5. optionally runs ablations (each a further stage-2 training, or stage 1 + stage 2 for ``no_align``);
   ``stage2_from_scratch`` is the paper's stage 2 (random initial weights), where the budgets' recipe starts
   stage 2 from the trained stage-1 network.

Writes ``results.json``, ``results.md``, ``crops.png`` (tone-mapped crops per method) and ``curves.png``
(training loss and validation PSNR-mu per epoch) to ``--out``. Every training resumes from its last saved epoch,
so the study can be stopped and started again; finished steps are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from data.demo import TEST_HDRIS, VARIETIES, ensure_demo_dataset  # noqa: E402
from data.study_splits import (SPLIT_DESCRIPTIONS, TEST_SPLITS, ensure_test_split,  # noqa: E402
                               ensure_validation_split)
from models.backbones import NAMES, backbone  # noqa: E402
from models.base_model import saved_model_epochs  # noqa: E402
from util import metrics  # noqa: E402
from util.flags import NumberRangeError, checked_number  # noqa: E402
from util.align import AlignConfig, align_frames, colour_label  # noqa: E402
from util.colour import ldr_to_hdr, merge_colour_component  # noqa: E402
from util.exposures import list_frames, scene_frames_and_times  # noqa: E402
from util.figures import draw_curves, labelled_grid, write_stacked  # noqa: E402
from util.hdr_io import read_hdr, read_ldr, write_hdr, write_ldr16  # noqa: E402
from util.tonemap import mu_law, tonemap  # noqa: E402

logger = logging.getLogger('study')

NETWORK_METHODS = ('selfhdr', 'supervised', 'structure_component')
ANCHORS = ('medium_frame', 'unaligned_merge', 'colour_component', 'flow_merge')
ALIGNED_MERGE = '_aligned_merge'  # anchor_outputs' unscored extra: the plain merge of the aligned frames
REGIONS = ('clipped', 'well_exposed', 'dark', 'motion')  # per-region PSNR-mu, pooled over a split's scenes
CLIPPED_LEVEL, DARK_LEVEL = 0.95, 0.05  # medium-frame LDR levels: any channel above / every channel below
MOTION_THRESHOLD = 10 / 255  # mu-law difference between the unaligned and the aligned merge that marks motion
PERMUTATION = (1, 2, 0)  # cyclic channel permutation of the permuted test copy (BGR -> GRB)
ABLATIONS = ('no_stru_loss', 'stage1_half', 'no_align', 'stage2_from_scratch', 'colour_threshold_release',
             'colour_keep_clipped', 'colour_threshold_60', 'stage2_continued', 'stage2_noise_aug')
# stage2_noise_aug: the share of training crops given more sensor noise (train.py --sensor_noise_aug), labels unchanged
NOISE_AUG_SHARE = 0.5


@dataclass(frozen=True)
class Budget:
    """Everything a budget fixes; the same for every network of the study."""
    iters: int  # iterations per network (supervised, stage 1, stage 2)
    iters_per_epoch: int
    batch: int
    patch: int
    lr: float
    lr_policy: str
    n_train: int
    n_test: int
    size: tuple[int, int]
    seed: int = 0
    test_every: int = 1  # epochs between validations (the curve's points)
    # Stage 2's initial weights: 'stage1' (the trained stage-1 network; our small-budget recipe, measured in the
    # README) or 'scratch' (random, as the paper)
    stage2_init: str = 'stage1'
    stage2_lr: float = 0.0  # peak learning rate of a stage 2 that starts from stage 1 (0: ``lr``)
    # Stage 2 keeps L_color where the colour and structure components agree within this many 1/255 (the release:
    # 10). A small budget's structure network is the worse label wherever they disagree by less than ~60/255
    # (README, "Study"), so the recipe widens it.
    stage2_colour_threshold: float = 10.0
    # The training data's settings (data.demo.VARIETIES): 'standard' (the generator's defaults) or 'wide'
    data: str = 'standard'

    @property
    def epochs(self) -> int:
        return max(1, self.iters // self.iters_per_epoch)


# The small-budget recipe, chosen by measurement (README, "Training"): a larger learning rate with cosine decay to
# 1e-5 over the run, batch 4 of 64 x 64 crops (more iterations per CPU second than 128 x 128), and stage 2 started
# from the stage-1 network at a lower peak rate with a wider colour mask (README, "Study"): 60/255 since round 3,
# chosen on the validation split against 30/255 (ablation colour_threshold_60 of the round-3 study); and the
# 'wide' data variety on 192 scenes (round 3, second run: level with 'standard' on the validation split's mean, far
# better on its worst scene; README, "Study").
BUDGETS = {
    'tiny': Budget(iters=4, iters_per_epoch=2, batch=2, patch=32, lr=5e-4, lr_policy='cosine',
                   n_train=3, n_test=2, size=(48, 64), stage2_lr=2e-4,
                   stage2_colour_threshold=30),
    'short': Budget(iters=2000, iters_per_epoch=100, batch=4, patch=64, lr=1e-3, lr_policy='cosine',
                    n_train=192, n_test=12, size=(256, 384), test_every=2, stage2_lr=2e-4,
                    stage2_colour_threshold=60, data='wide'),
    'long': Budget(iters=6000, iters_per_epoch=200, batch=4, patch=64, lr=1e-3, lr_policy='cosine',
                   n_train=192, n_test=12, size=(256, 384), test_every=3, stage2_lr=2e-4,
                   stage2_colour_threshold=60, data='wide'),
}


# ------------------------------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open('/proc/cpuinfo') as handle:
            text = handle.read()
        found = re.search(r'^model name\s*:\s*(.+)$', text, re.M)
        cpu = found.group(1).strip() if found else cpu
        family = re.search(r'^cpu family\s*:\s*(\d+)$', text, re.M)
        model = re.search(r'^model\s*:\s*(\d+)$', text, re.M)
        if family and model:  # a KVM's model name is often just "AMD EPYC": family/model tell Zen 2 from Zen 3
            cpu = f'{cpu} (family {family.group(1)} model {model.group(1)})'
        found = re.search(r'^flags\s*:\s*(.+)$', text, re.M)
        flags = sorted(set(found.group(1).split()) & {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'fma'}) if found else []
    except OSError:
        pass
    info = {'cpu': cpu, 'cpu_flags': flags, 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'torch': torch.__version__, 'python': platform.python_version(),
            'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def describe_machine(info: dict) -> str:
    text = f"{info['cpu']} ({', '.join(info['cpu_flags']) or 'no AVX2'}), {info['torch_threads']} threads"
    return text + (f", GPU {info['gpu']}" if info['gpu'] else ', no GPU')


# ------------------------------------------------------------------------------------------------------ data
def make_permuted_copy(src_root: Path, dst_root: Path) -> Path:
    """``dst/Test`` (and ``Test_align``): every test scene with its colour channels cycled, frames and ground truth
    alike."""
    marker = dst_root / 'permuted.json'
    if marker.is_file():
        return dst_root
    if dst_root.exists():
        shutil.rmtree(dst_root)
    scenes = [p for sub in ('Test', 'Test_align') if (src_root / sub).is_dir()
              for p in sorted((src_root / sub).iterdir()) if p.is_dir()]
    for scene in scenes:
        out = dst_root / scene.parent.name / scene.name
        out.mkdir(parents=True)
        for path in scene.iterdir():
            if path.suffix.lower() in ('.tif', '.tiff'):
                write_ldr16(out / path.name, read_ldr(path)[..., list(PERMUTATION)])
            elif path.suffix.lower() == '.hdr':
                write_hdr(out / path.name, read_hdr(path)[..., list(PERMUTATION)])
            else:
                shutil.copy(path, out / path.name)
    marker.write_text(json.dumps({'permutation': list(PERMUTATION), 'source': str(src_root)}))
    return dst_root


def _source_stamp(src_root: Path) -> str:
    """A hash of the test frames' files (name, size, modification time): a split rendered again changes it."""
    entries = sorted((str(p.relative_to(src_root)), p.stat().st_size, p.stat().st_mtime_ns)
                     for sub in ('Test', 'Test_align') if (src_root / sub).is_dir()
                     for p in (src_root / sub).rglob('*') if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def make_aligned_test_copy(src_root: Path, dst_root: Path) -> Path:
    """``dst/Test``: the aligned test frames (Test_align) with the exposures and ground truth, so that a stage-1
    network run on it gives the structure component of the test scenes. Made again when the source's test files
    changed since (a split rendered again, e.g. after a change to the aligner)."""
    marker = dst_root / 'aligned.json'
    stamp = _source_stamp(src_root)
    if marker.is_file():
        try:
            made = json.loads(marker.read_text()).get('stamp')
        except (OSError, ValueError):
            made = None
        if made == stamp:
            return dst_root
    if dst_root.exists():
        shutil.rmtree(dst_root)
    for scene in sorted(p for p in (src_root / 'Test').iterdir() if p.is_dir()):
        out = dst_root / 'Test' / scene.name
        out.mkdir(parents=True)
        for path in (src_root / 'Test_align' / scene.name).glob('*.tif'):
            shutil.copy(path, out / path.name)
        for path in scene.iterdir():
            if path.suffix.lower() not in ('.tif', '.tiff'):
                shutil.copy(path, out / path.name)
    marker.write_text(json.dumps({'source': str(src_root), 'stamp': stamp}))
    return dst_root


def make_unaligned_labels_copy(src_root: Path, dst_root: Path) -> Path:
    """A data root whose ``Training_align`` holds the *unaligned* frames and their merge as Y_color (ablation
    ``no_align``); Training and Test are linked from the source."""
    marker = dst_root / 'no_align.json'
    if marker.is_file():
        return dst_root
    if dst_root.exists():
        shutil.rmtree(dst_root)
    dst_root.mkdir(parents=True)
    for sub in ('Training', 'Test', 'Test_align'):
        if (src_root / sub).exists():
            os.symlink((src_root / sub).resolve(), dst_root / sub)
    for scene in sorted(p for p in (src_root / 'Training').iterdir() if p.is_dir()):
        out = dst_root / 'Training_align' / scene.name
        out.mkdir(parents=True)
        frames, times = scene_frames_and_times(scene, 'sig17')
        ldrs = [read_ldr(p) for p in frames]
        for path in frames:
            shutil.copy(path, out / path.name)
        write_hdr(out / 'HDRImg.hdr', merge_colour_component(*ldrs, times))
    marker.write_text(json.dumps({'source': str(src_root)}))
    return dst_root


# ------------------------------------------------------------------------------------------------------ training
# The study's precision (set by run_study from --amp/--compile, see precision_settings): every train.py and test.py
# run gets --amp, the trainings --compile, and the scoring forwards run under the same autocast.
PRECISION = {'amp': 'none', 'compile': False, 'dtype': None}


def precision_settings(amp: str, compile_: str, budget_name: str) -> dict:
    """--amp as given (auto: bf16 where the hardware has it); --compile auto: on for the short and long budgets,
    whose thousands of iterations repay the compile warm-up, off for tiny (seconds), and otherwise as train.py's
    `--compile auto` decides (`resolve_compile`): off where the trainings run in channels_last (a CPU with AMX), where
    eager bf16 is faster for the CNNs (AHDRNet's step 0.51 s against 0.63 s compiled) and equal for the transformers
    (README, "Speed")."""
    from models.base_model import resolve_amp, resolve_channels_last, resolve_compile

    dtype = resolve_amp(amp, torch.device('cpu'))  # the scoring forwards run on the CPU
    trains_on = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    nhwc = resolve_channels_last('auto', dtype, trains_on)  # never on for CUDA
    on = False if compile_ == 'auto' and budget_name == 'tiny' else resolve_compile(compile_, True, nhwc)
    logger.info('precision: --amp %s (scoring forwards in %s), --compile %s for the trainings', amp,
                'bf16' if dtype is not None else 'fp32', on)
    return {'amp': amp, 'compile': on, 'dtype': dtype}


def common_args(dataroot: Path, ckpt: Path, network: str) -> list[str]:
    return ['--dataroot', str(dataroot), '--dataset_name', 'sig17align', '--network', network,
            '--checkpoints_dir', str(ckpt), '--gpu_ids', 'auto' if torch.cuda.is_available() else '-1',
            '-j', '0', '--verbose', 'False', '--amp', PRECISION['amp']]


def train_run(name: str, model: str, dataroot: Path, ckpt: Path, network: str, budget: Budget,
              extra: list[str] = ()) -> float:
    """Train (or resume) one network to the budget's last epoch; returns the seconds spent in this call."""
    import train

    run_dir = ckpt / name
    done = saved_model_epochs(run_dir)
    last = done[-1] if done else 0
    if last >= budget.epochs:
        logger.info('%s: done (epoch %d)', name, last)
        return 0.0
    args = common_args(dataroot, ckpt, network) + [
        '--model', model, '--name', name, '--batch_size', str(budget.batch), '--patch_size', str(budget.patch),
        '--niter', str(budget.epochs), '--iters_per_epoch', str(budget.iters_per_epoch), '--lr', str(budget.lr),
        '--lr_policy', budget.lr_policy, '--print_freq', str(max(1, budget.iters_per_epoch // 4)),
        '--test_every', str(budget.test_every), '--seed', str(budget.seed),
        '--compile', str(PRECISION['compile'])] + list(extra)  # later flags win
    if last:
        # train.py picks the newest complete checkpoint (and says which) in its own log; an initialising
        # --load_path would restart from that file instead, so it only applies to a fresh run
        if '--load_path' in args:
            at = args.index('--load_path')
            del args[at:at + 2]
        args += ['--continue_train', 'True']
        logger.info('%s: resuming (newest saved epoch %d of %d)', name, last, budget.epochs)
    else:
        logger.info('%s: training %d epochs x %d iterations', name, budget.epochs, budget.iters_per_epoch)
    start = time.time()
    try:
        status = train.main(args)
    finally:  # an interrupted call's seconds count too: a run that spans sessions reports its whole time
        seconds = time.time() - start
        _add_seconds(run_dir, seconds)
    if status == 130:
        raise RuntimeError(f'training {name} was interrupted; its last complete epoch is kept: run the same command '
                           'to resume')
    if status != 0:
        raise RuntimeError(f'training {name} failed (exit status {status}); see {run_dir / "train.log"}')
    return seconds


def _add_seconds(run_dir: Path, seconds: float) -> None:
    """Add this call's seconds to the run's total, and the machine it ran on (a resumed run may span several)."""
    path = run_dir / 'study_seconds.json'
    record = json.loads(path.read_text()) if path.is_file() else {'seconds': 0.0}
    machines = record.get('machines', [])
    here = describe_machine(machine_info())
    record = {'seconds': record['seconds'] + seconds, 'machines': machines + ([here] if here not in machines else [])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def run_machines(run_dir: Path) -> list[str]:
    path = run_dir / 'study_seconds.json'
    return json.loads(path.read_text()).get('machines', []) if path.is_file() else []


def run_seconds(run_dir: Path) -> float | None:
    path = run_dir / 'study_seconds.json'
    return json.loads(path.read_text())['seconds'] if path.is_file() else None


def structure_labels(stage1: str, epoch: int, dataroot: Path, ckpt: Path, network: str, n_train: int) -> Path:
    """Stage-0 inference: the stage-1 network on the aligned training frames -> ``<stage1>/output_<epoch>``."""
    import test

    out_dir = ckpt / stage1 / f'output_{epoch}'
    if out_dir.is_dir() and len(list(out_dir.glob('*.hdr'))) == n_train:
        return out_dir
    args = common_args(dataroot, ckpt, network) + ['--model', 'selfhdr2', '--name', stage1, '--load_iter',
                                                   str(epoch), '--stage0_inference', 'True', '--save_imgs', 'True']
    if test.main(args) != 0:
        raise RuntimeError(f'stage-0 inference of {stage1} epoch {epoch} failed')
    return out_dir


# ------------------------------------------------------------------------------------------------------ scoring
def load_network(ckpt: Path, name: str, epoch: int, network: str, medium_gate: str = 'auto'):
    """A trained network, with its checkpoint's medium gate if it has one (models/medium_gate.py)."""
    from models import networks
    from models.base_model import load_backbone_state
    from models.medium_gate import with_gate

    net = networks.define_network(network)
    path = ckpt / name / f'SelfHDR_model_{epoch}.pth'
    contents = load_backbone_state(net, str(path), device='cpu')
    return with_gate(net.eval(), path, medium_gate, contents, network)


def network_outputs(net, network: str, split_root: Path, raw_root: Path | None = None) -> dict[str, np.ndarray]:
    """Run a backbone on every scene of ``split_root`` (sig17 layout, unaligned or aligned frames). ``raw_root``:
    the same scenes' unaligned frames, which a medium gate that reads the whole bracket's noise takes
    (``models.medium_gate.bracket_noise``); by default ``split_root``'s own frames where the backbone takes
    unaligned ones, and none for one that takes aligned frames."""
    from models.medium_gate import bracket_noise, reads_bracket_noise
    from util.tiling import padded

    multiple = backbone(network).pad_multiple
    fn = padded(net, multiple=multiple, mode='release') if multiple else net
    if raw_root is None and not backbone(network).aligned_input:
        raw_root = split_root
    if not reads_bracket_noise(net):  # the frames as shot are read only for a gate that takes them
        raw_root = None
    outputs = {}
    for scene in sorted(p for p in split_root.iterdir() if p.is_dir()):
        frames, times = scene_frames_and_times(scene, 'sig17')
        xs, ldrs = [], []
        for path, t in zip(frames, times):
            ldr = read_ldr(path)
            ldrs.append(ldr)
            x = np.concatenate([ldr_to_hdr(ldr, t), ldr], axis=2).transpose(2, 0, 1)
            xs.append(torch.from_numpy(np.ascontiguousarray(x))[None])
        raw = None  # the short and long frames as shot
        if raw_root is not None:
            raw = [ldrs[0], ldrs[-1]] if raw_root == split_root else \
                [read_ldr(p) for p in scene_frames_and_times(raw_root / scene.name, 'sig17')[0][::2]]
        dtype = PRECISION['dtype']
        with torch.inference_mode(), torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None), \
                bracket_noise(net, raw):
            out = fn(*xs)
        outputs[scene.name] = out[0].float().permute(1, 2, 0).numpy()
    return outputs


def anchor_outputs(data_root: Path, split: str = 'Test') -> dict[str, dict[str, np.ndarray]]:
    """The classical anchors per scene: the medium frame alone, the triangle merge of the unaligned frames, of
    the plain DIS-flow-aligned frames (``flow_merge``: no validity check, no fallback) and of our aligned frames
    (``<split>_align``: the colour component)."""
    result = {name: {} for name in ANCHORS}
    plain_flow = AlignConfig(consistency=False, fallback=False)
    for scene in sorted(p for p in (data_root / split).iterdir() if p.is_dir()):
        frames, times = scene_frames_and_times(scene, 'sig17')
        ldrs = [read_ldr(p) for p in frames]
        result['medium_frame'][scene.name] = ldr_to_hdr(ldrs[1], times[1])
        result['unaligned_merge'][scene.name] = merge_colour_component(*ldrs, times)
        result['flow_merge'][scene.name] = merge_colour_component(*align_frames(*ldrs, times, plain_flow).frames,
                                                                  times)
        aligned_dir = data_root / f'{split}_align' / scene.name
        aligned = [read_ldr(p) for p in list_frames(aligned_dir, 'sig17')] \
            if aligned_dir.is_dir() and list(aligned_dir.glob('*.tif')) else None
        if aligned is not None:
            result['colour_component'][scene.name] = colour_label(aligned, ldrs, times)
            # the plain merge of the same aligned frames: what the moving regions are measured against (unscored)
            result.setdefault(ALIGNED_MERGE, {})[scene.name] = merge_colour_component(*aligned, times)
    return result


def motion_regions(anchors: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per scene, the pixels where alignment changes the merge: the triangle merges of the unaligned and of the
    aligned frames differ by at least MOTION_THRESHOLD in mu-law (channel mean). These are the moving regions, where
    ghosts appear; the test is the classical merges', so it is the same for every method and does not move with the
    colour label's rules (``ALIGNED_MERGE``; Y_color where that is missing)."""
    regions = {}
    merged = anchors.get(ALIGNED_MERGE) or anchors['colour_component']
    for scene, unaligned in anchors['unaligned_merge'].items():
        aligned = merged.get(scene)
        if aligned is not None:
            diff = np.abs(mu_law(np.clip(unaligned, 0, 1)) - mu_law(np.clip(aligned, 0, 1)))
            regions[scene] = diff.mean(axis=2) >= MOTION_THRESHOLD
    return regions


def psnr_mu_in(out: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """PSNR-mu over the pixels of ``region`` (NaN when it is empty)."""
    return metrics.psnr_mu(out[region], gt[region]) if region.any() else float('nan')


def exposure_regions(ldr_mid: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel masks from the medium frame: clipped (a channel above 0.95), dark (every channel below 0.05) and
    well exposed (the rest)."""
    top = ldr_mid.max(axis=2)
    clipped, dark = top > CLIPPED_LEVEL, top < DARK_LEVEL
    return {'clipped': clipped, 'dark': dark, 'well_exposed': ~clipped & ~dark}


def score(outputs: dict[str, np.ndarray], data_root: Path, split: str = 'Test',
          motion: dict[str, np.ndarray] | None = None) -> dict:
    """Mean metrics of ``outputs`` (scene -> linear BGR) against ``<split>/<scene>/HDRImg.hdr``; with ``motion``
    (scene -> pixel mask, see motion_regions) also PSNR-mu over the moving regions (mean over scenes,
    ``psnr_mu_motion``) and PSNR-mu per region, pooled over the pixels of every scene (``psnr_mu_<region>``)."""
    rows, pooled = [], {region: ([], []) for region in REGIONS}
    for scene, out in outputs.items():
        scene_dir = data_root / split / scene
        gt = read_hdr(scene_dir / 'HDRImg.hdr')
        mid = read_ldr(scene_frames_and_times(scene_dir, 'sig17')[0][1])
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        rows.append({'psnr_mu': metrics.psnr_mu(out, gt), 'psnr_l': metrics.psnr_l(out, gt),
                     'ssim_mu': metrics.ssim_mu(out, gt), 'ssim_l': metrics.ssim_l(out, gt),
                     'pu21_psnr': metrics.pu21_psnr(out, gt),
                     'colour_error_deg': metrics.colour_error_deg(out, gt, well_exposed_mask(mid))})
        if motion is not None:
            rows[-1]['psnr_mu_motion'] = psnr_mu_in(out, gt, motion[scene]) if scene in motion else float('nan')
            masks = dict(exposure_regions(mid), motion=motion.get(scene, np.zeros(mid.shape[:2], bool)))
            for region, mask in masks.items():
                pooled[region][0].append(out[mask])
                pooled[region][1].append(gt[mask])
    # nanmean: a scene without well-exposed pixels has no colour error (nor, without motion, a motion score)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        result = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    if motion is not None and rows:
        for region, (outs, gts) in pooled.items():
            result[f'psnr_mu_{region}'] = psnr_mu_in(np.concatenate(outs), np.concatenate(gts),
                                                     np.ones(sum(len(o) for o in outs), bool))
            result[f'pixels_{region}'] = int(sum(len(o) for o in outs))
    return result


EXPOSURE_REGIONS = ('clipped', 'well_exposed', 'dark')  # a partition of every image (motion overlaps them)


def gap_by_region(methods: dict, a: str = 'selfhdr', b: str = 'supervised') -> dict | None:
    """Which region decides the gap between two methods on a split: each exposure region's share of the difference
    in pooled mu-law MSE (share of the split's pixels x the difference of the region's MSE), positive where ``a``
    is better. The regions partition the pixels, so the shares add up to the whole split's pooled difference."""
    if a not in methods or b not in methods:
        return None
    rows = methods[a], methods[b]
    if any(f'pixels_{r}' not in row or f'psnr_mu_{r}' not in row for row in rows for r in EXPOSURE_REGIONS):
        return None
    total = sum(rows[0][f'pixels_{r}'] for r in EXPOSURE_REGIONS)
    contribution = {}
    for r in EXPOSURE_REGIONS:
        psnr_a, psnr_b = rows[0][f'psnr_mu_{r}'], rows[1][f'psnr_mu_{r}']
        if not (np.isfinite(psnr_a) and np.isfinite(psnr_b)) or not rows[0][f'pixels_{r}']:
            contribution[r] = 0.0
            continue
        share = rows[0][f'pixels_{r}'] / total
        contribution[r] = share * (10 ** (-psnr_b / 10) - 10 ** (-psnr_a / 10))  # MSE of b minus MSE of a
    whole = sum(contribution.values())
    decides = max(contribution, key=lambda r: abs(contribution[r]))
    return {'methods': [a, b], 'mse_difference': whole, 'contribution': contribution, 'decides': decides,
            'shares': {r: rows[0][f'pixels_{r}'] / total for r in EXPOSURE_REGIONS}}


def well_exposed_mask(ldr_mid: np.ndarray) -> np.ndarray:
    """Pixels whose medium frame is neither dark nor clipped in any channel: where hues are trustworthy."""
    return ((ldr_mid > 0.05) & (ldr_mid < 0.95)).all(axis=2)


def score_labels(dataroot: Path, stru_dir: Path, colour_threshold: float) -> dict:
    """Y_color, Y_structure and the stage-2 target (Y_color where the two agree, else Y_structure) against the
    training split's ground truth: how good is what SelfHDR learns from."""
    from models.selfhdr2_model import colour_mask

    def as_batch(image):
        return torch.from_numpy(image).permute(2, 0, 1)[None]

    labels = {'colour_component': {}, 'structure_component': {}, 'stage2_target': {}}
    for scene in sorted(p for p in (dataroot / 'Training').iterdir() if p.is_dir()):
        y_col = read_hdr(dataroot / 'Training_align' / scene.name / 'HDRImg.hdr')
        y_stru = read_hdr(stru_dir / f'{scene.name}.hdr')
        mask = colour_mask(as_batch(y_col), as_batch(y_stru), colour_threshold / 255)[0, 0].numpy()[..., None]
        labels['colour_component'][scene.name] = y_col
        labels['structure_component'][scene.name] = y_stru
        labels['stage2_target'][scene.name] = mask * y_col + (1 - mask) * y_stru
    return {name: score(outs, dataroot, 'Training') for name, outs in labels.items()}


def permute_outputs(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v[..., list(PERMUTATION)] for k, v in outputs.items()}


def score_split(split: str, split_root: Path, aligned_root: Path, trained: dict, stage1_net, network: str):
    """Every method on one test split: the trained networks (unaligned frames, or aligned ones for a backbone
    that takes them), the structure component (stage 1 on aligned frames) and the anchors. Returns the split's
    record (description, settings, methods) and the outputs (method -> scene -> linear BGR)."""
    test_dir = aligned_root / 'Test' if backbone(network).aligned_input else split_root / 'Test'
    outputs = {name: network_outputs(model, network, test_dir, split_root / 'Test') for name, model in trained.items()}
    outputs['structure_component'] = network_outputs(stage1_net, network, aligned_root / 'Test')
    anchors = anchor_outputs(split_root)
    outputs.update(anchors)
    motion = motion_regions(anchors)
    outputs['_motion'] = motion
    order = [n for n in ('selfhdr', 'supervised') if n in trained] + [*ANCHORS, 'structure_component'] + \
        [n for n in trained if n not in ('selfhdr', 'supervised')]
    methods = {name: score(outputs[name], split_root, motion=motion) for name in order}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in TEST_SPLITS.get(split, {}).items()}
    return {'description': SPLIT_DESCRIPTIONS.get(split, split), 'settings': settings, 'methods': methods,
            'gap_selfhdr_supervised': gap_by_region(methods)}, outputs


def worst_region_sheet(splits: dict, split_outputs: dict, work: Path, dataroot: Path, path: Path,
                       crop: int = 64) -> None:
    """One row per split: the region where SelfHDR scores lowest, and in it the crop with the largest mu-law error,
    shown for the medium frame, the merges, both networks and the ground truth."""
    import cv2

    shown = ('medium_frame', 'flow_merge', 'colour_component', 'supervised', 'selfhdr')
    rows = []
    for split, record in splits.items():
        scores = {r: record['methods']['selfhdr'].get(f'psnr_mu_{r}', float('nan')) for r in REGIONS}
        scores = {r: v for r, v in scores.items() if np.isfinite(v)}
        if not scores:
            continue
        region = min(scores, key=scores.get)
        outs = split_outputs[split]
        root = dataroot if split == 'current' else work / 'splits' / split
        best = None
        for scene, out in outs['selfhdr'].items():
            scene_dir = root / 'Test' / scene
            gt = read_hdr(scene_dir / 'HDRImg.hdr')
            mid = read_ldr(scene_frames_and_times(scene_dir, 'sig17')[0][1])
            mask = outs['_motion'].get(scene) if region == 'motion' else exposure_regions(mid)[region]
            if mask is None or not mask.any():
                continue
            err = np.abs(mu_law(np.clip(out, 0, 1)) - mu_law(gt)).mean(axis=2) * mask
            window = cv2.boxFilter(err.astype(np.float32), -1, (crop, crop), normalize=True,
                                   borderType=cv2.BORDER_CONSTANT)
            y, x = np.unravel_index(int(np.argmax(window)), window.shape)
            if best is None or window[y, x] > best[0]:
                best = (float(window[y, x]), scene, gt, y, x)
        if best is None:
            continue
        _, scene, gt, y, x = best
        h, w = gt.shape[:2]
        y0, x0 = min(max(0, y - crop // 2), h - crop), min(max(0, x - crop // 2), w - crop)
        tiles = {f'{split} {region}: {name}' if name == shown[0] else name:
                 tonemap(np.clip(outs[name][scene][y0:y0 + crop, x0:x0 + crop], 0, 1), 'mu')
                 for name in shown if name in outs}
        tiles['ground_truth'] = tonemap(gt[y0:y0 + crop, x0:x0 + crop], 'mu')
        rows.append(labelled_grid({k: cv2.resize(v, (160, 160), interpolation=cv2.INTER_NEAREST)
                                   for k, v in tiles.items()}, path, columns=len(tiles)))
    if rows:
        write_stacked(rows, path)


# ------------------------------------------------------------------------------------------------------ report
def curve_points(run_dir: Path) -> dict:
    """Per-epoch mean training loss (from loss_log.txt) and validation PSNR-mu (from train.log)."""
    losses, val = {}, {}
    log = run_dir / 'loss_log.txt'
    if log.is_file():
        for line in log.read_text().splitlines():
            match = re.search(r'epoch: (\d+), iters: (\d+).*Total: ([0-9.eE+-]+)', line)
            if match:
                losses.setdefault(int(match.group(1)), []).append(float(match.group(3)))
    log = run_dir / 'train.log'
    if log.is_file():
        for line in log.read_text().splitlines():
            match = re.search(r'epoch (\d+): validation PSNR-mu ([0-9.]+) dB', line)
            if match:
                val[int(match.group(1))] = float(match.group(2))
    return {'loss': {e: float(np.mean(v)) for e, v in sorted(losses.items())}, 'val_psnr_mu': dict(sorted(val.items()))}


def _stage2_start(b: dict) -> str:
    mask = f"colour mask {b.get('stage2_colour_threshold', 10):g}/255"
    if b.get('stage2_init', 'scratch') == 'scratch':
        return f'scratch, {mask}'
    return f"the stage-1 network at lr {b.get('stage2_lr') or b['lr']}, {mask}"


def write_markdown(results: dict, path: Path) -> None:
    keys = ('psnr_mu', 'psnr_l', 'ssim_mu', 'ssim_l', 'pu21_psnr', 'colour_error_deg', 'psnr_mu_motion',
            'psnr_mu_permuted')
    heads = ('PSNR-mu', 'PSNR-l', 'SSIM-mu', 'SSIM-l', 'PU21-PSNR', 'colour err (deg)', 'PSNR-mu motion',
             'PSNR-mu permuted')
    b = results['budget']
    lines = [f"# Study: {results['network']}, budget `{results['budget_name']}`", '',
             f"{b['iters']} iterations per network (batch {b['batch']}, {b['patch']}x{b['patch']} crops, lr "
             f"{b['lr']} {b['lr_policy']}; stage 2 from {_stage2_start(b)}), {b['n_train']} training scenes, "
             f"{b['n_test']} test scenes of "
             f"{b['size'][0]}x{b['size'][1]} from HDR maps never used in training.", '',
             f"Machine: {results['machine_text']}. Wall time of the trainings: "
             + ', '.join(f"{k} {v / 60:.1f} min" for k, v in results['seconds'].items() if v is not None) + '.', '',
             '| method | ' + ' | '.join(heads) + ' | iterations |', '|---' * (len(heads) + 2) + '|']
    for name, row in results['methods'].items():
        cells = [f'{row[k]:.2f}' if k in row and row[k] is not None else '-' for k in keys]
        lines.append(f'| {name} | ' + ' | '.join(cells) + f" | {row.get('iterations', '-')} |")
    lines += ['', 'PSNR-mu motion: over the moving regions only (the pixels where alignment changes the classical '
              f'merge by {MOTION_THRESHOLD * 255:g}/255 or more in mu-law), where ghosts would be.']
    lines += ['', 'Labels against the training split ground truth:', '',
              '| label | PSNR-mu | PSNR-l | colour err (deg) |', '|---|---|---|---|']
    for name, row in results.get('labels', {}).items():
        lines.append(f"| {name} | {row['psnr_mu']:.2f} | {row['psnr_l']:.2f} | {row['colour_error_deg']:.2f} |")
    if results.get('ablations'):
        lines += ['', 'Ablations (stage 2 unless noted):', '',
                  '| ablation | PSNR-mu | PSNR-l | PSNR-mu motion | PSNR-mu permuted |', '|---|---|---|---|---|']
        for name, row in results['ablations'].items():
            cells = [f'{row[k]:.2f}' if row.get(k) is not None else '-'
                     for k in ('psnr_mu', 'psnr_l', 'psnr_mu_motion', 'psnr_mu_permuted')]
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    tables = dict(results.get('splits', {}))
    if results.get('validation'):
        tables['validation'] = results['validation']
    for split, record in tables.items():
        lines += ['', f"Split `{split}`: {record['description']}. PSNR-mu per region is pooled over the split's "
                  'pixels of that region; regions from the medium frame: clipped (a channel above '
                  f'{CLIPPED_LEVEL}), dark (every channel below {DARK_LEVEL}), well exposed (the rest), and moving.',
                  '', '| method | PSNR-mu | PSNR-l | clipped | well exposed | dark | moving |', '|---' * 7 + '|']
        for name, row in record['methods'].items():
            cells = [f'{row[k]:.2f}' if row.get(k) is not None and np.isfinite(row[k]) else '-'
                     for k in ('psnr_mu', 'psnr_l') + tuple(f'psnr_mu_{r}' for r in REGIONS)]
            lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
        gap = record.get('gap_selfhdr_supervised')  # set by score_split
        if gap:
            parts = ', '.join(f"{r.replace('_', ' ')} {100 * gap['shares'][r]:.0f} % of the pixels, "
                              f"{1e4 * gap['contribution'][r]:+.2f}" for r in EXPOSURE_REGIONS)
            better = 'SelfHDR' if gap['mse_difference'] > 0 else 'supervised'
            lines += ['', f"SelfHDR vs supervised, by region (pooled mu-law MSE of supervised minus SelfHDR, x1e-4; "
                      f"positive where SelfHDR is better): {parts}; whole split {1e4 * gap['mse_difference']:+.2f} "
                      f"({better} better). The gap is decided by the **{gap['decides'].replace('_', ' ')}** region."]
    if results.get('splits'):
        lines += ['', '`worst_regions.png`: per split, the region where SelfHDR scores lowest and in it the 64x64 '
                  'crop with its largest mu-law error (mu-law tone map).']
    trained_on = {run: m for run, m in results.get('run_machines', {}).items() if m}
    if trained_on:
        lines += ['', 'Trained on: ' + '; '.join(f"{run}: {' then '.join(m)}" for run, m in trained_on.items()) + '.']
    if results.get('skipped'):
        lines += ['', 'Not trained in this scoring: ' + ', '.join(results['skipped'])
                  + ' (`--skip_supervised`); run the study again without the flag to add it.']
    lines += [''] + list(results.get('notes', [])) if results.get('notes') else []
    path.write_text('\n'.join(lines) + '\n')


def atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------ main
SETTINGS_FILE = 'settings.json'


def check_work_settings(work: Path, settings: dict) -> None:
    """The settings that decide what a --work folder's networks are (the budget as overridden, the network) are
    recorded there at the first run; a later run with others would reuse networks trained under the first ones and
    report the new ones, so it is refused, naming what differs."""
    settings = json.loads(json.dumps(settings))  # as they read back (tuples become lists)
    path = work / SETTINGS_FILE
    trained = any((work / 'ckpt').glob('*/SelfHDR_model_*.pth'))  # before any network, a changed mind is free
    if path.is_file() and trained:
        recorded = json.loads(path.read_text())
        changed = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
        if changed:
            listed = ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in sorted(changed.items()))
            raise ValueError(f'{work} holds a study made with other settings ({listed}); its networks would be '
                             'reused under the new ones: give another --work, or remove that folder')
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_json(path, settings)


def run_study(args) -> dict:
    budget = BUDGETS[args.budget]
    if args.iters:
        budget = dataclasses.replace(budget, iters=args.iters)
    if args.data:
        budget = dataclasses.replace(budget, data=args.data)
    if args.n_train:
        budget = dataclasses.replace(budget, n_train=args.n_train)
    work = Path(args.work or _ROOT / 'study' / f'{args.budget}_{args.network.lower()}')
    check_work_settings(work, dict(dataclasses.asdict(budget), network=args.network))
    out = Path(args.out or work / 'results')
    ckpt = work / 'ckpt'
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    PRECISION.update(precision_settings(args.amp, args.compile, args.budget))
    logger.info('study %s, %s, on %s', args.budget, args.network, describe_machine(info))

    dataroot = ensure_demo_dataset(work / 'data', n_train=budget.n_train, n_test=budget.n_test, size=budget.size,
                                   seed=budget.seed, variety=budget.data)
    permuted_root = make_permuted_copy(dataroot, work / 'data_permuted')
    aligned_root = make_aligned_test_copy(dataroot, work / 'data_aligned_test')
    net, epochs = args.network, budget.epochs

    # SelfHDR first, the supervised baseline after it: a run cut short by a session's end has the network to ship
    train_run('stage1', 'selfhdr1', dataroot, ckpt, net, budget)
    stru = structure_labels('stage1', epochs, dataroot, ckpt, net, budget.n_train)

    def stage2_flags(stru_dir: Path, stage1_run: str, stage1_epoch: int, init: str,
                     colour_threshold: float = budget.stage2_colour_threshold) -> list[str]:
        flags = ['--stru_lable_path', str(stru_dir), '--vgg_weights', args.vgg,
                 '--colour_threshold', str(colour_threshold)]
        if init == 'stage1':  # start from the stage-1 network that made the structure labels, at its own rate
            flags += ['--load_path', str(ckpt / stage1_run / f'SelfHDR_model_{stage1_epoch}.pth')]
            if budget.stage2_lr:
                flags += ['--lr', str(budget.stage2_lr)]
        return flags

    stage2_extra = stage2_flags(stru, 'stage1', epochs, budget.stage2_init)
    train_run('stage2', 'selfhdr2', dataroot, ckpt, net, budget, stage2_extra)
    if args.skip_supervised:  # score what SelfHDR has now; a later run without the flag trains the baseline
        logger.info('supervised baseline skipped (--skip_supervised): no SelfHDR-supervised comparison this time')
    else:
        train_run('supervised', 'supervised', dataroot, ckpt, net, budget)

    ablation_runs, ablation_epochs, ablation_iters = {}, {}, {}
    for ablation in args.ablations:
        if ablation == 'no_stru_loss':
            train_run('stage2_no_stru_loss', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_extra + ['--stru_loss', 'none'])
            ablation_runs[ablation] = ('stage2_no_stru_loss', dataroot)
        elif ablation == 'stage1_half':
            half = max(1, epochs // 2)
            stru_half = structure_labels('stage1', half, dataroot, ckpt, net, budget.n_train)
            train_run('stage2_stage1_half', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_flags(stru_half, 'stage1', half, budget.stage2_init))
            ablation_runs[ablation] = ('stage2_stage1_half', dataroot)
        elif ablation == 'no_align':
            noalign_root = make_unaligned_labels_copy(dataroot, work / 'data_no_align')
            train_run('stage1_no_align', 'selfhdr1', noalign_root, ckpt, net, budget)
            stru_na = structure_labels('stage1_no_align', epochs, noalign_root, ckpt, net, budget.n_train)
            train_run('stage2_no_align', 'selfhdr2', noalign_root, ckpt, net, budget,
                      stage2_flags(stru_na, 'stage1_no_align', epochs, budget.stage2_init))
            ablation_runs[ablation] = ('stage2_no_align', noalign_root)
        elif ablation == 'stage2_from_scratch':
            # The paper's stage 2: random initial weights and the release's colour mask (the recipe starts it
            # from the stage-1 network, with a wider mask)
            train_run('stage2_from_scratch', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_flags(stru, 'stage1', epochs, 'scratch', 10.0))
            ablation_runs[ablation] = ('stage2_from_scratch', dataroot)
        elif ablation == 'colour_keep_clipped':
            # L_color also wherever the medium frame is clipped, whatever the structure label says there
            train_run('stage2_keep_clipped', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_extra + ['--colour_keep_clipped', 'True'])
            ablation_runs[ablation] = ('stage2_keep_clipped', dataroot)
        elif ablation == 'colour_threshold_60':
            # A wider mask still: with the round-3 colour label, Y_color is the closer label in most pixels up to
            # 60/255 of disagreement (bench/label_agreement.py)
            train_run('stage2_colour_threshold_60', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_flags(stru, 'stage1', epochs, budget.stage2_init, 60.0))
            ablation_runs[ablation] = ('stage2_colour_threshold_60', dataroot)
        elif ablation == 'colour_threshold_release':
            # The release's colour mask (10/255), everything else as the recipe
            train_run('stage2_colour_threshold_10', 'selfhdr2', dataroot, ckpt, net, budget,
                      stage2_flags(stru, 'stage1', epochs, budget.stage2_init, 10.0))
            ablation_runs[ablation] = ('stage2_colour_threshold_10', dataroot)
        elif ablation in ('stage2_continued', 'stage2_noise_aug'):
            # Train longer: half the budget's iterations more of stage 2, from the finished stage-2 network (or
            # --stage2_start) at half its peak rate (a warm restart of the cosine schedule), labels and mask as the
            # recipe; stage2_noise_aug also gives half the crops more sensor noise (train.py --sensor_noise_aug)
            more = dataclasses.replace(budget, iters=max(budget.iters_per_epoch, budget.iters // 2))
            stage2_peak = budget.stage2_lr if budget.stage2_init == 'stage1' and budget.stage2_lr else budget.lr
            start = args.stage2_start or str(ckpt / 'stage2' / f'SelfHDR_model_{epochs}.pth')
            flags = stage2_flags(stru, 'stage1', epochs, 'scratch') + [  # labels and mask as stage 2, its start
                '--load_path', start, '--lr', str(stage2_peak / 2)]
            if ablation == 'stage2_noise_aug':
                flags += ['--sensor_noise_aug', str(NOISE_AUG_SHARE)]
            train_run(ablation, 'selfhdr2', dataroot, ckpt, net, more, flags)
            ablation_runs[ablation] = (ablation, dataroot)
            ablation_epochs[ablation] = more.epochs
            ablation_iters[ablation] = 2 * budget.epochs * budget.iters_per_epoch + more.epochs * more.iters_per_epoch

    logger.info('scoring')
    trained = {'selfhdr': load_network(ckpt, 'stage2', epochs, net)}
    if not args.skip_supervised:
        trained['supervised'] = load_network(ckpt, 'supervised', epochs, net)
    for ablation, (run, _) in ablation_runs.items():
        trained[ablation] = load_network(ckpt, run, ablation_epochs.get(ablation, epochs), net)
    stage1_net = load_network(ckpt, 'stage1', epochs, net)
    splits, split_outputs = {}, {}
    for split in args.splits:
        if split == 'current':
            split_root, split_aligned = dataroot, aligned_root
        else:
            split_root = ensure_test_split(work / 'splits' / split, split, _ROOT / 'datasets' / 'hdri', TEST_HDRIS,
                                           budget.n_test, budget.size, budget.seed)
            split_aligned = make_aligned_test_copy(split_root, work / 'splits_aligned' / split)
        splits[split], split_outputs[split] = score_split(split, split_root, split_aligned, trained, stage1_net, net)
        logger.info('split %s: %s', split, ', '.join(f"{m} {row['psnr_mu']:.2f}"
                                                      for m, row in splits[split]['methods'].items()))
    # The validation split (training HDRIs, every split's settings in turn): where recipe choices are made
    val_root = ensure_validation_split(work / 'splits' / 'validation', _ROOT / 'datasets' / 'hdri', TEST_HDRIS,
                                       budget.n_test, budget.size, budget.seed)
    validation, _ = score_split('validation', val_root,
                                make_aligned_test_copy(val_root, work / 'splits_aligned' / 'validation'),
                                trained, stage1_net, net)
    validation['description'] = 'validation: training HDRIs, each split\'s settings in turn (for recipe choices)'
    current = splits.get('current') or next(iter(splits.values()))
    methods = {name: row for name, row in current['methods'].items() if name not in ablation_runs}
    ablations = {name: current['methods'][name] for name in ablation_runs}
    if 'current' in splits:  # the channel-permuted copy of the study's own test split
        perm_dir = permuted_root / 'Test'
        if backbone(net).aligned_input:  # FSHDR takes aligned frames, at test time too
            perm_dir = make_aligned_test_copy(permuted_root, work / 'data_permuted_aligned') / 'Test'
        outputs = split_outputs['current']
        for name, row in list(methods.items()) + list(ablations.items()):
            # The anchors are per-pixel, channel-independent formulas: their permuted score is their own score on
            # the permuted scenes, computed by permuting their output.
            perm = network_outputs(trained[name], net, perm_dir, permuted_root / 'Test') if name in trained \
                else permute_outputs(outputs[name])
            row['psnr_mu_permuted'] = score(perm, permuted_root)['psnr_mu']
    for rows in [methods] + [s['methods'] for s in splits.values()]:
        for name, row in rows.items():
            row['iterations'] = {'selfhdr': 2 * budget.iters, 'supervised': budget.iters,
                                 'structure_component': budget.iters}.get(
                name, ablation_iters.get(name, 2 * budget.iters) if name in ablation_runs else 0)
    results = {
        'network': net, 'budget_name': args.budget, 'budget': dataclasses.asdict(budget),
        'machine': info, 'machine_text': describe_machine(info),
        'seconds': {run: run_seconds(ckpt / run) for run in ('supervised', 'stage1', 'stage2')},
        'run_machines': {run: run_machines(ckpt / run) for run in
                         ('supervised', 'stage1', 'stage2') + tuple(run for run, _ in ablation_runs.values())},
        'methods': methods, 'ablations': ablations, 'splits': splits, 'validation': validation,
        'labels': score_labels(dataroot, stru, budget.stage2_colour_threshold),
        'curves': {run: curve_points(ckpt / run) for run in ('supervised', 'stage1', 'stage2')},
        'permutation': list(PERMUTATION), 'date': time.strftime('%Y-%m-%d %H:%M'),
        'precision': {'amp': PRECISION['amp'], 'scoring': 'bf16' if PRECISION['dtype'] is not None else 'fp32',
                      'compile': PRECISION['compile']},
    }
    if args.skip_supervised:
        results['skipped'] = ['supervised']
    if args.stage2_start:
        results['stage2_start'] = args.stage2_start  # where the continuation ablations started
    if args.note:
        results['notes'] = list(args.note)
    atomic_json(out / 'results.json', results)
    write_markdown(results, out / 'results.md')
    first = split_outputs.get('current') or next(iter(split_outputs.values()))
    scene = sorted(first['selfhdr'])[0]
    crops = {name: tonemap(np.clip(first[name][scene], 0, 1), 'mu') for name in
             ('medium_frame', 'unaligned_merge', 'colour_component', 'structure_component', 'supervised', 'selfhdr')
             if name in first}
    crops['ground_truth'] = tonemap(read_hdr(dataroot / 'Test' / scene / 'HDRImg.hdr'), 'mu')
    labelled_grid(crops, out / 'crops.png')
    worst_region_sheet(splits, split_outputs, work, dataroot, out / 'worst_regions.png')
    draw_curves(results['curves'], out / 'curves.png')
    logger.info('wrote %s', out)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='SelfHDR vs supervised training vs classical anchors, at one budget.')
    p.add_argument('--budget', choices=sorted(BUDGETS), default='short', help='training budget (see BUDGETS)')
    p.add_argument('--iters', type=int, default=0, help="override the budget: iterations per network (0: the "
                                                         "budget's)")
    p.add_argument('--data', default='', choices=('',) + tuple(VARIETIES),
                   help='override the budget: the training data\'s settings (data.demo.VARIETIES)')
    p.add_argument('--n_train', type=int, default=0, help="override the budget: training scenes (0: the budget's)")
    p.add_argument('--network', default='AHDRNet', choices=NAMES)
    p.add_argument('--work', default='', help='data, checkpoints (default ./study/<budget>_<network>)')
    p.add_argument('--out', default='', help='results folder (default <work>/results)')
    p.add_argument('--vgg', default='auto', choices=('imagenet', 'auto', 'random'),
                   help='VGG19 weights of the stage-2 structure loss (auto: ImageNet if cached, else random)')
    p.add_argument('--ablations', nargs='*', default=[], choices=ABLATIONS, help='extra stage-2 trainings')
    p.add_argument('--stage2_start', default='',
                   help='the checkpoint the stage2_continued and stage2_noise_aug ablations start from (default: '
                        "the study's own finished stage 2), e.g. a shipped stage-2 network")
    p.add_argument('--splits', nargs='+', default=list(TEST_SPLITS), choices=list(TEST_SPLITS),
                   help='test splits to score on (data/study_splits.py); current = the study data\'s own')
    p.add_argument('--amp', default='auto', choices=('none', 'bf16', 'fp16', 'auto'),
                   help="autocast of the trainings and scoring forwards: auto = bf16 where the hardware has it (a CPU "
                        "with avx512_bf16/AMX, CUDA with bf16), fp32 elsewhere; none = the release's fp32")
    p.add_argument('--compile', default='auto', choices=('auto', 'True', 'False'),
                   help='torch.compile the training networks; auto: on for the short and long budgets, off for tiny')
    p.add_argument('--skip_supervised', action='store_true',
                   help='score SelfHDR without training the supervised baseline (a long run scored before its '
                        'baseline is done); run again without the flag to add it')
    p.add_argument('--note', action='append', default=[],
                   help='a line for the results (e.g. which machine trained which run); repeatable')
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # numeric overrides checked at the door (0 means: the budget's own)
        checked_number(args.iters, '--iters', 0, 10 ** 7, integer=True)
        checked_number(args.n_train, '--n_train', 0, 10 ** 5, integer=True)
    except NumberRangeError as exc:
        parser.error(str(exc))
    if args.stage2_start and not Path(args.stage2_start).is_file():
        parser.error(f'--stage2_start {args.stage2_start}: no such checkpoint file')
    if args.stage2_start and not {'stage2_continued', 'stage2_noise_aug'} & set(args.ablations):
        parser.error('--stage2_start only sets where the stage2_continued and stage2_noise_aug ablations start; '
                     'name one of them in --ablations')
    from util.visualizer import setup_logging
    setup_logging()
    try:
        results = run_study(args)
    except (OSError, ValueError, RuntimeError) as exc:
        logger.error('study: %s', exc)
        return 1
    except KeyboardInterrupt:
        logger.error('study: interrupted; the same command resumes it (finished networks and scores are kept)')
        return 130
    print(Path(args.out or '.') / 'results.md' if args.out else 'done')
    for name, row in results['methods'].items():
        print(f"{name:<22}{row['psnr_mu']:8.2f}{row['psnr_l']:8.2f}{row.get('psnr_mu_permuted', float('nan')):8.2f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
