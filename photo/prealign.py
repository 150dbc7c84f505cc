"""Global pre-alignment of a handheld bracket: one homography per frame onto the reference (pure NumPy/OpenCV).

Handheld brackets move the whole image between frames (camera shake); the networks deghost local motion but
were trained on small global motion. Each non-reference frame is therefore warped onto the reference frame's
geometry first:

1. Both frames are brought to the reference's exposure (linear radiance times ``t_ref / t_i``), clipped where
   the longer of the two saturates, and encoded with gamma 1/2.2 to 8-bit grey, so features look alike across
   exposures.
2. ORB features (SIFT when ORB gives no usable warp), nearest-neighbour matching with Lowe's ratio test, and a RANSAC
   homography (``cv2.findHomography``, 3-pixel threshold).
3. The result is accepted only when enough matches are inliers and the warp is plausible for camera shake
   (scale within 0.67..1.5, corners moved less than a quarter of the diagonal). Otherwise the frame keeps its
   geometry and the caller is told why (a warning, never an exception).
4. The feature homography is refined to sub-pixel accuracy by ECC (``cv2.findTransformECC``) on the same
   grey images (at most 1024 pixels wide), unless ECC diverges.
5. A homography that moves no corner by more than ``min_shift`` pixels is treated as the identity, so tripod
   brackets are not resampled at all.

Warps use bilinear interpolation and replicate the border; ``valid`` marks the pixels every frame really covers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ['PrealignResult', 'equalised_grey', 'estimate_homography', 'refine_ecc', 'prealign', 'corner_shift']

GAMMA = 2.2


@dataclass
class PrealignResult:
    frames: list[np.ndarray]                       # warped onto the reference (the reference itself untouched)
    homographies: list[np.ndarray]                 # 3 x 3, maps frame pixels to reference pixels
    valid: np.ndarray                              # H x W bool: inside every warped frame
    failed: dict[int, str] = field(default_factory=dict)  # frame index -> why it kept its geometry

    @property
    def moved(self) -> list[int]:
        return [i for i, h in enumerate(self.homographies) if not np.allclose(h, np.eye(3))]


def equalised_grey(linear: np.ndarray, gain: float, ceiling: float = 1.0) -> np.ndarray:
    """Linear BGR radiance times ``gain``, clipped at ``ceiling`` and divided by it, gamma 1/2.2, as 8-bit grey.

    ``ceiling`` is where the longer frame of a pair saturates, in the reference's scale: clipping both frames
    there keeps blown-out shapes, which differ between exposures, from pulling the homography."""
    x = np.clip(np.asarray(linear, dtype=np.float32) * np.float32(gain / ceiling), 0.0, 1.0)
    x = x ** np.float32(1.0 / GAMMA)
    grey = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)
    return np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)


def corner_shift(hom: np.ndarray, h: int, w: int) -> float:
    """Largest displacement of the image's corners under ``hom``, in pixels."""
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], dtype=np.float64)
    moved = cv2.perspectiveTransform(corners[None], hom)[0]
    return float(np.linalg.norm(moved - corners, axis=1).max())


def _features(grey: np.ndarray, kind: str):
    if kind == 'orb':
        edge = max(8, min(31, min(grey.shape) // 8))
        det = cv2.ORB_create(nfeatures=4000, scaleFactor=1.2, nlevels=6, edgeThreshold=edge, patchSize=edge,
                             fastThreshold=5)
    else:
        det = cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.02)
    return det.detectAndCompute(grey, None)


def estimate_homography(ref_grey: np.ndarray, src_grey: np.ndarray, min_inliers: int = 12,
                        ransac_px: float = 3.0) -> tuple[np.ndarray | None, str]:
    """Homography mapping ``src`` pixels onto ``ref`` pixels, or ``(None, reason)``."""
    h, w = ref_grey.shape
    reason = 'no features'
    for kind in ('orb', 'sift'):
        kr, dr = _features(ref_grey, kind)
        ks, ds = _features(src_grey, kind)
        if dr is None or ds is None or len(kr) < min_inliers or len(ks) < min_inliers:
            reason = f'too few {kind.upper()} features ({len(kr or ())} and {len(ks or ())})'
            continue
        knn = cv2.BFMatcher(cv2.NORM_HAMMING if kind == 'orb' else cv2.NORM_L2).knnMatch(ds, dr, k=2)
        good = [m[0] for m in knn if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        if len(good) < min_inliers:
            reason = f'too few distinctive {kind.upper()} matches ({len(good)})'
            continue
        src_pts = np.float32([ks[m.queryIdx].pt for m in good]).reshape(-1, 1, 2)
        ref_pts = np.float32([kr[m.trainIdx].pt for m in good]).reshape(-1, 1, 2)
        hom, mask = cv2.findHomography(src_pts, ref_pts, cv2.RANSAC, ransac_px, maxIters=4000, confidence=0.999)
        if hom is None:
            reason = f'RANSAC found no homography in {len(good)} {kind.upper()} matches'
            continue
        inliers = int(mask.sum())
        if inliers < max(min_inliers, int(0.25 * len(good))):
            reason = f'only {inliers} of {len(good)} {kind.upper()} matches agree on one homography'
            continue
        det = float(np.linalg.det(hom[:2, :2]))
        if not (0.45 < det < 2.25) or corner_shift(hom, h, w) > 0.25 * np.hypot(h, w):
            reason = f'implausible warp for camera shake (area scale {det:.2f}, corners moved ' \
                     f'{corner_shift(hom, h, w):.0f} px)'
            continue
        return hom / hom[2, 2], f'{inliers} of {len(good)} {kind.upper()} matches'
    return None, reason


def refine_ecc(ref_grey: np.ndarray, src_grey: np.ndarray, hom: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """Sub-pixel refinement of ``hom`` (src -> ref) by ECC on images at most ``max_side`` wide; the input
    homography is returned when ECC does not converge or moves it implausibly far."""
    h, w = ref_grey.shape
    s = min(1.0, max_side / max(h, w))
    scale = np.diag([s, s, 1.0])
    small = (lambda g: cv2.resize(g, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)) \
        if s < 1 else (lambda g: g)
    r, c = small(ref_grey).astype(np.float32), small(src_grey).astype(np.float32)
    # ECC's warp maps template (ref) coordinates to input (src) coordinates: the inverse of ours
    warp = (scale @ np.linalg.inv(hom) @ np.linalg.inv(scale)).astype(np.float32)
    warp /= warp[2, 2]
    try:
        _, warp = cv2.findTransformECC(r, c, warp, cv2.MOTION_HOMOGRAPHY,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-6), None, 3)
    except cv2.error as exc:
        logger.debug('ECC refinement did not converge (%s); keeping the feature homography', exc)
        return hom
    refined = np.linalg.inv(scale) @ np.linalg.inv(warp.astype(np.float64)) @ scale
    refined /= refined[2, 2]
    if corner_shift(refined @ np.linalg.inv(hom), h, w) > 3.0:  # ECC wandered off: trust the features
        return hom
    return refined


def prealign(frames: Sequence[np.ndarray], linear: Sequence[np.ndarray], times: Sequence[float], reference: int,
             min_shift: float = 0.5) -> PrealignResult:
    """Warp every frame onto ``frames[reference]``.

    ``frames`` are what gets warped (camera codes or linear values, H x W x 3); ``linear`` are the same frames as
    linear radiance (for features that look alike across exposures); ``times`` their exposure times.
    """
    ref_t = float(times[reference])
    h, w = frames[reference].shape[:2]
    out, homs, failed = [], [], {}
    valid = np.ones((h, w), dtype=bool)
    for i, frame in enumerate(frames):
        if i == reference:
            out.append(frame)
            homs.append(np.eye(3))
            continue
        gain = ref_t / float(times[i])
        ceiling = min(1.0, gain)  # the longer frame saturates at min(1, t_ref / t_i) in the reference's scale
        hom, why = estimate_homography(equalised_grey(linear[reference], 1.0, ceiling),
                                       equalised_grey(linear[i], gain, ceiling))
        if hom is not None:
            hom = refine_ecc(equalised_grey(linear[reference], 1.0, ceiling), equalised_grey(linear[i], gain, ceiling),
                             hom)
        if hom is None:
            failed[i] = why
            out.append(frame)
            homs.append(np.eye(3))
            continue
        if corner_shift(hom, h, w) <= min_shift:
            logger.debug('frame %d: %s, shift below %.1f px: kept as is', i, why, min_shift)
            out.append(frame)
            homs.append(np.eye(3))
            continue
        logger.debug('frame %d: %s, corners moved up to %.1f px', i, why, corner_shift(hom, h, w))
        warped = cv2.warpPerspective(np.asarray(frame, dtype=np.float32), hom, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        inside = cv2.warpPerspective(np.ones((h, w), np.uint8), hom, (w, h), flags=cv2.INTER_NEAREST,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        valid &= inside.astype(bool)
        out.append(np.ascontiguousarray(warped, dtype=np.float32))
        homs.append(hom)
    return PrealignResult(frames=out, homographies=homs, valid=valid, failed=failed)
