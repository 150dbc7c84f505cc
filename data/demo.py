"""A small synthetic data set for trying the whole pipeline on a CPU.

``ensure_demo_dataset()`` renders dynamic brackets from the CC0 HDRIs in ``datasets/hdri`` (see
``util/synthetic.py``) into the SIGGRAPH17 layout, then runs the alignment tool
(``tools/prepare_data.py``) to build ``Training_align`` (aligned frames + Y_color ``HDRImg.hdr``)
and ``Test_align`` (for FSHDR)::

    <root>/Training/<scene>/        <root>/Training_align/<scene>/
    <root>/Test/<scene>/            <root>/Test_align/<scene>/
    <root>/demo_dataset.json        marker: the settings the folders were made with

The result is cached: the marker holds a fingerprint of the settings, the HDRI files and the
generator/alignment source, and is written last, so a half-made or stale data set is regenerated.
Test scenes use hold-out HDRIs that training never sees.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence

from util.photo_sources import PHOTOS, load_photo_sources
from util.synthetic import SynthConfig, list_hdr_files, make_synthetic_dataset

logger = logging.getLogger(__name__)

__all__ = ['ensure_demo_dataset', 'demo_fingerprint', 'is_demo_current', 'DEFAULT_ROOT', 'DEFAULT_HDRI_DIR',
           'TEST_HDRIS', 'MARKER_NAME', 'DEMO_VERSION']

_REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = _REPO / 'datasets' / 'demo'
DEFAULT_HDRI_DIR = _REPO / 'datasets' / 'hdri'
TEST_HDRIS = ('courtyard', 'sunset')  # held out: test scenes come from images training never sees
MARKER_NAME = 'demo_dataset.json'
# Bump when something outside the fingerprinted files changes what the demo data look like.
DEMO_VERSION = 2  # 2: colour augmentation and lifted photos in the training split
_SUBDIRS = ('Training', 'Test', 'Training_align', 'Test_align')
# The generator and the alignment code: editing them changes the data, so it invalidates the cache.
_FINGERPRINTED_CODE = tuple(_REPO / p for p in ('util/synthetic.py', 'data/align_split.py', 'util/align.py',
                                                'util/colour.py', 'util/photo_sources.py', 'util/label_denoise.py'))


# How varied the rendered brackets are (util.synthetic.SynthConfig settings over its defaults). 'standard' is the
# generator's defaults (2- and 3-stop brackets, brightness from the highlights, moderate noise); 'wide' spans what
# cameras and scenes bring: 1- to 4-stop brackets, brightness from the highlights, from a clipped share of the
# frame (large skies and windows) or from the mean (auto-exposure), nearly noise-free to high-ISO frames and moving
# objects up to 16x brighter than the background (round 3; README, "Study").
VARIETIES: dict[str, dict] = {
    'standard': {},
    'wide': {'stop_choices': (1.0, 2.0, 3.0, 4.0), 'normalisation': 'mixed', 'clipped_fraction': (0.1, 0.7),
             'shot_noise': (1e-6, 6e-3), 'read_noise': (1e-5, 1e-2), 'object_gain': (0.25, 16.0),
             'object_motion': (0.03, 0.15)},
}


def synth_config(size: tuple[int, int], colour_aug: bool = True, variety: str = 'standard') -> SynthConfig:
    """The generator settings of a demo/study data set."""
    if variety not in VARIETIES:
        raise ValueError(f'unknown data variety {variety!r}; choose from {sorted(VARIETIES)}')
    return SynthConfig(size=tuple(size), colour_aug=bool(colour_aug), **VARIETIES[variety])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else 'missing'


def demo_fingerprint(n_train: int = 32, n_test: int = 8, size: tuple[int, int] = (256, 384), seed: int = 0,
                     hdri_dir=DEFAULT_HDRI_DIR, holdout: Sequence[str] = TEST_HDRIS, align: bool = True,
                     colour_aug: bool = True, photos: Sequence[str] = PHOTOS, variety: str = 'standard') -> dict:
    """Everything the demo data depend on; a different fingerprint means the cache is stale."""
    settings = {
        'demo_version': DEMO_VERSION,
        'n_train': int(n_train), 'n_test': int(n_test), 'size': [int(s) for s in size], 'seed': int(seed),
        'holdout': sorted(holdout), 'align': bool(align),
        'synth_config': synth_config(size, colour_aug, variety).to_dict(),
        'photos': list(photos),
        'hdri': {p.name: _sha256(p) for p in list_hdr_files(hdri_dir)},
        'code': {str(p.relative_to(_REPO)): _sha256(p) for p in _FINGERPRINTED_CODE},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return {'fingerprint': digest, 'settings': settings}


def is_demo_current(root, fingerprint: dict) -> bool:
    root = Path(root)
    marker = root / MARKER_NAME
    try:
        stored = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if stored.get('fingerprint') != fingerprint['fingerprint']:
        return False
    # A marker whose folders were deleted by hand is not a cache.
    settings = fingerprint['settings']
    needed = [('Training', settings['n_train']), ('Test', settings['n_test'])]
    if settings['align']:
        needed += [('Training_align', settings['n_train']), ('Test_align', settings['n_test'])]
    return all(count == 0 or (root / sub).is_dir() and sum(1 for p in (root / sub).iterdir() if p.is_dir()) == count
               for sub, count in needed)


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Serialise generators of the same root (e.g. train.sh and test.sh started together)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, generation is still atomic per scene
        yield
        return
    with open(root / '.demo.lock', 'w') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _align(root: Path, split: str) -> None:
    # Imported here: the alignment tool pulls in optical flow code the generator does not need.
    from data.align_split import prepare_split

    reports = prepare_split(root, split, overwrite=True, progress=False)
    done = [r for r in reports if r.get('status') == 'done']
    if done:
        # share of pixels where the flow was judged unreliable (the aligner falls back there)
        fallback = sum(sum(r['fallback_fraction']) / len(r['fallback_fraction']) for r in done) / len(done)
        logger.info('aligned %d scenes of %s in %.1fs (mean fallback fraction %.3f)', len(done), root / split,
                    sum(r['seconds'] for r in done), fallback)


def ensure_demo_dataset(root=DEFAULT_ROOT, *, n_train: int = 32, n_test: int = 8,
                        size: tuple[int, int] = (256, 384), seed: int = 0, hdri_dir=DEFAULT_HDRI_DIR,
                        holdout: Sequence[str] = TEST_HDRIS, align: bool = True, force: bool = False,
                        colour_aug: bool = True, photos: Sequence[str] = PHOTOS, variety: str = 'standard') -> Path:
    """Return ``root`` holding an up-to-date demo data set, generating it if needed.

    Training scenes get the generator's colour augmentation (``colour_aug``) and draw also from the lifted
    scikit-image ``photos``; test scenes use only the hold-out HDRIs, with their own colours. ``variety`` names the
    generator settings of both splits (``VARIETIES``).

    Only the folders this function owns (``Training``, ``Test``, their ``_align`` twins and the
    marker) are ever deleted under ``root``.
    """
    root = Path(root)
    fp = demo_fingerprint(n_train, n_test, size, seed, hdri_dir, holdout, align, colour_aug, photos, variety)
    if not force and is_demo_current(root, fp):
        logger.info('demo data set in %s is up to date', root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root):
        if not force and is_demo_current(root, fp):  # another process made it while we waited
            return root
        start = time.time()
        (root / MARKER_NAME).unlink(missing_ok=True)
        for sub in _SUBDIRS:
            if (root / sub).exists():
                shutil.rmtree(root / sub)
        logger.info('generating demo data set in %s: %d training + %d test scenes, %dx%d, seed %d',
                    root, n_train, n_test, size[0], size[1], seed)
        make_synthetic_dataset(hdri_dir, root, n_train, n_test, size, seed, holdout=holdout,
                               config=synth_config(size, colour_aug, variety),
                               extra_train_sources=load_photo_sources(photos) if photos else ())
        if align:
            for split, count in (('Training', n_train), ('Test', n_test)):
                if count:
                    logger.info('aligning %s', root / split)
                    _align(root, split)
        tmp = root / f'.{MARKER_NAME}.{os.getpid()}.tmp'
        tmp.write_text(json.dumps(dict(fp, created=time.strftime('%Y-%m-%d %H:%M:%S')), indent=1, sort_keys=True))
        os.replace(tmp, root / MARKER_NAME)
        logger.info('demo data set ready in %s (%.1fs)', root, time.time() - start)
    return root
