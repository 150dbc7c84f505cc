"""The small pieces of the benches that decide what they measure: the RAW rendering of the real bracket and the
model specs of ``bench/bracket_colour.py``."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))

import bracket_colour  # noqa: E402
import render_raw  # noqa: E402


def test_model_spec_names_its_network_or_takes_the_default():
    assert bracket_colour.parse_model('a=ckpt.pth', 'AHDRNet') == ('a', 'AHDRNet', 'ckpt.pth')
    assert bracket_colour.parse_model('b=FSHDR:x/y.pth', 'AHDRNet') == ('b', 'FSHDR', 'x/y.pth')
    # a colon that does not name a network stays part of the path (C:/..., odd file names)
    assert bracket_colour.parse_model('c=C:/m.pth', 'AHDRNet') == ('c', 'AHDRNet', 'C:/m.pth')
    with pytest.raises(SystemExit, match='NAME=CKPT'):
        bracket_colour.parse_model('no_equals_sign', 'AHDRNet')


def test_raw_rendering_keeps_exposure_ratios_and_names_a_bad_file(tmp_path, capsys):
    from dng_maker import write_dng

    rng = np.random.default_rng(0)
    base = np.clip(rng.uniform(0.02, 0.2, (64, 96, 3)), 0, 1)
    short = write_dng(tmp_path / 'short.dng', base, exposure=(1, 100))
    long_ = write_dng(tmp_path / 'long.dng', base * 4, exposure=(1, 25))
    assert render_raw.main([str(short), str(long_), '--out_dir', str(tmp_path / 'png')]) == 0
    imgs = [cv2.imread(str(tmp_path / 'png' / f'{n}.png')) for n in ('short', 'long')]
    assert imgs[0].shape == (32, 48, 3) and imgs[0].dtype == np.uint8  # half-size demosaic
    # no auto-brightening: 4x the light stays several times brighter through the output curve (auto-brightening
    # would stretch both frames to about the same level)
    ok = (imgs[1] < 250) & (imgs[0] > 10)
    ratio = np.median((imgs[1][ok] / imgs[0][ok]) ** 2.222)
    assert 3 < ratio < 10  # the curve's linear toe makes dark codes part faster than a pure power
    bad = tmp_path / 'bad.dng'
    bad.write_bytes(b'not a raw file')
    assert render_raw.main([str(bad), '--out_dir', str(tmp_path / 'png')]) == 2
    assert 'bad.dng' in capsys.readouterr().err
