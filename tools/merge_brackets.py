"""Merge a user's own exposure brackets into HDR images with a trained SelfHDR backbone.

    python tools/merge_brackets.py --inputs a.jpg b.jpg c.jpg --network AHDRNet \
        --checkpoint pretrained_models/ahdrnet_stage2/SelfHDR_model_1.pth [--output_dir D] [--name N]

Inputs: three or more frames of one scene (``--inputs``), or ``--input_dir`` with one sub-folder per bracket
(a batch: a progress bar, a failing bracket is reported and skipped, a summary table at the end, exit code 2
if any failed). Frames are 8- or 16-bit JPEG, PNG or TIFF, read as BGR in [0, 1]
(``util.hdr_io.read_ldr``), or camera RAW files (DNG, CR2, NEF, ARW, ...; ``util.raw_io``: LibRaw demosaicing,
as-shot white balance, linear 16-bit, exposure time from the RAW metadata; no response curve is applied). Outputs in ``--output_dir`` (default: the current folder), chosen with ``--formats``: ``<name>.hdr`` and
``<name>.exr`` (linear radiance, the short exposure's scale, values in (0, 1); ``--exr_type half|float``),
``<name>.tif`` (16-bit linear), and a tone-mapped 8-bit preview ``<name>.png``; ``--compare`` adds
``<name>_compare.png`` (inputs, classical merge and network side by side, labelled). All are written to a
temporary name and renamed. ``<name>`` defaults to the medium frame's file name + ``_hdr``.

Behaviour, and the choices made here:

* **Exposure times** come from EXIF ``ExposureTime`` (Exif sub-IFD, or IFD0 as some TIFF writers
  store it) unless ``--exposures`` is given, in seconds (``1/100`` or ``0.01``) or, with
  ``--exposures_in stops``, in stops (``t = 2 ** value``). They are divided by the shortest, so the
  short frame has ``t = 1``: the networks were trained on that radiance scale (Kalantari's data).
* **Order.** Frames are sorted by exposure time (short, medium, long; the medium is the reference
  whose geometry the output keeps). Of more than three, the shortest, the longest and the one nearest their
  middle in stops (or ``--reference``) are used; the tool says which. When the given order differs, a warning lists the order used.
  ``--strict_order`` refuses instead (exit code 2), for scripts that must not be second-guessed.
* **Camera response** ``--response`` (``util.camera_response``): ``gamma2.2`` (default), ``gamma<g>``, ``srgb``,
  ``estimate`` (recovered from the bracket itself) or a saved ``.npy``/``.csv`` table (``--save_response``
  writes the one used, to reuse for the same camera). Each frame is linearised with it and **re-encoded with
  the training gamma**, ``X' = f(X) ** (1/2.2)``, so the network gets ``cat([X' ** 2.2 / (t + 1e-8), X'])``:
  the kind of input it was trained on, with the camera's own linear radiance. For ``gamma2.2`` the frames
  pass through unchanged. ``--gamma g`` is kept as a shorthand for ``--response gamma<g>``.
* **Pre-alignment** (default; ``--no_prealign`` skips it): a global homography per frame onto the medium one
  (``util.prealign``: ORB/SIFT features on exposure-equalised grey images, RANSAC, ECC refinement), for handheld
  brackets. The output keeps the medium frame's geometry; a frame that cannot be aligned is a warning and keeps
  its own geometry; shifts under half a pixel leave the frame untouched.
* **Alignment** (``--align``) warps short and long onto the medium frame with ``util.align``
  before the network. FSHDR expects aligned inputs (a warning says so when it is off); AHDRNet,
  HDR-Transformer and SCTNet deghost by themselves.
* Transformer backbones get the release's test-time reflection padding (``util.tiling.padded_forward``);
  ``--tile N`` runs overlapping tiles (``util.tiling.tiled_forward``) to bound memory on large photos.
* **Preview** operator ``--tonemap``: ``display`` (default; MATLAB-like local operator, readable for any
  scene), ``reinhard``, or ``mu`` (the mu-law of the losses and of the release's PNGs).

Errors a user can cause (missing or unreadable file, sizes that differ, not three inputs, no exposure
times, equal exposures, a checkpoint that does not fit the network, ...) exit with code 2 and a message
naming the file. ``main(argv) -> int`` and ``merge(...)`` are importable.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

# Allow `python tools/merge_brackets.py` from the repository root as well as `python -m tools.merge_brackets`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from util.camera_response import (Response, ResponseError, estimate_response, gamma_table,  # noqa: E402
                                  resolve_response, save_response)
from util.colour import EPS_T, GAMMA  # noqa: E402
from util.hdr_io import read_ldr, write_hdr  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.raw_io import is_raw, read_raw, relative_exposure  # noqa: E402
from util.tonemap import OPERATORS, tonemap  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ['MergeError', 'BracketFrames', 'MergeResult', 'read_exposure_time', 'parse_exposures',
           'load_bracket', 'merge', 'write_outputs', 'build_parser', 'main']

EXIF_IFD = 0x8769        # pointer to the Exif sub-IFD
EXPOSURE_TIME = 0x829A   # ExposureTime, seconds, RATIONAL
N_FRAMES = 3
EXIT_USAGE = 2


class MergeError(ValueError):
    """A problem with the user's inputs (files, exposure times, options); the message names the file."""


# ----------------------------------------------------------------------------------------------
# exposure times
# ----------------------------------------------------------------------------------------------

def _exif_value_to_seconds(value, path: Path) -> float:
    """EXIF RATIONAL (Pillow's IFDRational, a (num, den) pair, or a plain number) -> seconds."""
    raw = value
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            num, den = value
            value = num / den if den else math.nan
        elif len(value) >= 1:
            return _exif_value_to_seconds(value[0], path)  # several values: the first is the frame's
        else:
            value = math.nan
    elif isinstance(value, bytes):
        value = value.decode('ascii', errors='replace').strip('\x00 ')
    try:
        seconds = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise MergeError(f'{path}: EXIF ExposureTime {raw!r} is not a positive number of seconds; '
                         'pass the times with --exposures')
    return seconds


def read_exposure_time(path) -> float | None:
    """Exposure time in seconds from the file's EXIF ``ExposureTime``; None when the file has none.

    Looks in the Exif sub-IFD (JPEG, camera TIFFs) and then IFD0 (some TIFF writers put it there).
    Raises :class:`MergeError` when the tag exists but holds no valid time.
    """
    from PIL import Image, UnidentifiedImageError  # lazy: only EXIF reading needs Pillow

    path = Path(path)
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            value = exif.get_ifd(EXIF_IFD).get(EXPOSURE_TIME)
            if value is None:
                value = exif.get(EXPOSURE_TIME)
            if value is None and img.format == 'PNG':
                img.load()  # a PNG's eXIf chunk may follow the image data
                exif = img.getexif()
                value = exif.get_ifd(EXIF_IFD).get(EXPOSURE_TIME, exif.get(EXPOSURE_TIME))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # OpenCV may still read frames Pillow cannot parse; they just have no usable EXIF.
        logger.debug('%s: no EXIF read (%s)', path, exc)
        return None
    if value is None:
        return None
    return _exif_value_to_seconds(value, path)


def parse_exposures(values: Sequence, unit: str = 'seconds') -> list[float]:
    """``--exposures`` values -> exposure times in seconds (``unit='seconds'``; fractions such as
    ``1/100`` allowed) or relative times ``2 ** v`` (``unit='stops'``)."""
    if unit not in ('seconds', 'stops'):
        raise MergeError(f"--exposures_in must be 'seconds' or 'stops', got {unit!r}")
    times = []
    for v in values:
        try:
            number = float(Fraction(str(v).strip()))
        except (ValueError, ZeroDivisionError):
            raise MergeError(f'--exposures: {v!r} is not a number') from None
        if not math.isfinite(number):
            raise MergeError(f'--exposures: {v!r} is not finite')
        if unit == 'seconds':
            if number <= 0:
                raise MergeError(f'--exposures: exposure time {v!r} s must be positive')
            times.append(number)
        else:
            times.append(2.0 ** number)
    return times


# ----------------------------------------------------------------------------------------------
# reading the bracket
# ----------------------------------------------------------------------------------------------

@dataclass
class BracketFrames:
    """The three frames used, short, medium (reference), long, with their times (``times[0] == 1``)."""

    paths: list[Path]               # sorted order
    frames: list[np.ndarray]        # H x W x 3 BGR float32 in [0, 1], sorted order
    times: np.ndarray               # float64 (3,), normalised by the shortest
    times_source: str               # 'exif', 'seconds' or 'stops'
    order: list[int]                # order[k] = index in the given inputs of the k-th sorted frame
    raw_times: list[float] = field(default_factory=list)  # as read/given, in the given input order
    kind: str = 'ldr'               # 'ldr' (camera-encoded codes) or 'raw' (linear radiance from rawpy)
    unused: list[Path] = field(default_factory=list)  # frames of a longer bracket that were not selected

    @property
    def reordered(self) -> bool:
        return self.order != sorted(self.order)


def _check_distinct_files(paths: Sequence[Path]) -> None:
    import hashlib

    seen = {}
    for p in paths:
        key = hashlib.sha256(p.read_bytes()).hexdigest()
        if key in seen:
            raise MergeError(f'{seen[key]} and {p} are the same image; a bracket needs three different exposures')
        seen[key] = p


# Tolerance of the exposure check: JPEG tone curves bend the gamma-2.2 estimate, but not by this much.
EXPOSURE_TOLERANCE_STOPS = 1.5


def check_exposures_match_frames(paths: Sequence[Path], frames: Sequence[np.ndarray], times: np.ndarray,
                                 response: Response | None = None,
                                 tolerance_stops: float = EXPOSURE_TOLERANCE_STOPS) -> None:
    """Raise when the exposure times contradict the frames' brightness (sorted by exposure).

    The ratio between neighbouring frames is measured as the median of ``f(X_b) / f(X_a)`` (``f``: the response,
    gamma 2.2 by default) over the pixels well exposed in both (motion moves few of them), and must agree with
    ``t_b / t_a`` within ``tolerance_stops``."""
    response = response if response is not None else resolve_response(f'gamma{GAMMA:g}')
    for a in range(len(frames) - 1):
        b = a + 1
        xa, xb = frames[a], frames[b]
        ok = (xa > 0.1) & (xa < 0.9) & (xb > 0.1) & (xb < 0.9)
        if ok.sum() < 100:
            continue  # too few common well-exposed pixels to judge
        la, lb = response.linear(xa)[ok], response.linear(xb)[ok]
        measured = float(np.median(lb / np.maximum(la, 1e-8)))
        expected = float(times[b] / times[a])
        off = math.log2(measured / expected)
        if abs(off) > tolerance_stops:
            raise MergeError(f'exposure times contradict the images: {paths[b]} is {math.log2(measured):.1f} stops '
                             f'brighter than {paths[a]}, but the times say {math.log2(expected):.1f} stops; check '
                             '--exposures (or the EXIF), or pass --trust_exposures to use them anyway')


def select_frames(times: Sequence[float], reference: int | None = None) -> tuple[int, int, int]:
    """Indices (short, medium, long) into frames sorted by exposure: the shortest, the longest, and as the
    reference ``reference`` or the frame nearest the middle of the two in stops."""
    n = len(times)
    if reference is None:
        mid = (math.log2(times[0]) + math.log2(times[-1])) / 2
        reference = min(range(1, n - 1), key=lambda k: abs(math.log2(times[k]) - mid))
    return 0, reference, n - 1


# The networks were trained with 2 or 3 stops between neighbouring frames.
MAX_GAP_STOPS = 4.0


def load_bracket(inputs: Sequence, exposures: Sequence | None = None, exposures_in: str = 'seconds',
                 strict_order: bool = False, reference=None) -> BracketFrames:
    """Read three or more frames and their exposure times, check them, sort them by exposure time and pick
    short, medium (reference) and long (:func:`select_frames`; ``reference``: the medium frame's path)."""
    paths = [Path(p) for p in inputs]
    if len(paths) < N_FRAMES:
        raise MergeError(f'a bracket needs at least {N_FRAMES} frames (short, medium, long exposure), '
                         f'got {len(paths)}: {", ".join(map(str, paths)) or "none"}')
    for p in paths:
        if not p.is_file():
            raise MergeError(f'{p}: file does not exist' if not p.exists() else f'{p}: not a regular file')
    _check_distinct_files(paths)
    raw_flags = [is_raw(p) for p in paths]
    kind = 'raw' if all(raw_flags) else 'ldr'
    if any(raw_flags) and not all(raw_flags):
        raise MergeError('a bracket must be all RAW or all JPEG/PNG/TIFF; RAW: '
                         f'{", ".join(str(p) for p, r in zip(paths, raw_flags) if r)}; others: '
                         f'{", ".join(str(p) for p, r in zip(paths, raw_flags) if not r)}')
    raws = [read_raw(p) for p in paths] if kind == 'raw' else []  # RawReadError names the file
    frames = [r.linear for r in raws] if kind == 'raw' else [read_ldr(p) for p in paths]  # ImageReadError too
    shapes = {tuple(f.shape[:2]) for f in frames}
    if len(shapes) != 1:
        sizes = ', '.join(f'{p} is {f.shape[1]}x{f.shape[0]}' for p, f in zip(paths, frames))
        raise MergeError(f'frames differ in size ({sizes}); all three must have the same width and height')

    if exposures is not None:
        if len(exposures) != len(paths):
            raise MergeError(f'--exposures: expected {len(paths)} values, one per input, got {len(exposures)}')
        raw = parse_exposures(exposures, exposures_in)
        source = exposures_in
    elif kind == 'raw':
        raw, what = relative_exposure(raws)
        missing = [str(p) for p, t in zip(paths, raw) if t is None]
        if missing:
            raise MergeError(f'{", ".join(missing)}: no exposure time in the RAW metadata; give the times with '
                             '--exposures (seconds, e.g. 1/200 1/50 1/12, or stops with --exposures_in stops)')
        source = f'raw metadata ({what})'
    else:
        raw = [read_exposure_time(p) for p in paths]
        missing = [str(p) for p, t in zip(paths, raw) if t is None]
        if missing:
            raise MergeError(f'{", ".join(missing)}: no EXIF ExposureTime; give the times with --exposures '
                             '(seconds, e.g. 1/200 1/50 1/12, or stops with --exposures_in stops)')
        source = 'exif'

    n = len(paths)
    for i in range(n):
        for j in range(i + 1, n):
            if math.isclose(raw[i], raw[j], rel_tol=1e-6):
                raise MergeError(f'{paths[i]} and {paths[j]} have the same exposure ({raw[i]:g} '
                                 f'{"s" if source != "stops" else "relative"}); a bracket needs three '
                                 'different exposures')

    order = sorted(range(n), key=lambda k: raw[k])
    if order != list(range(n)):
        used = ', '.join(f'{paths[k]} ({raw[k]:g})' for k in order)
        if strict_order:
            raise MergeError(f'--strict_order: inputs are not given from shortest to longest exposure; by exposure '
                             f'they are {used}')
        logger.warning('inputs were not in short, medium, long order; sorted by exposure time: %s', used)
    ref_k = None
    if reference is not None:
        ref_path = Path(reference)
        matches = [k for k, p in enumerate(order) if paths[p] == ref_path or paths[p].resolve() == ref_path.resolve()]
        if not matches:
            raise MergeError(f'--reference {reference}: not one of the inputs')
        ref_k = matches[0]
        if ref_k in (0, n - 1):
            raise MergeError(f'--reference {reference}: it is the {"shortest" if ref_k == 0 else "longest"} '
                             'exposure; the reference must have a shorter and a longer frame beside it')
    sel = select_frames([raw[k] for k in order], ref_k)
    chosen = [order[k] for k in sel]
    times = np.array([raw[k] for k in chosen], dtype=np.float64)
    times = times / times[0]  # the networks expect t_short = 1 (training data's radiance scale)
    unused = [paths[k] for k in order if k not in chosen]
    if unused:
        logger.info('%d frames: using short = %s, medium (reference) = %s, long = %s; not used: %s', n,
                    *(paths[k] for k in chosen), ', '.join(map(str, unused)))
    gaps = np.diff(np.log2(times))
    if gaps.max() > MAX_GAP_STOPS:
        logger.warning('%.1f stops between %s and %s; the networks were trained with 2-3 stops between frames',
                       gaps.max(), *(paths[chosen[k]] for k in (int(gaps.argmax()), int(gaps.argmax()) + 1)))
    return BracketFrames(paths=[paths[k] for k in chosen], frames=[frames[k] for k in chosen], times=times,
                         times_source=source, order=chosen, raw_times=list(raw), kind=kind, unused=unused)


# ----------------------------------------------------------------------------------------------
# merging
# ----------------------------------------------------------------------------------------------

@dataclass
class MergeResult:
    """The merged radiance (H x W x 3 BGR float32, short exposure's scale) and how it was made."""

    hdr: np.ndarray
    bracket: BracketFrames
    network: str
    response: Response
    aligned: bool
    inputs: list[np.ndarray] = field(default_factory=list)  # frames as the network saw them (training gamma)

    @property
    def classical(self) -> np.ndarray:
        """Kalantari's triangle-weight merge of the same inputs (the classical anchor of specs/method.md)."""
        from util.colour import merge_colour_component

        return merge_colour_component(*self.inputs, self.bracket.times)


def _build_inputs(frames, times, gamma: float = GAMMA):
    """Per frame the network input ``cat([X ** 2.2 / (t + 1e-8), X])`` as a (1, 6, H, W) tensor; ``frames`` are
    already in the training encoding (``Response.to_training_ldr``)."""
    import torch

    inputs = []
    for x, t in zip(frames, times):
        x = np.asarray(x, dtype=np.float32)
        h = np.power(x, np.float32(gamma)) / np.float32(float(t) + EPS_T)
        six = np.concatenate([h, x], axis=2).transpose(2, 0, 1)  # (6, H, W): linear first, LDR second
        inputs.append(torch.from_numpy(np.ascontiguousarray(six)).unsqueeze(0))  # (1, 6, H, W)
    return inputs


def _load_network(network: str, checkpoint, device):
    from models.base_model import load_backbone_state
    from models.networks import NETWORKS, define_network

    if network not in NETWORKS:
        raise MergeError(f"--network '{network}' is unknown; available: {', '.join(NETWORKS)}")
    try:
        net = define_network(network)
    except ImportError as exc:
        raise MergeError(f'--network {network}: backbone module {NETWORKS[network][0]} cannot be imported '
                         f'({exc})') from exc
    load_backbone_state(net, str(checkpoint), device='cpu')  # CheckpointError names the file and keys
    return net.eval().to(device)


def merge(inputs: Sequence, network: str, checkpoint, exposures: Sequence | None = None,
          exposures_in: str = 'seconds', response: str | Response = f'gamma{GAMMA:g}', device: str = 'cpu',
          tile: int = 0, tile_overlap: int = 32, align: bool = False, strict_order: bool = False,
          trust_exposures: bool = False, save_response_to=None, prealign: bool = True, reference=None,
          net=None, amp: str = 'none') -> MergeResult:
    """Merge three exposures into HDR radiance with a trained backbone. See the module docstring.

    Raises :class:`MergeError` or :class:`util.hdr_io.ImageReadError` for bad inputs and
    :class:`models.base_model.CheckpointError` for a checkpoint that does not fit ``network``. ``net``: an
    already loaded backbone (batches load the checkpoint once). ``amp``: none|bf16|fp16|auto, the network's
    forward under autocast (as train.py/test.py ``--amp``); the merge arithmetic stays fp32.
    """
    import torch

    from models.base_model import resolve_amp

    from models.backbones import BACKBONES
    from util.tiling import padded, tiled_forward

    if not isinstance(response, Response) and str(response).lower() != 'estimate':
        response = _resolve_response(response)
    if tile < 0 or (tile > 0 and not 0 <= tile_overlap < tile):
        raise MergeError(f'--tile {tile} --tile_overlap {tile_overlap}: need tile >= 0 and 0 <= overlap < tile')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise MergeError(f'--device {device}: CUDA is not available on this machine; use --device cpu')
    if network in BACKBONES and BACKBONES[network].aligned_input and not align:
        logger.warning('%s was trained on aligned frames; consider --align for dynamic scenes', network)

    bracket = load_bracket(inputs, exposures, exposures_in, strict_order, reference)
    if bracket.kind == 'raw':
        given = response.name if isinstance(response, Response) else str(response)
        if given != f'gamma{GAMMA:g}':
            logger.warning('--response %s ignored: RAW frames are decoded linear (%s)', given, bracket.paths[1])
        if save_response_to is not None:
            logger.warning('--save_response ignored: a RAW bracket has no camera response to save')
            save_response_to = None
        response = LINEAR_RAW
    frames, valid = bracket.frames, None
    if prealign:
        frames, valid = _prealign(bracket, response if isinstance(response, Response) else None)
    if not isinstance(response, Response):  # 'estimate': from this bracket (pre-aligned, inside every frame)
        response = _estimate(frames, bracket.times, bracket.paths[1], valid)
    if save_response_to is not None:
        _save_response(save_response_to, response)
    if not trust_exposures:
        check_exposures_match_frames(bracket.paths, bracket.frames, bracket.times, response)
    logger.info('frames (short, medium, long): %s; relative exposure times %s (from %s); response %s',
                ', '.join(map(str, bracket.paths)), ', '.join(f'{t:g}' for t in bracket.times),
                bracket.times_source, response.name)
    frames = [response.to_training_ldr(f) for f in frames]  # linearised, re-encoded with gamma 2.2
    if align:
        from util.align import align_frames

        frames = list(align_frames(*frames, bracket.times).frames)

    if net is None:
        net = _load_network(network, checkpoint, device)
    xs = [x.to(device) for x in _build_inputs(frames, bracket.times)]
    multiple = BACKBONES[network].pad_multiple if network in BACKBONES else 0
    fn = padded(net, multiple=multiple, mode='release') if multiple else net
    height, width = frames[0].shape[:2]
    try:
        amp_dtype = resolve_amp(amp, torch.device(device))
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    autocast = torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.inference_mode(), autocast:
        try:
            out = tiled_forward(fn, xs, tile, tile_overlap)
        except ValueError as exc:  # e.g. a frame too small for the transformers' padding
            raise MergeError(f'{bracket.paths[1]}: {network} cannot process {width}x{height} frames ({exc})') from exc
    hdr = out[0].float().permute(1, 2, 0).cpu().numpy()  # (H, W, 3) BGR
    if not np.isfinite(hdr).all():
        raise MergeError(f'{checkpoint}: the network produced NaN/Inf values (broken checkpoint?)')
    return MergeResult(hdr=np.ascontiguousarray(hdr, dtype=np.float32), bracket=bracket, network=network,
                       response=response, aligned=align, inputs=frames)


LINEAR_RAW = Response('linear (RAW)', gamma_table(1.0))  # identity: RAW frames are already linear


def _resolve_response(spec) -> Response:
    try:
        return resolve_response(str(spec))
    except ResponseError as exc:
        raise MergeError(f'--response: {exc}') from exc


def _prealign(bracket: BracketFrames, response: Response | None):
    """Homography of each frame onto the medium one (util.prealign); a frame that cannot be aligned is a
    warning and keeps its geometry."""
    from util.prealign import corner_shift, prealign

    lin_of = response.linear if response is not None else (lambda x: np.power(x, np.float32(GAMMA)))
    res = prealign(bracket.frames, [lin_of(f) for f in bracket.frames], bracket.times, reference=1)
    for i, why in res.failed.items():
        logger.warning('%s could not be pre-aligned to %s (%s); it keeps its own geometry (use --no_prealign '
                       'for tripod shots)', bracket.paths[i], bracket.paths[1], why)
    h, w = bracket.frames[1].shape[:2]
    for i in res.moved:
        logger.info('pre-aligned %s onto %s (corners moved up to %.1f px)', bracket.paths[i], bracket.paths[1],
                    corner_shift(res.homographies[i], h, w))
    return res.frames, (res.valid if res.moved else None)


def _estimate(frames, times, name, valid=None) -> Response:
    try:
        table = estimate_response(frames, times, valid=valid)
    except ResponseError as exc:
        raise MergeError(f'{name}: --response estimate failed: {exc}') from exc
    return Response('estimate', table)


def _save_response(path, response: Response) -> None:
    try:
        save_response(path, response.table)
    except (ResponseError, OSError) as exc:
        raise MergeError(f'--save_response {path}: {exc}') from exc
    logger.info('camera response (%s) saved to %s', response.name, path)


OUTPUT_FORMATS = ('hdr', 'exr', 'tiff', 'png')
DEFAULT_FORMATS = ('hdr', 'exr', 'png')


def _display_frame(x: np.ndarray, kind: str) -> np.ndarray:
    """An input frame for viewing: camera codes as they are, RAW linear values with the display gamma."""
    return np.clip(x, 0, 1) ** (1 / GAMMA) if kind == 'raw' else np.clip(x, 0, 1)


def write_outputs(result: MergeResult, output_dir, name: str, operator: str = 'display',
                  preview_exposure: float = 0.0, formats: Sequence[str] = DEFAULT_FORMATS,
                  exr_type: str = 'float', compare: bool = False) -> dict[str, Path]:
    """Write the requested ``formats`` of ``<name>``: ``.hdr`` (RGBE), ``.exr`` (``exr_type`` half or float),
    ``.tif`` (16-bit linear), ``.png`` (tone-mapped preview), and with ``compare`` ``<name>_compare.png`` (the
    three inputs, the classical merge and the network's result side by side, labelled). Every file is written
    to a temporary name and renamed into place. Returns the paths by format."""
    from util.photo_io import EXR_TYPES, compare_sheet, write_exr as write_exr_typed, write_png8, write_tiff16

    if operator not in OPERATORS:
        raise MergeError(f'--tonemap {operator!r} is unknown; choose from {sorted(OPERATORS)}')
    if not name or Path(name).name != name:
        raise MergeError(f'--name {name!r} must be a plain file name without folders')
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats:
        raise MergeError(f'--formats {" ".join(formats)}: choose one or more of {", ".join(OUTPUT_FORMATS)}')
    if exr_type not in EXR_TYPES:
        raise MergeError(f'--exr_type {exr_type!r}: choose half or float')
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MergeError(f'{output_dir}: cannot create the output folder ({exc})') from exc
    ext = {'hdr': 'hdr', 'exr': 'exr', 'tiff': 'tif', 'png': 'png'}
    paths = {f: output_dir / f'{name}.{ext[f]}' for f in OUTPUT_FORMATS if f in formats}
    if 'hdr' in paths:
        write_hdr(paths['hdr'], result.hdr)
    if 'exr' in paths:
        write_exr_typed(paths['exr'], result.hdr, exr_type)
    if 'tiff' in paths:
        write_tiff16(paths['tiff'], result.hdr)
    preview = tonemap(result.hdr, operator, exposure=preview_exposure)
    if 'png' in paths:
        write_png8(paths['png'], preview)
    if compare:
        b = result.bracket
        labels = [f'short x1: {b.paths[0].name}', f'medium x{b.times[1]:g} (ref): {b.paths[1].name}',
                  f'long x{b.times[2]:g}: {b.paths[2].name}']
        panels = [(lab, _display_frame(x, b.kind)) for lab, x in zip(labels, b.frames)]
        panels.append(('classical merge', tonemap(np.maximum(result.classical, 0), operator,
                                                  exposure=preview_exposure)))
        panels.append((f'{result.network} (SelfHDR)', preview))
        paths['compare'] = write_png8(output_dir / f'{name}_compare.png', compare_sheet(panels))
    return paths


# ----------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------

EXPOSURE_FILE = 'exposure.txt'


@dataclass
class BracketJob:
    name: str                        # output name: the sub-folder's name
    folder: Path
    inputs: list[Path]
    exposures: list[str] | None = None   # from the folder's exposure.txt (stops), else EXIF/RAW metadata


@dataclass
class BracketOutcome:
    job: BracketJob
    ok: bool
    message: str                     # the error, or what was used
    outputs: dict = field(default_factory=dict)


def _image_files(folder: Path) -> list[Path]:
    from util.hdr_io import LDR_EXTS
    from util.raw_io import RAW_EXTS

    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith('.') and p.suffix.lower() in LDR_EXTS + RAW_EXTS)


def find_brackets(input_dir) -> list[BracketJob]:
    """One job per sub-folder of ``input_dir`` that holds image files (sorted by name). A sub-folder's
    ``exposure.txt`` (one value in stops per frame, in sorted file-name order, as in the SIGGRAPH17 data) gives
    the exposures; otherwise they come from EXIF or RAW metadata."""
    root = Path(input_dir)
    if not root.is_dir():
        raise MergeError(f'--input_dir {root}: not a folder' if root.exists() else f'--input_dir {root}: does not exist')
    jobs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
        files = _image_files(sub)
        if not files:
            continue
        exposures = None
        exp_file = sub / EXPOSURE_FILE
        if exp_file.is_file():
            exposures = exp_file.read_text().split()
        jobs.append(BracketJob(name=sub.name, folder=sub, inputs=files, exposures=exposures))
    if not jobs:
        loose = _image_files(root)
        hint = (f' ({len(loose)} image files sit directly in it: put each bracket in its own sub-folder)'
                if loose else '')
        raise MergeError(f'--input_dir {root}: no sub-folder with image files (JPEG/PNG/TIFF/RAW){hint}')
    return jobs


def _describe(result: MergeResult) -> str:
    b = result.bracket
    text = (f'short {b.paths[0].name}, medium {b.paths[1].name}, long {b.paths[2].name} '
            f'(x{b.times[1]:g}, x{b.times[2]:g}); response {result.response.name}')
    if b.unused:
        text += f'; not used: {", ".join(p.name for p in b.unused)}'
    return text


def run_batch(jobs: Sequence[BracketJob], args, net, progress: bool = True) -> list[BracketOutcome]:
    """Merge every bracket; a failing one is reported and skipped, the others are done."""
    from tqdm import tqdm

    outcomes = []
    bar = tqdm(jobs, desc='brackets', unit='bracket', disable=not progress, file=sys.stderr)
    for job in bar:
        bar.set_postfix_str(job.name)
        try:
            result = merge(job.inputs, args.network, args.checkpoint, exposures=job.exposures,
                           exposures_in='stops', response=_response_flag(args), device=args.device,
                           tile=args.tile, tile_overlap=args.tile_overlap, align=args.align,
                           trust_exposures=args.trust_exposures, prealign=not args.no_prealign, net=net,
                           amp=args.amp)
            paths = write_outputs(result, args.output_dir, job.name, args.tonemap, args.preview_exposure,
                                  args.formats, args.exr_type, args.compare)
            outcomes.append(BracketOutcome(job, True, _describe(result), paths))
        except (MergeError, OSError, ValueError) as exc:  # the message names the file; go on with the others
            logger.debug('bracket %s failed', job.folder, exc_info=True)
            outcomes.append(BracketOutcome(job, False, str(exc)))
    return outcomes


def summary_table(outcomes: Sequence[BracketOutcome]) -> str:
    """A plain-text table: bracket, status, what was used or what went wrong."""
    rows = [('bracket', 'status', 'frames used / error')]
    rows += [(o.job.name, 'ok' if o.ok else 'FAILED', o.message) for o in outcomes]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f'{a:<{w0}}  {b:<{w1}}  {c}' for a, b, c in rows]
    lines.insert(1, f'{"-" * w0}  {"-" * w1}  {"-" * 20}')
    n_ok = sum(o.ok for o in outcomes)
    lines.append(f'{n_ok} of {len(outcomes)} brackets merged' + (f', {len(outcomes) - n_ok} failed' if n_ok < len(outcomes)
                                                                  else ''))
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from models.networks import NETWORKS

    p = argparse.ArgumentParser(description='Merge an exposure bracket (JPEG/PNG/TIFF or camera RAW), or a folder of '
                                            'brackets, into HDR with a trained SelfHDR backbone.')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--inputs', type=str, nargs='+',
                     help='three or more frames of one scene (any order; they are sorted by exposure time; of more '
                          'than three, the shortest, the longest and the middle one are used)')
    src.add_argument('--input_dir', type=str,
                     help='a batch: one sub-folder per bracket; outputs are named after the sub-folders')
    p.add_argument('--reference', type=str, default=None,
                   help='the input to use as the medium (reference) frame of a bracket of more than three')
    p.add_argument('--network', type=str, required=True, choices=list(NETWORKS), help='backbone of the checkpoint')
    p.add_argument('--checkpoint', type=str, required=True,
                   help="release-format checkpoint {'state_dict': ...}, e.g. SelfHDR_model_1.pth")
    p.add_argument('--exposures', type=str, nargs='+', default=None,
                   help='exposure of each input, in --inputs order (default: EXIF ExposureTime)')
    p.add_argument('--exposures_in', type=str, default='seconds', choices=['seconds', 'stops'],
                   help='unit of --exposures: seconds (1/100 or 0.01) or stops (t = 2**value)')
    p.add_argument('--trust_exposures', action='store_true',
                   help="use the exposure times even when the frames' brightness contradicts them")
    p.add_argument('--strict_order', action='store_true',
                   help='refuse inputs not given short, medium, long instead of sorting them')
    p.add_argument('--response', type=str, default=None,
                   help="camera response used to linearise JPEG/PNG/TIFF frames: gamma2.2 (default), gamma<value>, "
                        "srgb, estimate (recovered from this bracket), or a 256x3 .npy/.csv table saved with "
                        "--save_response")
    p.add_argument('--save_response', type=str, default=None,
                   help='write the response used (e.g. the estimated one) to this .npy or .csv file, to reuse '
                        'with --response FILE for the same camera')
    p.add_argument('--gamma', type=float, default=None,
                   help='shorthand for --response gamma<value> (kept for old scripts)')
    p.add_argument('--no_prealign', action='store_true',
                   help='skip the global pre-alignment (one homography per frame onto the medium one, for '
                        'handheld brackets); tripod brackets need none')
    p.add_argument('--align', action='store_true',
                   help='align short and long frames to the medium one first (util.align; advised for FSHDR)')
    p.add_argument('--output_dir', type=str, default='.', help='folder for the outputs (created if needed)')
    p.add_argument('--name', type=str, default=None,
                   help='output file name without extension (default: <medium frame name>_hdr)')
    p.add_argument('--tonemap', type=str, default='display', choices=sorted(OPERATORS),
                   help='operator of the PNG preview: display (MATLAB-like), reinhard, or mu (mu-law)')
    p.add_argument('--preview_exposure', type=float, default=0.0, help='exposure of the preview, in stops')
    p.add_argument('--formats', type=str, nargs='+', default=list(DEFAULT_FORMATS), choices=list(OUTPUT_FORMATS),
                   help='files to write: hdr (Radiance RGBE), exr (OpenEXR), tiff (16-bit linear), png (preview)')
    p.add_argument('--exr_type', type=str, default='float', choices=['half', 'float'],
                   help='pixel type of the .exr (half: half the size, 11-bit mantissa)')
    p.add_argument('--compare', action='store_true',
                   help='also write <name>_compare.png: the inputs, the classical merge and the network side by side')
    p.add_argument('--device', type=str, default='cpu', choices=['cpu', 'cuda'], help='where the network runs')
    p.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16', 'auto'),
                   help='mixed precision of the network forward: auto = bf16 where the hardware has it (CUDA, or a '
                        'CPU with avx512_bf16/AMX), fp32 elsewhere; fp16 only on CUDA')
    p.add_argument('--tile', type=int, default=0, help='tile side in pixels for bounded memory (0: whole image)')
    p.add_argument('--tile_overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels')
    p.add_argument('--malloc', type=str, default='tuned', choices=['tuned', 'system'],
                   help="glibc malloc setting (util/malloc.py): 'tuned' halves CPU inference time here")
    p.add_argument('-q', '--quiet', action='store_true', help='only warnings and errors')
    return p


def _response_flag(args) -> str:
    if args.gamma is not None and args.response is not None:
        raise MergeError('give either --response or --gamma, not both')
    if args.gamma is not None:
        if not (math.isfinite(args.gamma) and args.gamma > 0):
            raise MergeError(f'--gamma must be a positive number, got {args.gamma}')
        return f'gamma{args.gamma:g}'
    return args.response if args.response is not None else f'gamma{GAMMA:g}'


def main(argv=None) -> int:
    from models.base_model import CheckpointError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags, 0 on --help; return it instead
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format='%(levelname)s %(message)s')
    tune_malloc(args.malloc)
    if args.input_dir is not None:
        return _main_batch(args)
    try:
        result = merge(args.inputs, args.network, args.checkpoint, exposures=args.exposures,
                       exposures_in=args.exposures_in, response=_response_flag(args), device=args.device,
                       tile=args.tile, save_response_to=args.save_response,
                       tile_overlap=args.tile_overlap, align=args.align, strict_order=args.strict_order,
                       trust_exposures=args.trust_exposures, prealign=not args.no_prealign,
                       reference=args.reference, amp=args.amp)
        name = args.name if args.name is not None else f'{result.bracket.paths[1].stem}_hdr'
        paths = write_outputs(result, args.output_dir, name, args.tonemap, args.preview_exposure, args.formats,
                              args.exr_type, args.compare)
    except (MergeError, CheckpointError, OSError) as exc:  # OSError: ImageReadError/ImageWriteError, disk
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(f'used {_describe(result)}')
        print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def _main_batch(args) -> int:
    from models.base_model import CheckpointError

    flags = [f for f, v in (('--name', args.name), ('--exposures', args.exposures), ('--reference', args.reference),
                            ('--save_response', args.save_response)) if v is not None]
    if args.strict_order:
        flags.append('--strict_order')
    try:
        if flags:
            raise MergeError(f'{", ".join(flags)}: not with --input_dir (each sub-folder is its own bracket; '
                             f'put exposures in its {EXPOSURE_FILE})')
        _response_flag(args)
        jobs = find_brackets(args.input_dir)
        import torch

        if args.device.startswith('cuda') and not torch.cuda.is_available():
            raise MergeError(f'--device {args.device}: CUDA is not available on this machine; use --device cpu')
        net = _load_network(args.network, args.checkpoint, args.device)
    except (MergeError, CheckpointError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_USAGE
    outcomes = run_batch(jobs, args, net, progress=not args.quiet)
    print(summary_table(outcomes))
    for o in outcomes:
        if not o.ok:
            print(f'error: {o.job.folder}: {o.message}', file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else EXIT_USAGE


if __name__ == '__main__':
    sys.exit(main())
