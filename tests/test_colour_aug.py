"""Colour diversity of the synthetic generator: the colour transform, its consistency between frames and ground
truth, and the lifted scikit-image photos."""
import dataclasses

import numpy as np
import pytest

from util.photo_sources import PHOTOS, lift_to_radiance, load_photo_sources, srgb_to_linear
from util.synthetic import (HDRSource, SynthConfig, apply_colour_matrix, random_colour_matrix, scene_rng,
                            synthesize_scene)

LUMA_BGR = np.array([0.114, 0.587, 0.299])


def _sources():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:192].astype(np.float32)
    rad = np.stack([0.2 + 0.1 * np.sin(xx / 7), 0.5 + 0.3 * np.cos(yy / 5), 0.05 + (xx / 192) ** 3 * 20], 2)
    rad *= np.exp(rng.normal(0, 0.3, rad.shape)).astype(np.float32)
    return [HDRSource('a', rad.astype(np.float32)), HDRSource('b', rad[:, ::-1, ::-1].copy().astype(np.float32))]


def _cfg(**kw):
    return SynthConfig(**{'size': (64, 96), 'colour_aug': True, **kw})


@pytest.mark.parametrize('seed', range(6))
def test_colour_matrix_keeps_grey_luminance(seed):
    m = random_colour_matrix(np.random.default_rng(seed), _cfg())
    grey = np.ones(3)
    assert LUMA_BGR @ (m @ grey) == pytest.approx(1.0, abs=1e-9)
    assert not np.allclose(m, np.eye(3))


def test_colour_matrices_vary_and_permute():
    cfg = _cfg()
    mats = [random_colour_matrix(np.random.default_rng(s), cfg) for s in range(40)]
    # the dominant output channel of pure blue input moves around: permutations and hue rotations happen
    dominant = {int(np.argmax(m @ np.array([1.0, 0, 0]))) for m in mats}
    assert dominant == {0, 1, 2}


def test_apply_colour_matrix_clips_negatives():
    m = np.array([[2.0, -1.5, 0], [0, 1, 0], [0, 0, 1]])
    out = apply_colour_matrix(np.array([[[0.1, 0.5, 0.2]]], np.float32), m)
    assert out.dtype == np.float32 and out.min() >= 0 and out[0, 0, 0] == 0


@pytest.mark.parametrize('index', range(4))
def test_augmented_frames_match_ground_truth(index):
    """Noise off: the medium frame is the ground truth exposed and gamma-encoded wherever it is not clipped,
    so the transform is applied to the radiance before rendering, not to the frames."""
    cfg = _cfg(noise=False)
    scene = synthesize_scene(_sources(), scene_rng(0, 'Training', index), cfg)
    t = 2.0 ** np.array(scene.exposures)
    assert scene.exposures == [0.0, scene.meta['stop'], 2 * scene.meta['stop']]
    assert scene.meta['colour_matrix'] is not None
    assert all(o['colour_matrix'] is not None for o in scene.meta['objects'])
    for ldr in scene.ldrs:
        assert ldr.min() >= 0 and ldr.max() < 1
    assert scene.gt.min() >= 0 and scene.gt.max() <= cfg.radiance_cap
    expected = np.clip(scene.gt * t[1], 0, 1) ** (1 / 2.2)
    unclipped = expected < 0.99
    np.testing.assert_allclose(scene.ldrs[1][unclipped], expected[unclipped], atol=2.0 / 2 ** 16)
    # the short frame (with its own small camera shake) sees the same radiance, t_short / t_mid darker
    short_linear = scene.ldrs[0] ** 2.2 / t[0]
    assert np.median(short_linear) == pytest.approx(np.median(scene.gt), rel=0.15)


def test_augmentation_spreads_scene_colours():
    """A nearly neutral source: plain scenes stay near-neutral, augmented ones take many colours."""
    grey = _sources()[0].radiance.mean(axis=2, keepdims=True) * np.array([0.9, 1.0, 1.1], np.float32)
    src = [HDRSource('grey', grey.astype(np.float32))]

    def spread(cfg):
        chroma = []
        for i in range(8):
            gt = synthesize_scene(src, scene_rng(0, 'Training', i), cfg).gt.reshape(-1, 3).mean(0)
            chroma.append(gt / gt.sum())
        return np.std(chroma, axis=0).sum()

    plain = _cfg(colour_aug=False, noise=False)
    assert synthesize_scene(src, scene_rng(0, 'Training', 0), plain).meta['colour_matrix'] is None
    assert spread(_cfg(noise=False)) > 2 * spread(plain)


def test_config_rejects_bad_colour_ranges():
    with pytest.raises(ValueError):
        dataclasses.replace(SynthConfig(), wb_gain=(0.0, 1.0))
    with pytest.raises(ValueError):
        dataclasses.replace(SynthConfig(), permute_prob=1.5)


def test_srgb_decoding_and_highlight_expansion():
    assert srgb_to_linear(np.array([0.0, 1.0])).tolist() == pytest.approx([0.0, 1.0])
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.214, abs=1e-3)
    img = np.array([[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0], [0.2, 0.3, 0.9]]], np.float32)
    rad = lift_to_radiance(img)
    assert rad[0, 0] == pytest.approx(srgb_to_linear(img[0, 0]))  # below the knee: plain decoding
    assert rad[0, 1, 0] == pytest.approx(8.0)  # white: 3 stops above
    assert rad[0, 2, 2] > srgb_to_linear(np.float32(0.9))  # the brightest channel's pixel is boosted, hue kept
    assert rad[0, 2, 0] / rad[0, 2, 2] == pytest.approx(srgb_to_linear(img[0, 2, 0]) / srgb_to_linear(img[0, 2, 2]))


def test_photo_sources_load_from_scikit_image():
    sources = load_photo_sources(PHOTOS)
    assert [s.name for s in sources] == [f'photo_{n}' for n in PHOTOS]
    for s in sources:
        assert s.radiance.dtype == np.float32 and s.radiance.ndim == 3 and s.radiance.min() >= 0
    with pytest.raises(ValueError, match='unknown photo'):
        load_photo_sources(['nope'])


def test_make_synthetic_cli_with_photos(tmp_path):
    from tools.make_synthetic import main
    from util.hdr_io import write_exr
    src = tmp_path / 'src'
    src.mkdir()
    write_exr(src / 'a.exr', _sources()[0].radiance)
    out = tmp_path / 'out'
    rc = main(['--src', str(src), '--out', str(out), '--train', '2', '--test', '1', '--size', '32x48',
               '--photos', 'coffee', 'rocket'])
    assert rc == 0
    assert len(list((out / 'Training').iterdir())) == 2 and len(list((out / 'Test').iterdir())) == 1


def test_demo_training_split_is_augmented_and_test_split_is_not(tmp_path):
    from data.demo import demo_fingerprint
    fp = demo_fingerprint(n_train=1, n_test=1, size=(32, 48))
    assert fp['settings']['synth_config']['colour_aug'] is True
    assert fp['settings']['photos'] == list(PHOTOS)
    assert demo_fingerprint(n_train=1, n_test=1, size=(32, 48), colour_aug=False)['fingerprint'] != fp['fingerprint']
