"""util/label_denoise.py: the colour label's noise is estimated and removed in the tone-mapped domain."""
import numpy as np
import pytest

from util.label_denoise import (NOISE_LEVEL_EDGES, denoise_colour_label, estimate_noise_sigma, from_mu, noise_by_level,
                                sigma_at_level, to_mu)
from util.metrics import psnr_mu


def _smooth_scene(h=96, w=128):
    """A smooth linear HDR image (ramps and a soft blob), 0.002 .. 0.9."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.002 + 0.4 * (x / w) ** 2 + 0.3 * np.exp(-((x - w / 2) ** 2 + (y - h / 2) ** 2) / (2 * (h / 5) ** 2))
    return np.stack([base, 0.8 * base, 0.6 * base + 0.05 * (y / h)], axis=-1).astype(np.float32)


def test_mu_round_trip():
    hdr = _smooth_scene()
    np.testing.assert_allclose(from_mu(to_mu(hdr)), hdr, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('sigma', [0.01, 0.03])
def test_noise_estimate_recovers_known_sigma(sigma):
    rng = np.random.default_rng(0)
    clean = to_mu(_smooth_scene())
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    assert estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.15)
    assert estimate_noise_sigma(clean) < 0.2 * sigma  # smooth content is not mistaken for noise


def test_denoising_brings_a_noisy_label_closer_and_leaves_a_clean_one():
    rng = np.random.default_rng(1)
    clean = _smooth_scene()
    noisy = from_mu(to_mu(clean) + rng.normal(0, 0.02, clean.shape).astype(np.float32))
    denoised, sigma = denoise_colour_label(noisy)
    assert sigma == pytest.approx(0.02, rel=0.2)
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32 and (denoised >= 0).all()
    assert psnr_mu(denoised, clean) > psnr_mu(noisy, clean) + 6
    untouched, _ = denoise_colour_label(clean)
    assert psnr_mu(untouched, clean) > 50


def test_non_finite_label_is_refused():
    bad = _smooth_scene()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        denoise_colour_label(bad)


def test_noise_by_level_follows_shot_noise():
    # a ramp of brightness with noise growing as its square root (shot noise): each band's estimate follows the
    # noise of its own pixels, where the single whole-image estimate is too high for the dark ones
    rng = np.random.default_rng(3)
    level = np.repeat(np.linspace(0.02, 0.95, 400, dtype=np.float32)[None, :], 300, axis=0)
    true_sigma = 0.03 * np.sqrt(level)
    img = (level + rng.normal(0, 1, level.shape) * true_sigma)[:, :, None].repeat(3, axis=2).astype(np.float32)
    bands = noise_by_level(img)
    per_pixel = sigma_at_level(level, bands)
    centres = [(a + b) / 2 for a, b in zip(NOISE_LEVEL_EDGES[:-1], NOISE_LEVEL_EDGES[1:])]
    assert np.all(np.diff(bands) > 0)  # brighter bands, more noise
    np.testing.assert_allclose(bands[1:-1], 0.03 * np.sqrt(centres[1:-1]), rtol=0.2)
    np.testing.assert_allclose(per_pixel, true_sigma, rtol=0.35)
    assert estimate_noise_sigma(img) > 1.5 * bands[1]
    with pytest.raises(ValueError, match='at least 3 x 3'):
        noise_by_level(img[:2])
