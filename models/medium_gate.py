"""The medium gate: a small network after the backbone that hands the medium frame back where it can be trusted.

Round 3 measured that the backbones lose detail the medium frame already has: on nearly noise-free brackets the
shipped FSHDR scored 44.7 dB PSNR-mu over the well-exposed pixels where the medium frame alone scores 59.0, and
supervised training loses there too (README, "Study and shipped model"). A sigmoid-output reconstruction network
does not reproduce a clean input to 1e-3. The gate does not ask it to: per pixel it blends the backbone's output
``y`` towards the medium frame's own radiance ``H_mid``,

    out = y + g * usable * (H_mid - y),    g in (0, 1) from a 4-layer CNN,

where ``usable`` is 0 wherever the medium frame is clipped (a channel at 0.95 or above), so the highlights stay the
backbone's (and the result is capped at 1, the backbones' range). The CNN sees ``y`` and ``H_mid`` in mu-law, the
medium LDR frame, their difference, and the medium frame's noise per pixel (``medium_noise_map``): with noise it
learns to keep the backbone's denoised output, on a clean frame to keep the medium one. The output is a convex
combination of the two, so the gate can never invent content.

Then, where the gate's checkpoint sets ``consistency`` = k (round 3, tenth session), the result is held to the
medium frame's noise band: in mu-law, each channel is clamped to ``mu(H_mid) +- k * sigma`` with ``sigma`` the
frame's own noise carried into mu-law (``medium_noise_band``). A usable medium pixel is the scene plus noise, so
wherever the network strays from it by more than noise explains (blur, darkened highlights, lost detail) it is pulled
back to the band's edge, and where the frame is noisy the band is wide and the denoised output stays. Pixels clipped
white in the medium frame, or so dark that their noise is cut at black, are left alone. Where the checkpoint also
sets ``consistency_chroma`` = c (round 3, thirteenth session), brightness and colour are held apart: the pixel's
brightness to the band, each channel within c times it (``MediumGate.hold_to_band``), so that the frame's chroma
noise is not handed back into a denoised shadow. Where it sets ``consistency_fallback`` = m (round 3, fourteenth
session), an output that strays far from the medium frame is handed that frame instead of the band's edge: no change
up to k sigmas, the frame itself from m sigmas on, linear between (``MediumGate._fall_back``). Within noise the
network may be the better reading (denoised); many sigmas off, it is a wrong one (blur, a ghost, a darkened
highlight), and the frame is the better estimate than the edge of its band. Where it sets ``band_noise`` to
'weak_texture' (round 3, fifteenth session), the medium frame's sigma is read from the covariance of its
weak-texture patches (``util.label_denoise.weak_texture_noise_by_level``) instead of Immerkaer's estimate over its
flattest blocks, which on a nearly noise-free, textured frame takes the texture for noise and widens the band
several times over; with 'weak_texture_capped' (version 8, seventeenth session) no brightness band's sigma exceeds
LEVEL_GROWTH times the smallest of the darker bands' (``level_capped``), since noise in this encoding does not grow
with the level and a band that does is reading texture; with 'weak_texture_modelled' (version 9, eighteenth
session) no band exceeds LEVEL_GROWTH times the largest physical noise curve (a flat floor, read and shot noise) that
stays under every band's estimate (``model_capped``), which also cuts a band that reads texture above a noisier
darker one. Where it sets ``fusion_window`` = w (fifteenth session), the
output is first fused with the medium frame as two estimates of one radiance (``MediumGate.fuse``): its deviation
from the frame is kept in the share the frame's noise explains, sigma^2 / E[d^2] over a w x w window, so a blur or a
bias many times the noise goes most of the way back to the frame, and a denoised reading stays.

Where the medium frame is clipped it says only "at least this bright", and the gate left the backbone alone there.
Where the checkpoint sets ``short_consistency`` = k' (round 3, thirteenth session; only for backbones that take
aligned frames), the short frame is the witness instead: wherever the medium frame clips a pixel, the aligned short
frame does not, and the two agree (the short frame, brought to the medium exposure, reaches the clip in the clipped
channels and lies within SHORT_AGREEMENT of the frame in the others), the output is held within k' of the short
frame's own noise band (``short_witness_band``), in the same two steps; and where a channel is clipped in both
frames, the output is at least the short frame's clipped reading (``short_floor``).

The medium frame is the witness of pixels it exposes well, and a noisy one of its shadows. Where the checkpoint sets
``long_consistency`` = k'' (round 3, sixteenth session; only for backbones that take aligned frames), the aligned
long frame is a second witness: wherever it says something reliable (not clipped, not within 3 sigma of black), is
a warp of its own and not the alignment's copy of the medium frame, and agrees with the medium frame within
LONG_AGREEMENT times the medium frame's noise in every channel (static, aligned), and is the cleaner witness (the medium
frame's band over LONG_NOISE_RATIO times its own, or none), the output is held within k'' of the long frame's own
noise band (``long_witness_band``), after the medium frame's clamp; gates of version 7 (``long_within_medium``) then
apply the medium frame's clamp once more, so the long frame moves the output within the medium band and never out of
it (a version 6 gate runs as it was made, without). A static shadow is then the
long frame's colour within its (smaller) noise, as the classical merge has it, and a moving one keeps the medium
frame's clamp alone.

Where the checkpoint sets ``bracket_noise`` (round 3, twentieth session, version 10), the medium band's noise is also
capped, per brightness band, by the other frames of the bracket (``bracket_noise_bounds``): the noise of the LDR
encoding is the camera's, the same function of the level in every frame of an exposure-time bracket, and a frame that
puts a flat sky at a level bounds it where the medium frame's foliage at that level reads as noise. The bound needs the
frames as shot (a warp's interpolation removes the noise the estimate reads), so the callers that have them pass them
in (``bracket_noise``: the study and its benches, ``photo.merge``, ``test.py``); without them the gate runs as a
version 9 gate.

Where the checkpoint sets ``fusion_prior`` p > 0 (round 3, twenty-second session, version 11), the fusion's estimate
of the network's own error at a pixel is (1 - p) times its local estimate plus p times the image's mean (per channel,
in units of the band's variance; the tile's mean when a photo is merged in tiles): over a few pixels the local estimate
often falls to the noise by chance and the fusion then keeps a deviation whole, which on nearly noise-free frames, where
the network's error is many times the noise, is a wrong reading.

The backbone is frozen; the gate trains against the colour component (``tools/train_gate.py``, a few minutes on a
CPU) and is stored inside the backbone's checkpoint, under its own key beside the release's ``state_dict``
(``GATE_KEY``), so the file still loads as a plain backbone in the release's code and in ours. Loaders apply it
with ``medium_gate='auto'`` (when the checkpoint has one), ``'off'`` gives the backbone alone.
"""
from __future__ import annotations

import contextlib
import logging
import math
import numbers

import numpy as np
import torch
import torch.nn as nn

from models.base_model import CheckpointError
from util.colour import GAMMA
from util.tonemap import MU, inverse_mu_law_torch, mu_law_torch

logger = logging.getLogger(__name__)

GATE_KEY = 'medium_gate'
# 2 since the chroma factor and the short frame's clamp (round 3, thirteenth session): code that knows only version 1
# refuses such a gate instead of running it without them; version-1 entries read as before (both 0)
# 3 since the fallback to the witness (round 3, fourteenth session)
# 4 since the bands' noise estimator, 5 since the fusion window (round 3, fifteenth session)
# 6 since the long frame's clamp (round 3, sixteenth session)
# 7 since long_within_medium, 8 since band_noise 'weak_texture_capped' (round 3, seventeenth session)
# 9 since band_noise 'weak_texture_modelled' (round 3, eighteenth session)
# 10 since bracket_noise (round 3, twentieth session)
# 11 since fusion_prior (round 3, twenty-second session; the twenty-first session's reverted prototype, commit bcf861a,
# also wrote 11 with other keys, none of them shipped)
GATE_VERSION = 11
GATE_VERSIONS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
GATE_MODES = ('auto', 'on', 'off')
# How the medium frame's noise band is estimated (entry key 'band_noise'; the CNN's noise map and the short frame's
# band are always 'robust', the first being what the CNN was trained on). 'robust': Immerkaer's estimate over the
# flattest 16-pixel blocks (gates before version 4);
# 'weak_texture': the smallest eigenvalue of weak-texture patches' covariance (util.label_denoise), which reads far
# less texture as noise on clean frames (README, "Study and shipped model"); 'weak_texture_capped' (gates of version
# 8 on): the same, each brightness band capped at LEVEL_GROWTH times the smallest estimate of the bands below it.
# 'weak_texture_modelled' (version 9, eighteenth session): each band at most LEVEL_GROWTH times the largest physical
# noise curve (flat + read + shot) under all the bands' estimates (model_capped).
BAND_NOISE = ('robust', 'weak_texture', 'weak_texture_capped', 'weak_texture_modelled')
DEFAULT_BAND_NOISE = 'weak_texture_modelled'  # tools/train_gate.py's default: chosen on the study's validation splits
# Noise in the backbones' LDR encoding (gamma 2.2 of the linear radiance) does not grow with the level: shot noise goes
# as x^-0.1, read noise as x^-1.2, 8-bit quantisation is flat. A band that reads several times its darker neighbours
# reads texture (validation, a `clean` scene: 0.2 codes at levels 0.08 and 0.25, 1.1-2.6 codes at 0.15, 0.38 and
# 0.52). 1.5 leaves room for a tone curve's inversion; 1.25 and 2 scored the same on validation (37.93 / 37.92).
LEVEL_GROWTH = 1.5
# The other frames' estimates bound the medium frame's noise (bracket_noise_bounds) at this many times their value: the
# weak-texture estimate can read under the true noise (validation `clean` scene 001: 0.14 codes where its rounding
# gives 0.20); at 1 the validation high-ISO split lost 0.02 dB, at 1.25 and 1.5 nothing (clean +0.23 and +0.20)
BRACKET_NOISE_MARGIN = 1.25
# frames larger than this are sampled for that estimate, in crops of this side (noise_sample)
NOISE_SAMPLE_PIXELS = 1 << 20
NOISE_SAMPLE_CROP = 256
# and the fusion's window (MediumGate.fuse), pixels a side: on the validation split 3, 5 and 9 all gained 0.23 dB
DEFAULT_FUSION_WINDOW = 5
# and the weight of the image's mean in its estimate of the network's error (MediumGate.fuse): on the validation splits
# 0.25, 0.5 and 0.75 lost nothing anywhere and gained on the clean one (well-exposed pixels 56.42 -> 56.82-56.88 dB);
# 0.5 is within 0.01 dB of the best on every split
DEFAULT_FUSION_PRIOR = 0.5
CLIPPED_LEVEL = 0.95  # as the stage-2 loss's clipped mask (models/selfhdr2_model.py)
NOISE_FLOOR = 1e-5    # the noise channel is log10(sigma_mu + NOISE_FLOOR)
QUANTISATION_SIGMA = 1.0 / (255.0 * math.sqrt(12.0))  # LDR noise of 8-bit rounding: the band's floor
# a band estimate under this (a quarter of 8-bit rounding's sigma, 0.07 codes) reads flat blocks, not noise, and does
# not bound the physical noise curve (noise_model_envelope): one such band would pin every band near 0. The
# validation splits' clean frames read 0.13 codes and up.
MIN_BOUNDING_SIGMA = QUANTISATION_SIGMA / 4
SHORT_AGREEMENT = 0.1  # gamma-encoded, at the medium exposure: util.align's clip_tol, the label's own agreement test
ECHO_TOLERANCE = 1.5 / 255  # a short frame this close to the medium frame brought to its exposure is that frame's copy
# the long frame witnesses a pixel where, brought to the medium exposure, it lies within this many of the medium
# frame's noise sigmas in every channel (MediumGate's long_consistency): chosen on the validation split with k'' 1.5
LONG_AGREEMENT = 3.0
# and only where the medium frame's band is this many times the long frame's (or the medium frame has none: too dark):
# where the two are about as clean, the warped long frame's interpolation costs more detail than its noise saves
# (validation: clean scenes -0.86 dB without the condition, -0.04 with it)
LONG_NOISE_RATIO = 3.0
# tools/train_gate.py's default clamp, in noise sigmas: chosen on the study's validation split (README)
DEFAULT_CONSISTENCY = 1.5
# and its chroma factor (MediumGate.hold_to_band): validation level from 1.0 to 1.2, the shadow-chroma bench decides
DEFAULT_CHROMA = 1.2
# and where the output becomes the medium frame (MediumGate._fall_back), in sigmas: on the validation split every
# value from 2 to 5 gained 0.08-0.10 dB PSNR-mu (the clean scenes); 4 is the one that costs no region a pooled 0.1 dB
DEFAULT_FALLBACK = 4.0
# and the long frame's clamp, in its noise sigmas (long_witness_band): chosen on the validation split (README)
DEFAULT_LONG_CONSISTENCY = 1.5
# Peak memory the gate adds to an inference forward, per input pixel (its features and the noise map), for --tile
# auto: 480 bytes measured on a 4-megapixel input (fp32, CPU), 489 with the consistency clamp, 501 with the short
# frame's clamp and floor as well (round 3, thirteenth session: peak RSS over the inputs, an identity backbone),
# rounded up; the weak-texture band adds 17-22 bytes (fifteenth session, 768- and 1536-pixel inputs). With the
# fusion and the long frame's clamp as well (sixteenth session, same measure): 567-616 bytes without the long clamp,
# 580-664 with it, the larger figure on the smaller (768-pixel) input. With the fusion prior (twenty-second session, the
# shipped gate): 663 and 622 bytes on 768- and 1536-pixel inputs, against 664 and 610 without it.
GATE_BYTES_PER_PIXEL = 672
ROBUST_GATE_BYTES_PER_PIXEL = 512  # a gate with the robust band (before the fifteenth session): as it was


def fusion_prior_problem(prior) -> str | None:
    """Why ``prior`` is not a fusion prior weight (a number from 0 to 1), or None when it is one."""
    if isinstance(prior, bool) or not isinstance(prior, numbers.Real) or not 0 <= prior <= 1:
        return f'fusion_prior {prior!r} is not a number from 0 to 1'
    return None


def fusion_window_problem(window) -> str | None:
    """Why ``window`` cannot be a gate's fusion_window (None when it can): 0 (off) or an odd number of pixels."""
    whole = isinstance(window, (int, np.integer)) and not isinstance(window, bool)
    if not whole or window < 0 or (window and window % 2 == 0):
        return f'fusion_window {window!r} is not 0 or an odd number of pixels'
    return None


class GateError(CheckpointError):
    """A checkpoint's gate entry that cannot be used, or --medium_gate on for a checkpoint without one."""


def level_capped(bands: np.ndarray, growth: float = LEVEL_GROWTH) -> np.ndarray:
    """Noise per brightness band (darkest first), each capped at ``growth`` times the smallest of the bands up to it
    (``LEVEL_GROWTH``); a NaN band stays NaN (it opens the band) and leaves the caps of the others as they are."""
    bands = np.asarray(bands, np.float32)
    known = np.where(np.isnan(bands), np.inf, bands)
    return np.where(np.isnan(bands), bands, np.minimum(bands, growth * np.minimum.accumulate(known)))


def noise_model_envelope(bands: np.ndarray, known: np.ndarray | None = None) -> np.ndarray | None:
    """The largest physical noise curve under every band's estimate: per brightness band (darkest first, at
    ``util.label_denoise.band_centres``), sigma(v) = sqrt(c + r A(v) + s B(v)) in LDR units of a frame v = x^(1/2.2),
    with c a flat floor (quantisation), r the read noise (A = (dv/dx)^2, falling with the level as v^-2.4) and s the
    shot noise (B = x A, as v^-0.2), all three >= 0, each band's estimate an upper bound (texture only adds to a
    weak-texture estimate), and the three chosen to fill the bands' variances as far as those bounds allow (a linear
    programme: the sum over the bands of model / estimate, in variance). ``known``: the bands estimated from their own
    pixels (``weak_texture_noise_by_level(..., with_known=True)``; default: all): only those bound the curve, since a
    band filled in from its neighbours (flat beyond the darkest estimate) says nothing of the read noise there. A
    band that is NaN or not above MIN_BOUNDING_SIGMA (no estimate, or flat blocks: medium_noise_map_and_band floors
    a 0 at 8-bit quantisation) bounds nothing and comes back as it is; with fewer than 3 bounds (the curve has 3
    unknowns), or no solution, the result is None."""
    from scipy.optimize import linprog

    from util.label_denoise import band_centres

    bands = np.asarray(bands, np.float32)
    usable = np.isfinite(bands) & (bands > MIN_BOUNDING_SIGMA)
    bounding = usable & (True if known is None else np.asarray(known, bool))
    if bounding.sum() < 3:  # fewer bounds than unknowns: many curves fit equally, and the solver's pick is arbitrary
        return None
    level = np.clip(band_centres().astype(np.float64), 1e-3, 1.0)
    a = (level ** (1.0 - GAMMA) / GAMMA) ** 2
    b = level ** GAMMA * a
    terms = np.stack([np.ones_like(a), a / a.max(), b / b.max()], axis=1)  # scaled alike: a well-posed programme
    # No floor under the bounds: at the 8-bit quantisation sigma it cost a validation `clean` scene 0.13 dB, whose
    # rounding error reads 0.2 codes, not the 0.29 of uniform rounding
    bound = bands[bounding].astype(np.float64) ** 2
    scale = bound.max()  # variances of 1e-6: far under the solver's feasibility tolerance unless scaled to 1
    cost = (terms[bounding] * scale / bound[:, None]).sum(axis=0)
    solved = linprog(-cost / cost.max(), A_ub=terms[bounding], b_ub=bound / scale, bounds=[(0, None)] * 3,
                     method='highs')
    if not solved.success:
        return None
    return np.where(usable, np.sqrt(np.maximum(terms @ solved.x * scale, 0.0)), bands).astype(np.float32)


def model_capped(bands: np.ndarray, known: np.ndarray | None = None, growth: float = LEVEL_GROWTH) -> np.ndarray:
    """Noise per brightness band, each at most ``growth`` times the physical envelope (``noise_model_envelope``,
    bounded by the ``known`` bands): a band that reads texture stands far above the curve the other bands allow.
    The envelope never rises with the level, so this is at least as tight as ``level_capped`` but for bands too
    small to bound it (which cap nothing here, where level_capped cuts every brighter band to them); without an
    envelope (fewer than 3 bands known, as a mostly clipped frame has), ``level_capped``'s bands. NaN bands stay
    NaN, bands of 0 stay 0."""
    envelope = noise_model_envelope(bands, known)
    if envelope is None:
        return level_capped(bands, growth)
    bands = np.asarray(bands, np.float32)
    return np.where(np.isnan(bands), bands, np.minimum(bands, growth * envelope))


def noise_sample(frame: np.ndarray, max_pixels: int = NOISE_SAMPLE_PIXELS, crop: int = NOISE_SAMPLE_CROP) -> np.ndarray:
    """``frame`` itself when it has at most ``max_pixels`` pixels, else a mosaic of ``crop``-pixel squares taken on an
    even grid over it, about ``max_pixels`` in all (16 squares at the defaults), with a row and column of NaN between
    them (the weak-texture estimate leaves out every patch that touches a NaN, so none spans two crops). The noise
    curve is the camera's, the same everywhere in the frame: a sample of its content estimates it as the whole frame
    does, in a fraction of the time."""
    height, width = frame.shape[:2]
    if height * width <= max_pixels or min(height, width) < crop:
        return frame
    per_side = max(1, round(math.sqrt(max_pixels) / crop))
    rows = np.linspace(0, height - crop, per_side).round().astype(int)
    cols = np.linspace(0, width - crop, per_side).round().astype(int)
    side = per_side * (crop + 1) - 1
    mosaic = np.full((side, side) + frame.shape[2:], np.nan, np.float32)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            y, x = i * (crop + 1), j * (crop + 1)
            mosaic[y:y + crop, x:x + crop] = frame[top:top + crop, left:left + crop]
    return mosaic


def bracket_noise_bounds(frames) -> np.ndarray:
    """A cap on the medium frame's noise per brightness band from the whole bracket: per band, the least
    weak-texture estimate over ``frames`` (its frames as the backbone reads them: gamma-encoded LDR, H x W x 3, of
    any size) among those each frame makes from its own pixels, times BRACKET_NOISE_MARGIN; inf where no frame knows
    the band. The noise of this encoding is the camera's, a function of the level alone, the same for every frame of
    an exposure-time bracket at one ISO, and every frame's estimate bounds it from above (texture only adds); each
    frame puts other content at each level, so where the medium frame's own bands read texture (a clean, textured
    shadow) another frame's often do not. The frames must be the unwarped ones: a warp's interpolation removes
    the high frequencies the estimate reads, and aligned frames read a quarter of their noise and less."""
    from util.label_denoise import NOISE_LEVEL_EDGES, WEAK_TEXTURE_PATCH, weak_texture_noise_by_level

    best = np.full(len(NOISE_LEVEL_EDGES) - 1, np.inf, np.float32)
    for frame in frames:
        frame = np.clip(np.asarray(frame, np.float32), 0.0, 1.0)  # a NaN stays NaN: the estimate leaves it out
        if frame.ndim != 3 or min(frame.shape[:2]) < WEAK_TEXTURE_PATCH:
            continue
        bands, known = weak_texture_noise_by_level(noise_sample(frame), with_known=True)
        best = np.where(known & np.isfinite(bands), np.minimum(best, bands), best)
    return (best * np.float32(BRACKET_NOISE_MARGIN)).astype(np.float32)


def _ldr_sigma(ldr: np.ndarray, estimator: str = 'robust', bound: np.ndarray | None = None) -> np.ndarray:
    """The LDR noise sigma per pixel (H x W x 1) of a clipped LDR frame. ``estimator``: 'robust' (Immerkaer over the
    flattest blocks, the noise map the gate's CNN was trained with), 'weak_texture', 'weak_texture_capped' or
    'weak_texture_modelled' (``BAND_NOISE``). ``bound``: a cap per brightness band (``bracket_noise_bounds``; inf
    where it knows nothing); a NaN band stays NaN."""
    from util.label_denoise import (ROBUST_BLOCK, WEAK_TEXTURE_PATCH, noise_by_level, robust_noise_by_level,
                                    sigma_at_level, weak_texture_noise_by_level)

    if estimator.startswith('weak_texture') and min(ldr.shape[:2]) >= WEAK_TEXTURE_PATCH:
        bands, known = weak_texture_noise_by_level(ldr, with_known=True)
        if estimator == 'weak_texture_capped':
            bands = level_capped(bands)
        elif estimator == 'weak_texture_modelled':
            bands = model_capped(bands, known)
    elif min(ldr.shape[:2]) >= ROBUST_BLOCK + 2:
        bands = robust_noise_by_level(ldr)
    else:  # a small tile: the plain estimate, on an edge-padded copy when a side is under its 3 pixels
        pad = [(0, max(0, 3 - n)) for n in ldr.shape[:2]] + [(0, 0)]
        bands = noise_by_level(np.pad(ldr, pad, mode='edge'))
    if bound is not None:
        bands = np.where(np.isnan(bands), bands, np.minimum(bands, np.asarray(bound, np.float32)))
    return sigma_at_level(ldr.mean(axis=2), bands)[:, :, None]


def _ldr_noise_and_slope(ldr_mid: np.ndarray, hdr_mid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ldr, the LDR noise sigma per pixel H x W x 1 (robust estimate), d mu(H) / d ldr per pixel and channel
    H x W x 3)."""
    ldr = np.clip(np.asarray(ldr_mid, np.float32), 0.0, 1.0)
    hdr = np.clip(np.asarray(hdr_mid, np.float32), 0.0, None)
    slope = (MU / ((1.0 + MU * hdr) * math.log1p(MU))) * GAMMA * hdr / np.maximum(ldr, 1e-6)
    return ldr, _ldr_sigma(ldr), slope


def _log_noise(sigma: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """The gate's noise channel, log10(sigma_mu + NOISE_FLOOR) averaged over the channels (H x W float32)."""
    return np.log10(sigma * slope + NOISE_FLOOR).mean(axis=2).astype(np.float32)


def medium_noise_map(ldr_mid: np.ndarray, hdr_mid: np.ndarray) -> np.ndarray:
    """The medium frame's noise per pixel, carried into the mu-law domain of its radiance: log10(sigma_mu + 1e-5),
    H x W float32. ``ldr_mid`` H x W x 3 in [0, 1] (gamma-encoded), ``hdr_mid`` its linear radiance (ldr**2.2 / t).

    The LDR noise per brightness band is the label denoiser's texture-blind estimate; d mu / d ldr follows from
    H = ldr**2.2 / t as mu'(H) * 2.2 H / ldr, so the exposure time is not needed."""
    return _log_noise(*_ldr_noise_and_slope(ldr_mid, hdr_mid)[1:])


def medium_noise_map_and_band(ldr_mid: np.ndarray, hdr_mid: np.ndarray, band_noise: str = 'robust',
                              with_sigma: bool = False, bound: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``medium_noise_map`` and ``medium_noise_band``; with ``band_noise`` 'robust' from one noise estimate, with
    one of the 'weak_texture' estimators the band from that estimate and the map, which the gate's CNN was trained
    on, as before.
    ``with_sigma``: also the band's LDR noise sigma per pixel (H x W x 1, floored), for ``long_witness_band``.
    ``bound``: the band's noise capped per brightness band (``bracket_noise_bounds``); the map stays as it was."""
    ldr, sigma, slope = _ldr_noise_and_slope(ldr_mid, hdr_mid)
    noise = _log_noise(sigma, slope)
    if band_noise != 'robust' or bound is not None:
        sigma = _ldr_sigma(ldr, band_noise, bound)
    # A band whose estimate is exactly 0 (perfectly flat blocks: a synthetic or heavily compressed frame) still has
    # at least 8-bit quantisation noise; without a floor the clamp would pin the output to the frame there.
    # A NaN estimate (a NaN pixel spreads through the estimator's neighbourhoods) stays NaN, which opens the band
    # there: flooring it would pin the output to that frame's quantisation.
    sigma = np.where((sigma > 0) | np.isnan(sigma), sigma, QUANTISATION_SIGMA)
    band = (sigma * slope).astype(np.float32)
    unreliable = ((ldr.max(axis=2) >= CLIPPED_LEVEL) | (ldr.min(axis=2) <= 3.0 * sigma[:, :, 0])
                  | (np.asarray(hdr_mid).max(axis=2) >= 1.0))  # mu-law's range ends at 1: the band means nothing
    band[unreliable] = np.inf
    return (noise, band, sigma) if with_sigma else (noise, band)


def medium_noise_band(ldr_mid: np.ndarray, hdr_mid: np.ndarray, band_noise: str = 'robust') -> np.ndarray:
    """The medium frame's noise per pixel and channel in mu-law (H x W x 3 float32), for the consistency clamp:
    inf where the frame says nothing reliable, i.e. clipped white (a channel at CLIPPED_LEVEL or above), so dark
    that a channel is within 3 sigma of black, where its noise is cut at 0 (a black pixel's radiance is unknown), or
    with a radiance of 1 or more in a channel (beyond the mu-law range the outputs live in). ``band_noise``: the
    noise estimator (``BAND_NOISE``)."""
    return medium_noise_map_and_band(ldr_mid, hdr_mid, band_noise)[1]


def _to_batch(maps: list[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    """H x W or H x W x C arrays -> (N, C, H, W) on ``like``'s device."""
    stacked = np.stack(maps)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked)).to(like.device)


def _images(x_mid: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LDR, radiance) H x W x 3 arrays of each image of a batch of backbone inputs (N, 6, H, W)."""
    arrays = x_mid.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return [(a[..., 3:6], a[..., 0:3]) for a in arrays]


def noise_maps(x_mid: torch.Tensor) -> torch.Tensor:
    """``medium_noise_map`` for a batch of backbone inputs (N, 6, H, W) = [H_mid, LDR_mid]: (N, 1, H, W)."""
    return _to_batch([medium_noise_map(*image) for image in _images(x_mid)], x_mid)


def noise_bands(x_mid: torch.Tensor, band_noise: str = 'robust') -> torch.Tensor:
    """``medium_noise_band`` for a batch of backbone inputs (N, 6, H, W): (N, 3, H, W)."""
    return _to_batch([medium_noise_band(*image, band_noise) for image in _images(x_mid)], x_mid)


def medium_maps(x_mid: torch.Tensor, band_noise: str = 'robust',
                bound: np.ndarray | None = None) -> list[tuple[np.ndarray, ...]]:
    """``medium_noise_map_and_band(..., with_sigma=True)`` of each image of a batch of backbone inputs: (noise map,
    band, LDR sigma) per image, for noise_maps_and_bands and long_bands; ``bound``: as there, for every image (the
    tiles of one bracket)."""
    return [medium_noise_map_and_band(*image, band_noise, with_sigma=True, bound=bound) for image in _images(x_mid)]


def noise_maps_and_bands(x_mid: torch.Tensor, band_noise: str = 'robust') -> tuple[torch.Tensor, torch.Tensor]:
    """``noise_maps`` and ``noise_bands`` (the band from ``band_noise``'s estimate) per image."""
    maps = medium_maps(x_mid, band_noise)
    return _to_batch([m[0] for m in maps], x_mid), _to_batch([m[1] for m in maps], x_mid)


def _exposure_time(ldr: np.ndarray, hdr: np.ndarray) -> float:
    """The exposure time a backbone input was built with (H = ldr ** 2.2 / t, clipped pixels included: H is made
    from the clipped code): the median over its pixels above 0.05; nan when it has none."""
    lit = (ldr > 0.05) & (hdr > 0)
    return float(np.median(np.power(ldr[lit], GAMMA) / hdr[lit])) if lit.any() else float('nan')


def _medium_echo(ldr_frame: np.ndarray, t_frame: float, ldr_mid: np.ndarray, t_mid: float) -> np.ndarray:
    """Where a (clipped) aligned frame is the medium frame brought to its exposure (H x W bool): ``util.align`` fills
    a rejected warp so, and such a copy matches to the rounding of an 8-bit code in every channel
    (``ECHO_TOLERANCE``); it witnesses nothing the medium frame does not say itself."""
    from util.align import equalise_exposure

    return (np.abs(ldr_frame - equalise_exposure(ldr_mid, t_mid, t_frame)) <= ECHO_TOLERANCE).all(axis=2)


def short_witness_band(ldr_short: np.ndarray, hdr_short: np.ndarray, ldr_mid: np.ndarray,
                       hdr_mid: np.ndarray) -> np.ndarray:
    """The (aligned) short frame's noise band in mu-law (H x W x 3, as medium_noise_band), finite only where it
    witnesses a pixel the medium frame clips: the medium frame is clipped there (a channel at CLIPPED_LEVEL or above),
    the short frame says something reliable (its own band is finite), and the two agree (brought to the medium
    frame's exposure, the short frame reaches the clip in the clipped channels and lies within SHORT_AGREEMENT of
    the medium frame in the others: ``util.align.agrees_with_reference``), and the short frame is not the medium
    frame itself: where ``util.align`` rejects a warp it fills in the medium frame brought to the short exposure, and
    over a clipped pixel that copy knows only the clip's lower bound (``ECHO_TOLERANCE``: such a copy matches the
    medium frame to the rounding of an 8-bit code in every channel)."""
    from util.align import agrees_with_reference

    if not (np.asarray(ldr_mid).max(axis=2) >= CLIPPED_LEVEL).any():  # nothing clipped: nothing to witness
        return np.full(np.shape(ldr_short), np.inf, np.float32)
    # the robust estimate, whatever the gate's band_noise: a wider band leaves the network's denoised highlight more
    # room against the bracket's noisiest frame (validation: 32.57 dB over the clipped pixels with the weak-texture
    # estimate here, 32.72 without)
    band = medium_noise_band(ldr_short, hdr_short)
    t_short, t_mid = _exposure_time(ldr_short, hdr_short), _exposure_time(ldr_mid, hdr_mid)
    if not (math.isfinite(t_short) and math.isfinite(t_mid) and t_short < t_mid):
        band[...] = np.inf  # no exposure to compare, or not a shorter frame: it witnesses nothing
        return band
    ldr_short, ldr_mid = np.clip(ldr_short, 0, 1), np.clip(ldr_mid, 0, 1)
    echo = _medium_echo(ldr_short, t_short, ldr_mid, t_mid)
    witness = ((ldr_mid.max(axis=2) >= CLIPPED_LEVEL) & ~echo
               & agrees_with_reference(ldr_short, ldr_mid, t_short, t_mid, CLIPPED_LEVEL, SHORT_AGREEMENT))
    band[~witness] = np.inf
    return band


def long_witness_band(ldr_long: np.ndarray, hdr_long: np.ndarray, ldr_mid: np.ndarray, hdr_mid: np.ndarray,
                      sigma_mid: np.ndarray, band_mid: np.ndarray) -> np.ndarray:
    """The (aligned) long frame's noise band in mu-law (H x W x 3, as medium_noise_band: inf where the long frame
    is clipped or within 3 sigma of black), finite only where it witnesses the pixel: it is a longer exposure, not
    the alignment's copy of the medium frame (``util.align`` fills a rejected warp with the medium frame brought to
    the long exposure: ``ECHO_TOLERANCE``), and, brought to the medium exposure, it lies within LONG_AGREEMENT times
    ``sigma_mid`` (the medium frame's LDR noise per pixel, H x W x 1) of the medium frame in every channel: the scene
    is static there and the warp right; and where it is the cleaner witness: ``band_mid`` (the medium frame's band,
    medium_noise_band's) is inf there or, averaged over the channels, LONG_NOISE_RATIO times the long frame's. The
    long frame's own band is the robust estimate, as the short frame's."""
    from util.align import equalise_exposure

    band = medium_noise_band(ldr_long, hdr_long)
    t_long, t_mid = _exposure_time(ldr_long, hdr_long), _exposure_time(ldr_mid, hdr_mid)
    if not (math.isfinite(t_long) and math.isfinite(t_mid) and t_long > t_mid):
        band[...] = np.inf  # no exposure to compare, or not a longer frame: it witnesses nothing
        return band
    ldr_long, ldr_mid = np.clip(ldr_long, 0, 1), np.clip(ldr_mid, 0, 1)
    echo = _medium_echo(ldr_long, t_long, ldr_mid, t_mid)
    # a NaN anywhere fails the comparison: no witness there
    tolerance = LONG_AGREEMENT * np.maximum(sigma_mid, QUANTISATION_SIGMA)
    agree = (np.abs(equalise_exposure(ldr_long, t_long, t_mid) - ldr_mid) <= tolerance).all(axis=2)
    # the long band is the robust estimate, the medium one the gate's (weak-texture in the shipped gate): on clean,
    # textured frames the robust one reads higher, so the test leans against the long frame there (validated so)
    with np.errstate(invalid='ignore'):  # inf - inf in an open band's mean
        cleaner = ~np.isfinite(band_mid).all(axis=2) | (band_mid.mean(axis=2) > LONG_NOISE_RATIO * band.mean(axis=2))
    band[echo | ~agree | ~cleaner] = np.inf
    return band


def witness_clamp_refusal(network: str | None, frame: str = 'short') -> str | None:
    """Why a clamp to the ``frame`` ('short' or 'long') must not run behind backbone ``network`` (None when it may,
    or when the backbone is unknown): a backbone that takes unaligned frames sees that frame with its ghosts, which
    the clamp would copy into the output."""
    from models.backbones import NAMES, backbone

    if network in NAMES and not backbone(network).aligned_input:
        return (f'{network} takes unaligned frames, and holding its output to the {frame} frame would copy that '
                f'frame\'s ghosts (the {frame} frame\'s clamp is for backbones with aligned inputs)')
    return None


def short_floor(out: torch.Tensor, x_short: torch.Tensor, x_mid: torch.Tensor) -> torch.Tensor:
    """``out`` raised, channel by channel, to the (aligned) short frame's radiance wherever that channel is clipped
    in both the medium and the short frame: the scene is at least as bright as the short frame's clipped reading
    (capped at 1, the backbones' range). Where the alignment's fallback (the medium frame brought to the short
    exposure) reaches the clip at all (frames under 1/6 stop apart), its reading is the medium frame's own clipped
    one, a lower bound too. Inputs (N, 6, H, W) = [radiance, LDR], float32; a NaN reading leaves ``out`` as it is."""
    both = (x_mid[:, 3:6] >= CLIPPED_LEVEL) & (x_short[:, 3:6] >= CLIPPED_LEVEL)
    return torch.where(both, torch.fmax(out, x_short[:, 0:3].clamp(max=1.0)), out)


def short_bands(x_short: torch.Tensor, x_mid: torch.Tensor) -> torch.Tensor:
    """``short_witness_band`` for a batch of backbone inputs (N, 6, H, W): (N, 3, H, W)."""
    return _to_batch([short_witness_band(ls, hs, lm, hm)
                      for (ls, hs), (lm, hm) in zip(_images(x_short), _images(x_mid))], x_mid)


def long_bands(x_long: torch.Tensor, x_mid: torch.Tensor, maps: list[tuple[np.ndarray, ...]]) -> torch.Tensor:
    """``long_witness_band`` for a batch of backbone inputs (N, 6, H, W), with each image's medium-frame maps
    (``medium_noise_map_and_band(..., with_sigma=True)``: noise map, band, LDR sigma): (N, 3, H, W)."""
    return _to_batch([long_witness_band(ll, hl, lm, hm, m[2], m[1])
                      for (ll, hl), (lm, hm), m in zip(_images(x_long), _images(x_mid), maps)], x_mid)


class MediumGate(nn.Module):
    """The gate's CNN and blend. forward(y, x_mid, noise, band=None, x_short=None, short_band=None, x_long=None,
    long_band=None) -> (out, g); all
    float32, ``noise`` from noise_maps, ``band`` from noise_bands (needed when ``consistency`` > 0: the clamp's k, 0
    for none), ``x_short`` the (aligned) short frame's backbone input and ``short_band`` from short_bands (needed
    when ``short_consistency`` > 0: the short frame's clamp over the medium frame's clipped pixels). With
    ``fallback`` = m above ``consistency``, the medium frame's clamp hands the frame itself back where the output
    strays m sigmas or more from it (``_fall_back``). With ``fusion_window`` > 0 (and ``consistency`` > 0, whose band
    it uses), the output is fused with the medium frame before that clamp (``fuse``). ``x_long`` the (aligned) long
    frame's backbone input and ``long_band`` from long_bands (needed when ``long_consistency`` > 0: the long frame's
    clamp where it witnesses; with ``long_within_medium``, the medium frame's clamp again after it)."""

    def __init__(self, channels: int = 32, consistency: float = 0.0, chroma: float = 0.0,
                 short_consistency: float = 0.0, fallback: float = 0.0, band_noise: str = 'robust',
                 fusion_window: int = 0, long_consistency: float = 0.0, long_within_medium: bool = True,
                 bracket_noise: bool = False, fusion_prior: float = 0.0):
        super().__init__()
        if band_noise not in BAND_NOISE:
            raise ValueError(f'MediumGate: band_noise {band_noise!r} is not one of {", ".join(BAND_NOISE)}')
        if fusion_window_problem(fusion_window):
            raise ValueError(f'MediumGate: {fusion_window_problem(fusion_window)}')
        if fusion_prior_problem(fusion_prior):
            raise ValueError(f'MediumGate: {fusion_prior_problem(fusion_prior)}')
        c = channels
        self.band_noise = band_noise
        self.fusion_window = int(fusion_window)
        self.consistency = float(consistency)
        self.chroma = float(chroma)
        self.short_consistency = float(short_consistency)
        self.fallback = float(fallback)
        self.long_consistency = float(long_consistency)
        self.long_within_medium = bool(long_within_medium)
        self.bracket_noise = bool(bracket_noise)
        self.fusion_prior = float(fusion_prior)
        self.body = nn.Sequential(
            nn.Conv2d(13, c, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 1, 3, padding=1))
        # starts as a weak, uniform blend (g = 0.12): training decides where to trust the medium frame
        nn.init.zeros_(self.body[-1].weight)
        nn.init.constant_(self.body[-1].bias, -2.0)

    def forward(self, y, x_mid, noise, band=None, x_short=None, short_band=None, x_long=None, long_band=None):
        hdr_mid, ldr_mid = x_mid[:, 0:3], x_mid[:, 3:6]
        mu_y, mu_mid = mu_law_torch(y.clamp(0, 1)), mu_law_torch(hdr_mid.clamp(0, 1))
        features = torch.cat([mu_y, mu_mid, ldr_mid, (mu_y - mu_mid).abs(), (noise + 3.0) / 2.0], dim=1)
        g = torch.sigmoid(self.body(features))
        usable = (ldr_mid.amax(dim=1, keepdim=True) < CLIPPED_LEVEL).to(y.dtype)
        # at most 1, the backbones' (sigmoid) range: a medium frame exposed shorter than the short-exposure scale's
        # unit (t_mid < 1) would otherwise lift a pixel above it
        out = (y + g * usable * (hdr_mid - y)).clamp(max=1.0)
        if self.consistency > 0:
            if band is None or band.shape != out.shape:
                raise ValueError('MediumGate: consistency is set, so forward needs the noise band of the output\'s '
                                 f'shape {tuple(out.shape)} (noise_bands), got '
                                 f'{None if band is None else tuple(band.shape)}')
            if self.fusion_window:
                out = self.fuse(out, mu_mid, band)
            out = self.hold_to_band(out, mu_mid, band, fallback=True)
        if self.long_consistency > 0:
            if x_long is None or long_band is None or long_band.shape != out.shape:
                raise ValueError('MediumGate: long_consistency is set, so forward needs the long frame and its '
                                 f'witness band of the output\'s shape {tuple(out.shape)} (long_bands), got '
                                 f'{None if long_band is None else tuple(long_band.shape)}')
            out = self.hold_to_band(out, mu_law_torch(x_long[:, 0:3].clamp(0, 1)), long_band, self.long_consistency)
            if self.long_within_medium and self.consistency > 0:
                # the long frame's clamp moves the output within the medium frame's band, never out of it: where the
                # two bands do not overlap, the medium frame (the reference the network is scored against) decides
                # (with chroma > 0 the second clamp's brightness step may also move a channel the long clamp held).
                # On nearly noise-free frames the medium band is the narrower, and a long frame's warp error pushed
                # past it cost `clean` scenes (validation: every scene gains or holds, 37.67 -> 37.73 dB)
                out = self.hold_to_band(out, mu_mid, band)
        if self.short_consistency > 0:
            if x_short is None or short_band is None or short_band.shape != out.shape:
                raise ValueError('MediumGate: short_consistency is set, so forward needs the short frame and its '
                                 f'witness band of the output\'s shape {tuple(out.shape)} (short_bands), got '
                                 f'{None if short_band is None else tuple(short_band.shape)}')
            # no fallback to the short frame: there the network's denoised highlight is worth more than the
            # noisiest frame of the bracket (validation: the clipped pixels lose 0.2 dB with it)
            out = self.hold_to_band(out, mu_law_torch(x_short[:, 0:3].clamp(0, 1)), short_band,
                                    self.short_consistency)
            out = short_floor(out, x_short, x_mid)
        return out, g

    @property
    def idle_fusion(self) -> bool:
        """A fusion that is set but never acts: it needs the clamp's band (the tools warn of it)."""
        return bool(self.fusion_window) and not self.consistency

    @property
    def idle_fallback(self) -> bool:
        """A fallback that is set but never acts: not above the medium frame's clamp (the tools warn of it)."""
        return 0 < self.fallback <= self.consistency

    def fuse(self, out, mu_ref, band):
        """``out`` and the witness ``mu_ref`` (mu-law) fused as two estimates of one radiance, per channel: the
        deviation d = mu(out) - mu_ref is kept in the share sigma^2 / max(E[d^2], sigma^2), E over a
        ``fusion_window``-pixel square (the linear minimum-mean-square-error weight when the witness's noise has
        variance sigma^2 = band^2 and E[d^2] = sigma^2 + the output's own error). A deviation within noise stays
        (a denoised reading), one many times the noise (blur, a darkened highlight) shrinks towards the witness.
        No change where the band is inf (or NaN), or the output or the witness is not finite; such pixels count as no
        deviation in their neighbours' E[d^2] (averaged over the window's pixels inside the image): averaging over
        the pixels with a band alone cost the validation split's dark pixels 0.13 dB (32.81 against 32.94), the
        near-black pixels without a band lying among them.

        With ``fusion_prior`` p > 0 the share is 1 / (1 + r) where r, the output's own error in units of sigma^2, is
        (1 - p) max(E[d^2] / sigma^2 - 1, 0) plus p times that excess's mean over the image's pixels with a band (per
        image and channel; per tile under tiled inference): the weight above is this with p = 0."""
        import torch.nn.functional as F

        mu_out = mu_law_torch(out.clamp(0, 1))
        d = mu_out - mu_ref
        open_ = ~(torch.isfinite(band) & torch.isfinite(d))
        d = torch.where(open_, 0.0, d)
        w = self.fusion_window
        spread = F.avg_pool2d(d.square(), w, stride=1, padding=w // 2, count_include_pad=False)
        noise = torch.where(open_, 0.0, band).square()
        if self.fusion_prior > 0:
            excess = torch.where(open_, 0.0, (spread / noise.clamp_min(1e-20) - 1).clamp_min(0))
            counted = (~open_).sum(dim=(2, 3), keepdim=True).clamp_min(1)
            mean_excess = excess.sum(dim=(2, 3), keepdim=True) / counted
            keep = 1 / (1 + (1 - self.fusion_prior) * excess + self.fusion_prior * mean_excess)
        else:
            keep = noise / torch.maximum(spread, noise).clamp_min(1e-20)
        moved = ~open_ & (keep < 1)  # keep 1 (no excess here, nor in the mean) leaves the pixel exactly as it is
        fused = torch.where(moved, mu_ref + keep * d, mu_out)
        return torch.where(moved, inverse_mu_law_torch(fused.clamp(0, 1)), out)

    def hold_to_band(self, out, mu_ref, band, k=None, fallback=False):
        """``out`` clamped, in mu-law, to ``mu_ref`` +- k * band (no change where band is inf).

        With ``chroma`` = c > 0 the clamp goes in two steps: every channel first moves by the mean of the moves the
        per-channel clamp asks for (the pixel's brightness is held to the band), then each channel is held within c
        times the band. c > 1 leaves the network's colour more room than its brightness: a noisy frame's chroma noise
        is what the network removes in the shadows, and a per-channel clamp hands part of it back (README, "Study and
        shipped model"). c = 0: the per-channel clamp alone, as gates stored without the entry have it. ``mu_ref``: the
        witness frame's mu-law radiance (the medium frame's, or the short frame's for the clipped pixels); ``k``: the
        clamp in sigmas (default ``consistency``). Where the band is inf nothing changes, whatever the witness holds
        (a NaN in a frame stays out of pixels it does not witness). ``fallback``: whether ``consistency_fallback``
        applies (True for the medium frame's clamp; the short frame's has none)."""
        k = self.consistency if k is None else k
        open_ = ~torch.isfinite(band)  # no band (inf, or NaN), no clamp
        reach = torch.where(open_, 0.0, k * band)
        mu_out = mu_law_torch(out.clamp(0, 1))
        held = torch.where(open_, mu_out, torch.minimum(torch.maximum(mu_out, mu_ref - reach), mu_ref + reach))
        if self.chroma > 0:
            shifted = mu_out + (held - mu_out).mean(dim=1, keepdim=True)
            wide = self.chroma * reach
            held = torch.where(open_, mu_out,
                               torch.minimum(torch.maximum(shifted, mu_ref - wide), mu_ref + wide).clamp(0, 1))
        if fallback and self.fallback > k:
            held = self._fall_back(held, mu_out, mu_ref, band, open_, k)
        # only the pixels the clamp moved go through the inverse: the others keep their exact values
        return torch.where(held != mu_out, inverse_mu_law_torch(held), out)

    def _fall_back(self, held, mu_out, mu_ref, band, open_, k):
        """``held`` moved towards the witness ``mu_ref`` by how far the network strayed from it: the pixel's distance
        d in sigmas (root mean square over its channels), no move up to k, the witness itself from ``fallback`` on,
        linear between. An output within noise of the witness may be a better (denoised) reading of it; one many
        sigmas away is a wrong one (a ghost, a blurred edge, a darkened highlight), and the band's edge is no better
        an estimate than the witness there."""
        # a band of exactly 0 (unreachable: medium_noise_band floors it at 8-bit quantisation) would hand the pixel
        # back whole, as any distance beyond m does
        sigmas = torch.where(open_, 0.0, (mu_out - mu_ref).abs() / band.clamp_min(1e-12))
        d = sigmas.square().mean(dim=1, keepdim=True).sqrt()
        r = ((d - k) / (self.fallback - k)).clamp(0, 1)
        return torch.where(open_, held, torch.lerp(held, mu_ref, r).clamp(0, 1))


class GatedNetwork(nn.Module):
    """A backbone followed by its medium gate; called like the backbone, forward(x1, x2, x3) -> (N, 3, H, W).

    The gate runs in float32 outside any autocast, whatever precision the backbone ran in."""

    def __init__(self, backbone: nn.Module, gate: MediumGate):
        super().__init__()
        self.backbone = backbone
        self.gate = gate
        self.bracket_bounds = None  # set by bracket_noise() for the bracket being merged

    def forward(self, x1, x2, x3):
        y = self.backbone(x1, x2, x3)
        with torch.autocast(y.device.type, enabled=False):
            x_mid = x2.float()
            noise = band = x_short = short_band = x_long = long_band = None
            if self.gate.consistency > 0 or self.gate.long_consistency > 0:
                bound = self.bracket_bounds if self.gate.bracket_noise else None
                maps = medium_maps(x_mid, self.gate.band_noise, bound)
                noise = _to_batch([m[0] for m in maps], x_mid)
                band = _to_batch([m[1] for m in maps], x_mid) if self.gate.consistency > 0 else None
                if self.gate.long_consistency > 0:
                    x_long = x3.float()
                    long_band = long_bands(x_long, x_mid, maps)
            else:
                noise = noise_maps(x_mid)
            if self.gate.short_consistency > 0:
                x_short = x1.float()
                short_band = short_bands(x_short, x_mid)
            return self.gate(y.float(), x_mid, noise, band, x_short, short_band, x_long, long_band)[0]


def reads_bracket_noise(net) -> bool:
    """Whether ``net`` is a gated network whose gate takes the whole bracket's noise (``bracket_noise``), so that a
    caller need only gather the unwarped frames for one that does."""
    from models.networks import unwrap

    gated = unwrap(net)
    return isinstance(gated, GatedNetwork) and gated.gate.bracket_noise


@contextlib.contextmanager
def bracket_noise(net, frames):
    """Within the block, ``net``'s medium gate caps the medium frame's noise band with the whole bracket's
    (``bracket_noise_bounds`` of the first and last of ``frames``: the bracket's unwarped frames as the backbone reads
    them, short to long, or its short and long frames alone, before any alignment) when the gate is one that does
    (``bracket_noise``, gates of version 10); every tile of the bracket then shares the bound. Any other ``net``, or
    ``frames`` None: no change (the gate reads the medium frame alone, as gates before version 10 do)."""
    from models.networks import unwrap

    gated = unwrap(net)
    if frames is None or not reads_bracket_noise(gated):
        yield
        return
    previous = gated.bracket_bounds
    # the short and the long frame: the gate makes the medium frame's own estimate, and it bounds itself
    gated.bracket_bounds = bracket_noise_bounds([frames[0], frames[-1]])
    try:
        yield
    finally:
        gated.bracket_bounds = previous


def extra_bytes_per_pixel(net) -> int:
    """What a network's medium gate adds to its inference memory per pixel (0 without one)."""
    from models.networks import unwrap

    net = unwrap(net)
    if not isinstance(net, GatedNetwork):
        return 0
    heavier = net.gate.band_noise != 'robust' or net.gate.long_consistency > 0
    return GATE_BYTES_PER_PIXEL if heavier else ROBUST_GATE_BYTES_PER_PIXEL


def read_gate(path, checkpoint: dict | None = None) -> MediumGate | None:
    """The gate stored in checkpoint ``path``, or None when it has none; ``checkpoint``: the file's contents when
    they are loaded already (load_backbone_state returns them), so the file is not read twice."""
    if checkpoint is None:
        checkpoint = torch.load(str(path), map_location='cpu', weights_only=True)
    entry = checkpoint.get(GATE_KEY) if isinstance(checkpoint, dict) else None
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get('version') not in GATE_VERSIONS or 'state_dict' not in entry:
        raise GateError(f'{path}: its {GATE_KEY!r} entry is not a medium gate of version '
                        f'{" or ".join(map(str, GATE_VERSIONS))}')
    def setting(key: str) -> float:  # absent (an older gate): 0, the setting off
        value = entry.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise GateError(f'{path}: the medium gate\'s {key} {value!r} is not a number >= 0')
        return float(value)

    def switch(key: str) -> bool:  # absent (an older gate): off
        value = entry.get(key, False)
        if not isinstance(value, bool):
            raise GateError(f'{path}: the medium gate\'s {key} {value!r} is not true or false')
        return value

    # absent from a gate of version 6 or older: the long frame's clamp as it ran then, free to leave the medium band;
    # bracket_noise absent (version 9 or older): the medium frame's noise alone
    long_within_medium, bracket = switch('long_within_medium'), switch('bracket_noise')
    try:  # band_noise and fusion_window absent (an older gate): the estimate it was chosen with, no fusion
        gate = MediumGate(int(entry.get('channels', 32)), setting('consistency'), setting('consistency_chroma'),
                          setting('short_consistency'), setting('consistency_fallback'),
                          entry.get('band_noise', 'robust'), entry.get('fusion_window', 0),
                          setting('long_consistency'), long_within_medium, bracket, setting('fusion_prior'))
    except ValueError as exc:
        raise GateError(f'{path}: the medium gate entry: {exc}') from exc
    try:
        gate.load_state_dict(entry['state_dict'])
    except RuntimeError as exc:
        raise GateError(f'{path}: the medium gate does not load ({exc})') from exc
    if not all(torch.isfinite(p).all() for p in gate.parameters()):
        raise GateError(f'{path}: the medium gate has NaN/Inf weights')
    gate.network = entry.get('network')  # the backbone it was made for, when the tools recorded it
    return gate.eval()


def with_gate(net: nn.Module, path, mode: str = 'auto', checkpoint: dict | None = None,
              network: str | None = None) -> nn.Module:
    """``net`` (a backbone loaded from ``path``) followed by the checkpoint's medium gate: with mode 'auto' when the
    checkpoint has one, always with 'on' (an error when it has none), never with 'off'. ``checkpoint``: as
    read_gate's. ``network``: the backbone's name (else the one the gate recorded); the short and long frames'
    clamps are switched off, with a warning, for a backbone that takes unaligned frames (they would copy their
    ghosts)."""
    if mode not in GATE_MODES:
        raise GateError(f"--medium_gate {mode!r}: choose one of {', '.join(GATE_MODES)}")
    if mode == 'off':
        return net
    gate = read_gate(path, checkpoint)
    if gate is None:
        if mode == 'on':
            raise GateError(f'--medium_gate on, but {path} has no medium gate (train one with tools/train_gate.py)')
        return net
    for frame in ('short', 'long'):
        key = f'{frame}_consistency'
        refusal = witness_clamp_refusal(network or gate.network, frame) if getattr(gate, key) > 0 else None
        if refusal:
            logger.warning('medium gate: %s, so its %s %g in %s is switched off', refusal, key, getattr(gate, key),
                           path)
            setattr(gate, key, 0.0)
    held = []
    if gate.consistency:
        held.append(f'to the medium frame within {gate.consistency:g} sigma'
                    + (f' after fusing with it over {gate.fusion_window}x{gate.fusion_window} pixels'
                       + (f' (the image\'s mean error weighing {gate.fusion_prior:g})' if gate.fusion_prior else '')
                       if gate.fusion_window else '')
                    + (f' (colour within {gate.chroma:g} times that)' if gate.chroma else '')
                    + (f', the frame itself beyond {gate.fallback:g}' if gate.fallback and not gate.idle_fallback
                       else '')
                    + (', its noise read from the whole bracket' if gate.bracket_noise else ''))
    if gate.long_consistency:
        held.append(f'to the aligned long frame within {gate.long_consistency:g} sigma where it witnesses'
                    + (' (inside the medium frame\'s band)' if gate.long_within_medium and gate.consistency else ''))
    if gate.short_consistency:
        held.append(f'its clipped pixels to the aligned short frame within {gate.short_consistency:g} sigma')
    logger.info('medium gate: on (from %s%s; --medium_gate off gives the backbone alone)', path,
                f', held {" and ".join(held)}' if held else '')
    device = next(net.parameters()).device
    return GatedNetwork(net, gate.to(device)).train(net.training)


def gated_checkpoint(backbone_state: dict, gate: MediumGate, **info) -> dict:
    """A release-format checkpoint (``state_dict``: the backbone) that also carries ``gate`` under GATE_KEY."""
    entry = {'version': GATE_VERSION, 'channels': gate.body[0].out_channels, 'consistency': gate.consistency,
             'consistency_chroma': gate.chroma, 'short_consistency': gate.short_consistency,
             'consistency_fallback': gate.fallback, 'band_noise': gate.band_noise,
             'fusion_window': gate.fusion_window, 'long_consistency': gate.long_consistency,
             'long_within_medium': gate.long_within_medium, 'bracket_noise': gate.bracket_noise,
             'fusion_prior': gate.fusion_prior,
             'state_dict': {k: v.detach().cpu() for k, v in gate.state_dict().items()}}
    entry.update(info)
    return {'state_dict': backbone_state, GATE_KEY: entry}
