"""Tursun et al. (2016) scenes, test only and without ground truth (``--dataset_name tursun``).

Layout: ``<dataroot>/dataset/<scene>/*.tiff`` plus ``exposure.txt`` (one value in stops per frame).
Frames 5, 7 and 9 (1-based, sorted names) are used, with their exposure times ``2 ** v``
(``util.exposures.read_tursun_exposures``; no normalisation). With ``--network FSHDR`` the frames
come from ``dataset_align/<scene>/`` (all of them when it holds exactly three, else frames 5, 7,
9), the exposures still from ``dataset/``. Frames may be 8- or 16-bit (our choice, as for Sen).
"""
from __future__ import annotations

from pathlib import Path

from data.base_dataset import BaseDataset, build_unlabelled
from util.exposures import read_tursun_exposures


def _tursun_times(scene_dir: Path, n_frames: int):
    return read_tursun_exposures(scene_dir / 'exposure.txt', n_frames=n_frames)


class TursunDataset(BaseDataset):
    """Tursun 2016 scenes (test split only, ``has_label`` False)."""

    has_label = False

    def __init__(self, opt, split, dataset_name='tursun'):
        super().__init__(opt, split, dataset_name)
        build_unlabelled(self, 'tursun', 'dataset', _tursun_times)
