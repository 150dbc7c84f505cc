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


def _textured_scene(h=128, w=160, seed=5):
    """A clean label over a brightness ramp (left to right), with fine texture (blurred pixel noise, fixed, as
    foliage or gravel) in every other band of 32 rows: each brightness has textured and flat parts, as photos do."""
    import cv2

    rng = np.random.default_rng(seed)
    tex = cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), 0.6)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    textured = ((y // 32) % 2 == 0)[..., None]
    tm = to_mu((0.03 + 0.5 * x / w)[..., None].repeat(3, axis=2)) + 0.1 * tex * textured
    return from_mu(np.clip(tm, 0.02, 0.98).astype(np.float32))


def test_robust_noise_estimate_is_blind_to_texture():
    """Immerkaer's estimate reads fine texture as noise; the block-percentile estimate does not, and still finds
    the noise when there is some (texture or not)."""
    from util.label_denoise import robust_noise_by_level

    clean = to_mu(_textured_scene())
    assert estimate_noise_sigma(clean) > 0.008  # texture that Immerkaer takes for noise of about 0.01
    assert robust_noise_by_level(clean).max() < 0.4 * estimate_noise_sigma(clean)
    rng = np.random.default_rng(6)
    noisy = clean + rng.normal(0, 0.03, clean.shape).astype(np.float32)
    bands = robust_noise_by_level(noisy)
    share = np.bincount(np.clip(np.digitize(noisy.mean(axis=2), NOISE_LEVEL_EDGES) - 1, 0, 7).ravel(), minlength=8)
    populated = np.flatnonzero(share > 0.1 * noisy[..., 0].size)  # the bands with blocks of their own
    assert len(populated) >= 2
    np.testing.assert_allclose(bands[populated], 0.03, rtol=0.25)
    with pytest.raises(ValueError, match='at least 18 pixels'):
        robust_noise_by_level(noisy[:10])


def test_weak_texture_estimate_reads_less_texture_than_the_block_percentile_and_still_finds_noise():
    """On a clean, textured frame texture covers every block, and the block percentile reads it as noise; the smallest
    eigenvalue of weak-texture patches' covariance reads far less of it. On noise (flat, ramp or textured parts)
    both find it; the result is deterministic; tiny or fully clipped images fall back to the other estimates."""
    import cv2

    from util.label_denoise import robust_noise_by_level, weak_texture_noise_by_level

    rng = np.random.default_rng(11)
    tex = cv2.GaussianBlur(rng.standard_normal((160, 192)).astype(np.float32), (0, 0), 1.0)[..., None].repeat(3, 2)
    ramp = np.linspace(0.1, 0.8, 192, dtype=np.float32)[None, :, None]
    clean = np.clip(ramp + 0.2 * tex, 0.01, 0.98).astype(np.float32)  # fine texture everywhere
    noise = 2e-3  # what a nearly noise-free 8-bit frame reads, 0.5 codes
    noisy_clean = np.clip(clean + rng.normal(0, noise, clean.shape), 0.001, 0.98).astype(np.float32)
    weak, robust = weak_texture_noise_by_level(noisy_clean), robust_noise_by_level(noisy_clean)
    assert np.median(robust) > 2 * noise  # the block percentile takes the texture for noise
    assert np.median(weak) < 1.4 * noise and np.median(weak) < 0.6 * np.median(robust)
    np.testing.assert_array_equal(weak, weak_texture_noise_by_level(noisy_clean))
    for sigma in (0.005, 0.03):  # noise that dominates: both estimates find it
        noisy = np.clip(ramp + 0.01 * tex + rng.normal(0, sigma, clean.shape), 0.001, 0.98).astype(np.float32)
        populated = [b for b in range(8) if ((noisy.mean(axis=2) >= NOISE_LEVEL_EDGES[b])
                                             & (noisy.mean(axis=2) < NOISE_LEVEL_EDGES[b + 1])).mean() > 0.1]
        np.testing.assert_allclose(weak_texture_noise_by_level(noisy)[populated], sigma, rtol=0.25)
    # nothing usable (clipped but for a few noisy pixels): the block estimate's answer, as it is
    mostly_clipped = np.ones((40, 40, 3), np.float32)
    mostly_clipped[::9, ::9] = rng.uniform(0.2, 0.8, mostly_clipped[::9, ::9].shape)
    fallback = robust_noise_by_level(mostly_clipped)
    assert fallback.max() > 0
    np.testing.assert_array_equal(weak_texture_noise_by_level(mostly_clipped), fallback)
    bands, known = weak_texture_noise_by_level(mostly_clipped, with_known=True)
    np.testing.assert_array_equal(bands, fallback)
    assert not known.any()
    bands, known = weak_texture_noise_by_level(noisy_clean, with_known=True)  # the ramp spans levels 0.1 to 0.8 only
    np.testing.assert_array_equal(bands, weak)
    assert not known[0] and known[2:6].all() and bands[0] == bands[known][0]  # the darkest: its neighbour's copy
    spoilt = noisy_clean.copy()
    spoilt[5, 5] = np.nan  # one NaN pixel stays local: the other windows read as before
    np.testing.assert_allclose(weak_texture_noise_by_level(spoilt), weak, rtol=0.05)
    with pytest.raises(ValueError, match='at least 7 pixels'):
        weak_texture_noise_by_level(noisy_clean[:5])


def test_robust_denoising_keeps_texture_and_removes_level_dependent_noise():
    """The default ('robust') leaves a clean textured label nearly as it is where the single Immerkaer strength
    smooths it; on noise that grows with brightness it filters each band at its own level."""
    tex = _textured_scene()
    kept, _ = denoise_colour_label(tex)
    smoothed, _ = denoise_colour_label(tex, method='immerkaer')
    assert psnr_mu(kept, tex) > psnr_mu(smoothed, tex) + 3
    rng = np.random.default_rng(7)
    clean = _smooth_scene()
    tm = to_mu(clean)
    noisy = from_mu(tm + rng.normal(0, 1, tm.shape).astype(np.float32) * (0.005 + 0.04 * tm))
    denoised, sigma = denoise_colour_label(noisy)
    assert psnr_mu(denoised, clean) > psnr_mu(noisy, clean) + 5
    # the weak-texture noise per band: the clean textured label kept, the noisy one denoised as well
    assert psnr_mu(denoise_colour_label(tex, method='weak_texture')[0], tex) > psnr_mu(smoothed, tex) + 3
    assert psnr_mu(denoise_colour_label(noisy, method='weak_texture')[0], clean) > psnr_mu(noisy, clean) + 5
    with pytest.raises(ValueError, match='method must be one of'):
        denoise_colour_label(clean, method='bilateral')


def test_labels_too_small_for_a_block_are_denoised_all_the_same():
    rng = np.random.default_rng(8)
    clean = _smooth_scene(12, 40)
    noisy = from_mu(to_mu(clean) + rng.normal(0, 0.02, clean.shape).astype(np.float32))
    denoised, sigma = denoise_colour_label(noisy)
    assert denoised.shape == noisy.shape and sigma > 0 and np.isfinite(denoised).all()
