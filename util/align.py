"""Align the short and long exposures to the medium one with dense optical flow.

The release warps with Ce Liu's MATLAB optical flow; we use a Python substitute *(our choice,
method.md "Alignment")*: OpenCV's DIS optical flow by default, torchvision RAFT on request (only
from a local weights file; nothing is downloaded).

Per pair (reference = medium frame, source = short or long frame):

1. **Exposure equalisation.** The darker frame of the pair is brought to the brighter one's exposure
   in the linear domain and clipped (``clip(x * (t_hi / t_lo) ** (1/2.2), 0, 1)``), so both saturate
   in the same places and flow compares like with like.
2. **Flow** from reference to source on the equalised images (8-bit grey for DIS): ``src(p + f(p))``
   matches ``ref(p)``.
3. **Warp** the *original* source frame with ``cv2.remap`` (bilinear).
4. **Fallback** where the warp has no valid source: the map leaves the frame, the forward-backward
   check fails (occlusion / unreliable flow), or the source and reference pixels are both black
   (no evidence). There the reference content brought to the source's exposure is used
   (``clip(x_mid * (t_src / t_mid) ** (1/2.2), 0, 1)``, i.e. linear scaling then re-gamma). The
   blend mask is feathered a little so no seams are created.

   Pixels saturated in both the warped source and the reference are left as warped: they agree
   (both clipped), and replacing a clipped short frame by the medium frame scaled down would lower
   a value that is only known to be at least 1.

   A rejected warp is kept where it agrees with the reference (brought to the reference's exposure, within
   ``clip_tol`` per channel; a clipped channel counts as a lower bound). Where the medium frame is clipped the
   fallback knows only that bound, so without this a textureless clipped sky, on which the forward-backward
   check has nothing to hold, lost its highlights to the clipped fallback; and noisy frames fail the check far
   from any motion. Feathering never blends a kept pixel of a clipped reference towards the fallback.

All functions are NumPy/OpenCV on float32 H x W x 3 BGR images in [0, 1].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from util.clipped_objects import refind_clipped_objects
from util.colour import GAMMA, merge_colour_component

logger = logging.getLogger(__name__)

__all__ = [
    'AlignConfig', 'AlignResult', 'DISFlow', 'RAFTFlow', 'make_flow_estimator',
    'equalise_exposure', 'exposure_equalised_pair', 'to_flow_u8', 'warp', 'fb_consistency',
    'agrees_with_reference', 'align_pair', 'align_frames',
]

DIS_PRESETS = {
    'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
    'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


LABEL_NOISE = ('immerkaer', 'robust', 'weak_texture')  # AlignConfig.label_noise


@dataclass
class AlignConfig:
    """Alignment settings. Defaults chosen with ``bench/align.py`` (3 synthetic 1000x1500 scenes,
    2 shared CPU cores): DIS 'medium' at full resolution gave the best PSNR-mu of Y_color
    (~40.1 dB vs 20.2 dB unaligned) at ~1.5-2 s per scene; ``flow_scale=0.5`` is ~0.8 dB worse
    and about twice as fast."""

    flow: str = 'dis'                 # 'dis' or 'raft'
    dis_preset: str = 'medium'        # see DIS_PRESETS
    flow_scale: float = 1.0           # <1: flow on a downscaled pair, then upsampled (faster, less exact)
    raft_weights: str | None = None   # local torchvision RAFT state_dict (required for 'raft')
    raft_model: str = 'large'         # 'large' or 'small'
    raft_iters: int = 12
    device: str = 'cpu'               # for RAFT only
    consistency: bool = True          # forward-backward check
    fb_alpha: float = 0.01            # Sundaram et al.: |f+b|^2 > alpha (|f|^2+|b|^2) + beta -> occluded
    fb_beta: float = 0.5              # in (full-resolution) pixels^2
    black_thr: float = 2.0 / 255.0    # "black" in a frame's own exposure
    sat_thr: float = 0.99             # "saturated" in a frame's own exposure
    feather_sigma: float = 1.0        # blur of the validity mask, in pixels (0: hard mask)
    # Where the reference is clipped, the fallback knows only a lower bound (the clipped value), so a warp that
    # failed the checks is kept there when it agrees with the reference: above the clip in its clipped channels,
    # within clip_tol of it in the others. Off: the fallback replaces every rejected pixel (the label then
    # loses clipped skies, whose flat white gives the forward-backward check nothing to hold on to).
    clip_aware: bool = True
    clip_tol: float = 0.1             # in the reference's exposure, gamma-encoded
    # Keep any rejected warp that agrees with the reference within clip_tol (clipped channels as bounds): noisy
    # frames fail the forward-backward check far from any motion, and there the fallback hands the label the
    # medium frame's noise instead of the long frame's clean shadows.
    photometric: bool = True
    # Rejections narrower than this many pixels are noise, not occlusion (a morphological opening of the rejected
    # set): in noisy frames the check fails on scattered single pixels, and feathering around each of them would
    # hand most of the image to the fallback. 0: keep every rejection.
    despeckle: int = 0
    # >0: the photometric tolerance grows to this many times the frames' noise (Immerkaer's estimate of both,
    # at the reference's exposure) where that exceeds clip_tol
    noise_tol: float = 5.0
    # False: no fallback at all, the plain flow-aligned frames (the study's anchor ``flow_merge``)
    fallback: bool = True
    # A shorter frame only: a clipped region of the reference that the warp leaves unexplained (a bright object
    # that moved: the flow cannot follow flat white) is looked for again in that frame by its shape, one translation
    # per region (util/clipped_objects.py; round 3, nineteenth session). False: the fallback there, as before.
    clipped_objects: bool = True
    # The colour label only (``colour_label``; the aligned frames themselves are not changed): medium-first, i.e.
    # where the medium frame is not clipped, an aligned frame enters the label only where it agrees with the
    # medium frame within the frames' noise (noise_tol times the noise estimate, at least label_floor), whatever
    # the forward-backward check said. In nearly noise-free frames the label then keeps the medium frame wherever
    # a warp (interpolation, a small flow error) would move it; in noisy frames the warps still average the noise
    # away. False: the triangle merge of the aligned frames as they are (before round 3's fourth session).
    label_medium_first: bool = True
    label_floor: float = 0.01         # in the medium frame's exposure, gamma-encoded
    label_grow: int = 2               # pixels a disagreement grows by (a warp off somewhere is suspect next to it)
    # How the label's tolerance measures the frames' noise per brightness band: 'immerkaer' (the band's mean) or
    # 'robust' (a low percentile of block estimates, blind to texture). 'robust' rejects more misaligned warps in
    # clean textured frames but also more of the warps that would average high-ISO noise away: on 48 validation
    # scenes it lost 0.17 dB PSNR-mu overall (README, "The label is denoised")
    # 'weak_texture' (util.label_denoise.weak_texture_noise_by_level, round 3's fifteenth session): the smallest
    # eigenvalue of weak-texture patches' covariance, which reads less texture as noise still
    label_noise: str = 'immerkaer'
    # Denoise the label (util/label_denoise.py: NL-means in the mu-law domain, each brightness band at its own noise
    # level, estimated blind to texture): the merge of noisy frames carries their noise, and the network learns to
    # keep it. Round 3, fifth session; chosen on 48 validation scenes (README). False: the merge as it is.
    label_denoise: bool = True
    # how the denoiser reads the label's noise per band (util.label_denoise.DENOISE_METHODS): 'robust' (blocks'
    # low percentile of Immerkaer's estimate) as chosen in round 3's fifth session, or 'weak_texture'
    label_denoise_method: str = 'robust'

    def __post_init__(self) -> None:
        if self.flow not in ('dis', 'raft'):
            raise ValueError(f"AlignConfig.flow must be 'dis' or 'raft', got {self.flow!r}")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f'AlignConfig.dis_preset must be one of {sorted(DIS_PRESETS)}, got {self.dis_preset!r}')
        if not 0 < self.flow_scale <= 1:
            raise ValueError(f'AlignConfig.flow_scale must be in (0, 1], got {self.flow_scale}')
        if self.raft_model not in ('large', 'small'):
            raise ValueError(f"AlignConfig.raft_model must be 'large' or 'small', got {self.raft_model!r}")
        if self.label_noise not in LABEL_NOISE:
            raise ValueError(f'AlignConfig.label_noise must be one of {", ".join(LABEL_NOISE)}, got {self.label_noise!r}')
        from util.label_denoise import DENOISE_METHODS

        if self.label_denoise_method not in DENOISE_METHODS:
            raise ValueError(f'AlignConfig.label_denoise_method must be one of {", ".join(DENOISE_METHODS)}, got '
                             f'{self.label_denoise_method!r}')


@dataclass
class AlignResult:
    """Aligned frames (short, medium, long) and, for short and long, the validity mask in [0,1]
    (1 = warped source used, 0 = fallback) and the flow (H x W x 2, reference -> source)."""

    frames: tuple[np.ndarray, np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    flows: tuple[np.ndarray, np.ndarray]
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# exposure equalisation
# ----------------------------------------------------------------------------------------------

def equalise_exposure(x: np.ndarray, t_from: float, t_to: float) -> np.ndarray:
    """Bring an LDR frame from exposure ``t_from`` to ``t_to``: scale linear values, re-gamma, clip.

    ``((x**2.2) * t_to/t_from) ** (1/2.2)`` equals ``x * (t_to/t_from) ** (1/2.2)``.
    """
    gain = np.float32((float(t_to) / float(t_from)) ** (1.0 / GAMMA))
    return np.clip(np.asarray(x, np.float32) * gain, 0.0, 1.0)


def exposure_equalised_pair(ref: np.ndarray, src: np.ndarray, t_ref: float, t_src: float):
    """Both frames at the brighter exposure of the two (the darker one is raised and clipped)."""
    if t_src < t_ref:
        return ref.astype(np.float32, copy=False), equalise_exposure(src, t_src, t_ref)
    return equalise_exposure(ref, t_ref, t_src), src.astype(np.float32, copy=False)


def to_flow_u8(x: np.ndarray) -> np.ndarray:
    """BGR [0,1] float -> 8-bit grey, the input DIS needs."""
    grey = cv2.cvtColor(np.asarray(x, np.float32), cv2.COLOR_BGR2GRAY)
    return np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# flow estimators: callables (ref_eq, src_eq) -> flow H x W x 2 float32, ref -> src
# ----------------------------------------------------------------------------------------------

class DISFlow:
    """OpenCV DIS optical flow on 8-bit grey images (no weights, no network)."""

    def __init__(self, preset: str = 'medium') -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f'unknown DIS preset {preset!r}; choose from {sorted(DIS_PRESETS)}')
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, ref: np.ndarray, src: np.ndarray) -> np.ndarray:
        return self._dis.calc(to_flow_u8(ref), to_flow_u8(src), None)


class RAFTFlow:
    """torchvision RAFT (``raft_large``/``raft_small``) loaded from a local state_dict file."""

    def __init__(self, weights: str | Path | None, model: str = 'large', iters: int = 12, device: str = 'cpu') -> None:
        if weights is None or str(weights) == '':
            raise ValueError('RAFT flow needs a local weights file (--raft_weights); nothing is downloaded')
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f'{weights}: RAFT weights file does not exist')
        import torch
        from torchvision.models.optical_flow import raft_large, raft_small

        builders = {'large': raft_large, 'small': raft_small}
        if model not in builders:
            raise ValueError(f"RAFT model must be 'large' or 'small', got {model!r}")
        net = builders[model](weights=None, progress=False)
        try:
            state = torch.load(weights, map_location='cpu', weights_only=True)
        except Exception as exc:
            raise ValueError(f'{weights}: cannot load RAFT weights ({exc})') from exc
        if isinstance(state, dict) and 'state_dict' in state and isinstance(state['state_dict'], dict):
            state = state['state_dict']
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f'{weights}: not a torchvision raft_{model} state_dict ({exc})') from exc
        self.net = net.eval().to(device)
        self.iters = int(iters)
        self.device = device

    def __call__(self, ref: np.ndarray, src: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        def prep(x: np.ndarray) -> torch.Tensor:
            rgb = np.ascontiguousarray(x[:, :, ::-1].transpose(2, 0, 1))  # RAFT was trained on RGB
            return torch.from_numpy(rgb).float().unsqueeze(0).to(self.device) * 2.0 - 1.0  # (1,3,H,W) in [-1,1]

        h, w = ref.shape[:2]
        # RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid).
        ph, pw = max(128, h + (-h) % 8) - h, max(128, w + (-w) % 8) - w
        a, b = prep(ref), prep(src)
        if ph or pw:
            a = F.pad(a, (0, pw, 0, ph), mode='replicate')
            b = F.pad(b, (0, pw, 0, ph), mode='replicate')
        with torch.no_grad():
            flow = self.net(a, b, num_flow_updates=self.iters)[-1]  # (1,2,H',W')
        return flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32)


def make_flow_estimator(cfg: AlignConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Build the flow estimator named by ``cfg.flow``."""
    if cfg.flow == 'dis':
        return DISFlow(cfg.dis_preset)
    return RAFTFlow(cfg.raft_weights, cfg.raft_model, cfg.raft_iters, cfg.device)


def _flow_at_scale(estimator, ref: np.ndarray, src: np.ndarray, scale: float) -> np.ndarray:
    """Estimate flow on downscaled images and bring it back to full resolution."""
    if scale >= 1.0:
        return estimator(ref, src)
    h, w = ref.shape[:2]
    sh, sw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    small = estimator(cv2.resize(ref, (sw, sh), interpolation=cv2.INTER_AREA),
                      cv2.resize(src, (sw, sh), interpolation=cv2.INTER_AREA))
    flow = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    flow[..., 0] *= w / sw  # displacements scale with the image
    flow[..., 1] *= h / sh
    return flow


# ----------------------------------------------------------------------------------------------
# warping and validity
# ----------------------------------------------------------------------------------------------

def _chan_min(x: np.ndarray) -> np.ndarray:
    # Element-wise: NumPy reductions over a length-3 last axis are ~20x slower.
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


def _chan_max(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def _maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx + flow[..., 0], gy + flow[..., 1]


def warp(img: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``img`` at ``p + flow(p)`` (bilinear). Returns the warped image and a boolean
    mask of the pixels whose source lies inside the frame."""
    if img.shape[:2] != flow.shape[:2]:
        raise ValueError(f'warp: image {img.shape[:2]} and flow {flow.shape[:2]} sizes differ')
    mx, my = _maps(flow)
    out = cv2.remap(np.asarray(img, np.float32), mx, my, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    h, w = img.shape[:2]
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return out, inside


def fb_consistency(flow_fw: np.ndarray, flow_bw: np.ndarray, alpha: float = 0.01, beta: float = 1.0) -> np.ndarray:
    """Boolean mask of pixels passing the forward-backward check (Sundaram et al. 2010):
    ``|f(p) + b(p + f(p))|^2 <= alpha (|f|^2 + |b|^2) + beta``."""
    bw_at, _ = warp(flow_bw, flow_fw)
    fx, fy, bx, by = flow_fw[..., 0], flow_fw[..., 1], bw_at[..., 0], bw_at[..., 1]
    # Element-wise on channel slices: NumPy reductions over a length-2 last axis are very slow.
    err2 = (fx + bx) ** 2 + (fy + by) ** 2
    mag2 = fx * fx + fy * fy + bx * bx + by * by
    return err2 <= alpha * mag2 + beta


def agrees_with_reference(warped: np.ndarray, ref: np.ndarray, t_src: float, t_ref: float,
                          sat_thr: float = 0.99, tol: float | np.ndarray = 0.1) -> np.ndarray:
    """Pixels where the warped source, brought to the reference's exposure, agrees with the reference in every
    channel: within ``tol`` where neither is clipped; where one is clipped, the other must reach that clip's level
    (less ``tol``)."""
    gain = np.float32((float(t_ref) / float(t_src)) ** (1.0 / GAMMA))
    warped = np.asarray(warped, np.float32)
    src_at_ref = warped * gain
    ref_clipped, src_clipped = ref >= sat_thr, warped >= sat_thr
    agrees = np.where(ref_clipped, src_at_ref >= sat_thr - tol,
                      np.where(src_clipped, ref >= sat_thr * gain - tol, np.abs(src_at_ref - ref) <= tol))
    return agrees.all(axis=2)


def _pair_noise_sigma(ref: np.ndarray, src: np.ndarray, t_ref: float, t_src: float) -> float:
    """Noise of the difference ``src_at_ref - ref`` (gamma-encoded, the reference's exposure)."""
    from util.label_denoise import estimate_noise_sigma

    gain = (float(t_ref) / float(t_src)) ** (1.0 / GAMMA)
    return float(np.hypot(estimate_noise_sigma(ref), estimate_noise_sigma(src) * gain))


def align_pair(ref: np.ndarray, src: np.ndarray, t_ref: float, t_src: float,
               estimator=None, cfg: AlignConfig | None = None):
    """Warp ``src`` (exposure ``t_src``) onto ``ref`` (exposure ``t_ref``).

    Returns ``(aligned, valid, flow)``: the aligned source (H x W x 3 float32 in [0,1]), the blend
    weight of the warped source (H x W float32, 0 where the fallback is used) and the flow.
    """
    cfg = cfg or AlignConfig()
    estimator = estimator or make_flow_estimator(cfg)
    ref = np.asarray(ref, np.float32)
    src = np.asarray(src, np.float32)
    if ref.shape != src.shape or ref.ndim != 3 or ref.shape[2] != 3:
        raise ValueError(f'align_pair: expected two H x W x 3 frames of one size, got {ref.shape} and {src.shape}')
    ref_eq, src_eq = exposure_equalised_pair(ref, src, t_ref, t_src)

    flow = _flow_at_scale(estimator, ref_eq, src_eq, cfg.flow_scale)
    warped, inside = warp(src, flow)
    valid = inside.copy()
    if not cfg.fallback:
        return np.clip(warped, 0.0, 1.0).astype(np.float32), np.ones(ref.shape[:2], np.float32), flow
    if cfg.consistency:
        flow_bw = _flow_at_scale(estimator, src_eq, ref_eq, cfg.flow_scale)
        consistent = fb_consistency(flow, flow_bw, cfg.fb_alpha, cfg.fb_beta)
        both_sat = (_chan_min(warped) >= cfg.sat_thr) & (_chan_min(ref) >= cfg.sat_thr)
        valid &= consistent | both_sat  # clipped in both: content agrees whatever the flow
    both_black = (_chan_max(warped) <= cfg.black_thr) & (_chan_max(ref) <= cfg.black_thr)
    valid &= ~both_black
    if cfg.clip_aware and t_src < t_ref:
        # the same agreement, but wherever the medium frame is clipped: its fallback knows only a lower bound there
        valid |= agrees_with_reference(warped, ref, t_src, t_ref, cfg.sat_thr, cfg.clip_tol) & \
            (_chan_max(ref) >= cfg.sat_thr)
    if cfg.photometric:  # not out of frame, and not where both frames are black (no evidence either way)
        sigma = _pair_noise_sigma(ref, src, t_ref, t_src) if cfg.noise_tol > 0 else 0.0
        tol = max(cfg.clip_tol, cfg.noise_tol * sigma)
        valid |= agrees_with_reference(warped, ref, t_src, t_ref, cfg.sat_thr, tol) & inside & ~both_black

    if cfg.despeckle > 0 and not valid.all():
        k = np.ones((cfg.despeckle, cfg.despeckle), np.uint8)
        rejected = cv2.morphologyEx((~valid).astype(np.uint8), cv2.MORPH_OPEN, k).astype(bool)
        valid = ~rejected
    weight = valid.astype(np.float32)
    if cfg.feather_sigma > 0 and not valid.all():
        # Erode first so feathering only ever lowers the weight near invalid pixels.
        r = max(1, int(round(2 * cfg.feather_sigma)))
        weight = cv2.erode(weight, np.ones((2 * r + 1, 2 * r + 1), np.uint8))
        weight = cv2.GaussianBlur(weight, (0, 0), cfg.feather_sigma)
        weight = np.minimum(weight, valid.astype(np.float32))
        if cfg.clip_aware and t_src < t_ref:
            # no feathering into a clipped reference: blending towards its fallback there darkens a highlight
            keep = valid & (_chan_max(ref) >= cfg.sat_thr)
            weight[keep] = 1.0
    fallback = equalise_exposure(ref, t_ref, t_src)
    w3 = weight[:, :, None]
    aligned = np.clip(w3 * warped + (1.0 - w3) * fallback, 0.0, 1.0).astype(np.float32)
    if cfg.clipped_objects and t_src < t_ref:
        aligned, weight, moved = refind_clipped_objects(aligned, weight, ref, np.clip(src, 0.0, 1.0), t_ref, t_src,
                                                        cfg.sat_thr, cfg.clip_tol)
        if moved:
            logger.debug('align: %d clipped pixels taken from the shorter frame shifted by shape', moved)
    return aligned, weight, flow


def align_frames(ldr_short: np.ndarray, ldr_mid: np.ndarray, ldr_long: np.ndarray, times: Sequence[float],
                 cfg: AlignConfig | None = None, estimator=None) -> AlignResult:
    """Align short and long frames to the medium one. The medium frame is returned unchanged."""
    import time

    cfg = cfg or AlignConfig()
    t = [float(v) for v in np.asarray(times, dtype=np.float64).reshape(-1)]
    if len(t) != 3 or min(t) <= 0:
        raise ValueError(f'align_frames: expected 3 positive exposure times, got {t}')
    estimator = estimator or make_flow_estimator(cfg)
    t0 = time.perf_counter()
    short_a, v_s, f_s = align_pair(ldr_mid, ldr_short, t[1], t[0], estimator, cfg)
    t1 = time.perf_counter()
    long_a, v_l, f_l = align_pair(ldr_mid, ldr_long, t[1], t[2], estimator, cfg)
    t2 = time.perf_counter()
    logger.debug('align: fallback fraction short %.4f long %.4f', 1 - v_s.mean(), 1 - v_l.mean())
    return AlignResult(frames=(short_a, np.asarray(ldr_mid, np.float32), long_a), valid=(v_s, v_l),
                       flows=(f_s, f_l), timings={'short_s': t1 - t0, 'long_s': t2 - t1})


# ----------------------------------------------------------------------------------------------
# the colour label (Y_color) from aligned frames
# ----------------------------------------------------------------------------------------------

def medium_first(aligned: np.ndarray, ref: np.ndarray, src: np.ndarray, t_ref: float, t_src: float,
                 cfg: AlignConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """An aligned frame as the colour label uses it (``AlignConfig.label_medium_first``): kept where the reference
    is clipped or where it agrees with the reference within the frames' noise, the reference brought to the
    source's exposure elsewhere. ``src`` is the frame before alignment (its noise sets the tolerance).
    Returns ``(frame, kept)``."""
    from util.label_denoise import (ROBUST_BLOCK, noise_by_level, robust_noise_by_level, sigma_at_level,
                                    weak_texture_noise_by_level)

    cfg = cfg or AlignConfig()
    ref = np.asarray(ref, np.float32)
    aligned = np.asarray(aligned, np.float32)
    blind = cfg.label_noise != 'immerkaer' and min(ref.shape[:2]) >= ROBUST_BLOCK + 2  # one block at least
    bands = noise_by_level if not blind else (weak_texture_noise_by_level if cfg.label_noise == 'weak_texture'
                                              else robust_noise_by_level)
    # the noise of the difference, pixel by pixel: each frame's own at its brightness there (shot noise grows with it)
    gain = np.float32((float(t_ref) / float(t_src)) ** (1.0 / GAMMA))
    sigma = np.hypot(sigma_at_level(ref.mean(axis=2), bands(ref)),
                     gain * sigma_at_level(aligned.mean(axis=2), bands(np.asarray(src, np.float32))))
    tol = np.maximum(np.float32(cfg.label_floor), np.float32(cfg.noise_tol) * sigma)[:, :, None]
    ref_clipped = _chan_max(ref) >= cfg.sat_thr
    disagrees = ~agrees_with_reference(aligned, ref, t_src, t_ref, cfg.sat_thr, tol) & ~ref_clipped
    if cfg.label_grow > 0 and disagrees.any():
        k = np.ones((2 * cfg.label_grow + 1,) * 2, np.uint8)
        disagrees = cv2.dilate(disagrees.astype(np.uint8), k).astype(bool) & ~ref_clipped
    kept = ~disagrees
    frame = np.where(kept[:, :, None], aligned, equalise_exposure(ref, t_ref, t_src)).astype(np.float32)
    return frame, kept


def colour_label(aligned: Sequence[np.ndarray], originals: Sequence[np.ndarray], times: Sequence[float],
                 cfg: AlignConfig | None = None) -> np.ndarray:
    """``Y_color`` from the aligned (short, medium, long) frames and the frames as shot: the triangle merge
    (``util.colour``), of the medium-first frames unless ``cfg.label_medium_first`` is off, denoised unless
    ``cfg.label_denoise`` is off."""
    cfg = cfg or AlignConfig()
    t = [float(v) for v in np.asarray(times, dtype=np.float64).reshape(-1)]
    short, mid, long_ = aligned
    if cfg.label_medium_first:
        short = medium_first(short, mid, originals[0], t[1], t[0], cfg)[0]
        long_ = medium_first(long_, mid, originals[2], t[1], t[2], cfg)[0]
    label = merge_colour_component(short, mid, long_, t)
    if cfg.label_denoise:
        from util.label_denoise import denoise_colour_label

        label = denoise_colour_label(label, cfg.label_denoise_method)[0]
    return label
