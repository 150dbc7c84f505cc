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


WEAK_TEXTURE_PATCH = 7         # pixels per side of the patches whose covariance is taken
WEAK_TEXTURE_CONFIDENCE = 0.99  # share of pure-noise patches the texture threshold keeps
WEAK_TEXTURE_ITERATIONS = 5
WEAK_TEXTURE_MAX_PATCHES = 1 << 16  # per band and round: an evenly spaced subsample beyond (bounded memory)


def _box_sums(a: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Sums of ``a`` over every rows x cols window, indexed by the window's top-left corner (float64)."""
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    s[1:, 1:] = np.cumsum(np.cumsum(a, axis=0, dtype=np.float64), axis=1)
    return s[rows:, cols:] - s[:-rows, cols:] - s[rows:, :-cols] + s[:-rows, :-cols]


def weak_texture_noise_by_level(img: np.ndarray, patch: int = WEAK_TEXTURE_PATCH,
                                confidence: float = WEAK_TEXTURE_CONFIDENCE,
                                iterations: int = WEAK_TEXTURE_ITERATIONS,
                                max_patches: int = WEAK_TEXTURE_MAX_PATCHES, clip_level: float = 0.99,
                                with_known: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Noise standard deviation per brightness band (as :func:`robust_noise_by_level`) from weak-texture patches, after
    Liu, Tanaka & Okutomi (2013): the smallest eigenvalue of the covariance of ``patch`` x ``patch`` patches is the
    noise variance, since natural texture spreads over few directions of patch space; patches are kept only where
    their gradient energy is within what noise of the current estimate gives (the ``confidence`` quantile of the gamma
    approximation of its distribution: about 98 % of pure-noise patches at 0.99), and the estimate is taken again
    from those, ``iterations`` times. Immerkaer's kernel looks
    along one fixed direction only, so on a nearly noise-free, textured frame every block reads as noise (round 3,
    fifteenth session: 2 to 28 times the true noise on such frames; this estimate 1 to 11 times).

    The channels' patches are pooled (one sigma per band, as the channel-mean estimates elsewhere); windows with a
    clipped or black pixel are left out; the smallest eigenvalue is corrected for its sample-size bias
    ((1 - sqrt((d - 1) / n))^2, Marchenko-Pastur). A band with fewer than 2 d patches is interpolated from its
    neighbours; with none anywhere (a small or mostly clipped image) the result is :func:`robust_noise_by_level`'s,
    and for an image under its block size, :func:`noise_by_level`'s. ``with_known``: also which bands were estimated
    from their own patches (bool per band; all False for those fallbacks)."""
    from scipy.special import gammaincinv

    if img.ndim != 3 or min(img.shape[:2]) < patch:
        raise ValueError(f'weak_texture_noise_by_level: expected an H x W x C image of at least {patch} pixels a side, '
                         f'got {img.shape}')
    img = np.asarray(img, np.float32)
    d = patch * patch
    if max_patches < 2 * d:
        raise ValueError(f'weak_texture_noise_by_level: max_patches {max_patches} is under 2 x {d} patches')
    n_bands = len(NOISE_LEVEL_EDGES) - 1
    alive = ((img < clip_level) & (img > 0)).all(axis=2)  # NaN compares False: never alive
    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)  # and a NaN must not spread through the box sums
    whole = _box_sums(alive.astype(np.float32), patch, patch) == d
    band = _band(_box_sums(img.mean(axis=2), patch, patch) / d)
    # per channel, the patch's squared differences across and down ([-1, 1] inside the patch)
    energy = [_box_sums(np.diff(img[..., c], axis=1) ** 2, patch, patch - 1)
              + _box_sums(np.diff(img[..., c], axis=0) ** 2, patch - 1, patch) for c in range(img.shape[2])]
    # pure noise of sigma 1: energy ~ Gamma(d / 2, scale 2 tr(Dh'Dh + Dv'Dv) / d), tr = 2 * 2 p (p - 1)
    threshold_unit = gammaincinv(d / 2.0, confidence) * 2.0 * (4.0 * patch * (patch - 1)) / d
    windows = [np.lib.stride_tricks.sliding_window_view(img[..., c], (patch, patch)) for c in range(img.shape[2])]

    def sigma_of(rows: np.ndarray, cols: np.ndarray, chans: np.ndarray) -> float:
        if rows.size > max_patches:  # evenly spaced: deterministic, and every part of the frame keeps its share
            pick = np.linspace(0, rows.size - 1, max_patches).astype(np.int64)
            rows, cols, chans = rows[pick], cols[pick], chans[pick]
        p = np.empty((rows.size, d), np.float64)
        for c in np.unique(chans):
            mine = chans == c
            p[mine] = windows[c][rows[mine], cols[mine]].reshape(-1, d)
        p -= p.mean(axis=1, keepdims=True)  # each patch's mean is the scene's brightness, not noise
        smallest = np.linalg.eigvalsh(p.T @ p / len(p))[1]  # [0] is the patch mean's direction, removed: ~0
        return math.sqrt(max(smallest, 0.0) / (1.0 - math.sqrt((d - 1) / len(p))) ** 2)

    bands, known = np.zeros(n_bands, np.float32), np.zeros(n_bands, bool)
    for b in range(n_bands):
        r, c = np.nonzero(whole & (band == b))
        if r.size * img.shape[2] < 2 * d:
            continue
        # one sample per window and channel, channel by channel
        texture = np.concatenate([e[r, c] for e in energy])
        channels = img.shape[2]
        rows, cols, chans = np.tile(r, channels), np.tile(c, channels), np.repeat(np.arange(channels), r.size)
        sigma = sigma_of(rows, cols, chans)
        for _ in range(iterations):
            weak = texture < threshold_unit * sigma * sigma
            if weak.sum() < 2 * d:
                break
            new = sigma_of(rows[weak], cols[weak], chans[weak])
            converged = abs(new - sigma) <= 1e-3 * sigma
            sigma = new
            if converged:
                break
        bands[b], known[b] = sigma, True
    if not known.any():
        if min(img.shape[:2]) >= ROBUST_BLOCK + 2:
            bands = robust_noise_by_level(img, clip_level=clip_level)
        else:
            bands = noise_by_level(img, clip_level=clip_level)
        return (bands, known) if with_known else bands
    centres = band_centres()
    bands[~known] = np.interp(centres[~known], centres[known], bands[known])
    return (bands, known) if with_known else bands


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


DENOISE_METHODS = ('robust', 'immerkaer', 'weak_texture')


def denoise_colour_label(hdr: np.ndarray, method: str = 'robust', strength: float = H_FACTOR,
                         percentile: float = ROBUST_PERCENTILE) -> tuple[np.ndarray, float]:
    """Denoise a linear HDR label in the tone-mapped domain; returns (denoised linear label, estimated sigma in
    the tone-mapped domain, 0..1 scale; for ``robust``, the mean over the label's pixels).

    ``immerkaer``: one strength for the whole label, from Immerkaer's estimate (texture reads as noise, so clean
    textured labels get smoothed). ``robust``: the noise per brightness band from :func:`robust_noise_by_level`,
    a variance-stabilising map so that each band is filtered at its own noise level, and a clean label is left
    nearly as it is whatever its texture (bands are judged on the channel mean, the map is applied to each channel's
    own value: a strongly coloured pixel is filtered at its channel's level). ``weak_texture``: the same, the noise
    per band from :func:`weak_texture_noise_by_level`, which reads less texture as noise (``percentile`` unused).
    Labels under ``ROBUST_BLOCK + 2`` pixels a side take :func:`noise_by_level`'s per-band means instead.
    ``strength``: the NL-means filtering parameter h per unit of noise; ``percentile``: the robust estimate's rank of
    block estimates."""
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
    if method == 'weak_texture' and min(tm.shape[:2]) >= ROBUST_BLOCK + 2:
        bands = weak_texture_noise_by_level(tm)
    elif min(tm.shape[:2]) >= ROBUST_BLOCK + 2:
        bands = robust_noise_by_level(tm, percentile=percentile)
    else:  # too small for one block: the per-band mean (texture counts then)
        bands = noise_by_level(tm)
    if bands.max() <= 0:
        return np.maximum(hdr, 0).astype(np.float32), 0.0
    grid, f = _stabilising_transform(bands)
    clean = _inverse(denoise_nl_means(_forward(tm.astype(np.float64), grid, f), h=strength, sigma=1.0, **nlm), grid, f)
    mean_sigma = float(sigma_at_level(tm.mean(axis=2), bands).mean())
    return from_mu(clean.astype(np.float32)), mean_sigma
