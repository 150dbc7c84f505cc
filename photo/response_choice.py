"""Which camera response a bracket gets: the ``--response``/``--gamma`` flags, the linear identity of RAW frames,
and the estimate from the bracket itself.

The default, ``auto``:

* **8-bit frames** (JPEG, 8-bit PNG/TIFF: every value a multiple of 1/255) get the curve **estimated from the
  bracket** (``photo.response.estimate_response``, one curve shared by the three channels), if the estimate
  passes a reliability check (:func:`unreliable_reasons`): enough of codes 20..235 observed by neighbouring
  exposures, a small fit residual, per-channel fits that agree with the shared one (they do not when the data
  cannot pin the curve: little overlap, heavy clipping), and a plausible local exponent. Otherwise a **power
  law** fitted to the bracket's exposure ratios if it explains them better than sRGB, else **sRGB**; the
  log says which and why.
* **16-bit frames** keep the training encoding (gamma 2.2, frames unchanged), **RAW** frames are linear.

The log says which curve was used and why; a bracket whose neighbouring frames share almost no well-exposed
pixels is a warning in any case (the merge then rests on one frame per region, and no curve can be estimated).
"""
from __future__ import annotations

import logging
import math

from photo.errors import MergeError
import numpy as np

from photo.response import (Response, ResponseError, bracket_pairs, curve_residual, estimate_response,
                            fit_power_law, gamma_table, resolve_response, save_response, srgb_table)
from util.colour import GAMMA

logger = logging.getLogger(__name__)


LINEAR_RAW = Response('linear (RAW)', gamma_table(1.0))  # identity: RAW frames are already linear


def resolve_response_flag(spec) -> Response:
    try:
        return resolve_response(str(spec))
    except ResponseError as exc:
        raise MergeError(f'--response: {exc}') from exc


AUTO = 'auto'
# Reliability check of an estimate (see the module docstring). MAX_CHANNEL_SPREAD and PARAMETRIC_GAIN were chosen on
# validation brackets (`bench/response_estimate.py --seed 1 --crops 16 --scenes 48`, its `rules` grid: the rule with
# the smallest worst-case gap between the default's colour error and the best fixed curve's, over 8 camera curves),
# never on the brackets it reports (seed 0). Tripod brackets with exposure overlap show per-channel fits within
# 0.05 stops of the shared curve (median 0.002), the real hdrmerge bracket 0.014; heavily clipped ones up to 2.3.
MIN_COVERAGE = 0.5          # fraction of codes 20..235 observed by some pair of neighbouring frames
MAX_RESIDUAL_STOPS = 0.25   # RMS of the ratio constraints the curve leaves unexplained
MAX_CHANNEL_SPREAD = 0.04   # stops between the per-channel fits and the shared curve (offsets removed)
SLOPE_RANGE = (0.5, 12.0)   # local exponent d log f / d log z over codes 20..235 (sRGB 1.4-2.3, filmic up to ~9)
MIN_OVERLAP = 0.02          # fraction of pixels well exposed in both of two neighbouring frames
# The fallback of an unreliable estimate: a power law fitted to the exposure ratios replaces sRGB when it explains
# them better (residual under this share of sRGB's; 1: whichever fits better), within a plausible range of exponents.
PARAMETRIC_GAIN = 1.0
GAMMA_RANGE = (1.6, 2.8)


def is_8bit(frames) -> bool:
    """Whether the frames hold 8-bit codes (every value a multiple of 1/255; looked at on a subsample)."""
    for x in frames:
        v = np.asarray(x, dtype=np.float64).ravel()[::7] * 255.0
        if v.size and np.abs(v - np.rint(v)).max() > 1e-3:
            return False
    return True


def unreliable_reasons(info: dict, max_residual: float = MAX_RESIDUAL_STOPS,
                       max_channel_spread: float = MAX_CHANNEL_SPREAD) -> list[str]:
    """Why an estimate should not be trusted (empty: it passes); ``info`` from ``estimate_response(info=...)``.
    The limits default to the module's (bench/response_estimate.py tries others on its validation brackets)."""
    reasons = []
    if info['coverage'] < MIN_COVERAGE:
        reasons.append(f'only {info["coverage"]:.0%} of codes 20..235 seen by neighbouring exposures')
    if info['residual_stops'] > max_residual:
        reasons.append(f'fit residual {info["residual_stops"]:.2f} stops')
    if info['channel_spread_stops'] > max_channel_spread:
        reasons.append(f'the channels disagree by {info["channel_spread_stops"]:.2f} stops')
    if not SLOPE_RANGE[0] <= info['slope_min'] <= info['slope_max'] <= SLOPE_RANGE[1]:
        reasons.append(f'implausible curve (local exponent {info["slope_min"]:.1f} to {info["slope_max"]:.1f})')
    return reasons


def overlap_warning(frames, paths) -> str | None:
    """A warning when two neighbouring frames (sorted by exposure) share almost no well-exposed pixels."""
    for a in range(len(frames) - 1):
        xa, xb = frames[a], frames[a + 1]
        ok = ((xa > 0.05) & (xa < 0.95) & (xb > 0.05) & (xb < 0.95)).all(axis=2)
        if ok.mean() < MIN_OVERLAP:
            return (f'{paths[a]} and {paths[a + 1]} share almost no well-exposed pixels ({ok.mean():.1%}): the '
                    'exposures are too far apart (or one frame is mostly black or clipped) for the bracket to '
                    'overlap; colours and the camera curve cannot be checked between them')
    return None


def estimate_from_bracket(frames, times, name, valid=None, info: dict | None = None) -> Response:
    try:
        table = estimate_response(frames, times, valid=valid, info=info)
    except ResponseError as exc:
        raise MergeError(f'{name}: --response estimate failed: {exc}') from exc
    return Response('estimate', table, why='--response estimate')


def choose_response(spec, frames, times, paths, valid=None, eight_bit: bool | None = None) -> Response:
    """The response of an LDR bracket (frames sorted by exposure) for ``spec`` ``auto`` or ``estimate`` (others:
    :func:`resolve_response_flag`). ``eight_bit``: whether the files hold 8-bit codes (default: judged from
    ``frames``; pre-aligned frames are interpolated, so pass it from the frames as read). Warns when the bracket
    lacks exposure overlap."""
    spec = str(spec).lower()
    warning = overlap_warning(frames, paths)
    if warning:
        logger.warning(warning)
    if spec == 'estimate':
        info = {}
        response = estimate_from_bracket(frames, times, paths[1], valid, info)
        reasons = unreliable_reasons(info)
        if reasons:
            logger.warning('%s: the estimated camera curve may be wrong (%s); consider --response srgb or a curve '
                           'saved from a better bracket', paths[1], '; '.join(reasons))
        return response
    if not (is_8bit(frames) if eight_bit is None else eight_bit):
        return Response(f'gamma{GAMMA:g}', gamma_table(GAMMA),
                        why='auto: 16-bit frames, taken as encoded like the training data (gamma 2.2)')
    info = {}
    try:
        table = estimate_response(frames, times, valid=valid, info=info)
        reasons = unreliable_reasons(info)
    except ResponseError as exc:
        table, reasons = None, [str(exc).split(';')[0]]
    if not reasons:
        return Response('estimate', table,
                        why=f'auto: estimated from this 8-bit bracket (fit residual {info["residual_stops"]:.3f} '
                            f'stops, channels agree within {info["channel_spread_stops"]:.3f}, '
                            f'{info["coverage"]:.0%} of codes seen)')
    fallback = parametric_fallback(frames, times, valid)
    why = f'auto: the estimate from this bracket is unreliable ({"; ".join(reasons)}), so {fallback.why}'
    logger.warning('%s: %s; give --response if you know the camera curve', paths[1], why[6:])
    return Response(fallback.name, fallback.table, why=why)


def parametric_fallback(frames, times, valid=None) -> Response:
    """sRGB, or the power law when the bracket's exposure ratios fit it better (its residual under
    ``PARAMETRIC_GAIN`` times sRGB's): what an unreliable free estimate falls back to. A single exponent is pinned
    by the few code pairs a heavily clipped bracket still has, where a whole curve is not."""
    pairs = bracket_pairs(frames, times, valid)
    gamma = fit_power_law(pairs, *GAMMA_RANGE)
    if gamma is not None:
        gamma = round(gamma, 2)
        res_gamma, res_srgb = curve_residual(pairs, gamma_table(gamma)), curve_residual(pairs, srgb_table())
        if res_gamma < PARAMETRIC_GAIN * res_srgb:
            return Response(f'gamma{gamma:g}', gamma_table(gamma),
                            why=f'gamma {gamma:g} is used (the exposure ratios fit it with a residual of '
                                f'{res_gamma:.3f} stops, sRGB {res_srgb:.3f})')
        return Response('srgb', srgb_table(), why=f'sRGB is used (the best power law, gamma {gamma:g}, fits the '
                                                   f'exposure ratios no better: {res_gamma:.3f} vs {res_srgb:.3f} '
                                                   'stops)')
    return Response('srgb', srgb_table(), why='sRGB is used')


def save_response_to_file(path, response: Response) -> None:
    try:
        save_response(path, response.table)
    except (ResponseError, OSError) as exc:
        raise MergeError(f'--save_response {path}: {exc}') from exc
    logger.info('camera response (%s) saved to %s', response.name, path)


def response_flag(args) -> str:
    """The response named by the ``--response``/``--gamma`` flags of ``args`` (``auto`` when neither)."""
    if args.gamma is not None and args.response is not None:
        raise MergeError('give either --response or --gamma, not both')
    if args.gamma is not None:
        if not (math.isfinite(args.gamma) and args.gamma > 0):
            raise MergeError(f'--gamma must be a positive number, got {args.gamma}')
        return f'gamma{args.gamma:g}'
    return args.response if args.response is not None else AUTO
