"""Held-out splits for the study, rendered with settings the training data never uses.

The study's own test split (``Test`` of the study data, from the two hold-out HDRIs with the training settings)
says how a model does on scenes like its training scenes. These splits say how it does on scenes it was not built
around: each is rendered from the same hold-out HDRIs with one setting changed (``TEST_SPLITS``)::

    <root>/<split>/Test/<scene>/        frames, exposure.txt, HDRImg.hdr (ground truth)
    <root>/<split>/Test_align/<scene>/  the frames aligned to the medium one (FSHDR, the colour component)
    <root>/<split>/split.json           marker: the settings the split was made with (written last)

``current`` is not rendered here: it is the study data's own ``Test`` split.

The validation split (``ensure_validation_split``) mixes the same settings, one per scene in turn, over the
*training* HDRIs (other windows than the training scenes'), so recipe choices can be made on it without looking
at any test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from util.synthetic import SynthConfig, list_hdr_files, load_sources, synthesize_scene, write_scene

logger = logging.getLogger(__name__)

__all__ = ['TEST_SPLITS', 'SPLIT_DESCRIPTIONS', 'split_config', 'ensure_test_split', 'ensure_validation_split',
           'ensure_setting_validation_split', 'SETTING_VALIDATION_PREFIX']

# Each split changes the training settings (util.synthetic.SynthConfig defaults) in one way.
TEST_SPLITS: dict[str, dict] = {
    'current': {},
    'clipped': {'normalisation': 'clipped', 'clipped_fraction': (0.3, 0.7)},
    'clean': {'shot_noise': (1e-6, 4e-6), 'read_noise': (1e-5, 4e-5)},
    'high_iso': {'shot_noise': (2e-3, 6e-3), 'read_noise': (3e-3, 1e-2)},
    'ev1': {'stop_choices': (1.0,)},
    'ev4': {'stop_choices': (4.0,)},
    'bright_motion': {'object_gain': (4.0, 16.0), 'object_motion': (0.06, 0.15)},
    'mean_norm': {'normalisation': 'mean'},
}
SPLIT_DESCRIPTIONS = {
    'current': 'the training settings (the study data\'s own Test split)',
    'clipped': '30-70 % of the medium frame clipped (brightness set by the clipped fraction)',
    'clean': 'nearly noise-free frames (shot 1e-6..4e-6, read 1e-5..4e-5; training: 1e-4..1e-3, 2e-4..2e-3)',
    'high_iso': 'high-ISO frames (shot 2e-3..6e-3, read 3e-3..1e-2)',
    'ev1': '1-stop brackets (training: 2 and 3 stops)',
    'ev4': '4-stop brackets',
    'bright_motion': 'moving objects 4-16x brighter than the background, moving further',
    'mean_norm': 'brightness set by the medium frame\'s mean luminance (0.08-0.3), not by the highlights',
}
_VERSION = 1
_SPLIT_NUMBER = {name: i for i, name in enumerate(TEST_SPLITS)}


def split_config(name: str, size: tuple[int, int]) -> SynthConfig:
    if name not in TEST_SPLITS:
        raise ValueError(f'unknown study split {name!r}; choose from {sorted(TEST_SPLITS)}')
    return dataclasses.replace(SynthConfig(size=tuple(size)), **TEST_SPLITS[name])


def _fingerprint(kind: str, names: Sequence[str], n: int, size, seed: int, sources: Sequence[Path]) -> str:
    code = Path(__file__).resolve().parents[1]
    record = {'kind': kind, 'version': _VERSION, 'names': list(names), 'n': n, 'size': list(size), 'seed': seed,
              'settings': {name: {k: list(v) if isinstance(v, tuple) else v for k, v in TEST_SPLITS[name].items()}
                           for name in names},
              'sources': sorted(p.name for p in sources),
              'code': {p: hashlib.sha256((code / p).read_bytes()).hexdigest()
                       for p in ('util/synthetic.py', 'util/align.py', 'util/clipped_objects.py', 'data/align_split.py',
                                 'data/study_splits.py')}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _is_made(root: Path, fingerprint: str) -> bool:
    """Whether ``root`` holds a split rendered with ``fingerprint`` (its marker is written last)."""
    marker = root / 'split.json'
    return marker.is_file() and json.loads(marker.read_text()).get('fingerprint') == fingerprint


def _training_files(hdri_dir, holdout: Sequence[str]) -> list[Path]:
    """The HDRIs of ``hdri_dir`` outside ``holdout``: the validation splits' sources."""
    files = [p for p in list_hdr_files(hdri_dir) if p.stem not in set(holdout)]
    if not files:
        raise ValueError(f'{hdri_dir}: no HDRI left once {list(holdout)} are held out')
    return files


def _render(root: Path, configs: Sequence[tuple[str, SynthConfig]], sources, seed: int, split_number: int,
            fingerprint: str) -> Path:
    """Render ``configs`` (one per scene) into ``root/Test``, align them, and write the marker last."""
    if _is_made(root, fingerprint):
        return root
    if root.exists():
        shutil.rmtree(root)
    for i, (setting, cfg) in enumerate(configs):
        # one generator per (seed, split, scene): independent of every other split and scene
        rng = np.random.default_rng([int(seed), 1, int(i), 100 + split_number])
        write_scene(synthesize_scene(sources, rng, cfg), root / 'Test' / f'{i + 1:03d}')
    from data.align_split import prepare_split  # the optical flow code, only when something is rendered

    prepare_split(root, 'Test', colour_label=False, overwrite=True, progress=False)
    tmp = root / f'.split.json.{os.getpid()}.tmp'
    tmp.write_text(json.dumps({'fingerprint': fingerprint, 'settings': [s for s, _ in configs]}, indent=1))
    os.replace(tmp, root / 'split.json')
    return root


def ensure_test_split(root, name: str, hdri_dir, holdout: Sequence[str], n: int, size: tuple[int, int],
                      seed: int = 0) -> Path:
    """``root`` holding split ``name`` (n scenes from the ``holdout`` HDRIs), rendered and aligned if needed."""
    files = [p for p in list_hdr_files(hdri_dir) if p.stem in set(holdout)]
    if not files:
        raise ValueError(f'{hdri_dir}: none of the hold-out HDRIs {list(holdout)} found')
    cfg = split_config(name, size)
    fingerprint = _fingerprint('test', [name], n, size, seed, files)
    root = Path(root)
    if _is_made(root, fingerprint):
        return root
    logger.info('rendering study split %s: %d scenes (%s)', name, n, SPLIT_DESCRIPTIONS[name])
    return _render(root, [(name, cfg)] * n, load_sources(files), seed, _SPLIT_NUMBER[name], fingerprint)


def ensure_validation_split(root, hdri_dir, holdout: Sequence[str], n: int, size: tuple[int, int],
                            seed: int = 0) -> Path:
    """``root/Test``: n scenes from the training HDRIs (not the hold-out ones), cycling through every split's
    settings, for choosing recipe settings without a test split."""
    files = _training_files(hdri_dir, holdout)
    names = list(TEST_SPLITS)
    fingerprint = _fingerprint('validation', names, n, size, seed, files)
    root = Path(root)
    if _is_made(root, fingerprint):
        return root
    logger.info('rendering the validation split: %d scenes from the training HDRIs', n)
    configs = [(names[i % len(names)], split_config(names[i % len(names)], size)) for i in range(n)]
    return _render(root, configs, load_sources(files), seed, len(names), fingerprint)


SETTING_VALIDATION_PREFIX = 'validation_'  # + a split's name: n validation scenes of that split's setting alone


def ensure_setting_validation_split(root, setting: str, hdri_dir, holdout: Sequence[str], n: int,
                                    size: tuple[int, int], seed: int = 0) -> Path:
    """``root/Test``: n scenes from the training HDRIs (not the hold-out ones), all rendered with split ``setting``'s
    settings: the validation split has two scenes of each setting, too few to choose a rule that acts on one kind of
    bracket (round 3, eighteenth session: the nearly noise-free one)."""
    files = _training_files(hdri_dir, holdout)
    cfg = split_config(setting, size)
    fingerprint = _fingerprint('validation_setting', [setting], n, size, seed, files)
    root = Path(root)
    if _is_made(root, fingerprint):
        return root
    logger.info('rendering a validation split of %d %r scenes from the training HDRIs', n, setting)
    # random streams apart from the test splits' (0..7) and the validation split's (8)
    return _render(root, [(setting, cfg)] * n, load_sources(files), seed, len(TEST_SPLITS) + 1 + _SPLIT_NUMBER[setting],
                   fingerprint)
