"""Tone mapping: the mu-law of the losses and PSNR-mu, and two display operators for viewing.

All NumPy functions take linear radiance as float32 ``H x W x 3`` **BGR** arrays (any
non-negative scale; the SelfHDR outputs and labels are in [0, 1]) and return float32 images in
[0, 1]. ``exposure`` is in stops (the radiance is multiplied by ``2 ** exposure`` first) and
``gamma`` is a display gamma (the output is raised to ``1 / gamma``).

* :func:`mu_law` / :func:`mu_law_torch`: ``T(x) = log(1 + 5000 x) / log(1 + 5000)``
  (method.md). The torch twin is used by the losses and must stay exactly this expression.
* :func:`reinhard`: Reinhard et al. 2002, global photographic operator with key and white point.
* :func:`display_tonemap`: an equivalent of MATLAB's ``tonemap`` (log luminance, contrast-limited
  adaptive histogram equalisation, saturation control), then gamma; by default with clean shadows
  (:func:`shadow_chroma`: the colour of dark pixels from their dark neighbourhood), and given the classical
  merge of the same frames, with its shadow colour where the two agree (:func:`guided_shadow_chroma`).
* :func:`write_png`: 8-bit BGR PNG through ``cv2.imwrite``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ['MU', 'mu_law', 'mu_law_torch', 'inverse_mu_law_torch', 'luminance', 'reinhard', 'display_tonemap', 'shadow_chroma',
           'guided_shadow_chroma',
           'tonemap', 'OPERATORS', 'DEFAULT_GAMMA', 'to_uint8', 'write_png']

MU = 5000.0
_LOG_1P_MU = math.log(1.0 + MU)

# Rec. 601 luma weights (MATLAB rgb2gray's exact values, summing to 1), in B, G, R order.
_LUMA_BGR = np.array([0.114020904255103, 0.587043074451121, 0.298936021293775], dtype=np.float32)


def mu_law(x: np.ndarray) -> np.ndarray:
    """NumPy mu-law ``log(1 + 5000 x) / log(5001)``; keeps float32 (no clipping: x in [0, 1] -> [0, 1])."""
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    return np.log(1 + MU * x) / _LOG_1P_MU


def mu_law_torch(x):
    """Torch twin of :func:`mu_law`, differentiable; the losses rely on this exact expression."""
    import torch  # lazy: the NumPy side of this module must not need torch

    return torch.log(1 + MU * x) / _LOG_1P_MU


def inverse_mu_law_torch(m):
    """The inverse of :func:`mu_law_torch`: ``(5001**m - 1) / 5000``."""
    import torch

    return torch.expm1(m * _LOG_1P_MU) / MU


# Radiance above this is taken as this: float32 luminance sums and scalings of values near its 3.4e38 ceiling
# overflow to Inf (a 3e38 pixel hung the display operator's noise bands and came out black from Reinhard's). Far
# above any exposure a display shows, so no tone-mapped pixel changes.
MAX_RADIANCE = 1e18


def _check_image(x: np.ndarray, name: str = 'image') -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f'{name}: expected an H x W x 3 BGR array, got shape {x.shape}')
    if x.size == 0:
        raise ValueError(f'{name}: empty image (shape {x.shape})')
    if not np.isfinite(x).all():
        raise ValueError(f'{name}: contains NaN or Inf')
    x = x.astype(np.float32, copy=False)
    return np.minimum(x, np.float32(MAX_RADIANCE)) if (x > MAX_RADIANCE).any() else x


def _expose(x: np.ndarray, exposure: float) -> np.ndarray:
    # Negative radiance is noise (or a network artefact): it has no luminance, clip it. Nothing to do: no copy (a
    # camera-sized preview holds a dozen images of this size already)
    if exposure == 0 and x.dtype == np.float32 and not (x < 0).any():
        return x
    return np.maximum(x, 0) * np.float32(2.0 ** exposure)


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    if gamma <= 0:
        raise ValueError(f'gamma must be > 0, got {gamma}')
    x = np.clip(x, 0.0, 1.0)
    if gamma != 1.0:
        x = x ** np.float32(1.0 / gamma)
    return x.astype(np.float32, copy=False)


def luminance(x_bgr: np.ndarray) -> np.ndarray:
    """Luminance (Rec. 601 weights, as MATLAB's rgb2gray) of a BGR image, H x W float32."""
    return np.asarray(x_bgr, dtype=np.float32) @ _LUMA_BGR


def reinhard(x: np.ndarray, exposure: float = 0.0, gamma: float = 2.2, key: float = 0.18,
             white: float | None = None, eps: float = 1e-6) -> np.ndarray:
    """Reinhard 2002 global photographic operator.

    ``L = key / Lavg * Lw`` with ``Lavg`` the log-average luminance, then
    ``Ld = L (1 + L / white**2) / (1 + L)``; colour keeps the ratios ``C * Ld / Lw``.
    ``white`` is the smallest scaled luminance mapped to 1 (default: the image's maximum scaled
    luminance, the paper's default, so nothing burns out). Returns [0, 1] float32.
    """
    x = _expose(_check_image(x), exposure)
    lw = luminance(x)
    lavg = float(np.exp(np.mean(np.log(eps + lw.astype(np.float64)))))
    lum = (key / lavg) * lw
    if white is None:
        white = float(lum.max())
    white = max(float(white), eps)
    ld = lum * (1.0 + lum / (white * white)) / (1.0 + lum)
    ratio = ld / np.maximum(lw, eps)
    out = x * ratio[:, :, None]
    return _gamma(out, gamma)


# Clean shadows of the display operator: below SHADOW_STOPS[0] stops under the image's highlights (its 99th
# luminance percentile) a pixel's colour starts to come from the local fit of shadow_chroma, and from
# SHADOW_STOPS[1] on only from there.
SHADOW_STOPS = (-4.0, -7.0)
# The fit's window radius as a share of the image's shorter side (bench/shadow_chroma.py --radius_fractions).
SHADOW_RADIUS_FRACTION = 0.005


def _box(img: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(img, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


# shadow_chroma keeps a pixel's own colour where the fit's residual power exceeds this multiple of the noise
# power estimated for its brightness (0: the plain fit). Chosen on validation brackets (bench/shadow_chroma.py --seed 2
# --crops 16 at --noise_scale 1 and 8).
SHADOW_NOISE_MARGIN = 1.5


def _band_noise(ratio: np.ndarray, log_lum: np.ndarray, min_pixels: int = 64,
                max_samples: int = 1 << 20) -> np.ndarray:
    """Per pixel, the noise power of the colour ratio (summed over channels) expected at its brightness: per
    1-stop band of ``log_lum``, the median over the band of each pixel's high-pass power (its ratio minus its 3 x 3
    mean), from at most ``max_samples`` evenly strided pixels. Flat pixels dominate a median, so texture and edges
    barely count. A band with fewer than ``min_pixels`` samples takes the estimate of all samples darker than its
    top (darker pixels are noisier: the safe side)."""
    energy = np.zeros(ratio.shape[:2], np.float32)
    for c in range(ratio.shape[2]):  # channel by channel: no full-size three-channel temporaries
        high = ratio[..., c] - _box(np.ascontiguousarray(ratio[..., c]), 1)
        energy += high * high
    del high
    # Scaled as white noise in three independent channels would be (a chi-square of 3 degrees of freedom has its
    # median at 0.789 of its mean; a 3 x 3 high-pass keeps 8/9 of the noise). A ratio's channels are not
    # independent (its luminance is 1), so this reads about 0.8 of the true noise power: SHADOW_NOISE_MARGIN was
    # chosen with this estimator as it is.
    scale = np.float32(9.0 / 8.0 / 0.789)
    bands = np.floor(log_lum).astype(np.int32)
    step = max(1, energy.size // max_samples)
    sample_e, sample_b = energy.ravel()[::step], bands.ravel()[::step]
    lo, hi = int(bands.min()), int(bands.max())
    table = np.empty(hi - lo + 1, np.float32)
    for band in range(lo, hi + 1):
        values = sample_e[sample_b == band]
        if values.size < min_pixels:
            values = sample_e[sample_b <= band]
        table[band - lo] = np.median(values) * scale if values.size else 0.0
    return table[bands - lo]


def _fit_radius(lum: np.ndarray, radius: int | None) -> int:
    """The shadow fit's window radius: ``radius``, or SHADOW_RADIUS_FRACTION of the shorter side, at least 2."""
    return max(2, round(SHADOW_RADIUS_FRACTION * min(lum.shape))) if radius is None else int(radius)


def _darkness(lum: np.ndarray, eps: float, stops: tuple[float, float]):
    """``(ref, log_lum, dark)``: the 99th luminance percentile, each pixel's stops under it and a ramp from 0 at
    ``stops[0]`` to 1 at ``stops[1]``; None for an image without light (``ref <= eps``)."""
    ref = float(np.percentile(lum, 99.0))
    if ref <= eps:
        return None
    log_lum = np.log2(np.maximum(lum, eps * ref) / ref).astype(np.float32)
    dark = np.clip((log_lum - stops[0]) / (stops[1] - stops[0]), 0.0, 1.0)
    return ref, log_lum, dark


def shadow_chroma(x: np.ndarray, lum: np.ndarray, eps: float = 1e-6, radius: int | None = None,
                  reg: float = 0.1, stops: tuple[float, float] = SHADOW_STOPS,
                  noise_margin: float | None = None) -> np.ndarray:
    """Colour ratios ``C / L`` (H x W x 3) whose noise is averaged out in the shadows, as a camera's shadow
    handling does. Each ratio channel is fitted, in a ``(2 radius + 1)``-pixel window, as a linear function of
    log luminance (a guided filter with the log luminance as guide and ``reg`` its regularisation, in stops
    squared): noise that does not follow the luminance is averaged out, colour edges that do (a dark tree against
    a bright sky) stay sharp, and luminance detail is untouched. The fit replaces a pixel's own ratio gradually
    from ``stops[0]`` to ``stops[1]`` stops under the 99th luminance percentile; brighter pixels keep theirs.
    Where the fit's residual is larger than ``noise_margin`` times the noise expected at that brightness
    (:func:`_band_noise`; default ``SHADOW_NOISE_MARGIN``), the residual is colour detail and is kept in proportion.
    ``radius`` defaults to ``SHADOW_RADIUS_FRACTION`` of the image's shorter side, at least 2 pixels."""
    ratio = x / np.maximum(lum, eps)[:, :, None]
    found = _darkness(lum, eps, stops)
    if found is None or not found[2].any():
        return ratio
    _, log_lum, dark = found  # log_lum is the fit's guide; dark: 0 bright, 1 deep shadow
    dark = dark[:, :, None]
    r = _fit_radius(lum, radius)
    mean_g = _box(log_lum, r)
    var_g = _box(log_lum * log_lum, r) - mean_g * mean_g
    fitted = np.empty_like(ratio)
    for c in range(3):
        p = ratio[..., c].astype(np.float32)
        mean_p = _box(p, r)
        a = (_box(log_lum * p, r) - mean_g * mean_p) / (var_g + np.float32(reg))
        b = mean_p - a * mean_g
        fitted[..., c] = _box(a, r) * log_lum + _box(b, r)
    margin = SHADOW_NOISE_MARGIN if noise_margin is None else noise_margin
    if margin > 0:
        # Keep what the fit took away where it is more than noise (a Wiener-like shrinkage): a clean image's own
        # colour detail stays, a noisy one's is averaged out
        noise = _box(_band_noise(ratio, log_lum), r)
        power = np.zeros_like(noise)
        for c in range(3):
            residual = ratio[..., c] - fitted[..., c]
            power += residual * residual
        power = _box(power, r)
        keep = np.clip((power - np.float32(margin) * noise) / np.maximum(power, np.float32(1e-12)), 0.0, 1.0)
        del noise, power
        for c in range(3):
            fitted[..., c] += keep * (ratio[..., c] - fitted[..., c])
        del residual, keep
    np.maximum(fitted, 0.0, out=fitted)
    fitted_lum = fitted @ _LUMA_BGR
    # the fit changes chroma only: its luminance is 1, like a pixel's own ratio (grey where the fit has none)
    fitted /= np.maximum(fitted_lum, 1e-6)[:, :, None]
    fitted[fitted_lum <= 1e-6] = 1.0
    # ratio + dark * (fit - ratio), in place: a camera-sized preview holds a dozen images of this size already
    fitted -= ratio
    fitted *= dark
    fitted += ratio
    return fitted.astype(np.float32, copy=False)


# The classical merge of the same frames lends the preview its shadow colour (guided_shadow_chroma): from
# GUIDE_STOPS[0] stops under the highlights on, fully from GUIDE_STOPS[1]; and only where the two agree, their
# local mean luminance within GUIDE_LUM_STOPS (full trust below the first, none above the second) and their local
# colour within GUIDE_DEGREES, so a ghost of the classical merge (a moving object) never lends its colour.
# Chosen on validation brackets (bench/shadow_chroma.py --seed 2 --crops 16).
GUIDE_STOPS = (-2.0, -4.0)
GUIDE_LUM_STOPS = (1.0, 2.0)
GUIDE_DEGREES = (10.0, 20.0)
GUIDE_WINDOW = 2  # the agreement's wider window radius, in radii of the shadow fit


def _trust(gap: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """1 below bounds[0], 0 above bounds[1], linear between."""
    return np.clip((bounds[1] - gap) / (bounds[1] - bounds[0]), 0.0, 1.0)


def guided_shadow_chroma(x: np.ndarray, lum: np.ndarray, guide: np.ndarray, eps: float = 1e-6,
                         radius: int | None = None) -> np.ndarray:
    """Colour ratios ``C / L`` as :func:`shadow_chroma`, with the shadows' colour taken from ``guide`` (the
    classical merge of the same frames, same scale) wherever the two images agree. In a static shadow the
    classical merge is mostly the longest frame that sees it well, whose colour is cleaner than a network's
    reconstruction (``bench/shadow_chroma.py``); where the network and the merge disagree in local luminance or
    colour (a ghost, a region the merge gets wrong) the network's own fitted ratio stays. Both ratios are the
    clean-shadow fits; only the preview uses this."""
    guide = _check_image(guide, 'chroma guide')
    if guide.shape != x.shape:
        raise ValueError(f'chroma guide: shape {guide.shape} differs from the image\'s {x.shape}')
    ratio = shadow_chroma(x, lum, eps, radius)
    found = _darkness(lum, eps, GUIDE_STOPS)
    if found is None or not found[2].any():
        return ratio
    ref, _, dark = found
    guide = np.maximum(guide, 0.0) if guide.min() < 0 else guide
    guide_lum = luminance(guide)
    guide_ratio = shadow_chroma(guide, guide_lum, eps, radius)
    r = _fit_radius(lum, radius)
    floor = np.float32(eps * ref)
    lum, guide_lum = np.maximum(lum, floor), np.maximum(guide_lum, floor)
    weight = dark
    # Agreement on the fit's own window (a ghost a few pixels wide) and on twice it (pixel noise alone must not
    # reject a static shadow): both must hold
    for window in (r, GUIDE_WINDOW * r):
        lum_gap = np.abs(np.log2(_box(lum, window) / _box(guide_lum, window)))
        dot, norm_a, norm_b = (np.zeros_like(lum) for _ in range(3))
        for c in range(3):  # the local mean colours' angle, channel by channel (no three-channel temporaries)
            a = _box(np.ascontiguousarray(ratio[..., c]), window)
            b = _box(np.ascontiguousarray(guide_ratio[..., c]), window)
            dot += a * b
            norm_a += a * a
            norm_b += b * b
        cos = dot / (np.sqrt(norm_a * norm_b) + 1e-12)
        del a, b, dot, norm_a, norm_b
        angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        weight = weight * _trust(lum_gap, GUIDE_LUM_STOPS) * _trust(angle, GUIDE_DEGREES)
    # ratio + weight * (guide's - ratio), in place
    guide_ratio -= ratio
    guide_ratio *= weight[:, :, None]
    guide_ratio += ratio
    return guide_ratio.astype(np.float32, copy=False)


def display_tonemap(x: np.ndarray, exposure: float = 0.0, gamma: float = 1.0, saturation: float = 1.0,
                    tiles: tuple[int, int] = (4, 4), clip_limit: float = 0.01, nbins: int = 256,
                    eps: float = 1e-6, clean_shadows: bool = True,
                    chroma_guide: np.ndarray | None = None) -> np.ndarray:
    """Display-referred operator equivalent to MATLAB's ``tonemap``, with clean shadows.

    Steps: luminance, log luminance normalised to [0, 1] over the image, CLAHE of the log
    luminance (``tiles`` grid, ``clip_limit`` as MATLAB's ``ClipLimit``: scikit-image's
    ``equalize_adapthist`` uses the same normalised clip limit), colour restored as
    ``(C / L) ** saturation * L_new``, then ``gamma``. MATLAB's defaults are 4 x 4 tiles,
    saturation 1 and no gamma (CLAHE output is already display-referred), hence ``gamma=1``.
    The result is invariant to a global scale of the radiance (the log range is normalised),
    so ``exposure`` matters only through the ``eps`` floor.

    ``clean_shadows`` (default): the colour ratio ``C / L`` of dark pixels comes from :func:`shadow_chroma` (a
    local, edge-aware fit) instead of the pixel alone. CLAHE lifts the shadows, and dividing a noisy dark pixel
    by its small luminance turns its noise into saturated false colour; ``False`` is MATLAB's operator exactly.
    Only the preview changes: the radiance files are never processed.
    ``chroma_guide``: the classical merge of the same frames; with clean shadows, static shadows take its colour
    (:func:`guided_shadow_chroma`).
    """
    from skimage.exposure import equalize_adapthist  # lazy: only this operator needs it

    x = _expose(_check_image(x), exposure)
    h, w = x.shape[:2]
    lum = luminance(x)
    log_lum = np.log(lum + eps)
    lo, hi = float(log_lum.min()), float(log_lum.max())
    if hi - lo < 1e-12:
        # A flat image has no contrast to redistribute: show it at mid grey.
        new_lum = np.full((h, w), 0.5, dtype=np.float32)
    else:
        norm = ((log_lum - lo) / (hi - lo)).astype(np.float64)
        kernel = (max(1, math.ceil(h / tiles[0])), max(1, math.ceil(w / tiles[1])))
        new_lum = equalize_adapthist(norm, kernel_size=kernel, clip_limit=clip_limit,
                                     nbins=nbins).astype(np.float32)
    if not clean_shadows:
        ratio = x / np.maximum(lum, eps)[:, :, None]
    elif chroma_guide is not None:
        ratio = guided_shadow_chroma(x, lum, _expose(np.asarray(chroma_guide), exposure), eps)  # it checks the guide
    else:
        ratio = shadow_chroma(x, lum, eps)
    if saturation != 1.0:
        ratio = ratio ** np.float32(saturation)
    out = ratio * new_lum[:, :, None]
    return _gamma(out, gamma)


def _mu_operator(x: np.ndarray, exposure: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    x = _expose(_check_image(x), exposure)
    return _gamma(mu_law(x), gamma)


OPERATORS = {'mu': _mu_operator, 'reinhard': reinhard, 'display': display_tonemap}
DEFAULT_GAMMA = {'mu': 1.0, 'reinhard': 2.2, 'display': 1.0}


def tonemap(x: np.ndarray, operator: str = 'mu', exposure: float = 0.0, gamma: float | None = None,
            **kwargs) -> np.ndarray:
    """Apply the named operator (``mu``, ``reinhard`` or ``display``); ``gamma=None`` uses its default."""
    if operator not in OPERATORS:
        raise ValueError(f'unknown tone-mapping operator {operator!r}; choose from {sorted(OPERATORS)}')
    if gamma is None:
        gamma = DEFAULT_GAMMA[operator]
    return OPERATORS[operator](x, exposure=exposure, gamma=gamma, **kwargs)


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (values outside [0, 1] are clipped)."""
    return np.clip(np.rint(np.asarray(x01, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_png(path, x01_bgr: np.ndarray) -> None:
    """Write a [0, 1] BGR image as an 8-bit PNG with ``cv2.imwrite``."""
    path = Path(path)
    img = np.asarray(x01_bgr)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'{path}: expected an H x W x 3 BGR image, got shape {img.shape}')
    if path.suffix.lower() != '.png':
        raise ValueError(f'{path}: write_png writes .png files only')
    if not path.parent.is_dir():
        raise OSError(f'{path}: destination folder {path.parent} does not exist')
    if not cv2.imwrite(str(path), to_uint8(img)):
        raise OSError(f'{path}: cv2.imwrite failed')
