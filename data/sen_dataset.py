"""Sen et al. (2012) scenes, test only and without ground truth (``--dataset_name sen``).

Layout: ``<dataroot>/Scenes/<scene>/*.tif`` plus ``exposures.txt`` (one value in stops per frame).
The middle three frames of the sorted list are used and their exposure times are normalised by
the first of the three (``util.exposures.read_sen_exposures``). With ``--network FSHDR`` the frames
come from ``Scenes_align/<scene>/`` (all of them when it holds exactly three, else the middle
three), the exposures still from ``Scenes/``. Frames may be 8- or 16-bit: the published copies of
this data set are not all 16-bit and method.md does not fix the depth (our choice).
"""
from __future__ import annotations

from pathlib import Path

from data.base_dataset import BaseDataset, build_unlabelled
from util.exposures import read_sen_exposures


def _sen_times(scene_dir: Path, n_frames: int):
    return read_sen_exposures(scene_dir / 'exposures.txt', n_frames=n_frames)


class SenDataset(BaseDataset):
    """Sen 2012 scenes (test split only, ``has_label`` False)."""

    has_label = False

    def __init__(self, opt, split, dataset_name='sen'):
        super().__init__(opt, split, dataset_name)
        build_unlabelled(self, 'sen', 'Scenes', _sen_times)
