"""Tests for util/tonemap.py and tools/tonemap.py (CPU, tiny, seeded)."""
import math

import cv2
import numpy as np
import pytest
import torch

from util.tonemap import (DEFAULT_GAMMA, OPERATORS, display_tonemap, luminance, mu_law, mu_law_torch,
                          reinhard, to_uint8, tonemap, write_png)

from conftest import GOLDEN  # noqa: E402


def _random_hdr(h=24, w=32, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) ** 3 * scale).astype(np.float32)


def _ramp(h=8, w=64):
    ramp = np.logspace(-4, 0, w, dtype=np.float32)
    return np.repeat(np.repeat(ramp[None, :, None], h, 0), 3, 2)


def test_mu_law_hand_values():
    x = np.array([0.0, 1.0, 0.5, 1e-3], dtype=np.float32)
    y = mu_law(x)
    assert y.dtype == np.float32
    assert y[0] == 0.0
    assert y[1] == pytest.approx(1.0, abs=1e-7)
    assert y[2] == pytest.approx(math.log(2501) / math.log(5001), rel=1e-6)
    assert y[3] == pytest.approx(math.log(6) / math.log(5001), rel=1e-6)


def test_mu_law_numpy_torch_twins_equal():
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    t = mu_law_torch(torch.from_numpy(x))
    assert t.dtype == torch.float32
    # NumPy's and torch's float32 log may differ by one ulp.
    np.testing.assert_allclose(t.numpy(), mu_law(x), rtol=0, atol=2.5e-7)
    # The losses rely on this exact expression.
    ref = torch.log(1 + 5000 * torch.from_numpy(x)) / math.log(1 + 5000)
    assert torch.equal(t, ref)


def test_mu_law_torch_reproduces_golden_losses():
    path = GOLDEN / 'losses.pt'
    if not path.exists():
        pytest.skip(f'golden data not found at {path} (needs ../shared/golden)')
    d = torch.load(path, weights_only=False)
    mu = mu_law_torch
    mask = (torch.mean(torch.abs(mu(d['color_label']) - mu(d['stru_label'])), 1, keepdim=True) < 10 / 255).float()
    assert torch.equal(mask, d['s2_label_mask'])
    color = torch.mean(torch.abs(mu(d['out']) * mask - mu(d['color_label']) * mask))
    assert color.item() == pytest.approx(d['s2_loss_Color'].item(), abs=1e-7)
    ref_hdr, ref_ldr = d['input1'][:, :3], d['input1'][:, 3:]
    w = torch.where(ref_ldr < 0.5, 2 * ref_ldr, 2 - 2 * ref_ldr)
    preserve = 4 * torch.mean(torch.abs(mu(d['out']) * w - mu(ref_hdr) * w))
    assert preserve.item() == pytest.approx(d['s1_loss_StruPrese'].item(), abs=1e-7)


@pytest.mark.parametrize('operator', sorted(OPERATORS))
@pytest.mark.parametrize('exposure', [-2.0, 0.0, 1.5])
def test_operators_map_to_unit_range(operator, exposure):
    x = _random_hdr()
    out = tonemap(x, operator, exposure=exposure)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.isfinite(out).all()


@pytest.mark.parametrize('operator', ['mu', 'reinhard'])
def test_global_operators_monotonic_in_luminance(operator):
    # Same-colour pixels: the output luminance must not decrease when the input luminance grows.
    x = _random_hdr(seed=2)
    grey = np.repeat(x[:, :, :1], 3, axis=2)
    out = tonemap(grey, operator)
    order = np.argsort(luminance(grey).ravel(), kind='stable')
    assert np.diff(luminance(out).ravel()[order]).min() >= -1e-6
    # And strictly increasing along a ramp.
    ramp_out = tonemap(_ramp(), operator)
    assert np.diff(ramp_out[4, :, 1]).min() > 0


def test_display_operator_monotonic_with_one_tile():
    # With a single CLAHE tile the operator is a global curve of log luminance, monotone up to
    # one of scikit-image's 2**14 internal grey levels (6.1e-5).
    x = _random_hdr(seed=3)
    grey = np.repeat(x[:, :, :1], 3, axis=2) * np.array([0.5, 1.0, 2.0], np.float32)
    out = display_tonemap(grey, tiles=(1, 1))
    order = np.argsort(luminance(grey).ravel(), kind='stable')
    assert np.diff(luminance(out).ravel()[order]).min() >= -1e-4


def test_display_operator_default_tiles_nearly_monotone_on_ramp():
    # With 4 x 4 tiles CLAHE is local (as MATLAB's tonemap): tile blending may cost a few 1e-3
    # of monotonicity on a ramp, but the ramp must still go from dark to bright.
    out = display_tonemap(_ramp(16, 64))[8, :, 1]
    assert out[-1] - out[0] > 0.8
    assert np.diff(out).min() > -0.01


def test_display_operator_scale_invariant_and_saturation():
    # Kept well above the eps floor of the log so that only the normalisation acts. On a tiny
    # image a rounding-level change can move a pixel to the next of CLAHE's 256 bins, which
    # shifts a 48-pixel tile's curve a little: compare the mean, not every pixel.
    x = _random_hdr(seed=4) + 0.01
    assert np.abs(display_tonemap(x) - display_tonemap(x * 8)).mean() < 2e-3
    # saturation 0 removes colour: all channels equal the new luminance.
    grey = display_tonemap(x, saturation=0.0)
    np.testing.assert_allclose(grey[:, :, 0], grey[:, :, 2], atol=1e-6)


def test_exposure_and_gamma_controls():
    x = np.full((4, 4, 3), 0.01, np.float32)
    base = tonemap(x, 'mu')
    brighter = tonemap(x, 'mu', exposure=2.0)
    np.testing.assert_allclose(brighter, mu_law(np.full_like(x, 0.04)), rtol=1e-6)
    assert (brighter > base).all()
    assert tonemap(x, 'mu', gamma=2.2)[0, 0, 0] == pytest.approx(float(base[0, 0, 0]) ** (1 / 2.2), rel=1e-5)
    assert DEFAULT_GAMMA['reinhard'] == 2.2


def test_reinhard_hand_value():
    # Uniform grey: log-average = value, so L = key and Ld = key (1 + key / white^2) / (1 + key).
    x = np.full((4, 4, 3), 0.3, np.float32)
    key, white = 0.18, 2.0
    out = reinhard(x, gamma=1.0, key=key, white=white, eps=1e-12)
    np.testing.assert_allclose(out, key * (1 + key / white ** 2) / (1 + key), rtol=1e-5)
    # Default white point = the largest scaled luminance, which then maps to exactly 1.
    np.testing.assert_allclose(reinhard(x, gamma=1.0, eps=1e-12), 1.0, rtol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='unknown tone-mapping operator'):
        tonemap(_random_hdr(), 'nope')
    with pytest.raises(ValueError, match='H x W x 3'):
        tonemap(np.zeros((4, 4), np.float32), 'mu')
    with pytest.raises(ValueError, match='gamma'):
        tonemap(_random_hdr(), 'mu', gamma=0.0)


def test_write_png_roundtrip(tmp_path):
    img = np.zeros((3, 5, 3), np.float32)
    img[..., 0] = 1.0  # blue in BGR
    img[1, 2] = 0.5
    path = tmp_path / 'x.png'
    write_png(path, img)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and back.shape == (3, 5, 3)
    np.testing.assert_array_equal(back, to_uint8(img))
    assert back[0, 0].tolist() == [255, 0, 0] and back[1, 2].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match='.png'):
        write_png(tmp_path / 'x.jpg', img)


def test_cli_tonemap(tmp_path):
    from util import hdr_io
    from tools.tonemap import main

    src = tmp_path / 'in.hdr'
    hdr_io.write_hdr(src, _random_hdr(12, 16, seed=5, scale=1.0))
    for op in sorted(OPERATORS):
        out = tmp_path / f'out_{op}.png'
        assert main([str(src), '-o', str(out), '--operator', op, '--exposure', '0.5']) == 0
        png = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert png.shape == (12, 16, 3) and png.dtype == np.uint8
    assert main([str(tmp_path / 'missing.hdr'), '-o', str(tmp_path / 'm.png')]) == 1


@pytest.mark.parametrize('flag, value', [('--exposure', '1e10'), ('--exposure', 'nan'), ('--gamma', 'inf')])
def test_cli_tonemap_checks_its_numbers(tmp_path, capsys, flag, value):
    """Out-of-range or non-finite --exposure/--gamma: exit 2 naming the flag (1e10 raised an OverflowError, nan wrote
    a black PNG)."""
    from util import hdr_io
    from tools.tonemap import main

    src = tmp_path / 'in.hdr'
    hdr_io.write_hdr(src, _random_hdr(12, 16, seed=5, scale=1.0))
    assert main([str(src), '-o', str(tmp_path / 'o.png'), flag, value]) == 2
    assert flag in capsys.readouterr().err and not (tmp_path / 'o.png').exists()


@pytest.mark.parametrize('operator', sorted(OPERATORS))
def test_a_radiance_near_the_float32_ceiling_is_white(operator):
    """A few pixels at 3e38 (finite, absurd): the display operator hung on its noise bands and Reinhard's turned them
    black; now they are white and the rest is as it was."""
    x = _random_hdr(40, 50, seed=3, scale=1.0)
    y0 = tonemap(x, operator)
    x[:5, :5] = 3e38
    y = tonemap(x, operator)
    assert np.isfinite(y).all() and (y[:5, :5] > 0.99).all()
    if operator == 'mu':  # per-pixel: the others renormalise by the image's statistics, which the bright patch moves
        np.testing.assert_array_equal(y[5:, 5:], y0[5:, 5:])


def test_display_clean_shadows_removes_chroma_noise_in_the_dark_only():
    """A green shadow with chroma noise beside a bright sky: with clean shadows the shadow's colour is close to its
    true green (MATLAB's operator keeps the noise, lifted by CLAHE), the sky is untouched, the edge stays sharp."""
    from util.tonemap import shadow_chroma

    rng = np.random.default_rng(0)
    x = np.empty((64, 64, 3), np.float32)
    x[:, :32] = np.array([0.2, 0.5, 0.3]) * 1e-3                    # shadow, ~10 stops under the sky (BGR)
    x[:, 32:] = np.array([0.9, 0.7, 0.5])                           # sky
    x[:, :32] *= 1 + 0.5 * rng.standard_normal((64, 32, 3)).astype(np.float32)
    x = np.maximum(x, 0)

    def angle_to(img, colour):
        c = np.asarray(colour, np.float64)
        cos = (img @ c) / (np.linalg.norm(img, axis=2) * np.linalg.norm(c) + 1e-20)
        return np.degrees(np.arccos(np.clip(cos, -1, 1)))

    clean, matlab = display_tonemap(x), display_tonemap(x, clean_shadows=False)
    inner = (slice(None), slice(4, 28))                             # away from the edge
    assert np.percentile(angle_to(clean[inner], [0.2, 0.5, 0.3]), 90) < \
        0.75 * np.percentile(angle_to(matlab[inner], [0.2, 0.5, 0.3]), 90)
    np.testing.assert_allclose(clean[:, 34:], matlab[:, 34:], atol=1e-6)  # bright pixels keep their colour
    edge = clean[:, 30:31]                                                  # no sky colour bleeds into the shadow
    assert np.median(angle_to(edge, [0.2, 0.5, 0.3])) < 0.5 * np.median(angle_to(edge, [0.9, 0.7, 0.5]))
    lum = luminance(x)
    ratio = shadow_chroma(x, lum)
    assert ratio.shape == x.shape and np.isfinite(ratio).all()


def _angle_to(img, colour):
    c = np.asarray(colour, np.float64)
    cos = (img @ c) / (np.linalg.norm(img, axis=2) * np.linalg.norm(c) + 1e-20)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def _shadow_scene(seed=0):
    """A green shadow (8 stops under a bright sky) whose colour the 'network' got 12 degrees wrong (tinted
    magenta) while the 'classical merge' has it right, with a little noise each."""
    rng = np.random.default_rng(seed)
    green, sky = np.array([0.2, 0.5, 0.3], np.float32), np.array([0.9, 0.7, 0.5], np.float32)
    truth = np.empty((64, 64, 3), np.float32)
    truth[:, :32], truth[:, 32:] = green * 4e-3, sky
    tint = np.array([1.25, 0.85, 1.25], np.float32)  # B, G, R: towards magenta
    net = truth.copy()
    net[:, :32] *= tint / float(luminance(tint[None, None])[0, 0])
    net *= 1 + 0.05 * rng.standard_normal(net.shape).astype(np.float32)
    guide = truth * (1 + 0.05 * rng.standard_normal(truth.shape).astype(np.float32))
    return np.maximum(net, 0), np.maximum(guide, 0), green


def test_guided_shadow_colour_comes_from_the_merge_where_they_agree():
    """A static shadow takes the classical merge's colour (the network's tint is gone), the bright sky keeps the
    network's own colour exactly."""
    net, guide, green = _shadow_scene()
    own, guided = display_tonemap(net), display_tonemap(net, chroma_guide=guide)
    inner = (slice(None), slice(4, 28))
    assert np.median(_angle_to(own[inner], green)) > 8.0                 # the tint is there without the guide
    assert np.median(_angle_to(guided[inner], green)) < 3.0
    np.testing.assert_allclose(guided[:, 36:], own[:, 36:], atol=1e-6)   # highlights: the network's colour


@pytest.mark.parametrize('size', [24, 3])
@pytest.mark.parametrize('ghost', ['brighter', 'other_colour'])
def test_guided_shadow_colour_never_comes_from_a_ghost(ghost, size):
    """Where the merge shows something the network does not (a moving object: 3 stops brighter, or as bright but
    red; large, or 3 pixels wide, smaller than the agreement's windows), the preview keeps the network's own
    shadow colour."""
    net, guide, green = _shadow_scene()
    y0, x0 = 32 - size // 2, 16 - size // 2
    region = (slice(y0, y0 + size), slice(x0, x0 + size))
    lum = float(luminance(guide[region]).mean())
    red = np.array([0.05, 0.1, 1.0], np.float32)
    if ghost == 'brighter':
        guide[region] *= 8.0
    else:
        guide[region] = red * lum / float(luminance(red[None, None])[0, 0])
    own, guided = display_tonemap(net), display_tonemap(net, chroma_guide=guide)
    core = (slice(y0 + size // 3, y0 + size - size // 3), slice(x0 + size // 3, x0 + size - size // 3))
    if size > 8:
        np.testing.assert_allclose(guided[core], own[core], atol=1e-6)
    # at most a trace of the ghost's colour: far closer to the network's own colour than to the ghost's
    tint = np.abs(_angle_to(guided[core], red) - _angle_to(own[core], red)).max()
    assert tint < 0.25 * float(_angle_to(own[core], red).min()), tint


def test_guided_shadow_chroma_checks_its_guide():
    from util.tonemap import guided_shadow_chroma

    net, guide, _ = _shadow_scene()
    with pytest.raises(ValueError, match='shape'):
        guided_shadow_chroma(net, luminance(net), guide[:32])
    bad = guide.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        display_tonemap(net, chroma_guide=bad)


def test_clean_shadows_keep_the_colour_detail_of_a_noise_free_shadow():
    """Thin red lines in a noise-free green shadow: the plain fit (noise margin 0) smears them into their
    surroundings; the default keeps every pixel's own colour, there being no noise to remove."""
    from util.tonemap import shadow_chroma

    x = np.empty((64, 64, 3), np.float32)
    x[:, :32] = np.array([0.2, 0.5, 0.3]) * 1e-3                    # shadow, ~10 stops under the sky
    x[:, 32:] = np.array([0.9, 0.7, 0.5])
    red = np.array([0.1, 0.2, 0.7], np.float32)
    x[::8, :32] = red * float(luminance(x[:1, :1])[0, 0]) / float(luminance(red[None, None])[0, 0])  # same luminance
    lum = luminance(x)
    own = x / lum[:, :, None]
    default, plain = shadow_chroma(x, lum), shadow_chroma(x, lum, noise_margin=0.0)
    lines = (slice(8, 56, 8), slice(4, 28))
    assert np.abs(plain[lines] - own[lines]).max() > 0.2              # the plain fit loses the lines' colour
    np.testing.assert_allclose(default[lines], own[lines], atol=1e-3)
    np.testing.assert_allclose(default[:, 4:28], own[:, 4:28], atol=1e-3)
