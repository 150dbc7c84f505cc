"""Synthetic dynamic exposure brackets made from HDR radiance maps (pure NumPy/OpenCV).

A scene is rendered like this (all radiance is linear, BGR, float32):

1. A random window of a source HDRI (``.exr``/``.hdr``) is resized to the output size plus a
   margin and scaled so that its bright end sits just below 1. The radiance is then capped at 1,
   so the ground truth lives in the *short exposure's* scale and fits the networks' sigmoid range
   (as the SIGGRAPH17 ground truth does).
2. Each frame sees the background through its own small homography (camera shake); the medium
   frame is the reference and uses the identity, so the ground truth is in its geometry.
3. One or more textured shapes cut from HDRI windows move (translate, rotate, scale) between
   frames, occluding and disoccluding the background.
4. Frame ``i`` is exposed for ``t_i = 2 ** v_i`` with stops ``v = (0, s, 2s)``, ``s`` in {2, 3}:
   signal ``e = radiance * t_i``, plus signal-dependent shot noise and read noise, clipped to
   [0, 1] (saturation), gamma ``1/2.2`` and quantised to 16 bits (``round(x * 2**16)``).

With noise off, the medium frame satisfies ``X_mid = (GT * t_mid) ** (1/2.2)`` wherever it is not
clipped (up to 16-bit rounding), i.e. the data follow the linearisation ``H = X**2.2 / t`` of
``specs/method.md``. Scenes are written in the SIGGRAPH17 layout (``Training/<scene>/`` with three
16-bit TIFFs whose sorted names go short, medium, long, ``exposure.txt`` in stops and
``HDRImg.hdr``). Every scene has its own ``np.random.default_rng((seed, split, index))``, so the
output depends only on the seed and the settings, never on global random state or scene count.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from util.hdr_io import RADIANCE_EXTS, read_radiance, write_hdr, write_ldr16

logger = logging.getLogger(__name__)

__all__ = [
    'SynthConfig', 'SyntheticScene', 'HDRSource', 'FRAME_NAMES', 'GT_NAME', 'EXPOSURE_NAME',
    'list_hdr_files', 'load_sources', 'synthesize_scene', 'write_scene', 'scene_rng',
    'make_synthetic_dataset', 'parse_size',
]

# Sorted order = short, medium, long (the data loaders sort the TIFF names).
FRAME_NAMES = ('0_short.tif', '1_medium.tif', '2_long.tif')
GT_NAME = 'HDRImg.hdr'
EXPOSURE_NAME = 'exposure.txt'
SPLIT_IDS = {'Training': 0, 'Test': 1}
NORMALISATIONS = ('highlight', 'clipped', 'mean', 'mixed')  # 'mixed': one of the other three per scene
_LDR_LEVELS = 2.0 ** 16  # 16-bit code = round(x * 2**16), decoded as code / 2**16 (method.md)


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the generator. Ranges are (low, high) and sampled uniformly per scene."""

    size: tuple[int, int] = (256, 384)  # output (H, W)
    stop_choices: tuple[float, ...] = (2.0, 3.0)  # exposure step between frames, in stops
    crop_scale: tuple[float, float] = (0.8, 1.6)  # source pixels per output pixel
    wrap_panoramas: bool = True  # equirectangular sources (W == 2H) wrap around horizontally
    highlight_percentile: float = 99.5
    highlight_level: tuple[float, float] = (0.5, 1.0)  # that percentile's radiance, short scale
    # How the scene's brightness is set: 'highlight' (the percentile above at highlight_level; the training
    # data's rule), 'clipped' (the medium frame clips on a fraction of the pixels drawn from clipped_fraction:
    # large skies and windows), or 'mean' (the medium frame's mean linear luminance drawn from mean_level, a
    # camera's auto-exposure rather than a highlight rule), or 'mixed' (one of the three per scene, uniformly).
    # The radiance cap applies after any of them.
    normalisation: str = 'highlight'
    clipped_fraction: tuple[float, float] = (0.3, 0.7)
    mean_level: tuple[float, float] = (0.08, 0.3)
    radiance_cap: float | None = 1.0  # keeps the ground truth in the sigmoid's range
    # camera motion of the short and long frames relative to the medium one
    max_translation: float = 0.02  # fraction of the image width
    max_rotation_deg: float = 1.5
    max_scale: float = 0.02  # relative zoom
    max_perspective: float = 0.01  # independent corner jitter, fraction of min(H, W)
    # moving objects
    n_objects: tuple[int, int] = (1, 3)  # inclusive range
    object_size: tuple[float, float] = (0.2, 0.45)  # longer side, fraction of min(H, W)
    object_motion: tuple[float, float] = (0.03, 0.12)  # medium -> short/long shift, fraction of W
    object_rotation_deg: float = 10.0  # medium -> short/long rotation, at most
    object_scale_jitter: float = 0.05
    object_gain: tuple[float, float] = (0.25, 4.0)  # object/background mean brightness, log-uniform
    # sensor (signal 1 = saturation): variance = shot * e + read**2
    noise: bool = True
    shot_noise: tuple[float, float] = (1e-4, 1e-3)  # log-uniform
    read_noise: tuple[float, float] = (2e-4, 2e-3)  # std, log-uniform
    # colour diversity: one random linear colour transform for the background and one per moving object,
    # applied to the source radiance before the frames are rendered (frames and ground truth stay consistent)
    colour_aug: bool = False
    wb_gain: tuple[float, float] = (0.6, 1.6)  # per-channel gain, log-uniform (normalised to keep luminance)
    hue_rotation_deg: float = 180.0  # rotation about the grey axis, uniform in +-this
    saturation: tuple[float, float] = (0.6, 1.6)  # chroma scale about the grey axis, log-uniform
    permute_prob: float = 0.5  # chance of a random channel permutation

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 8 or w < 8:
            raise ValueError(f'SynthConfig.size must be at least 8x8, got {self.size}')
        if not self.stop_choices or min(self.stop_choices) <= 0:
            raise ValueError(f'SynthConfig.stop_choices must be positive stops, got {self.stop_choices}')
        lo, hi = self.n_objects
        if lo < 0 or hi < lo:
            raise ValueError(f'SynthConfig.n_objects must be 0 <= low <= high, got {self.n_objects}')
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f'SynthConfig.normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}')
        if not 0 < self.clipped_fraction[0] <= self.clipped_fraction[1] < 1:
            raise ValueError(f'SynthConfig.clipped_fraction must be 0 < low <= high < 1, got {self.clipped_fraction}')
        if not 0 <= self.permute_prob <= 1:
            raise ValueError(f'SynthConfig.permute_prob must be in [0, 1], got {self.permute_prob}')
        for name in ('crop_scale', 'highlight_level', 'mean_level', 'object_size', 'object_gain', 'shot_noise', 'read_noise',
                     'wb_gain', 'saturation'):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f'SynthConfig.{name} must be 0 < low <= high, got {(lo, hi)}')

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class HDRSource:
    name: str
    radiance: np.ndarray  # float32 H x W x 3 BGR, non-negative


@dataclass
class SyntheticScene:
    """One bracket. ``ldrs`` hold exactly the values stored in the TIFFs (16-bit codes / 2**16)."""

    ldrs: list[np.ndarray]  # short, medium, long; float32 H x W x 3 in [0, 1)
    exposures: list[float]  # stops; t = 2 ** value
    gt: np.ndarray  # float32 H x W x 3, medium geometry, short-exposure radiance scale
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """'256x384' -> (256, 384) (H x W)."""
    parts = text.lower().replace('*', 'x').split('x')
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f'size {text!r} must look like HxW, e.g. 256x384') from None
    if h <= 0 or w <= 0:
        raise ValueError(f'size {text!r} must be positive')
    return h, w


def list_hdr_files(src) -> list[Path]:
    """Sorted ``.exr``/``.hdr`` files directly in ``src``; raises if there are none."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f'{src}: HDR source folder does not exist')
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in RADIANCE_EXTS)
    if not files:
        raise FileNotFoundError(f'{src}: no HDR radiance files ({", ".join(RADIANCE_EXTS)}) found')
    return files


def load_sources(files: Sequence[Path]) -> list[HDRSource]:
    sources = []
    for path in files:
        rad = read_radiance(path)
        # Lossy EXR compression (DWA) leaves tiny negative values; radiance cannot be negative.
        rad = np.maximum(rad, 0.0).astype(np.float32, copy=False)
        if rad.shape[0] < 8 or rad.shape[1] < 8:
            raise ValueError(f'{path}: HDR source is too small ({rad.shape[1]}x{rad.shape[0]})')
        if not (rad > 0).any():
            raise ValueError(f'{path}: HDR source is entirely black')
        sources.append(HDRSource(path.stem, rad))
    return sources


# ----------------------------------------------------------------------------------------------
# colour diversity
# ----------------------------------------------------------------------------------------------

_LUMA_BGR = np.array([0.114, 0.587, 0.299])


def random_colour_matrix(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """A 3x3 matrix M (BGR, applied as ``x @ M.T``) made of a hue rotation and a saturation change about the
    grey axis, white-balance gains and, with probability ``cfg.permute_prob``, a channel permutation.

    Grey stays grey under the rotation and the saturation change; the gains are normalised so that a grey
    pixel keeps its luminance, so the scene's exposure and therefore the bracket's ratios are unchanged.
    """
    axis = np.ones(3) / math.sqrt(3.0)
    theta = math.radians(rng.uniform(-cfg.hue_rotation_deg, cfg.hue_rotation_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * (k @ k)  # Rodrigues
    sat = math.exp(rng.uniform(*np.log(cfg.saturation)))
    grey = np.outer(axis, axis)  # projection onto the grey axis
    chroma = grey + sat * (np.eye(3) - grey)
    gains = np.exp(rng.uniform(*np.log(cfg.wb_gain), size=3))
    m = np.diag(gains) @ chroma @ rot
    if rng.random() < cfg.permute_prob:
        m = np.eye(3)[rng.permutation(3)] @ m
    return m / float(_LUMA_BGR @ m @ np.ones(3))


def apply_colour_matrix(rad: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``rad @ m.T`` clipped at 0 (a saturation boost can push a saturated colour below zero)."""
    out = rad.reshape(-1, 3) @ m.T.astype(np.float32)
    return np.maximum(out, 0.0).reshape(rad.shape).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------

def _crop_window(rng: np.random.Generator, src: HDRSource, out_hw: tuple[int, int],
                 cfg: SynthConfig) -> np.ndarray:
    """Random window of ``src`` resampled to ``out_hw`` (float32, non-negative)."""
    oh, ow = out_hw
    sh, sw = src.radiance.shape[:2]
    wrap = cfg.wrap_panoramas and sw == 2 * sh
    f_max = min(cfg.crop_scale[1], sh / oh, sw / ow)
    f_min = min(cfg.crop_scale[0], f_max)
    f = rng.uniform(f_min, f_max)
    wh = min(sh, max(1, round(f * oh)))
    ww = min(sw, max(1, round(f * ow)))
    y0 = int(rng.integers(0, sh - wh + 1))
    if wrap:
        x0 = int(rng.integers(0, sw))
        cols = (np.arange(x0, x0 + ww)) % sw
        win = src.radiance[y0:y0 + wh][:, cols]
    else:
        x0 = int(rng.integers(0, sw - ww + 1))
        win = src.radiance[y0:y0 + wh, x0:x0 + ww]
    interp = cv2.INTER_AREA if wh >= oh and ww >= ow else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(win), (ow, oh), interpolation=interp)
    return np.maximum(out, 0.0).astype(np.float32, copy=False)


def _camera_homography(rng: np.random.Generator, h: int, w: int, cfg: SynthConfig) -> np.ndarray:
    """Maps a frame's pixel coordinates to the reference (medium) frame's coordinates."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    ang = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    s = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
    tx, ty = rng.uniform(-cfg.max_translation, cfg.max_translation, size=2) * w
    c, si = s * math.cos(ang), s * math.sin(ang)
    sim = np.array([[c, -si, cx - c * cx + si * cy + tx],
                    [si, c, cy - si * cx - c * cy + ty],
                    [0.0, 0.0, 1.0]])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    mapped = cv2.perspectiveTransform(corners[None], sim)[0]
    mapped += rng.uniform(-1, 1, size=(4, 2)) * cfg.max_perspective * min(h, w)
    return cv2.getPerspectiveTransform(corners.astype(np.float32), mapped.astype(np.float32))


def _margins(homographies: Sequence[np.ndarray], h: int, w: int) -> tuple[int, int]:
    """Border (x, y) needed so every warped frame samples inside the background window.

    A homography that keeps the frame in front of the camera maps the rectangle to a convex
    quadrilateral, so the corners bound every interior point.
    """
    corners = np.array([[[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]], np.float64)
    mx = my = 0.0
    for hom in homographies:
        d = np.abs(cv2.perspectiveTransform(corners, hom)[0] - corners[0])
        mx, my = max(mx, d[:, 0].max()), max(my, d[:, 1].max())
    return int(math.ceil(mx)) + 2, int(math.ceil(my)) + 2


def _luma(img: np.ndarray) -> np.ndarray:
    return img @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR


def _object_layer(rng: np.random.Generator, sources: Sequence[HDRSource], h: int, w: int,
                  bg_mean: float, cfg: SynthConfig) -> dict:
    """A textured shape on a square canvas, plus its per-frame placement (short, medium, long)."""
    side = rng.uniform(*cfg.object_size) * min(h, w)
    aspect = rng.uniform(0.6, 1.6)
    oh, ow = max(4.0, side / max(aspect, 1.0)), max(4.0, side * min(aspect, 1.0))
    if rng.random() < 0.5:
        oh, ow = ow, oh
    canvas = int(math.ceil(math.hypot(oh, ow) * (1 + cfg.object_scale_jitter))) + 4
    src = sources[int(rng.integers(len(sources)))]
    tex = _crop_window(rng, src, (canvas, canvas), cfg)
    colour = None
    if cfg.colour_aug:
        colour = random_colour_matrix(rng, cfg)
        tex = apply_colour_matrix(tex, colour)
    gain = math.exp(rng.uniform(math.log(cfg.object_gain[0]), math.log(cfg.object_gain[1])))
    tex *= np.float32(gain * bg_mean / max(float(_luma(tex).mean()), 1e-8))

    # Shape drawn 4x larger then area-averaged, so the edges are anti-aliased like a real boundary.
    ss = 4
    mask = np.zeros((canvas * ss, canvas * ss), np.uint8)
    c = canvas * ss / 2.0
    a, b = ow * ss / 2.0, oh * ss / 2.0
    kind = ('ellipse', 'rectangle', 'polygon')[int(rng.integers(3))]
    if kind == 'ellipse':
        cv2.ellipse(mask, (round(c), round(c)), (round(a), round(b)), 0, 0, 360, 255, -1)
    elif kind == 'rectangle':
        cv2.rectangle(mask, (round(c - a), round(c - b)), (round(c + a), round(c + b)), 255, -1)
    else:
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.55, 1.0, n)
        pts = np.stack([c + a * rad * np.cos(ang), c + b * rad * np.sin(ang)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    alpha = cv2.resize(mask.astype(np.float32) / 255.0, (canvas, canvas), interpolation=cv2.INTER_AREA)

    center = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    phi = rng.uniform(0, 2 * np.pi)
    step = rng.uniform(*cfg.object_motion) * w
    direction = np.array([math.cos(phi), math.sin(phi)])
    normal = np.array([-direction[1], direction[0]])
    # Motion is roughly linear in time (short, medium, long) with a little curvature.
    offsets = [-step * rng.uniform(0.7, 1.3) * direction + rng.normal(0, 0.1 * step) * normal,
               np.zeros(2),
               step * rng.uniform(0.7, 1.3) * direction + rng.normal(0, 0.1 * step) * normal]
    rot0 = rng.uniform(0, 360)
    drot = rng.uniform(-cfg.object_rotation_deg, cfg.object_rotation_deg)
    dscale = rng.uniform(-cfg.object_scale_jitter, cfg.object_scale_jitter)
    placements = []
    for i, off in enumerate(offsets):
        k = i - 1  # -1, 0, +1
        m = cv2.getRotationMatrix2D(((canvas - 1) / 2.0, (canvas - 1) / 2.0), rot0 + k * drot, 1.0 + k * dscale)
        m[:, 2] += center + off - (canvas - 1) / 2.0
        placements.append(m)
    return {'texture': tex, 'alpha': alpha, 'placements': placements,
            'meta': {'source': src.name, 'shape': kind,
                     'colour_matrix': None if colour is None else colour.tolist(), 'size_hw': [oh, ow], 'gain': gain,
                     'center_mid_xy': center.tolist(),
                     'offsets_xy': [o.tolist() for o in offsets]}}


def _render_frame(bg_window: np.ndarray, hom: np.ndarray, margin: tuple[int, int], h: int, w: int,
                  objects: Sequence[dict], frame: int) -> np.ndarray:
    mx, my = margin
    shift = np.array([[1, 0, mx], [0, 1, my], [0, 0, 1]], np.float64)
    # WARP_INVERSE_MAP: the matrix maps output pixels to window pixels; the identity is an exact
    # copy, so the medium frame is the unresampled reference geometry.
    rad = cv2.warpPerspective(bg_window, shift @ hom, (w, h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
    for obj in objects:
        m = obj['placements'][frame]
        tex = cv2.warpAffine(obj['texture'], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        a = cv2.warpAffine(obj['alpha'], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        rad = rad * (1.0 - a) + np.maximum(tex, 0.0) * a
    return rad.astype(np.float32, copy=False)


def _quantise16(x: np.ndarray) -> np.ndarray:
    # Same rounding as util.hdr_io.write_ldr16, so the arrays equal what the TIFF decodes to.
    return (np.clip(np.rint(x.astype(np.float64) * _LDR_LEVELS), 0, 65535) / _LDR_LEVELS).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# scenes
# ----------------------------------------------------------------------------------------------

def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one scene: independent of every other scene and of the scene count."""
    if split not in SPLIT_IDS:
        raise ValueError(f'split must be one of {sorted(SPLIT_IDS)}, got {split!r}')
    return np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])


def synthesize_scene(sources: Sequence[HDRSource], rng: np.random.Generator,
                     cfg: SynthConfig = SynthConfig()) -> SyntheticScene:
    """Render one short/medium/long bracket and its ground truth from ``sources``."""
    if not sources:
        raise ValueError('synthesize_scene needs at least one HDR source')
    h, w = cfg.size
    stop = float(cfg.stop_choices[int(rng.integers(len(cfg.stop_choices)))])
    exposures = [0.0, stop, 2.0 * stop]
    times = [2.0 ** v for v in exposures]

    homs = [_camera_homography(rng, h, w, cfg), np.eye(3), _camera_homography(rng, h, w, cfg)]
    margin = _margins(homs, h, w)
    bg_src = sources[int(rng.integers(len(sources)))]
    bg = _crop_window(rng, bg_src, (h + 2 * margin[1], w + 2 * margin[0]), cfg)
    bg_colour = None
    if cfg.colour_aug:
        bg_colour = random_colour_matrix(rng, cfg)
        bg = apply_colour_matrix(bg, bg_colour)

    ref = bg[margin[1]:margin[1] + h, margin[0]:margin[0] + w]
    level = rng.uniform(*cfg.highlight_level)
    normalisation = cfg.normalisation
    if normalisation == 'mixed':
        normalisation = NORMALISATIONS[int(rng.integers(3))]
    if normalisation == 'highlight':
        bright = float(np.percentile(ref.max(axis=2), cfg.highlight_percentile))
        bg *= np.float32(level / max(bright, 1e-8))
    elif normalisation == 'clipped':
        # the medium frame clips where radiance * t_mid >= 1: put that many pixels above 1 / t_mid
        fraction = rng.uniform(*cfg.clipped_fraction)
        bright = float(np.quantile(ref.max(axis=2), 1.0 - fraction))
        bg *= np.float32(1.0 / (times[1] * max(bright, 1e-8)))
    else:  # 'mean'
        mean = math.exp(rng.uniform(*np.log(cfg.mean_level)))
        bg *= np.float32(mean / (times[1] * max(float(_luma(ref).mean()), 1e-8)))
    bg_mean = float(_luma(bg[margin[1]:margin[1] + h, margin[0]:margin[0] + w]).mean())

    n_obj = int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    objects = [_object_layer(rng, sources, h, w, max(bg_mean, 1e-6), cfg) for _ in range(n_obj)]

    shot = math.exp(rng.uniform(*np.log(cfg.shot_noise)))
    read = math.exp(rng.uniform(*np.log(cfg.read_noise)))
    ldrs, radiances = [], []
    for i, t in enumerate(times):
        rad = _render_frame(bg, homs[i], margin, h, w, objects, i)
        if cfg.radiance_cap is not None:
            rad = np.minimum(rad, np.float32(cfg.radiance_cap))
        radiances.append(rad)
        e = rad.astype(np.float64) * t
        if cfg.noise:
            # Gaussian approximation of Poisson shot noise plus read noise, before saturation.
            e = e + np.sqrt(shot * np.maximum(e, 0.0) + read ** 2) * rng.standard_normal(e.shape)
        x = np.clip(e, 0.0, 1.0) ** (1.0 / 2.2)
        ldrs.append(_quantise16(x))
    gt = radiances[1].astype(np.float32)
    meta = {'background': bg_src.name, 'stop': stop,
            'colour_matrix': None if bg_colour is None else bg_colour.tolist(), 'margin_xy': list(margin),
            'homographies': [m.tolist() for m in homs], 'radiance_scale_level': level,
            'normalisation': normalisation,
            'noise': {'enabled': cfg.noise, 'shot': shot, 'read': read},
            'objects': [o['meta'] for o in objects]}
    return SyntheticScene(ldrs=ldrs, exposures=exposures, gt=gt, meta=meta)


def _unique_tmp(path: Path, suffix: str) -> Path:
    # Not tempfile.mkstemp/mkdtemp: they force 0600/0700 permissions, while a data set should get
    # the umask's permissions like any other file.
    return path.parent / f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}'


def _atomic_text(path: Path, text: str) -> None:
    tmp = _unique_tmp(path, '.tmp')
    try:
        with open(tmp, 'x') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_scene(scene: SyntheticScene, scene_dir) -> Path:
    """Write a scene folder (3 TIFFs, exposure.txt, HDRImg.hdr); replaces an existing one.

    The files go to a hidden temporary folder that is renamed at the end, so an interrupted run
    never leaves a scene with missing frames under its final name.
    """
    scene_dir = Path(scene_dir)
    scene_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _unique_tmp(scene_dir, '.partial')
    tmp.mkdir()
    try:
        for name, ldr in zip(FRAME_NAMES, scene.ldrs):
            write_ldr16(tmp / name, ldr)
        _atomic_text(tmp / EXPOSURE_NAME, ''.join(f'{v:g}\n' for v in scene.exposures))
        write_hdr(tmp / GT_NAME, scene.gt)
        if scene_dir.exists():
            shutil.rmtree(scene_dir)
        os.replace(tmp, scene_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return scene_dir


def make_synthetic_dataset(src, out, n_train: int, n_test: int, size: tuple[int, int] = (256, 384),
                           seed: int = 0, holdout: Sequence[str] = (), config: SynthConfig | None = None,
                           overwrite: bool = False, extra_train_sources: Sequence[HDRSource] = (),
                           colour_aug_test: bool = False) -> dict[str, list[Path]]:
    """Write ``out/Training/<scene>`` and ``out/Test/<scene>`` (scenes named 001, 002, ...).

    ``holdout`` names source files (stem or file name) used only for the test split, so test
    scenes come from images never seen in training; without it both splits draw different random
    windows of every source. An existing non-empty split folder is an error unless ``overwrite``,
    which deletes it first (a stale mix of old and new scenes would be worse). ``extra_train_sources`` (e.g.
    lifted photos, ``util.photo_sources``) join the training pool only. The colour augmentation of ``config``
    applies to the training split; test scenes keep their sources' colours unless ``colour_aug_test``.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f'scene counts must be >= 0, got train={n_train}, test={n_test}')
    cfg = dataclasses.replace(config or SynthConfig(), size=tuple(size))
    files = list_hdr_files(src)
    sources = load_sources(files)
    by_name = {s.name: s for s in sources}
    held = []
    for name in holdout:
        stem = Path(name).stem
        if stem not in by_name:
            raise ValueError(f'{src}: hold-out source {name!r} not found (have {sorted(by_name)})')
        held.append(stem)
    train_sources = ([s for s in sources if s.name not in held] if held else sources) + list(extra_train_sources)
    test_sources = [by_name[n] for n in held] if held else sources
    if n_train > 0 and not train_sources:
        raise ValueError(f'{src}: every source is held out for test, none is left for training')

    out = Path(out)
    written: dict[str, list[Path]] = {}
    for split, count, pool in (('Training', n_train, train_sources), ('Test', n_test, test_sources)):
        split_dir = out / split
        if split_dir.exists() and any(split_dir.iterdir()):
            if not overwrite:
                raise FileExistsError(f'{split_dir}: folder is not empty (pass overwrite=True / --overwrite)')
            shutil.rmtree(split_dir)
        written[split] = []
        split_cfg = cfg if split == 'Training' or colour_aug_test else dataclasses.replace(cfg, colour_aug=False)
        for i in range(count):
            scene = synthesize_scene(pool, scene_rng(seed, split, i), split_cfg)
            path = write_scene(scene, split_dir / f'{i + 1:03d}')
            logger.debug('%s: stop %g, background %s, %d objects', path, scene.meta['stop'],
                         scene.meta['background'], len(scene.meta['objects']))
            written[split].append(path)
        logger.info('%s: %d scenes from %s', split_dir, count, ', '.join(s.name for s in pool))
    return written
