"""Build the ``_align`` folders of a data set: short and long frames warped to the medium one, plus ``Y_color``.

The library half of ``tools/prepare_data.py`` (which documents the layouts and the command line); the demo data
and the study call it directly.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from util.align import AlignConfig, align_frames, make_flow_estimator
from util.align import colour_label as make_colour_label
from util.exposures import DATASETS, scene_frames_and_times
from util.hdr_io import LDR16_SCALE, atomic_write, read_ldr_bits, write_hdr, write_ldr8, write_ldr16

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = {'sig17': 'Training', 'sen': 'Scenes', 'tursun': 'dataset'}
COLOUR_NAME = 'HDRImg.hdr'


class SceneError(RuntimeError):
    """Preparing one scene failed; the message names the scene."""


def _quantise(x: np.ndarray, bits: int) -> np.ndarray:
    """The values a loader reads back after writing ``x`` at ``bits`` (see util/hdr_io.py)."""
    if bits == 16:
        return (np.clip(np.rint(x.astype(np.float64) * LDR16_SCALE), 0, 65535) / LDR16_SCALE).astype(np.float32)
    return (np.clip(np.rint(x * 255.0), 0, 255) / 255.0).astype(np.float32)


def prepare_scene(src_dir, dst_dir, dataset: str = 'sig17', flow: str = 'dis', raft_weights: str | None = None,
                  colour_label: bool = True, overwrite: bool = False, cfg: AlignConfig | None = None,
                  estimator=None) -> dict:
    """Align one scene of ``src_dir`` into ``dst_dir``. Returns a small report dict.

    ``cfg`` overrides ``flow``/``raft_weights``; ``estimator`` (from ``util.align.make_flow_estimator``)
    can be shared between scenes to avoid rebuilding it.
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if dst_dir.exists() and not overwrite:
        return {'scene': src_dir.name, 'status': 'skipped'}
    start = time.perf_counter()
    cfg = cfg or AlignConfig(flow=flow, raft_weights=raft_weights)
    try:
        frames, times = scene_frames_and_times(src_dir, dataset)
        # sig17 frames must be 16-bit; Sen/Tursun copies may be 8-bit, kept at their depth.
        loaded = [read_ldr_bits(f, expect_bits=16 if dataset == 'sig17' else None) for f in frames]
        ldrs = [img for img, _ in loaded]
        bits = loaded[1][1]
        if len({x.shape for x in ldrs}) != 1:
            raise ValueError(f'frames have different sizes: {[x.shape for x in ldrs]}')
        res = align_frames(*ldrs, times, cfg, estimator)
        short_q, long_q = _quantise(res.frames[0], bits), _quantise(res.frames[2], bits)
        colour = make_colour_label((short_q, ldrs[1], long_q), ldrs, times, cfg) if colour_label else None

        dst_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst_dir.parent / f'.{dst_dir.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial'
        tmp.mkdir()
        try:
            writer = write_ldr16 if bits == 16 else write_ldr8
            writer(tmp / frames[0].name, short_q)
            shutil.copyfile(frames[1], tmp / frames[1].name)  # the reference stays byte-identical
            writer(tmp / frames[2].name, long_q)
            if colour is not None:
                write_hdr(tmp / COLOUR_NAME, colour)
            if dst_dir.exists():
                shutil.rmtree(dst_dir)
            os.replace(tmp, dst_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except Exception as exc:
        raise SceneError(f'scene {src_dir.name} ({src_dir}): {exc}') from exc
    return {'scene': src_dir.name, 'status': 'done', 'seconds': time.perf_counter() - start,
            'fallback_fraction': [float(1 - v.mean()) for v in res.valid], 'times': [float(t) for t in times]}


def split_dirs(dataroot, split: str | None = None, dataset: str = 'sig17') -> tuple[Path, Path]:
    """Source and destination folders of a split."""
    if dataset not in DATASETS:
        raise ValueError(f'unknown dataset {dataset!r}; choose from {DATASETS}')
    split = split or DEFAULT_SPLIT[dataset]
    src = Path(dataroot) / split
    return src, Path(dataroot) / f'{split}_align'


def prepare_split(dataroot, split: str | None = None, dataset: str = 'sig17', flow: str = 'dis',
                  raft_weights: str | None = None, colour_label: bool | None = None, overwrite: bool = False,
                  keep_going: bool = False, progress: bool = True, cfg: AlignConfig | None = None) -> list[dict]:
    """Align every scene of a split. ``colour_label=None`` writes Y_color for ``Training`` only."""
    src, dst = split_dirs(dataroot, split, dataset)
    if not src.is_dir():
        raise FileNotFoundError(f'{src}: source split folder does not exist')
    scenes = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not scenes:
        raise FileNotFoundError(f'{src}: no scene folders')
    if colour_label is None:
        colour_label = src.name == 'Training'
    cfg = cfg or AlignConfig(flow=flow, raft_weights=raft_weights)
    estimator = make_flow_estimator(cfg)  # built once: RAFT loading is slow

    from tqdm import tqdm

    stale = colour_label and not overwrite and _label_rule_changed(dst, cfg)
    reports, failures = [], []
    for scene in tqdm(scenes, desc=f'align {src.name}', unit='scene', disable=not progress):
        try:
            reports.append(prepare_scene(scene, dst / scene.name, dataset, colour_label=colour_label,
                                         overwrite=overwrite, cfg=cfg, estimator=estimator))
        except SceneError as exc:
            if not keep_going:
                raise
            logger.error('%s', exc)
            failures.append({'scene': scene.name, 'status': 'failed', 'error': str(exc)})
    skipped = [r['scene'] for r in reports if r['status'] == 'skipped']
    if colour_label and stale and skipped:
        logger.warning('%s: %d scenes kept colour labels made with another rule than the current one (%s); run with '
                       '--overwrite to remake them', dst, len(skipped), label_rule(cfg))
    elif colour_label and dst.is_dir():
        # a new file moved into place: a data root copied with hard links keeps its own record untouched
        rule = json.dumps(label_rule(cfg))
        atomic_write(dst / LABEL_RULE_FILE, lambda tmp: Path(tmp).write_text(rule))
    return reports + failures


LABEL_RULE_FILE = '.colour_label.json'  # hidden: loaders refuse other files beside the scene folders


def label_rule(cfg: AlignConfig) -> dict:
    """The settings that decide the colour label's values beyond the alignment itself."""
    from util import label_denoise

    rule = {'label_medium_first': cfg.label_medium_first, 'label_floor': cfg.label_floor,
            'label_grow': cfg.label_grow, 'noise_tol': cfg.noise_tol, 'label_noise': cfg.label_noise,
            'label_denoise': cfg.label_denoise}
    if cfg.label_denoise:  # the denoiser's own settings decide the label too
        rule['denoise_settings'] = {'block': label_denoise.ROBUST_BLOCK, 'percentile': label_denoise.ROBUST_PERCENTILE,
                                    'strength': label_denoise.H_FACTOR}
        if cfg.label_denoise_method != 'robust':  # recorded only when not the default, so older records still match
            rule['denoise_settings']['method'] = cfg.label_denoise_method
    if 'weak_texture' in (cfg.label_noise, cfg.label_denoise_method if cfg.label_denoise else None):
        rule['weak_texture_settings'] = {'patch': label_denoise.WEAK_TEXTURE_PATCH,
                                         'confidence': label_denoise.WEAK_TEXTURE_CONFIDENCE,
                                         'iterations': label_denoise.WEAK_TEXTURE_ITERATIONS,
                                         'max_patches': label_denoise.WEAK_TEXTURE_MAX_PATCHES}
    return rule


def _label_rule_changed(dst: Path, cfg: AlignConfig) -> bool:
    """True when ``dst`` holds labels and its record of their rule is missing (made before the record) or
    differs from ``cfg``'s."""
    if not dst.is_dir() or not any(p.is_dir() for p in dst.iterdir()):
        return False
    try:
        return json.loads((dst / LABEL_RULE_FILE).read_text()) != label_rule(cfg)
    except (OSError, ValueError):
        return True
