"""Denoising the colour label Y_color for self-supervised adaptation (tools/adapt.py).

Y_color is merged from the very frames the network sees, so its noise is the inputs' noise: fine-tuning towards
it teaches the network to copy that noise (unlike Noise2Noise, the two noises are not independent). On noisy
8-bit brackets this makes Y_color worse than the network's own output, and adapting to it loses PSNR
(bench/results/adapt_domain*.json). We remove the noise where the losses look at it: in the tone-mapped domain
T(x) = log(1 + mu x) / log(1 + mu) of specs/method.md, with scikit-image's non-local means, its strength set from
the label's own noise level (Immerkaer's estimator), so that a clean label is left nearly as it is.

The release's training never does this: only the adaptation tool uses it (``--denoise_labels``).
"""
from __future__ import annotations

import math

import numpy as np

from util.tonemap import MU, mu_law

# Immerkaer (1996): the Laplacian-difference kernel is blind to planes and ramps, so its response is mostly noise.
_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
H_FACTOR = 1.2  # NL-means filtering strength per unit of estimated sigma (measured: 1.2 beat 0.8 on noisy labels)


def to_mu(hdr: np.ndarray) -> np.ndarray:
    return mu_law(np.maximum(hdr, 0)).astype(np.float32)


def from_mu(tm: np.ndarray) -> np.ndarray:
    """The inverse of :func:`util.tonemap.mu_law`."""
    return (np.expm1(np.maximum(tm, 0) * math.log1p(MU)) / MU).astype(np.float32)


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Standard deviation of white Gaussian noise in ``img`` (H x W x C), mean over channels (Immerkaer)."""
    if img.ndim != 3 or min(img.shape[:2]) < 3:
        raise ValueError(f'estimate_noise_sigma: expected an H x W x C image of at least 3 x 3, got {img.shape}')
    per_channel = [np.mean(r) for r in _immerkaer_residuals(img)]
    return float(IMMERKAER_SCALE * np.mean(per_channel))


IMMERKAER_SCALE = math.sqrt(math.pi / 2) / 6  # mean |residual| -> standard deviation


def _immerkaer_residuals(img: np.ndarray) -> list[np.ndarray]:
    """Per channel, |Immerkaer's Laplacian difference| over the interior pixels (the border rows are dropped)."""
    import cv2

    return [np.abs(cv2.filter2D(img[..., c].astype(np.float32), -1, _KERNEL)[1:-1, 1:-1]) for c in range(img.shape[2])]


NOISE_LEVEL_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0001)


def _band(level: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(level, NOISE_LEVEL_EDGES) - 1, 0, len(NOISE_LEVEL_EDGES) - 2)


def noise_by_level(img: np.ndarray, min_pixels: int = 256, clip_level: float = 0.99) -> np.ndarray:
    """Noise standard deviation of ``img`` (H x W x C in [0, 1]) per brightness band (``NOISE_LEVEL_EDGES`` on the
    channel mean): Immerkaer's estimate taken separately over each band's pixels, so that shot noise, stronger in
    bright pixels, is not judged by the dark ones' level. Pixels clipped (a channel at ``clip_level`` or above) or
    black in a channel are left out. A band with fewer than ``min_pixels`` pixels takes the whole image's estimate
    (0 when no pixel is left)."""
    if img.ndim != 3 or min(img.shape[:2]) < 3:
        raise ValueError(f'noise_by_level: expected an H x W x C image of at least 3 x 3, got {img.shape}')
    residual = np.mean(_immerkaer_residuals(img), axis=0)
    # clipped and black pixels carry no noise: counting them would pull their bands' estimates down
    alive = ((img < clip_level) & (img > 0)).all(axis=2)[1:-1, 1:-1].ravel()
    inner = _band(img.mean(axis=2))[1:-1, 1:-1].ravel()[alive]
    residual = residual.ravel()[alive]
    if residual.size == 0:
        return np.zeros(len(NOISE_LEVEL_EDGES) - 1, np.float32)
    n_bands = len(NOISE_LEVEL_EDGES) - 1
    counts = np.bincount(inner, minlength=n_bands)
    sums = np.bincount(inner, weights=residual, minlength=n_bands)
    sigma = np.full(n_bands, IMMERKAER_SCALE * float(residual.mean()), np.float32)
    enough = counts >= min_pixels
    sigma[enough] = IMMERKAER_SCALE * sums[enough] / counts[enough]
    return sigma


def sigma_at_level(level: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Per-pixel noise from :func:`noise_by_level`'s bands, looked up at ``level`` (H x W, channel mean)."""
    return bands[_band(level)]


def denoise_colour_label(hdr: np.ndarray) -> tuple[np.ndarray, float]:
    """Denoise a linear HDR label in the tone-mapped domain; returns (denoised linear label, estimated sigma in
    the tone-mapped domain, 0..1 scale)."""
    from skimage.restoration import denoise_nl_means

    if not np.isfinite(hdr).all():
        raise ValueError('denoise_colour_label: the label has NaN/Inf values')
    tm = to_mu(hdr)
    sigma = estimate_noise_sigma(tm)
    if sigma <= 0:
        return hdr.astype(np.float32), 0.0
    clean = denoise_nl_means(tm, h=H_FACTOR * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6,
                             channel_axis=-1)
    return from_mu(clean), sigma
