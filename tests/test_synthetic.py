"""Tests of util/synthetic.py and tools/make_synthetic.py on tiny generated HDR sources."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools.make_synthetic import main as make_synthetic_main
from util.hdr_io import read_hdr, read_ldr, write_exr, write_hdr
from util.synthetic import (EXPOSURE_NAME, FRAME_NAMES, GT_NAME, SynthConfig, list_hdr_files, load_sources,
                            make_synthetic_dataset, scene_rng, synthesize_scene)

SIZE = (24, 32)
STATIC = dict(max_translation=0.0, max_rotation_deg=0.0, max_scale=0.0, max_perspective=0.0, n_objects=(0, 0))
# channel each tiny source lives in (BGR), so a scene's colours reveal which sources it used
TINTS = {'blue_src': 0, 'green_src': 1, 'red_src': 2}


@pytest.fixture(scope='module')
def src_dir(tmp_path_factory) -> Path:
    """Three 32x64 'panoramas' with texture over ~3 decades, one per colour channel."""
    d = tmp_path_factory.mktemp('hdri')
    rng = np.random.default_rng(123)
    yy, xx = np.mgrid[0:32, 0:64].astype(np.float32)
    for k, (name, ch) in enumerate(TINTS.items()):
        field = cv2.GaussianBlur(rng.standard_normal((32, 64)).astype(np.float32), (0, 0), 2.0)
        lum = np.exp(3.0 * field / field.std() + 0.5 * np.sin(xx / 5.0 + k) + yy / 16.0).astype(np.float32)
        img = np.zeros((32, 64, 3), np.float32)
        img[..., ch] = lum
        (write_exr if k != 1 else write_hdr)(d / (name + ('.exr' if k != 1 else '.hdr')), img)
    (d / 'notes.txt').write_text('not an image')  # must be ignored
    return d


@pytest.fixture(scope='module')
def sources(src_dir):
    return load_sources(list_hdr_files(src_dir))


def _cfg(**kw) -> SynthConfig:
    return SynthConfig(size=SIZE, **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_list_sources(src_dir, sources):
    assert [p.name for p in list_hdr_files(src_dir)] == ['blue_src.exr', 'green_src.hdr', 'red_src.exr']
    assert [s.name for s in sources] == ['blue_src', 'green_src', 'red_src']
    assert all(s.radiance.dtype == np.float32 and s.radiance.min() >= 0 for s in sources)


def test_same_seed_same_bytes_different_seed_differs(src_dir, tmp_path):
    for name, seed in (('a', 7), ('b', 7), ('c', 8)):
        make_synthetic_dataset(src_dir, tmp_path / name, 2, 1, SIZE, seed)
    a, b, c = (_files(tmp_path / n) for n in 'abc')
    assert len(a) == 3 * 5 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith('.tif'))


def test_scene_depends_only_on_seed_split_and_index(sources):
    cfg = _cfg()
    s1 = synthesize_scene(sources, scene_rng(3, 'Training', 1), cfg)
    s2 = synthesize_scene(sources, scene_rng(3, 'Training', 1), cfg)
    other_split = synthesize_scene(sources, scene_rng(3, 'Test', 1), cfg)
    for x, y in zip(s1.ldrs + [s1.gt], s2.ldrs + [s2.gt]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(s1.gt, other_split.gt)
    with pytest.raises(ValueError, match='split'):
        scene_rng(0, 'Validation', 0)


def test_layout_and_stored_values(src_dir, sources, tmp_path):
    written = make_synthetic_dataset(src_dir, tmp_path, 3, 2, SIZE, seed=5)
    assert [p.name for p in written['Training']] == ['001', '002', '003']
    assert [p.name for p in written['Test']] == ['001', '002']
    scene_dir = written['Training'][0]
    tifs = sorted(p.name for p in scene_dir.glob('*.tif'))
    assert tuple(tifs) == FRAME_NAMES  # sorted names go short, medium, long
    assert sorted(p.name for p in scene_dir.iterdir()) == sorted([*FRAME_NAMES, EXPOSURE_NAME, GT_NAME])
    stops = [float(v) for v in (scene_dir / EXPOSURE_NAME).read_text().split()]
    assert stops[0] == 0 and stops[1] in (2.0, 3.0) and stops[2] == 2 * stops[1]

    raw = [cv2.imread(str(scene_dir / n), cv2.IMREAD_UNCHANGED) for n in FRAME_NAMES]
    assert all(r.dtype == np.uint16 and r.shape == (*SIZE, 3) for r in raw)
    means = [r.astype(np.float64).mean() for r in raw]
    assert means[0] < means[1] < means[2]
    gt = read_hdr(scene_dir / GT_NAME)
    assert gt.shape == (*SIZE, 3) and gt.dtype == np.float32 and 0 <= gt.min() and gt.max() <= 1.0

    # the in-memory scene is exactly what the files decode to
    scene = synthesize_scene(sources, scene_rng(5, 'Training', 0), _cfg())
    assert scene.exposures == stops
    for name, ldr in zip(FRAME_NAMES, scene.ldrs):
        np.testing.assert_array_equal(read_ldr(scene_dir / name, expect_bits=16), ldr)
    # RGBE keeps an 8-bit mantissa relative to each pixel's largest channel
    assert (np.abs(gt - scene.gt) <= 2 ** -7 * scene.gt.max(axis=2, keepdims=True) + 1e-9).all()


@pytest.mark.parametrize('index', [0, 1, 2])
def test_medium_frame_matches_ground_truth_without_noise(sources, tmp_path, index):
    scene = synthesize_scene(sources, scene_rng(11, 'Training', index), _cfg(noise=False))
    t_mid = 2.0 ** scene.exposures[1]
    x_mid = scene.ldrs[1]
    ok = x_mid < 0.99  # not clipped
    assert ok.mean() > 0.3 and (~ok).any()  # both regimes present
    expected = np.clip(scene.gt.astype(np.float64) * t_mid, 0, 1) ** (1 / 2.2)
    # 16-bit rounding only: half a code in the LDR domain
    np.testing.assert_allclose(x_mid[ok], expected[ok], atol=0.5 / 2 ** 16 + 1e-7)
    # linearisation H = X**2.2 / t (method.md) recovers the ground truth where the frame is valid
    h_mid = x_mid.astype(np.float64) ** 2.2 / t_mid
    bright = ok & (scene.gt > 0.01)
    np.testing.assert_allclose(h_mid[bright], scene.gt[bright], rtol=1e-3)
    # clipped pixels really are over-exposed in the ground truth
    assert (scene.gt[~ok] * t_mid > 0.95).all()

    # the same holds after the ground truth goes through the .hdr file
    write_hdr(tmp_path / 'gt.hdr', scene.gt)
    gt_file = read_hdr(tmp_path / 'gt.hdr').astype(np.float64)
    np.testing.assert_allclose(x_mid[bright], (gt_file[bright] * t_mid) ** (1 / 2.2), rtol=5e-3)


def test_static_scene_has_identical_geometry(sources):
    scene = synthesize_scene(sources, scene_rng(2, 'Training', 0), _cfg(noise=False, **STATIC))
    for i in (0, 2):
        t = 2.0 ** scene.exposures[i]
        ok = scene.ldrs[i] < 0.99
        np.testing.assert_allclose(scene.ldrs[i][ok], (scene.gt[ok].astype(np.float64) * t) ** (1 / 2.2),
                                   atol=0.5 / 2 ** 16 + 1e-7)


def _misalignment(scene) -> float:
    """Mean relative error of the short frame's linearisation vs. the ground truth (valid pixels)."""
    x = scene.ldrs[0].astype(np.float64)
    h = x ** 2.2 / 2.0 ** scene.exposures[0]
    valid = (x < 0.99) & (x > 0.05) & (scene.gt > 1e-3) & (scene.ldrs[1] < 0.99)
    return float(np.mean(np.abs(h[valid] - scene.gt[valid]) / scene.gt[valid]))


def test_motion_is_present(sources):
    static = synthesize_scene(sources, scene_rng(4, 'Training', 0), _cfg(noise=False, **STATIC))
    assert _misalignment(static) < 1e-3
    for idx in range(3):
        scene = synthesize_scene(sources, scene_rng(4, 'Training', idx), _cfg(noise=False))
        assert _misalignment(scene) > 0.05
        homs = [np.array(h) for h in scene.meta['homographies']]
        np.testing.assert_array_equal(homs[1], np.eye(3))
        assert not np.allclose(homs[0], np.eye(3)) and not np.allclose(homs[2], np.eye(3))
        assert 1 <= len(scene.meta['objects']) <= 3
    # objects alone (no camera motion) also move between frames
    objects_only = dict(STATIC, n_objects=(2, 2))
    scene = synthesize_scene(sources, scene_rng(4, 'Training', 0), _cfg(noise=False, **objects_only))
    assert _misalignment(scene) > 0.01
    offsets = np.array(scene.meta['objects'][0]['offsets_xy'])
    assert np.linalg.norm(offsets[0]) > 0.5 and np.linalg.norm(offsets[2]) > 0.5


def test_noise_is_signal_dependent(sources):
    clean = synthesize_scene(sources, scene_rng(9, 'Training', 0), _cfg(noise=False))
    noisy = synthesize_scene(sources, scene_rng(9, 'Training', 0), _cfg(noise=True))
    np.testing.assert_array_equal(clean.gt, noisy.gt)  # noise comes after the ground truth
    diff = np.abs(noisy.ldrs[0] - clean.ldrs[0])
    unclipped = clean.ldrs[0] < 0.99
    assert 0 < diff[unclipped].mean() < 0.05
    assert (noisy.ldrs[2][clean.ldrs[2] >= 65535 / 65536] >= 65535 / 65536).all()  # saturation stays


def test_holdout_sources_only_in_test(src_dir, tmp_path):
    written = make_synthetic_dataset(src_dir, tmp_path, 3, 3, SIZE, seed=1, holdout=['red_src'])
    for p in written['Test']:
        gt = read_hdr(p / GT_NAME)
        assert gt[..., 2].max() > 0 and gt[..., :2].max() == 0  # red only
    for p in written['Training']:
        assert read_hdr(p / GT_NAME)[..., 2].max() == 0
    with pytest.raises(ValueError, match='nosuch'):
        make_synthetic_dataset(src_dir, tmp_path / 'x', 1, 1, SIZE, holdout=['nosuch'])
    with pytest.raises(ValueError, match='held out'):
        make_synthetic_dataset(src_dir, tmp_path / 'y', 1, 1, SIZE, holdout=list(TINTS))


def test_existing_output_needs_overwrite(src_dir, tmp_path):
    make_synthetic_dataset(src_dir, tmp_path, 2, 0, SIZE, seed=0)
    with pytest.raises(FileExistsError, match='Training'):
        make_synthetic_dataset(src_dir, tmp_path, 1, 0, SIZE, seed=0)
    make_synthetic_dataset(src_dir, tmp_path, 1, 0, SIZE, seed=0, overwrite=True)
    assert [p.name for p in (tmp_path / 'Training').iterdir()] == ['001']  # no stale scenes left


def test_missing_or_empty_source_folder(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'a.tif').write_bytes(b'x')
    with pytest.raises(FileNotFoundError, match='no HDR radiance files'):
        make_synthetic_dataset(tmp_path / 'empty', tmp_path / 'out', 1, 1, SIZE)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        list_hdr_files(tmp_path / 'missing')
    rc = make_synthetic_main(['--src', str(tmp_path / 'empty'), '--out', str(tmp_path / 'out')])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'empty' in err and 'no HDR radiance files' in err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('extra, message', [(['--size', '4x4'], 'at least 8x8'), (['--seed', '-1'], '--seed -1'),
                                            (['--out', 'FILE'], 'FILE')])
def test_cli_mistakes_are_one_line_errors(src_dir, tmp_path, capsys, extra, message):
    """A size under 8x8, a negative seed, an --out that is a file: exit 2 with a message (tracebacks before)."""
    a_file = tmp_path / 'FILE'
    a_file.write_text('x')
    extra = [str(a_file) if e == 'FILE' else e for e in extra]
    argv = ['--src', str(src_dir), '--out', str(tmp_path / 'out'), '--train', '1', '--test', '1', '--size', '16x24']
    assert make_synthetic_main(argv + extra) == 2
    assert message in capsys.readouterr().err


def test_cli_writes_dataset(src_dir, tmp_path):
    out = tmp_path / 'syn'
    rc = make_synthetic_main(['--src', str(src_dir), '--out', str(out), '--train', '1', '--test', '1',
                              '--size', '16x24', '--seed', '3', '--no_noise'])
    assert rc == 0
    assert read_ldr(out / 'Test' / '001' / FRAME_NAMES[1]).shape == (16, 24, 3)


def test_config_validation():
    with pytest.raises(ValueError, match='size'):
        SynthConfig(size=(4, 32))
    with pytest.raises(ValueError, match='n_objects'):
        SynthConfig(n_objects=(2, 1))
    with pytest.raises(ValueError, match='stop_choices'):
        dataclasses.replace(SynthConfig(), stop_choices=(0.0,))


@pytest.mark.parametrize('fraction', [0.3, 0.6])
def test_clipped_normalisation_sets_the_medium_frames_clipped_share(sources, fraction):
    cfg = _cfg(noise=False, normalisation='clipped', clipped_fraction=(fraction, fraction), **STATIC)
    scene = synthesize_scene(sources, scene_rng(3, 'Test', 0), cfg)
    clipped = (scene.ldrs[1].max(axis=2) >= 65535 / 65536).mean()
    assert abs(clipped - fraction) < 0.05
    assert scene.meta['normalisation'] == 'clipped'


def test_mean_normalisation_sets_the_medium_frames_mean(sources):
    cfg = _cfg(noise=False, normalisation='mean', mean_level=(0.1, 0.1), radiance_cap=None, **STATIC)
    scene = synthesize_scene(sources, scene_rng(3, 'Test', 1), cfg)
    t_mid = 2.0 ** scene.exposures[1]
    linear = (scene.gt * t_mid) @ np.array([0.114, 0.587, 0.299], np.float32)  # before the sensor clips
    assert linear.mean() == pytest.approx(0.1, rel=1e-3)


def test_default_normalisation_is_unchanged_by_the_new_settings(sources):
    # the new settings must not move the training data: same draws, same scene as before they existed
    a = synthesize_scene(sources, scene_rng(5, 'Training', 0), _cfg())
    b = synthesize_scene(sources, scene_rng(5, 'Training', 0), _cfg(normalisation='highlight',
                                                                    clipped_fraction=(0.4, 0.5)))
    np.testing.assert_array_equal(a.ldrs[1], b.ldrs[1])
    with pytest.raises(ValueError, match='normalisation'):
        _cfg(normalisation='percentile')


def test_mixed_normalisation_draws_each_rule_and_records_the_one_used(sources):
    cfg = _cfg(noise=False, normalisation='mixed', **STATIC)
    used = {synthesize_scene(sources, scene_rng(7, 'Training', i), cfg).meta['normalisation'] for i in range(24)}
    assert used == {'highlight', 'clipped', 'mean'}


def test_wide_variety_spans_the_bracket_settings_of_the_study_splits():
    from data.demo import VARIETIES, demo_fingerprint, synth_config
    from data.study_splits import TEST_SPLITS

    wide = synth_config((24, 32), variety='wide')
    assert synth_config((24, 32), variety='standard') == SynthConfig(size=(24, 32), colour_aug=True)
    # every split's stops and noise levels lie inside the wide ranges
    for settings in TEST_SPLITS.values():
        for stop in settings.get('stop_choices', ()):
            assert stop in wide.stop_choices
        for name in ('shot_noise', 'read_noise'):
            if name in settings:
                lo, hi = settings[name]
                assert getattr(wide, name)[0] <= lo <= hi <= getattr(wide, name)[1]
    assert demo_fingerprint(variety='wide')['fingerprint'] != demo_fingerprint()['fingerprint']
    with pytest.raises(ValueError, match='variety'):
        synth_config((24, 32), variety='everything')
    assert set(VARIETIES) == {'standard', 'wide'}


def test_a_setting_validation_split_renders_that_setting_alone_from_the_training_sources(src_dir, tmp_path):
    from data.study_splits import ensure_setting_validation_split, ensure_validation_split

    root = ensure_setting_validation_split(tmp_path / 'clean', 'clean', src_dir, ['red_src'], 2, SIZE)
    marker = json.loads((root / 'split.json').read_text())
    assert marker['settings'] == ['clean', 'clean']
    scenes = sorted((root / 'Test').iterdir())
    assert len(scenes) == 2
    for scene in scenes:  # the held-out (red) source never appears
        gt = read_hdr(scene / GT_NAME)
        assert gt[..., 2].max() == 0 and gt.max() > 0
    stamp = (root / 'split.json').stat().st_mtime_ns
    assert ensure_setting_validation_split(root, 'clean', src_dir, ['red_src'], 2, SIZE) == root
    assert (root / 'split.json').stat().st_mtime_ns == stamp  # made once, then reused
    mixed = ensure_validation_split(tmp_path / 'mixed', src_dir, ['red_src'], 3, SIZE)
    assert json.loads((mixed / 'split.json').read_text())['settings'][2] == 'clean'
    assert _files(mixed / 'Test' / '003') != _files(root / 'Test' / '001')  # same setting, its own random streams
    with pytest.raises(ValueError, match='unknown study split'):
        ensure_setting_validation_split(tmp_path / 'x', 'sunny', src_dir, ['red_src'], 2, SIZE)
    with pytest.raises(ValueError, match='held out'):
        ensure_setting_validation_split(tmp_path / 'y', 'clean', src_dir, list(TINTS), 2, SIZE)
