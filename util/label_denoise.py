"""Denoising the colour label Y_color as it is made (util.align.colour_label): training data and tools/adapt.py.

Y_color is merged from the very frames the network sees, so its noise is the inputs' noise: fine-tuning towards
it teaches the network to copy that noise (unlike Noise2Noise, the two noises are not independent). On noisy
8-bit brackets this makes Y_color worse than the network's own output, and adapting to it loses PSNR
(bench/results/adapt_domain*.json). We remove the noise where the losses look at it: in the tone-mapped domain
T(x) = log(1 + mu x) / log(1 + mu) of specs/method.md, with scikit-image's non-local means, its strength set from
the label's own noise level per brightness band, estimated so that texture does not read as noise (a low
percentile of Immerkaer's estimator over blocks), so that a clean label is left nearly as it is.

The release never does this. Since round 3's fifth session every colour label is denoised as it is made
(``util.align.colour_label``, ``AlignConfig.label_denoise``: training data and ``tools/adapt.py`` alike).
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


def _residual_and_alive(img: np.ndarray, clip_level: float) -> tuple[np.ndarray, np.ndarray]:
    """Immerkaer's residual (mean over channels) and the pixels that carry noise, both over the interior pixels:
    clipped and black pixels carry none, and counting them would pull their bands' estimates down."""
    alive = ((img < clip_level) & (img > 0)).all(axis=2)[1:-1, 1:-1]
    return np.mean(_immerkaer_residuals(img), axis=0), alive


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
    residual, alive = _residual_and_alive(img, clip_level)
    alive = alive.ravel()
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


ROBUST_BLOCK = 16  # pixels per side of the blocks whose Immerkaer estimates are ranked
ROBUST_PERCENTILE = 25  # of the block estimates in a band: textured blocks rank high, the flat ones give the noise


def robust_noise_by_level(img: np.ndarray, block: int = ROBUST_BLOCK, percentile: float = ROBUST_PERCENTILE,
                          min_blocks: int = 4, clip_level: float = 0.99) -> np.ndarray:
    """Like :func:`noise_by_level`, but blind to texture: Immerkaer's estimate is taken per ``block`` x ``block``
    block and each brightness band keeps a low ``percentile`` of its blocks' estimates. Texture only ever adds to
    the residual, so the flattest blocks of a band measure its noise and a clean, textured image reads as clean.
    Blocks with a clipped or black pixel are left out; a band with fewer than ``min_blocks`` blocks is
    interpolated from its neighbours (in brightness). When no band has that many, all take the percentile over
    every usable block, and when no block is usable, :func:`noise_by_level`'s estimates (texture counts then)."""
    if img.ndim != 3 or min(img.shape[:2]) < block + 2:
        raise ValueError(f'robust_noise_by_level: expected an H x W x C image of at least {block + 2} pixels a side, '
                         f'got {img.shape}')
    residual, alive = _residual_and_alive(img, clip_level)
    level = img.mean(axis=2)[1:-1, 1:-1]
    bh, bw = residual.shape[0] // block, residual.shape[1] // block

    def blocks(a: np.ndarray) -> np.ndarray:
        return a[:bh * block, :bw * block].reshape(bh, block, bw, block).swapaxes(1, 2).reshape(bh * bw, -1)

    usable = blocks(alive).all(axis=1)
    sigma_blocks = IMMERKAER_SCALE * blocks(residual)[usable].mean(axis=1)
    band_of_block = _band(blocks(level)[usable].mean(axis=1))
    n_bands = len(NOISE_LEVEL_EDGES) - 1
    bands = np.zeros(n_bands, np.float32)
    known = np.zeros(n_bands, bool)
    for b in range(n_bands):
        mine = sigma_blocks[band_of_block == b]
        if mine.size >= min_blocks:
            bands[b], known[b] = np.percentile(mine, percentile), True
    if not known.any():  # a small image: no band has blocks enough of its own
        if sigma_blocks.size:
            return np.full(n_bands, np.percentile(sigma_blocks, percentile), np.float32)
        return noise_by_level(img, clip_level=clip_level)  # no block without a clipped or black pixel at all
    centres = band_centres()
    bands[~known] = np.interp(centres[~known], centres[known], bands[known])
    return bands


def band_centres() -> np.ndarray:
    edges = np.asarray(NOISE_LEVEL_EDGES[:-1] + (1.0,), np.float32)
    return (edges[:-1] + edges[1:]) / 2


def _stabilising_transform(bands: np.ndarray, points: int = 1025) -> tuple[np.ndarray, np.ndarray]:
    """A map f of the 0..1 range with f' = 1 / sigma(level) (sigma interpolated between band centres): noise whose
    level depends on the brightness becomes unit noise everywhere, so one filtering strength fits all bands."""
    grid = np.linspace(0.0, 1.0, points)
    sigma = np.interp(grid, band_centres(), bands)
    sigma = np.maximum(sigma, max(float(bands.max()) * 0.05, 1e-6))  # a noiseless band must not blow the map up
    inv = 1.0 / sigma
    f = np.concatenate([[0.0], np.cumsum((inv[1:] + inv[:-1]) / 2 * np.diff(grid))])
    return grid, f


def _forward(x: np.ndarray, grid: np.ndarray, f: np.ndarray) -> np.ndarray:
    slope = (f[-1] - f[-2]) / (grid[-1] - grid[-2])  # above 1 (HDR values over the range): the last band's slope
    return np.where(x <= 1.0, np.interp(x, grid, f), f[-1] + (x - 1.0) * slope)


def _inverse(y: np.ndarray, grid: np.ndarray, f: np.ndarray) -> np.ndarray:
    slope = (f[-1] - f[-2]) / (grid[-1] - grid[-2])
    return np.where(y <= f[-1], np.interp(y, f, grid), 1.0 + (y - f[-1]) / slope)


DENOISE_METHODS = ('robust', 'immerkaer')


def denoise_colour_label(hdr: np.ndarray, method: str = 'robust', strength: float = H_FACTOR,
                         percentile: float = ROBUST_PERCENTILE) -> tuple[np.ndarray, float]:
    """Denoise a linear HDR label in the tone-mapped domain; returns (denoised linear label, estimated sigma in
    the tone-mapped domain, 0..1 scale; for ``robust``, the mean over the label's pixels).

    ``immerkaer``: one strength for the whole label, from Immerkaer's estimate (texture reads as noise, so clean
    textured labels get smoothed). ``robust``: the noise per brightness band from :func:`robust_noise_by_level`,
    a variance-stabilising map so that each band is filtered at its own noise level, and a clean label is left
    nearly as it is whatever its texture (bands are judged on the channel mean, the map is applied to each channel's
    own value: a strongly coloured pixel is filtered at its channel's level). Labels under ``ROBUST_BLOCK + 2``
    pixels a side take :func:`noise_by_level`'s per-band means instead. ``strength``: the NL-means filtering
    parameter h per unit of noise; ``percentile``: the robust estimate's rank of block estimates."""
    from skimage.restoration import denoise_nl_means

    if method not in DENOISE_METHODS:
        raise ValueError(f'denoise_colour_label: method must be one of {DENOISE_METHODS}, got {method!r}')
    if not np.isfinite(hdr).all():
        raise ValueError('denoise_colour_label: the label has NaN/Inf values')
    tm = to_mu(hdr)
    nlm = dict(fast_mode=True, patch_size=5, patch_distance=6, channel_axis=-1)
    if method == 'immerkaer':
        sigma = estimate_noise_sigma(tm)
        if sigma <= 0:
            return np.maximum(hdr, 0).astype(np.float32), 0.0
        return from_mu(denoise_nl_means(tm, h=strength * sigma, sigma=sigma, **nlm)), sigma
    if min(tm.shape[:2]) >= ROBUST_BLOCK + 2:
        bands = robust_noise_by_level(tm, percentile=percentile)
    else:  # too small for one block: the per-band mean (texture counts then)
        bands = noise_by_level(tm)
    if bands.max() <= 0:
        return np.maximum(hdr, 0).astype(np.float32), 0.0
    grid, f = _stabilising_transform(bands)
    clean = _inverse(denoise_nl_means(_forward(tm.astype(np.float64), grid, f), h=strength, sigma=1.0, **nlm), grid, f)
    mean_sigma = float(sigma_at_level(tm.mean(axis=2), bands).mean())
    return from_mu(clean.astype(np.float32)), mean_sigma
