"""Tests of data/demo.py, tools/make_demo_data.py and the committed HDRIs (tiny settings)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import data.demo as demo
from tools.make_demo_data import main as make_demo_main
from util.hdr_io import read_exr, read_hdr, read_ldr
from util.synthetic import FRAME_NAMES, GT_NAME

HDRI_DIR = Path(__file__).resolve().parents[1] / 'datasets' / 'hdri'
TINY = dict(n_train=2, n_test=1, size=(24, 32), seed=0)
NAMES = ['city', 'courtyard', 'forest', 'interior', 'night', 'studio', 'sunrise', 'sunset']


def test_committed_hdris():
    files = sorted(HDRI_DIR.glob('*.exr'))
    assert [p.stem for p in files] == NAMES
    assert sum(p.stat().st_size for p in files) < 3 * 2 ** 20
    assert 'CC0' in (HDRI_DIR / 'LICENSE.md').read_text()
    img = read_exr(HDRI_DIR / 'night.exr')
    assert img.shape == (512, 1024, 3) and img.dtype == np.float32 and img.max() > 100  # real HDR range
    assert set(demo.TEST_HDRIS) < set(NAMES)


def _scene_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def test_demo_dataset_with_alignment(tmp_path):
    root = demo.ensure_demo_dataset(tmp_path / 'demo', **TINY)
    assert root == tmp_path / 'demo'
    assert _scene_dirs(root / 'Training') == _scene_dirs(root / 'Training_align') == ['001', '002']
    assert _scene_dirs(root / 'Test') == _scene_dirs(root / 'Test_align') == ['001']
    for scene in ('001', '002'):
        aligned = root / 'Training_align' / scene
        assert sorted(p.name for p in aligned.glob('*.tif')) == list(FRAME_NAMES)
        for name in FRAME_NAMES:
            assert read_ldr(aligned / name, expect_bits=16).shape == (24, 32, 3)
        # Y_color: a convex per-pixel blend of the linearised frames, so bounded by the ground truth range
        y_color = read_hdr(aligned / GT_NAME)
        assert y_color.shape == (24, 32, 3) and np.isfinite(y_color).all() and y_color.min() >= 0
        assert y_color.max() <= 1.05
        # medium frame is the reference: alignment leaves it as it is
        np.testing.assert_array_equal(read_ldr(aligned / FRAME_NAMES[1]),
                                      read_ldr(root / 'Training' / scene / FRAME_NAMES[1]))
    assert len(list((root / 'Test_align' / '001').glob('*.tif'))) == 3
    marker = json.loads((root / demo.MARKER_NAME).read_text())
    assert marker['fingerprint'] == demo.demo_fingerprint(**TINY)['fingerprint']
    assert marker['settings']['holdout'] == sorted(demo.TEST_HDRIS)


def test_cache_reuse_and_regeneration(tmp_path, monkeypatch):
    root = tmp_path / 'demo'
    calls = []
    real = demo.make_synthetic_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs.get('seed', args[5] if len(args) > 5 else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, 'make_synthetic_dataset', counting)
    settings = dict(TINY, align=False)
    demo.ensure_demo_dataset(root, **settings)
    first = (root / 'Training' / '001' / FRAME_NAMES[0]).read_bytes()
    demo.ensure_demo_dataset(root, **settings)
    assert len(calls) == 1  # cached

    (root / 'Training' / 'stray').mkdir()  # not a scene this marker describes
    demo.ensure_demo_dataset(root, **settings)
    assert len(calls) == 2 and not (root / 'Training' / 'stray').exists()

    demo.ensure_demo_dataset(root, **dict(settings, seed=1))  # new settings -> stale
    assert len(calls) == 3
    assert (root / 'Training' / '001' / FRAME_NAMES[0]).read_bytes() != first

    (root / demo.MARKER_NAME).write_text('{not json')  # corrupt marker -> regenerate
    demo.ensure_demo_dataset(root, **settings)
    assert len(calls) == 4
    assert (root / 'Training' / '001' / FRAME_NAMES[0]).read_bytes() == first  # same seed, same bytes

    demo.ensure_demo_dataset(root, **settings, force=True)
    assert len(calls) == 5
    (root / 'keep.txt').write_text('user file')
    demo.ensure_demo_dataset(root, **settings, force=True)
    assert (root / 'keep.txt').read_text() == 'user file'  # only owned folders are deleted


def test_fingerprint_tracks_hdri_content(tmp_path):
    hdri = tmp_path / 'hdri'
    hdri.mkdir()
    for p in HDRI_DIR.glob('*.exr'):
        (hdri / p.name).write_bytes(p.read_bytes())
    fp1 = demo.demo_fingerprint(**TINY, hdri_dir=hdri)
    assert fp1 == demo.demo_fingerprint(**TINY, hdri_dir=hdri)
    (hdri / 'extra.hdr').write_bytes(b'#?RADIANCE\n')
    assert demo.demo_fingerprint(**TINY, hdri_dir=hdri)['fingerprint'] != fp1['fingerprint']


def test_cli(tmp_path, capsys):
    root = tmp_path / 'cli'
    args = ['--root', str(root), '--train', '1', '--test', '1', '--size', '16x24', '--no_align']
    assert make_demo_main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root)
    assert read_ldr(root / 'Test' / '001' / FRAME_NAMES[2]).shape == (16, 24, 3)
    assert make_demo_main(args + ['--hdri_dir', str(tmp_path / 'none')]) == 2
    assert 'does not exist' in capsys.readouterr().err
