"""Camera response curves: 8-bit code value -> relative linear radiance, per channel (pure NumPy/OpenCV).

A response is a ``256 x 3`` float64 table ``f[z, c]`` (channel order **B, G, R**, as everywhere in this
project): code ``z`` of channel ``c`` was produced by relative radiance ``f[z, c]``. Tables are normalised so
that ``f[0] = 0`` and ``f[255] = 1`` (the saturation point maps to 1, as ``(255/255) ** 2.2`` does) and are
non-decreasing. Frames of any bit depth are linearised by linear interpolation at ``x * 255``.

The networks were trained on ``H = X ** 2.2 / t`` with ``X`` the frame itself, so a frame whose camera is not a
2.2 power law is linearised with its own response and then **re-encoded with the training gamma**:
``X' = f(X) ** (1 / 2.2)``. The network then sees ``cat([X' ** 2.2 / t, X'])``, exactly the kind of input it was
trained on (:meth:`Response.to_training_ldr`). For the ``gamma2.2`` response this is the identity and the
frames pass through unchanged, bit for bit.

Responses (``resolve_response``): ``gamma2.2`` (or any ``gamma<g>``), ``srgb`` (IEC 61966-2-1), a saved table
(``.npy`` or ``.csv``: ``save_response`` / ``load_response``), or one estimated from the bracket itself
(``estimate_response``):

* ``method='ratio'`` *(our own robust fit, the default)*: a non-parametric curve ``g = log f`` (256 knots,
  piecewise linear) fitted to every pair of neighbouring exposures through Mitsunaga and Nayar's ratio
  constraint ``g(z_bright) - g(z_dark) = log(t_bright / t_dark)`` (linear in ``g``, the ratio known from the
  exposure times, no per-pixel unknowns), ``g(255) = 0``, a smoothness prior on ``d2 g / d(log z)2`` (power laws
  and the sRGB toe cost nothing, so sparse codes are extrapolated as a power law) and iteratively reweighted
  least squares with Cauchy weights. Corresponding codes come from **histogram matching** by default
  (``data='histogram'``, Grossberg and Nayar's brightness transfer function: insensitive to camera shake and
  moving objects as long as the frames show the same content), or from the same pixels of registered frames
  (``data='pixels'``, at most ``per_code`` per code). Code 255 cannot be observed unclipped, so where it sits
  (the scale of ``f``) is the prior's extrapolation; the curve's shape is what the data fix.
* ``method='debevec'`` / ``'robertson'``: OpenCV's ``createCalibrateDebevec`` / ``createCalibrateRobertson`` on
  the 8-bit frames, normalised and made monotone the same way (kept for comparison; ``bench/response_estimate.py``
  measures all three).
"""
from __future__ import annotations

import functools
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ['N_CODES', 'TRAINING_GAMMA', 'ResponseError', 'Response', 'gamma_table', 'srgb_table', 'normalise_table',
           'check_table', 'save_response', 'load_response', 'resolve_response', 'estimate_response',
           'linearise', 'encode', 'ESTIMATE_METHODS', 'JUDGED_CODES']

N_CODES = 256
TRAINING_GAMMA = 2.2  # util.colour.GAMMA; repeated so this module imports nothing of the project
ESTIMATE_METHODS = ('ratio', 'debevec', 'robertson')
_GAMMA_RE = re.compile(r'^gamma(\d+(?:\.\d*)?|\.\d+)$')


class ResponseError(ValueError):
    """A response curve that cannot be used (bad file, bad shape, not increasing, too little data)."""


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def gamma_table(gamma: float = TRAINING_GAMMA) -> np.ndarray:
    """``f(z) = (z / 255) ** gamma`` for the three channels."""
    if not (np.isfinite(gamma) and gamma > 0):
        raise ResponseError(f'gamma must be a positive number, got {gamma}')
    z = np.arange(N_CODES, dtype=np.float64) / (N_CODES - 1)
    return np.repeat((z ** gamma)[:, None], 3, axis=1)


def srgb_table() -> np.ndarray:
    """Inverse of the sRGB transfer function (IEC 61966-2-1): linear toe below code 0.04045, power 2.4 above."""
    v = np.arange(N_CODES, dtype=np.float64) / (N_CODES - 1)
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    return np.repeat(lin[:, None], 3, axis=1)


def normalise_table(table: np.ndarray) -> np.ndarray:
    """Non-negative, non-decreasing, ``f[0] = 0`` and ``f[255] = 1`` per channel (a copy)."""
    f = np.array(table, dtype=np.float64, copy=True)
    f = np.maximum(f, 0.0)
    f = np.maximum.accumulate(f, axis=0)
    f[0] = 0.0  # code 0 means 'that radiance or less'
    top = f[-1:].copy()
    if np.any(top <= 0):
        raise ResponseError('response curve is flat (the same radiance for every code value)')
    return f / top


def check_table(table, source: str = 'response') -> np.ndarray:
    """Validate a table (256 x 3, finite, increasing overall) and return it normalised."""
    f = np.asarray(table, dtype=np.float64)
    if f.ndim == 1 and f.shape[0] == N_CODES:
        f = np.repeat(f[:, None], 3, axis=1)  # one curve for all channels
    if f.shape != (N_CODES, 3):
        raise ResponseError(f'{source}: expected a {N_CODES} x 3 table (code value -> radiance, channels B, G, R), '
                            f'got shape {f.shape}')
    if not np.isfinite(f).all():
        raise ResponseError(f'{source}: the table holds NaN or Inf values')
    if np.any(f[-1] <= f[0]):
        raise ResponseError(f'{source}: radiance must increase with the code value (code 255 gives '
                            f'{f[-1].tolist()}, code 0 gives {f[0].tolist()})')
    drops = np.diff(f, axis=0) < -1e-6 * np.abs(f).max()
    if drops.any():
        z, c = np.argwhere(drops)[0]
        logger.warning('%s: the curve decreases after code %d in channel %s; made non-decreasing', source, z,
                       'BGR'[c])
    return normalise_table(f)


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------

def save_response(path, table: np.ndarray) -> Path:
    """Write the table as ``.npy`` (float64 256 x 3) or ``.csv`` (header ``code,B,G,R``), atomically."""
    path = Path(path)
    f = check_table(table, str(path))
    ext = path.suffix.lower()
    if ext not in ('.npy', '.csv'):
        raise ResponseError(f'{path}: a response file must end in .npy or .csv')
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir():
        raise ResponseError(f'{path}: folder {folder} does not exist')
    tmp = folder / f'.{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{ext}'
    try:
        if ext == '.npy':
            np.save(tmp, f)
        else:
            rows = [f'{z},{f[z, 0]:.10g},{f[z, 1]:.10g},{f[z, 2]:.10g}' for z in range(N_CODES)]
            tmp.write_text('code,B,G,R\n' + '\n'.join(rows) + '\n')
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_response(path) -> np.ndarray:
    """Read a table written by :func:`save_response` (or by hand: 256 rows of B, G, R, an optional leading code
    column and header line). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ResponseError(f'{path}: response file does not exist')
    ext = path.suffix.lower()
    try:
        if ext == '.npy':
            try:
                f = np.load(path, allow_pickle=False)
            except Exception as exc:  # a damaged header raises SyntaxError or tokenize.TokenError, among others
                raise ResponseError(f'{path}: not a readable .npy response table ({type(exc).__name__}: {exc})') \
                    from exc
        elif ext == '.csv':
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            if lines and not re.match(r'^\s*[-+0-9.]', lines[0]):
                lines = lines[1:]  # header
            f = np.array([[float(v) for v in ln.split(',')] for ln in lines], dtype=np.float64)
            if f.ndim == 2 and f.shape[1] == 4:
                f = f[:, 1:]  # leading code column
        else:
            raise ResponseError(f'{path}: a response file must end in .npy or .csv')
        f = np.asarray(f, dtype=np.float64)  # strings, structured or object arrays fail here, naming the file
    except ResponseError:
        raise
    except (ValueError, TypeError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ResponseError(f'{path}: not a readable response table ({exc})') from exc
    return check_table(f, str(path))


# ----------------------------------------------------------------------------------------------
# applying a table
# ----------------------------------------------------------------------------------------------

def linearise(x01: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Frame in [0, 1] (any bit depth, H x W x 3 BGR) -> relative linear radiance in [0, 1], float32."""
    x = np.clip(np.asarray(x01, dtype=np.float64), 0.0, 1.0) * (N_CODES - 1)
    lo = np.minimum(np.floor(x).astype(np.int64), N_CODES - 2)
    a = x - lo
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(3):
        f = table[:, c]
        out[..., c] = (1 - a[..., c]) * f[lo[..., c]] + a[..., c] * f[lo[..., c] + 1]
    return out


def encode(linear: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Inverse of :func:`linearise`: relative radiance -> frame in [0, 1] (float64), clipped at saturation.

    Flat stretches of the table map to their first code."""
    lin = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    codes = np.arange(N_CODES, dtype=np.float64) / (N_CODES - 1)
    out = np.empty(lin.shape, dtype=np.float64)
    for c in range(3):
        f = table[:, c]
        keep = np.concatenate([[True], np.diff(f) > 0])  # np.interp needs increasing abscissae
        out[..., c] = np.interp(lin[..., c], f[keep], codes[keep])
    return out


@dataclass(frozen=True)
class Response:
    """A named, normalised response table."""

    name: str
    table: np.ndarray
    why: str = ''  # how it was chosen (the automatic choice says why; shown in the log)

    @property
    def is_training_gamma(self) -> bool:
        return self.name == f'gamma{TRAINING_GAMMA:g}'

    def linear(self, x01: np.ndarray) -> np.ndarray:
        """Relative linear radiance in [0, 1] (float32)."""
        if self.is_training_gamma:
            return np.power(np.asarray(x01, dtype=np.float32), np.float32(TRAINING_GAMMA))
        return linearise(x01, self.table)

    def to_training_ldr(self, x01: np.ndarray) -> np.ndarray:
        """The frame re-encoded with the training gamma, ``f(x) ** (1/2.2)``, float32; identity for gamma 2.2."""
        if self.is_training_gamma:
            return np.asarray(x01, dtype=np.float32)
        return np.power(linearise(x01, self.table), np.float32(1.0 / TRAINING_GAMMA)).astype(np.float32)


def resolve_response(spec: str) -> Response:
    """``gamma2.2`` / ``gamma<g>`` / ``srgb`` / a ``.npy`` or ``.csv`` file -> :class:`Response`.

    ``estimate`` needs the bracket: call :func:`estimate_response` instead."""
    text = str(spec).strip()
    m = _GAMMA_RE.match(text.lower())
    if m:
        g = float(m.group(1))
        return Response(f'gamma{g:g}', gamma_table(g))
    if text.lower() == 'srgb':
        return Response('srgb', srgb_table())
    if text.lower() == 'estimate':
        raise ResponseError("'estimate' needs the bracket's frames; use estimate_response()")
    path = Path(text)
    if path.suffix.lower() not in ('.npy', '.csv'):
        raise ResponseError(f"--response {text!r}: expected gamma2.2, gamma<value>, srgb, estimate, or a .npy/.csv "
                            'response file')
    return Response(str(path), load_response(path))


# ----------------------------------------------------------------------------------------------
# estimation
# ----------------------------------------------------------------------------------------------

def _hat(z: np.ndarray) -> np.ndarray:
    """Trust of a code value: low near black (noise, quantisation) and near saturation (clipping)."""
    return np.clip(np.minimum(z, (N_CODES - 1) - z) / 32.0, 0.0, 1.0) ** 0.5 + 1e-3


def _interp_weights(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.clip(np.floor(z).astype(np.int64), 0, N_CODES - 2)
    return lo, z - lo


def _histogram_pairs(xa: np.ndarray, xb: np.ndarray, valid: np.ndarray | None,
                     min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Corresponding codes of one channel in a darker frame ``a`` and a brighter frame ``b`` by histogram
    matching (Grossberg and Nayar's brightness transfer function): ``zb = Cb^-1(Ca(za))``.

    Radiance order is kept by a monotone response, so the fraction of pixels darker than ``za`` in ``a`` equals
    the fraction darker than ``zb`` in ``b`` however the camera or objects moved between the frames, as long as
    the same scene content is in view. Returns ``(za, zb, pixel count of za)`` for the codes usable in both."""
    za_all, zb_all = xa.ravel() * (N_CODES - 1), xb.ravel() * (N_CODES - 1)
    if valid is not None:
        za_all, zb_all = za_all[valid.ravel()], zb_all[valid.ravel()]
    edges = np.arange(N_CODES + 1) - 0.5
    ha = np.histogram(np.rint(za_all), bins=edges)[0].astype(np.float64)
    hb = np.histogram(zb_all, bins=edges)[0].astype(np.float64)
    ca = np.concatenate([[0.0], np.cumsum(ha)]) / max(ha.sum(), 1.0)    # at the bin edges
    cb = np.concatenate([[0.0], np.cumsum(hb)]) / max(hb.sum(), 1.0)
    codes = np.arange(N_CODES, dtype=np.float64)
    p = (ca[:-1] + ca[1:]) / 2                                           # mid-bin fraction of each code of a
    keep_b = np.concatenate([[True], np.diff(cb) > 0])
    zb = np.interp(p, cb[keep_b], edges[keep_b])                       # piecewise-linear inverse cdf of b
    ok = (ha >= min_count) & (codes >= 1) & (codes <= N_CODES - 2) & (zb >= 1.0)
    # codes of a whose pixels reach b's clipped top bin (or b's black) carry no ratio
    ok &= (p > cb[1]) & (p < cb[N_CODES - 1])
    return codes[ok], zb[ok], ha[ok]


def _pixel_pairs(xa: np.ndarray, xb: np.ndarray, valid: np.ndarray | None,
                 per_code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes of one channel at the same pixels of two registered frames, unclipped in both, at most ``per_code``
    pixels per code of the darker frame (evenly spread over the image)."""
    za, zb = xa.ravel() * (N_CODES - 1), xb.ravel() * (N_CODES - 1)
    ok = (za >= 1.0) & (zb >= 1.0) & (za < N_CODES - 1.5) & (zb < N_CODES - 1.5)
    if valid is not None:
        ok &= valid.ravel()
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    # a fixed scramble instead of random numbers: deterministic, and spread over the whole image
    idx = idx[np.argsort((idx * 2654435761) % 4294967296, kind='stable')]
    bins = np.rint(za[idx]).astype(np.int64)
    order = np.argsort(bins, kind='stable')
    idx, bins = idx[order], bins[order]
    rank = np.arange(bins.size) - np.searchsorted(bins, bins, side='left')
    take = idx[rank < per_code]
    return za[take], zb[take], np.ones(take.size)


@functools.lru_cache(maxsize=1)
def _log_code_prior() -> np.ndarray:
    """``sum (d2 g / du2)**2 du`` over knots 1..255 with ``u = log z``: power laws (``g = gamma u + c``) and the
    sRGB toe cost nothing, so codes with little data are extrapolated as a power law."""
    n = N_CODES
    u = np.log(np.arange(1, n, dtype=np.float64))
    h = np.diff(u)
    rows = []
    for k in range(1, n - 2):                       # interior of knots 1..255 (index k in u is knot k + 1)
        h1, h2 = h[k - 1], h[k]
        r = np.zeros(n)
        r[k], r[k + 1], r[k + 2] = 2 / (h1 * (h1 + h2)), -2 / (h1 * h2), 2 / (h2 * (h1 + h2))
        rows.append(r * np.sqrt((h1 + h2) / 2))
    d2 = np.array(rows)
    prior = d2.T @ d2
    prior.setflags(write=False)  # cached: shared by every solve
    return prior


def _solve_ratio(pairs: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]], smoothness: float,
                 iterations: int) -> tuple[np.ndarray, float]:
    """One curve, in the log domain ``g = log f``: weighted least squares on ``g(zb) - g(za) = log R`` (linear
    in ``g``, no per-pixel unknowns), ``g(255) = 0``, a second-difference prior, IRLS with Cauchy weights.

    Returns the curve and the fit's residual: the weighted RMS of ``g(zb) - g(za) - log R`` in stops (log2), with
    the data weights but not the robust ones, so that pairs that disagree (moved content, wrong times) show."""
    n = N_CODES
    za = np.concatenate([p[0] for p in pairs])
    zb = np.concatenate([p[1] for p in pairs])
    log_r = np.concatenate([np.full(p[0].size, np.log(p[2])) for p in pairs])
    counts = np.concatenate([p[3] for p in pairs])
    la, aa = _interp_weights(za)
    lb, ab = _interp_weights(zb)
    cols = np.stack([lb, lb + 1, la, la + 1], axis=1)                 # (E, 4) knots of each equation
    vals = np.stack([1 - ab, ab, -(1 - aa), -aa], axis=1)             # (E, 4) their coefficients
    base_w = _hat(za) * _hat(zb) * np.sqrt(counts)
    robust = np.ones_like(base_w)
    prior = _log_code_prior()
    flat = (cols[:, :, None] * n + cols[:, None, :]).ravel()
    g = np.zeros(n)
    for _ in range(iterations):
        w = base_w * robust
        w = w / w.sum()
        ata = np.bincount(flat, (w[:, None, None] * vals[:, :, None] * vals[:, None, :]).ravel(),
                          minlength=n * n).reshape(n, n)
        atb = np.bincount(cols.ravel(), (w[:, None] * log_r[:, None] * vals).ravel(), minlength=n)
        ata = ata + smoothness * prior
        ata[n - 1, n - 1] += 1e3                                           # g(255) = 0
        ata[0, 0] += 1e-6                                                  # knot 0 is unused (f(0) = 0)
        g = np.linalg.solve(ata, atb)
        res = (vals * g[cols]).sum(axis=1) - log_r
        s = 1.4826 * np.median(np.abs(res)) + 1e-4
        robust = 1.0 / (1.0 + (res / (2.385 * s)) ** 2)                  # Cauchy: moved pixels weigh little
    f = np.exp(g - g[-1])
    f[0] = 0.0
    res = (vals * g[cols]).sum(axis=1) - log_r
    residual = float(np.sqrt(np.sum(base_w * res ** 2) / np.sum(base_w)) / np.log(2))
    return f, residual


def estimate_response(frames: Sequence[np.ndarray], times: Sequence[float], method: str = 'ratio',
                      valid: np.ndarray | None = None, smoothness: float = 1e-5, iterations: int = 4,
                      min_count: int = 3, data: str = 'histogram', per_code: int = 40, channels: str = 'shared',
                      info: dict | None = None) -> np.ndarray:
    """Recover the normalised 256 x 3 response from a bracket (frames H x W x 3 BGR in [0, 1], any bit depth).

    ``times`` are the relative exposure times of ``frames`` (any scale). ``valid`` (H x W bool) marks pixels
    that may be used (e.g. inside every frame after pre-alignment). Frames need not be sorted.
    ``channels='shared'`` (default; ``ratio`` only) fits one curve to the three channels' data together: a
    camera's JPEG engine applies one tone curve to R, G and B after white balance, and three separately
    extrapolated curves would differ in scale, i.e. tint the image; ``'separate'`` fits one per channel.
    ``info``: a dict filled with what the reliability check needs (:func:`estimate_diagnostics`).
    Raises :class:`ResponseError` when the bracket holds too few unclipped pixels to fit a curve.
    """
    if channels not in ('shared', 'separate'):
        raise ResponseError(f"channels must be 'shared' or 'separate', got {channels!r}")
    if data not in ('histogram', 'pixels'):
        raise ResponseError(f"data must be 'histogram' or 'pixels', got {data!r}")
    if method not in ESTIMATE_METHODS:
        raise ResponseError(f'response estimation method {method!r} is unknown; choose from {ESTIMATE_METHODS}')
    if len(frames) < 2 or len(frames) != len(times):
        raise ResponseError(f'estimating a response needs at least two frames with one time each, got '
                            f'{len(frames)} frames and {len(times)} times')
    order = np.argsort(np.asarray(times, dtype=np.float64))
    frames = [np.asarray(frames[k], dtype=np.float32) for k in order]
    times = [float(times[k]) for k in order]
    if len({f.shape for f in frames}) != 1 or frames[0].ndim != 3 or frames[0].shape[2] != 3:
        raise ResponseError('estimating a response needs frames of one size, H x W x 3')
    if method in ('debevec', 'robertson'):
        return _estimate_opencv(frames, times, method)
    table = np.empty((N_CODES, 3))
    by_channel = _channel_pairs(frames, times, valid, data, min_count, per_code)
    for c, pairs in enumerate(by_channel):
        n_codes = np.unique(np.rint(np.concatenate([p[0] for p in pairs])) if pairs else []).size
        if n_codes < 32:
            raise ResponseError(f'too few unclipped pixels shared by neighbouring exposures to estimate the response '
                                f'(channel {"BGR"[c]}: {n_codes} distinct code values, need 32); use --response '
                                'gamma2.2, srgb or a saved curve')
    separate = [_solve_ratio(pairs, smoothness, iterations) for pairs in by_channel]
    if channels == 'shared':
        curve, residual = _solve_ratio([p for pairs in by_channel for p in pairs], smoothness, iterations)
        table[:] = curve[:, None]
    else:
        for c in range(3):
            table[:, c] = separate[c][0]
        residual = max(r for _, r in separate)
    table = normalise_table(table)
    if info is not None:
        info.update(_diagnostics(frames, by_channel, table, [f for f, _ in separate], residual))
    return table


def _channel_pairs(frames, times, valid, data: str, min_count: int, per_code: int) -> list[list[tuple]]:
    """Per channel, the code pairs ``(za, zb, t_b / t_a, counts)`` of every pair of neighbouring exposures of
    ``frames`` (sorted by ``times``), by histogram matching or, with ``data='pixels'``, at the same pixels."""
    by_channel = []
    for c in range(3):
        pairs = []
        for j in range(len(frames) - 1):
            if data == 'pixels':
                za, zb, counts = _pixel_pairs(frames[j][..., c], frames[j + 1][..., c], valid, per_code)
            else:
                za, zb, counts = _histogram_pairs(frames[j][..., c], frames[j + 1][..., c], valid, min_count)
            if za.size:
                pairs.append((za, zb, times[j + 1] / times[j], counts))
        by_channel.append(pairs)
    return by_channel


def bracket_pairs(frames: Sequence[np.ndarray], times: Sequence[float], valid: np.ndarray | None = None,
                  min_count: int = 3) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """Histogram-matched code pairs ``(za, zb, t_b / t_a, counts)`` of every channel and every pair of neighbouring
    exposures (frames in any order), the data both the free fit and :func:`fit_power_law` stand on."""
    order = np.argsort(np.asarray(times, dtype=np.float64))
    frames = [np.asarray(frames[k], dtype=np.float32) for k in order]
    times = [float(times[k]) for k in order]
    return [p for pairs in _channel_pairs(frames, times, valid, 'histogram', min_count, 0) for p in pairs]


def curve_residual(pairs, table: np.ndarray) -> float:
    """Weighted RMS, in stops, of ``log f(zb) - log f(za) - log(t_b / t_a)`` over ``pairs`` for the curve
    ``table`` (its first channel; the ratio constraints do not depend on the curve's scale). NaN without pairs."""
    if not pairs:
        return float('nan')
    za = np.concatenate([p[0] for p in pairs])
    zb = np.concatenate([p[1] for p in pairs])
    log_r = np.concatenate([np.full(p[0].size, np.log(p[2])) for p in pairs])
    w = _hat(za) * _hat(zb) * np.sqrt(np.concatenate([p[3] for p in pairs]))
    g = np.log(np.maximum(table[:, 0], 1e-12))
    codes = np.arange(N_CODES, dtype=np.float64)
    res = np.interp(zb, codes, g) - np.interp(za, codes, g) - log_r
    return float(np.sqrt(np.sum(w * res ** 2) / np.sum(w)) / np.log(2))


def fit_power_law(pairs, lo: float = 1.0, hi: float = 3.0) -> float | None:
    """The exponent ``gamma`` of ``f(z) = (z / 255) ** gamma`` that best explains ``pairs`` (weighted least
    squares on ``gamma * log(zb / za) = log(t_b / t_a)``), clipped to ``[lo, hi]``; None without usable pairs.
    One number needs far less data than a free curve: heavily clipped brackets still pin it."""
    if not pairs:
        return None
    za = np.concatenate([p[0] for p in pairs])
    zb = np.concatenate([p[1] for p in pairs])
    log_r = np.concatenate([np.full(p[0].size, np.log(p[2])) for p in pairs])
    w = _hat(za) * _hat(zb) * np.sqrt(np.concatenate([p[3] for p in pairs]))
    d = np.log(np.maximum(zb, 1.0) / np.maximum(za, 1.0))
    den = float(np.sum(w * d * d))
    if den <= 0 or np.unique(np.rint(za)).size < 8:
        return None
    return float(np.clip(np.sum(w * d * log_r) / den, lo, hi))


# The codes over which a curve is judged (and the bench scores it): the noise floor and the clipping shoulder
# of 8-bit JPEGs lie outside.
JUDGED_CODES = (20, 235)


def _diagnostics(frames, by_channel, table, separate, residual) -> dict:
    """What the reliability check of an estimate looks at (all in stops where a curve is compared)."""
    lo, hi = JUDGED_CODES
    z = np.arange(lo, hi + 1)
    covered = []
    for pairs in by_channel:          # codes of the judged range that some pair of neighbouring frames observed
        seen = np.zeros(N_CODES, bool)
        for za, zb, _, _ in pairs:
            seen[np.clip(np.rint(za), 0, N_CODES - 1).astype(int)] = True
            seen[np.clip(np.rint(zb), 0, N_CODES - 1).astype(int)] = True
        covered.append(float(seen[z].mean()))
    overlap = []                      # pixels well exposed in both frames of each neighbouring pair
    for a, b in zip(frames[:-1], frames[1:]):
        ok = ((a > 0.05) & (a < 0.95) & (b > 0.05) & (b < 0.95)).all(axis=2)
        overlap.append(float(ok.mean()))
    g = np.log2(np.maximum(table[z, 0], 1e-12))
    slope = np.gradient(g, np.log2(z))  # local exponent d log f / d log z (2.2 for gamma 2.2)
    spread = 0.0                        # how far the per-channel fits are from the shared one (offsets removed)
    for f in separate:
        d = np.log2(np.maximum(f[z], 1e-12)) - g
        spread = max(spread, float(np.sqrt(np.mean((d - d.mean()) ** 2))))
    return {'coverage': min(covered), 'overlap': overlap, 'residual_stops': residual,
            'slope_min': float(slope.min()), 'slope_max': float(slope.max()), 'channel_spread_stops': spread}


def _estimate_opencv(frames: list[np.ndarray], times: list[float], method: str) -> np.ndarray:
    import cv2

    imgs = [np.clip(np.rint(f * 255.0), 0, 255).astype(np.uint8) for f in frames]
    t = np.asarray(times, dtype=np.float32)
    cal = cv2.createCalibrateDebevec() if method == 'debevec' else cv2.createCalibrateRobertson()
    resp = cal.process(imgs, t).reshape(N_CODES, 3).astype(np.float64)  # BGR, like the images
    if not np.isfinite(resp).all():
        raise ResponseError(f'OpenCV {method} calibration returned NaN/Inf (too few usable pixels?)')
    return normalise_table(resp)
