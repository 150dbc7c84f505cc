"""Shared machinery of the SelfHDR data sets: the in-memory image cache, cropping and batch building.

A subclass only decides *which files* make a sample. In ``__init__`` it fills ``self.scenes``
(ordered scene names) and calls :meth:`BaseDataset.cache_scenes` with, per scene, the three LDR
paths (short, medium, long), the exposure times and optionally the label / structure-label paths.
Every image is then read once, in parallel, into memory; ``__getitem__`` (here) crops and builds
the sample dict:

* ``input0``, ``input1``, ``input2``: float32 (6, H, W) = ``cat([X**2.2 / (t + 1e-8), X])``, BGR.
* ``label``, ``other_label``: float32 (3, H, W), only when the scene has them.
* ``expo``: float32 (3,) exposure times; ``fname``: the scene folder name.

Crops: ``train`` takes a random ``opt.patch_size`` square at the same position in every array,
``val`` the top-left 512 x 512 (or less when the image is smaller), ``test`` the whole image.

Sensor-noise augmentation (``opt.sensor_noise_aug`` = p > 0, training only): a share p of the training crops get more
sensor noise on their three frames (``add_sensor_noise``), the labels unchanged. The labels were made from the frames
as shot, so they are cleaner than such an input: the network learns to take that noise out rather than to pass it
on. Off by default; the release's own stage-2 noise (``--noise``, models/selfhdr2_model.py) is a separate, much
smaller one on the medium frame.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from util.colour import ldr_to_hdr
from util.exposures import ExposureFileError, list_frames, select_frames
from util.flags import RADIANCE_MAX
from util.hdr_io import ChannelLayoutError, ImageReadError, read_hdr, read_ldr

logger = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')
VAL_CROP = 512  # release: PSNR-mu on the top-left 512 x 512 of each test image during training
# --sensor_noise_aug's noise, per crop, log-uniform (variance shot * e + read**2 on a frame's linear signal e in
# [0, 1]): from a clean base-ISO frame to far beyond a 30000-electron sensor at ISO 6400 (shot about 2e-3)
NOISE_AUG_SHOT = (1e-4, 1e-2)
NOISE_AUG_READ = (2e-4, 1e-2)


class DatasetError(ValueError):
    """A data set folder, scene or file is missing or inconsistent; the message names it."""


def random_crop(arrays: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Crop ``size x size`` at one random position shared by all arrays (H x W x C, same H, W)."""
    h, w = arrays[0].shape[:2]
    if h < size or w < size:
        raise DatasetError(f'patch size {size} is larger than the image ({h} x {w})')
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return [a[y:y + size, x:x + size] for a in arrays]


def add_sensor_noise(frames: Sequence[np.ndarray], shot: float, read: float,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """LDR frames (gamma 2.2, each in its own exposure, saturating at 1) with more sensor noise: on each frame's
    linear signal e, Gaussian noise of variance shot * e + read**2, clipped to [0, 1] and re-encoded (new arrays).
    Saturated values stay at 1: their signal was at or above full well, and a sensor clips after its noise."""
    noisy = []
    for x in frames:
        x = np.clip(x, 0.0, 1.0)
        e = np.power(x, np.float32(2.2))
        sigma = np.sqrt(np.float32(shot) * e + np.float32(read * read))
        e = np.where(x >= 1.0, np.float32(1.0), e + rng.standard_normal(e.shape, dtype=np.float32) * sigma)
        noisy.append(np.power(np.clip(e, 0.0, 1.0), np.float32(1 / 2.2)).astype(np.float32))
    return noisy


def log_uniform(rng: np.random.Generator, low_high: tuple[float, float]) -> float:
    """One draw, log-uniform between low_high's two positive bounds."""
    return float(np.exp(rng.uniform(np.log(low_high[0]), np.log(low_high[1]))))


def _to_chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


class BaseDataset(torch.utils.data.Dataset):
    """Base class: cache, crop, sample dict. Subclasses set up scenes and call :meth:`cache_scenes`."""

    has_label = True

    def __init__(self, opt, split: str, dataset_name: str):
        if split not in SPLITS:
            raise ValueError(f"{dataset_name}: unknown split {split!r}; choose from {SPLITS}")
        self.opt = opt
        self.split = split
        self.dataset_name = dataset_name
        self.patch_size = int(getattr(opt, 'patch_size', 128))
        self.batch_size = int(getattr(opt, 'batch_size', 1))
        self.iters_per_epoch = int(getattr(opt, 'iters_per_epoch', 1200))
        self.sensor_noise_aug = float(getattr(opt, 'sensor_noise_aug', 0.0) or 0.0)
        self.scenes: list[str] = []
        self.ldrs: dict[str, list[np.ndarray]] = {}
        self.expos: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.other_labels: dict[str, np.ndarray] = {}
        # scene -> its short and long frames as shot, where the network reads warped (aligned) ones at test time: a
        # medium gate that reads the whole bracket's noise takes these (models.medium_gate.bracket_noise)
        self.unwarped: dict[str, list[Path]] = {}
        # scene -> {'ldr': [3 paths], 'label': path, 'other_label': path}: what train.py names when a batch
        # gives a non-finite loss
        self.files: dict[str, dict] = {}
        self._rng = None
        self._rng_key = None

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Add data-set specific flags; the shared ones live in options/base_options.py."""
        return parser

    # ------------------------------------------------------------------------------------------
    # scene listing helpers
    # ------------------------------------------------------------------------------------------

    def require_dir(self, path: Path, what: str) -> Path:
        path = Path(path)
        if not path.is_dir():
            raise DatasetError(f'{self.dataset_name} ({self.split}): {what} folder {path} does not exist')
        return path

    @property
    def lenient(self) -> bool:
        """--lenient_data: what the loader would skip or convert is a warning with a count, not an error."""
        return bool(getattr(self.opt, 'lenient_data', False))

    def list_scenes(self, folder: Path) -> list[str]:
        """Sorted scene folder names, capped by ``opt.max_dataset_size``.

        Files beside the scene folders are refused (a scene copied as an archive, a misplaced frame), unless
        --lenient_data; hidden files (``.DS_Store`` and the like) are ignored."""
        entries = sorted(Path(folder).iterdir())
        scenes = [p.name for p in entries if p.is_dir() and not p.name.startswith('.')]
        stray = [p.name for p in entries if not p.is_dir() and not p.name.startswith('.')]
        if stray:
            listed = ', '.join(stray[:5]) + (f' ... ({len(stray)} in all)' if len(stray) > 5 else '')
            if not self.lenient:
                raise DatasetError(f'{self.dataset_name} ({self.split}): {folder} holds files that are not scene '
                                   f'folders: {listed}; move them away, or pass --lenient_data True to skip them')
            logger.warning('%s (%s): skipped %d files in %s that are not scene folders: %s', self.dataset_name,
                           self.split, len(stray), folder, listed)
        if not scenes:
            raise DatasetError(f'{self.dataset_name} ({self.split}): no scene folders in {folder}')
        cap = getattr(self.opt, 'max_dataset_size', float('inf'))
        if cap is not None and cap != float('inf'):
            if cap < 1:
                raise ValueError(f'--max_dataset_size must be >= 1, got {cap}')
            scenes = scenes[:int(cap)]
        return scenes

    # ------------------------------------------------------------------------------------------
    # parallel cache
    # ------------------------------------------------------------------------------------------

    def cache_scenes(self, scenes: dict, ldr_reader: Callable, label_reader: Callable) -> None:
        """Read every image once into memory, in parallel threads (OpenCV decodes without the GIL).

        ``scenes`` maps scene name -> dict with ``ldr`` (3 paths), ``expo`` (3 times) and
        optional ``label`` / ``other_label`` paths. Any failure is re-raised naming the file.
        Afterwards all arrays of a scene are checked to have the same height and width.
        """
        converted = []  # grey/alpha frames converted under --lenient_data (list.append is thread-safe)

        def read_frame(path):
            try:
                return ldr_reader(path, convert_channels=False)
            except ChannelLayoutError as exc:
                if not self.lenient:
                    raise DatasetError(f'{exc}; convert it to colour, or pass --lenient_data True to replicate '
                                       'grey frames and drop alpha channels with a warning') from None
                converted.append(path)
                return ldr_reader(path, convert_channels=True)

        jobs = []  # (scene, slot, index, reader, path)
        for name, spec in scenes.items():
            if len(spec['ldr']) != 3:
                raise DatasetError(f'{name}: expected 3 LDR frames, got {len(spec["ldr"])}')
            self.expos[name] = np.asarray(spec['expo'], dtype=np.float32).reshape(3)
            self.ldrs[name] = [None, None, None]
            self.files[name] = {'ldr': [str(p) for p in spec['ldr']]}
            for i, path in enumerate(spec['ldr']):
                jobs.append((name, 'ldr', i, read_frame, Path(path)))
            for slot in ('label', 'other_label'):
                if spec.get(slot) is not None:
                    jobs.append((name, slot, 0, label_reader, Path(spec[slot])))

        workers = max(1, min(8, os.cpu_count() or 1, len(jobs)))
        results = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(reader, path): (name, slot, i, path) for name, slot, i, reader, path in jobs}
            try:
                bar = tqdm(as_completed(futures), total=len(futures), leave=False,
                           desc=f'caching {self.dataset_name} {self.split}')
                for fut in bar:
                    name, slot, i, path = futures[fut]
                    try:
                        results[(name, slot, i)] = (fut.result(), path)
                    except (ImageReadError, DatasetError):
                        raise  # already names the file and the problem
                    except Exception as exc:
                        raise DatasetError(f'{path}: could not be read ({type(exc).__name__}: {exc})') from exc
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

        for (name, slot, i), (img, path) in results.items():
            if slot != 'ldr':
                self.files[name][slot] = str(path)
                if self.split != 'test':  # test.py names a ground truth it cannot score, scene by scene
                    self._check_radiance(name, slot, img, path)
            if slot == 'ldr':
                self.ldrs[name][i] = img
            elif slot == 'label':
                self.labels[name] = img
            else:
                self.other_labels[name] = img
        for name in scenes:
            self._check_sizes(name, scenes[name])
        if converted:
            logger.warning('%s (%s): %d frames were grey or had an alpha channel and were converted (--lenient_data): '
                           '%s', self.dataset_name, self.split, len(converted),
                           ', '.join(map(str, converted[:3])) + (' ...' if len(converted) > 3 else ''))

    def _check_radiance(self, name: str, slot: str, img: np.ndarray, path: Path) -> None:
        """Labels are radiance the losses take the mu-law of: finite (the readers check) and at most RADIANCE_MAX,
        beyond which ``5000 x`` overflows float32 and the first step's loss is NaN with nothing to say why."""
        peak = float(img.max()) if img.size else 0.0
        if not peak <= RADIANCE_MAX or float(img.min()) < 0:
            what = 'colour label' if slot == 'label' else 'structure label'
            raise DatasetError(f'{path}: {what} of scene {name} holds radiance from {float(img.min()):.4g} to '
                               f'{peak:.4g}, outside [0, {RADIANCE_MAX:g}] (the mu-law loss overflows float32 beyond '
                               'it); rescale or regenerate the label')

    def _check_sizes(self, name: str, spec: dict) -> None:
        ref_shape = self.ldrs[name][0].shape[:2]
        pairs = list(zip(spec['ldr'], self.ldrs[name]))
        if name in self.labels:
            pairs.append((spec['label'], self.labels[name]))
        if name in self.other_labels:
            pairs.append((spec['other_label'], self.other_labels[name]))
        for path, img in pairs:
            if img.shape[:2] != ref_shape:
                raise DatasetError(f'{path}: size {img.shape[1]} x {img.shape[0]} differs from the scene\'s first '
                                   f'frame {spec["ldr"][0]} ({ref_shape[1]} x {ref_shape[0]})')

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------

    def np_rng(self) -> np.random.Generator:
        """NumPy RNG of this process/worker, seeded from ``torch.initial_seed()``.

        In a DataLoader worker torch seeds each worker with ``base_seed + worker_id`` (base seed
        drawn from the main process's torch RNG), so crops are reproducible for a fixed
        ``torch.manual_seed`` and differ between workers. Re-seeding torch restarts the stream.
        """
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), info.id if info is not None else -1, torch.initial_seed())
        if self._rng_key != key:
            self._rng = np.random.default_rng(torch.initial_seed())
            self._rng_key = key
        return self._rng

    def __len__(self) -> int:
        if self.split == 'train':
            return self.iters_per_epoch * self.batch_size
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        if not self.scenes:
            raise IndexError(f'{self.dataset_name} ({self.split}) has no scenes')
        if index < 0 or index >= len(self):
            raise IndexError(f'index {index} out of range for {self.dataset_name} ({self.split}) of length {len(self)}')
        name = self.scenes[index % len(self.scenes)]
        arrays = list(self.ldrs[name])
        has_label = name in self.labels
        has_other = name in self.other_labels
        if has_label:
            arrays.append(self.labels[name])
        if has_other:
            arrays.append(self.other_labels[name])

        if self.split == 'train':
            rng = self.np_rng()
            arrays = random_crop(arrays, self.patch_size, rng)
            if self.sensor_noise_aug > 0 and rng.random() < self.sensor_noise_aug:
                shot, read = log_uniform(rng, NOISE_AUG_SHOT), log_uniform(rng, NOISE_AUG_READ)
                arrays[:3] = add_sensor_noise(arrays[:3], shot, read, rng)
        elif self.split == 'val':
            arrays = [a[:VAL_CROP, :VAL_CROP] for a in arrays]

        expo = self.expos[name]
        sample = {}
        for i in range(3):
            ldr = arrays[i]
            hdr = ldr_to_hdr(ldr, float(expo[i]))
            sample[f'input{i}'] = _to_chw(np.concatenate([hdr, ldr], axis=2))
        k = 3
        if has_label:
            sample['label'] = _to_chw(arrays[k])
            k += 1
        if has_other:
            sample['other_label'] = _to_chw(arrays[k])
        sample['expo'] = torch.from_numpy(expo.copy())
        sample['fname'] = name
        if name in self.unwarped:
            frames = [read_ldr(path, expect_bits=None) for path in self.unwarped[name]]
            sample['unwarped'] = torch.from_numpy(np.stack(frames))
        return sample


def frames_as_shot(raw_dir: Path, dataset: str, frames: Sequence[Path] | None = None) -> list[Path] | None:
    """The short and long frame of a scene as shot (``frames``: the folder's frames, listed when None), for a medium
    gate that reads the whole bracket's noise beside aligned inputs; None, with a warning, when the folder does not
    hold them: the test still runs, and the gate reads the medium frame's noise alone there."""
    try:
        chosen = select_frames(list(frames) if frames is not None else list_frames(raw_dir, dataset), dataset, raw_dir)
    except ExposureFileError as exc:
        logger.warning('%s: %s; the medium gate reads the medium frame\'s noise alone for this scene', raw_dir, exc)
        return None
    return [chosen[0], chosen[-1]]


def build_unlabelled(ds: BaseDataset, dataset: str, folder: str, reader) -> None:
    """Scenes of ``<dataroot>/<folder>`` (``<folder>_align`` for FSHDR), three frames each, no label."""
    if ds.split != 'test':
        raise DatasetError(f"{ds.dataset_name}: only the 'test' split exists (no ground truth), got {ds.split!r}")
    root = Path(getattr(ds.opt, 'dataroot', '') or '')
    if not str(root) or not root.is_dir():
        raise DatasetError(f'{ds.dataset_name}: --dataroot {str(root)!r} is not a folder')
    ds.has_label = False
    fshdr = getattr(ds.opt, 'aligned_input', False)
    expo_root = ds.require_dir(root / folder, 'scene')
    ldr_root = ds.require_dir(root / f'{folder}_align', 'aligned scene') if fshdr else expo_root
    ds.scenes = ds.list_scenes(ldr_root)
    specs = {}
    for name in ds.scenes:
        try:
            expo_dir = ds.require_dir(expo_root / name, 'scene')
            all_frames = list_frames(expo_dir, dataset)
            expo = reader(expo_dir, len(all_frames))
            if fshdr:
                aligned = list_frames(ds.require_dir(ldr_root / name, 'aligned scene'), dataset)
                frames = aligned if len(aligned) == 3 else select_frames(aligned, dataset, ldr_root / name)
                shot = frames_as_shot(expo_dir, dataset, all_frames)
                if shot is not None:
                    ds.unwarped[name] = shot
            else:
                frames = select_frames(all_frames, dataset, expo_dir)
        except ExposureFileError as exc:
            raise DatasetError(str(exc)) from exc
        specs[name] = {'ldr': frames, 'expo': expo}
    ds.cache_scenes(specs, partial(read_ldr, expect_bits=None), read_hdr)
    logger.info('%s test: %d scenes from %s', ds.dataset_name, len(ds.scenes), ldr_root)
