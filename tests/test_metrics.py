"""Tests for util/metrics.py (CPU, tiny, seeded)."""
import math

import numpy as np
import pytest

from util.metrics import (PU21_L_MAX, PU21_L_MIN, gaussian_window, psnr, psnr_l, psnr_mu, pu21_encode,
                          pu21_psnr, pu21_ssim, ssim, ssim_l, ssim_mu)
from util.tonemap import mu_law


def _pair(h=32, w=40, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    a = rng.random((h, w, 3), dtype=np.float32)
    b = np.clip(a + noise * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    return a, b


@pytest.mark.parametrize('d', [0.1, 0.01, 0.003])
def test_psnr_constant_offset(d):
    a = np.full((8, 9, 3), 0.25, np.float32)
    b = a + np.float32(d)
    assert psnr(a, b) == pytest.approx(-20 * math.log10(d), abs=1e-3)
    assert psnr_l(a, b) == psnr(a, b)
    assert isinstance(psnr(a, b), float)


def test_psnr_data_range_and_hand_value():
    a = np.zeros((2, 2, 3), np.float32)
    b = a.copy()
    b[0, 0, 0] = 1.0  # MSE = 1/12
    assert psnr(a, b) == pytest.approx(10 * math.log10(12))
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(10 * math.log10(12))


def test_identical_inputs():
    a, _ = _pair()
    assert psnr(a, a) == math.inf
    assert psnr_mu(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim_mu(a, a) == pytest.approx(1.0, abs=1e-12)
    assert pu21_psnr(a, a) == math.inf
    assert pu21_ssim(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize('fn', [psnr, psnr_l, psnr_mu, ssim, ssim_l, ssim_mu, pu21_psnr, pu21_ssim])
def test_mismatched_shapes_raise(fn):
    a = np.zeros((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match='shapes differ'):
        fn(a, np.zeros((16, 17, 3), np.float32))


def test_ssim_too_small_raises():
    a = np.zeros((10, 20, 3), np.float32)
    with pytest.raises(ValueError, match='smaller than'):
        ssim(a, a)


def test_psnr_mu_is_psnr_of_mu_law():
    a, b = _pair(seed=1)
    assert psnr_mu(a, b) == pytest.approx(psnr(mu_law(a), mu_law(b)), abs=1e-12)
    # The mu-law expands dark differences: an offset of 1e-3 near 0 costs far more in PSNR-mu.
    dark = np.full((8, 8, 3), 0.001, np.float32)
    assert psnr_mu(dark, dark + np.float32(1e-3)) < psnr_l(dark, dark + np.float32(1e-3)) - 20


def test_gaussian_window():
    g = gaussian_window()
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0)
    assert g[5] == g.max() and g[0] == pytest.approx(g[10])
    assert g[4] / g[5] == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)))


def test_ssim_matches_scikit_image():
    # scikit-image with gaussian weights (sigma 1.5, truncate 3.5 -> radius 5, 11 taps) filters with
    # reflect padding, then averages the SSIM map over the image cropped by (11-1)/2 = 5 pixels;
    # every pixel kept there has its whole window inside the image, so the padding never enters
    # and it equals our 'valid' filtering exactly (up to float rounding).
    structural_similarity = pytest.importorskip('skimage.metrics').structural_similarity
    a, b = _pair(seed=2, noise=0.1)
    a8 = np.clip(a.astype(np.float64) * 255, 0, 255)
    b8 = np.clip(b.astype(np.float64) * 255, 0, 255)
    ref = structural_similarity(a8, b8, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255, channel_axis=2)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-8)
    assert ssim_l(a, b) == ssim(a, b)
    mu_ref = structural_similarity(np.clip(mu_law(a).astype(np.float64) * 255, 0, 255),
                                   np.clip(mu_law(b).astype(np.float64) * 255, 0, 255),
                                   gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                   data_range=255, channel_axis=2)
    assert ssim_mu(a, b) == pytest.approx(mu_ref, abs=1e-8)


def test_ssim_clips_to_range_and_is_channel_mean():
    a, b = _pair(seed=3)
    # Values above 1 are clipped to 255 before SSIM.
    assert ssim(a * 3, b) == pytest.approx(ssim(np.clip(a * 3, 0, 1), b), abs=1e-12)
    per_channel = [ssim(np.repeat(a[:, :, c:c + 1], 3, 2), np.repeat(b[:, :, c:c + 1], 3, 2)) for c in range(3)]
    assert ssim(a, b) == pytest.approx(np.mean(per_channel), abs=1e-12)
    assert 0 < ssim(a, b) < 1


def test_ssim_single_window_hand_value():
    # An 11 x 11 image has exactly one valid window: SSIM is the Gaussian-weighted formula itself.
    rng = np.random.default_rng(4)
    a = rng.random((11, 11), dtype=np.float32)
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    w = np.outer(gaussian_window(), gaussian_window())
    x, y = a.astype(np.float64) * 255, b.astype(np.float64) * 255
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2, (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)


def test_ssim_border_only_through_valid_windows():
    # In a 21 x 21 image the valid window centres are rows/columns 5..15: pixel (0, 0) is seen by
    # one window of 121, the centre pixel by all of them.
    a = np.random.default_rng(5).random((21, 21, 3), dtype=np.float32)
    corner, centre = a.copy(), a.copy()
    corner[0, 0] = 1 - corner[0, 0]
    centre[10, 10] = 1 - centre[10, 10]
    assert ssim(a, centre) < ssim(a, corner) < 1


def test_pu21_encoding_values():
    # PU21 was fitted so that 100 cd/m^2 maps to about 256 (like 8-bit sRGB white).
    v100 = pu21_encode(np.array([0.1]), peak=1000.0)[0]
    assert v100 == pytest.approx(256.38, abs=0.05)
    v = pu21_encode(np.array([0.0, PU21_L_MIN / 1000, 1.0, 100.0]), peak=1000.0)
    assert v[0] == v[1] and v[0] == pytest.approx(0.0, abs=1e-6)  # clamped to L_min
    assert v[3] == pytest.approx(pu21_encode(np.array([PU21_L_MAX / 1000]))[0])  # clamped to L_max
    ramp = pu21_encode(np.logspace(-5, 0, 50))
    assert (np.diff(ramp) >= 0).all() and np.diff(ramp)[-1] > 0
    with pytest.raises(ValueError, match='peak'):
        pu21_encode(np.zeros(3), peak=0.0)


def test_pu21_metrics_behave():
    a, b = _pair(seed=5, noise=0.02)
    _, c = _pair(seed=5, noise=0.1)
    assert pu21_psnr(a, b) > pu21_psnr(a, c)
    assert 0 < pu21_ssim(a, c) < pu21_ssim(a, b) < 1
    assert pu21_psnr(a, b) != pu21_psnr(a, b, peak=100.0)


def test_cvvdp_optional():
    from util.metrics import cvvdp_score

    try:
        import pycvvdp  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='pip install cvvdp'):
            cvvdp_score(*_pair())
        pytest.skip('cvvdp not installed (optional); checked the ImportError message')
    a, b = _pair(64, 64, seed=6, noise=0.05)
    q_same = cvvdp_score(a, a, ppd=31.5)
    q_diff = cvvdp_score(a, b, ppd=31.5)
    assert q_same == pytest.approx(10.0, abs=1e-3)
    assert q_diff < q_same


def test_lpips_optional(tmp_path, monkeypatch):
    from util.metrics import _lpips_backbone_file, lpips_score

    try:
        import lpips  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='pip install lpips'):
            lpips_score(*_pair())
        pytest.skip('lpips not installed (optional); checked the ImportError message')
    import torch
    import torchvision

    # An empty torch hub: the backbone is missing and we must say so instead of downloading.
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    path, _ = _lpips_backbone_file('alex')
    assert str(path).startswith(str(tmp_path))
    with pytest.raises(RuntimeError, match='not available locally'):
        lpips_score(*_pair())
    # A cached backbone file (random weights here) enables the metric.
    torch.manual_seed(0)
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    a, b = _pair(64, 64, seed=7)
    assert lpips_score(a, a) == pytest.approx(0.0, abs=1e-6)
    assert lpips_score(a, b) > 0
