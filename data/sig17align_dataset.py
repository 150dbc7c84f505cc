"""SIGGRAPH17 (Kalantari) data set as redistributed for SelfHDR (``--dataset_name sig17align``).

``opt.dataroot`` holds ``Training``, ``Training_align``, ``Test`` and ``Test_align``; each scene
folder has three 16-bit TIFFs (sorted names: short, medium, long), and the non-aligned folders
an ``exposure.txt`` (stops) and ``HDRImg.hdr``.

=============================  =======================  ====================  ==========================
split / mode                   LDR frames from           exposures from        label
=============================  =======================  ====================  ==========================
train                          ``Training/<s>``          ``Training/<s>``      ``Training_align/<s>/HDRImg.hdr``
                                                                               (Y_color), or with
                                                                               ``opt.supervised``
                                                                               ``Training/<s>/HDRImg.hdr``
val (top-left 512 crop)        ``Test/<s>``              ``Test/<s>``          ``Test/<s>/HDRImg.hdr``
test                           ``Test/<s>``              ``Test/<s>``          ``Test/<s>/HDRImg.hdr``
test, ``--network FSHDR``      ``Test_align/<s>``        ``Test/<s>``          ``Test/<s>/HDRImg.hdr``
test, ``--stage0_inference``   ``Training_align/<s>``    ``Training/<s>``      none (``has_label`` False)
test, ``--calc_metrics False`` as test                   as test               none (``has_label`` False)
=============================  =======================  ====================  ==========================

In training, ``other_label`` (the structure component Y_stru) is ``<opt.stru_lable_path>/<s>.hdr``
when ``opt.stru_lable_path`` is set (stage 2), otherwise the key is absent (stage 1).
Scenes are the sorted sub-folders of the folder the LDR frames come from; where that is an aligned folder, every
scene of the folder as shot must be in it (``--lenient_data``: skipped with a warning).
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from data.base_dataset import BaseDataset, DatasetError, frames_as_shot
from util.exposures import ExposureFileError, list_frames, read_sig17_exposures, select_frames
from util.hdr_io import read_hdr, read_ldr

logger = logging.getLogger(__name__)

LABEL_NAME = 'HDRImg.hdr'
EXPOSURE_NAME = 'exposure.txt'


class Sig17AlignDataset(BaseDataset):
    """Kalantari SIGGRAPH17 scenes; see the module docstring for which folder feeds which split."""

    def __init__(self, opt, split, dataset_name='sig17align'):
        super().__init__(opt, split, dataset_name)
        root = Path(getattr(opt, 'dataroot', '') or '')
        if not str(root) or not root.is_dir():
            raise DatasetError(f'{dataset_name}: --dataroot {str(root)!r} is not a folder')
        self.root = root
        stage0 = bool(getattr(opt, 'stage0_inference', False))
        supervised = bool(getattr(opt, 'supervised', False))
        stru_path = getattr(opt, 'stru_lable_path', '') or ''

        if split == 'train':
            ldr_dir, expo_dir = 'Training', 'Training'
            label_dir = 'Training' if supervised else 'Training_align'
        elif split == 'val':
            ldr_dir, expo_dir, label_dir = 'Test', 'Test', 'Test'
        elif stage0:
            ldr_dir, expo_dir, label_dir = 'Training_align', 'Training', None
        else:
            ldr_dir = 'Test_align' if getattr(opt, 'aligned_input', False) else 'Test'
            # --calc_metrics False: brackets without ground truth (a user's own) are run without asking for it
            expo_dir, label_dir = 'Test', ('Test' if getattr(opt, 'calc_metrics', True) else None)
        self.has_label = label_dir is not None
        self.folders = {'ldr': ldr_dir, 'expo': expo_dir, 'label': label_dir}

        ldr_root = self.require_dir(root / ldr_dir, 'LDR')
        expo_root = self.require_dir(root / expo_dir, 'exposure')
        label_root = self.require_dir(root / label_dir, 'label') if label_dir else None
        stru_root = None
        if split == 'train' and stru_path:
            stru_root = self.require_dir(Path(stru_path), 'structure label (--stru_lable_path)')

        self.scenes = self.list_scenes(ldr_root)
        if ldr_dir != expo_dir:
            self.check_aligned_scenes(ldr_root, expo_root)
        specs = {}
        for name in self.scenes:
            scene_dir = self.require_dir(ldr_root / name, 'scene')
            try:
                frames = select_frames(list_frames(scene_dir, 'sig17'), 'sig17', scene_dir)
                expo = read_sig17_exposures(self.require_dir(expo_root / name, 'scene') / EXPOSURE_NAME)
            except ExposureFileError as exc:
                raise DatasetError(str(exc)) from exc
            spec = {'ldr': frames, 'expo': expo}
            if ldr_dir == 'Test_align':  # the frames as shot, for a gate that reads the bracket's noise
                shot = frames_as_shot(expo_root / name, 'sig17')
                if shot is not None:
                    self.unwarped[name] = shot
            if label_root is not None:
                spec['label'] = self._existing(label_root / name / LABEL_NAME, 'label')
            if stru_root is not None:
                spec['other_label'] = self._existing(stru_root / f'{name}.hdr', 'structure label')
            specs[name] = spec
        self.cache_scenes(specs, partial(read_ldr, expect_bits=16), read_hdr)
        logger.info('%s %s: %d scenes from %s', dataset_name, split, len(self.scenes), ldr_root)

    def check_aligned_scenes(self, aligned_root: Path, shot_root: Path) -> None:
        """Every scene of `shot_root` (Test, Training) must have its aligned copy in `aligned_root`: scoring or
        labelling a subset of the split as if it were all of it is a silent substitute. --lenient_data skips the
        missing ones with a warning."""
        shot = sorted(p.name for p in shot_root.iterdir() if p.is_dir() and not p.name.startswith('.'))
        cap = getattr(self.opt, 'max_dataset_size', float('inf'))
        if cap is not None and cap != float('inf'):
            shot = shot[:int(cap)]  # the scenes --max_dataset_size would take from the folder as shot
        missing = sorted(set(shot) - {p.name for p in aligned_root.iterdir() if p.is_dir()})
        if not missing:
            return
        listed = ', '.join(missing[:5]) + (f' ... ({len(missing)} in all)' if len(missing) > 5 else '')
        if not self.lenient:
            raise DatasetError(f'{self.dataset_name} ({self.split}): {aligned_root} lacks the aligned copies of '
                               f'{listed} (in {shot_root}); align them (python tools/prepare_data.py --dataroot '
                               f'{self.root} --split {shot_root.name}), or pass --lenient_data True to skip them')
        logger.warning('%s (%s): %d scenes of %s have no aligned copy in %s and are skipped: %s', self.dataset_name,
                       self.split, len(missing), shot_root, aligned_root, listed)

    @staticmethod
    def _existing(path: Path, what: str) -> Path:
        if not path.is_file():
            raise DatasetError(f'{path}: {what} file does not exist')
        return path
