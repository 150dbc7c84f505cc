"""Bright objects the reference frame clips, found again in a shorter frame by their shape.

Optical flow cannot follow an object that moves while the medium (reference) frame clips it: inside the clipped
region the reference is flat white, the flow has nothing to match, the forward-backward check fails, and
``util.align`` fills in the reference brought to the short exposure, which knows only the clip's lower bound. A lamp,
a sunlit car or a white shirt that moved comes out grey (round 3, issue 23: "the network darkens highlights").

The clipped region still has a shape, and the shorter frame shows the object whole: brought to the reference's
exposure it reaches the clip over the same shape, somewhere nearby. So for each clipped region of the reference
that the warped frame does not explain (it does not reach the clip there), this module looks for the translation of
the shorter frame's "reaches the clip" mask that best matches the region's mask and a ring of unclipped pixels
around it (``cv2.matchTemplate``, squared difference of binary masks; other clipped regions do not count), coarse
to fine. Where the match is good enough, the unexplained pixels are taken from the shifted shorter frame, each
only where that frame reaches the clip there too, the reference's own lower bound. What one translation leaves
unexplained (two objects moving apart inside one clipped region) gets a second and a third try.

Chosen on the study's 12-scene validation splits of one setting (README, "Study and shipped model", round 3's
nineteenth session): with moving objects 4-16x brighter than the background the shipped model's PSNR-mu over the
medium frame's clipped pixels goes from 30.19 to 32.08 dB (37.04 against 36.43 over whole images), on nearly
noise-free frames 45.83 -> 46.38, and no validation split loses; without the least region size, small clipped specks
matched other bright specks and cost the study's own setting 0.02 dB.
"""
from __future__ import annotations

import cv2
import numpy as np

from util.colour import GAMMA

MIN_REGION_SHARE = 1e-3  # of the frame's pixels: smaller clipped regions are left to the flow (small ones match
                         # any bright speck: on the validation splits they cost as much as they gained)
MIN_AREA = 16          # pixels: the least a part of a region left unexplained by its first shift may have
SEARCH_SHARE = 0.2     # how far an object may have moved, as a share of the frame's longer side
MAX_MISMATCH = 0.35    # share of the template's pixels (region and ring) whose mask may differ at the best shift
MIN_FIXED = 0.25       # share of the unexplained pixels a shift must explain to be used
PASSES = 3             # tries per region: what one shift leaves unexplained gets another
RING = 4               # pixels of unclipped surroundings the template carries
COARSE_SIDE = 192      # the search runs at a scale where the search window's longer side is at most this
MIN_COARSE_TEMPLATE = 2  # pixels: a region smaller than this at the coarse scale is not searched
MAX_REGIONS = 64       # the largest unexplained regions are searched, at most this many per frame


def _match(image: np.ndarray, template: np.ndarray, mask: np.ndarray) -> tuple[int, int, float]:
    """(row, column) of the best squared-difference match and its mismatch per template pixel."""
    r = cv2.matchTemplate(image, template, cv2.TM_SQDIFF, mask=mask)
    r = np.where(np.isfinite(r), r, np.inf)
    j, i = np.unravel_index(int(np.argmin(r)), r.shape)
    return int(j), int(i), float(r[j, i]) / max(float(mask.sum()), 1.0)


def _reaches(frame: np.ndarray, gain: np.float32, level: np.float32) -> np.ndarray:
    """Where ``frame`` (H x W x 3), brought to the reference's exposure by ``gain``, reaches the clip ``level`` in
    some channel; a NaN pixel reaches nothing."""
    with np.errstate(invalid='ignore'):
        return np.nan_to_num(frame.max(axis=2)) * gain >= level


def _resized(a: np.ndarray, s: float) -> np.ndarray:
    return cv2.resize(a, (max(1, round(a.shape[1] * s)), max(1, round(a.shape[0] * s))), interpolation=cv2.INTER_AREA)


def best_shift(region: np.ndarray, box: tuple[int, int, int, int], ref_clipped: np.ndarray, reach: np.ndarray,
               radius: int) -> tuple[int, int, float] | None:
    """(dx, dy, mismatch): where ``reach`` (the shorter frame reaches the clip, H x W bool) best matches
    ``region`` (bool, the crop ``box`` = (x0, y0, x1, y1) of the frame) with its unclipped ring, within ``radius``
    pixels; None when the region is too small to find at the coarse scale."""
    h_img, w_img = reach.shape
    x0, y0, x1, y1 = max(0, box[0] - RING), max(0, box[1] - RING), min(w_img, box[2] + RING), min(h_img, box[3] + RING)
    template = np.zeros((y1 - y0, x1 - x0), np.float32)
    template[box[1] - y0:box[3] - y0, box[0] - x0:box[2] - x0] = region
    mask = ((template > 0) | ~ref_clipped[y0:y1, x0:x1]).astype(np.float32)
    sx0, sy0 = max(0, x0 - radius), max(0, y0 - radius)
    sx1, sy1 = min(w_img, x1 + radius), min(h_img, y1 + radius)
    image = reach[sy0:sy1, sx0:sx1].astype(np.float32)
    s = min(1.0, COARSE_SIDE / max(image.shape))
    if s < 1.0:
        small_t, small_m = _resized(template, s), (_resized(mask, s) > 0.99).astype(np.float32)
        if min(small_t.shape) < MIN_COARSE_TEMPLATE or not small_m.any():
            return None
        jy, jx, _ = _match(_resized(image, s), small_t, small_m)
        # refine at full resolution around the coarse position (its rounding is at most 1/s pixels)
        r = int(np.ceil(2.0 / s))
        cy, cx = round(jy / s), round(jx / s)
        ry0, rx0 = max(0, cy - r), max(0, cx - r)
        ry1 = min(image.shape[0], cy + r + template.shape[0])
        rx1 = min(image.shape[1], cx + r + template.shape[1])
        if ry1 - ry0 < template.shape[0] or rx1 - rx0 < template.shape[1]:
            return None
        jy, jx, mismatch = _match(image[ry0:ry1, rx0:rx1], template, mask)
        jy, jx = jy + ry0, jx + rx0
    else:
        jy, jx, mismatch = _match(image, template, mask)
    return sx0 + jx - x0, sy0 + jy - y0, mismatch


def refind_clipped_objects(aligned: np.ndarray, weight: np.ndarray, ref: np.ndarray, src: np.ndarray,
                           t_ref: float, t_src: float, sat_thr: float = 0.99,
                           tol: float = 0.1) -> tuple[np.ndarray, np.ndarray, int]:
    """``aligned`` and its blend ``weight`` (``util.align.align_pair``'s) with the clipped regions of ``ref`` that
    the warp leaves unexplained taken from ``src`` shifted by each region's best translation (module doc).
    Frames H x W x 3 float32 in [0, 1], gamma-encoded; ``src`` shorter than ``ref`` (else nothing changes);
    ``sat_thr`` and ``tol``: ``util.align``'s clip level and agreement tolerance (gamma-encoded, at ``ref``'s
    exposure). Returns (aligned, weight, pixels changed); the inputs are not modified."""
    if not float(t_src) < float(t_ref):
        return aligned, weight, 0
    ref_clipped = ref.max(axis=2) >= sat_thr
    if not ref_clipped.any():
        return aligned, weight, 0
    gain = np.float32((float(t_ref) / float(t_src)) ** (1.0 / GAMMA))
    level = np.float32(sat_thr - tol)
    reach = _reaches(src, gain, level)
    explained = _reaches(aligned, gain, level) & (weight >= 1.0)
    unexplained = ref_clipped & ~explained
    if not unexplained.any():
        return aligned, weight, 0
    h_img, w_img = ref_clipped.shape
    radius = max(1, int(round(SEARCH_SHARE * max(h_img, w_img))))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ref_clipped.astype(np.uint8), connectivity=8)
    # regions by their unexplained pixels, largest first
    counts = np.bincount(labels[unexplained], minlength=n)
    least = max(MIN_AREA, int(np.ceil(MIN_REGION_SHARE * h_img * w_img)))
    order = [i for i in np.argsort(-counts) if i > 0 and stats[i, cv2.CC_STAT_AREA] >= least
             and counts[i] >= least and counts[i] > 0.05 * stats[i, cv2.CC_STAT_AREA]][:MAX_REGIONS]
    aligned, weight = aligned.copy(), weight.copy()
    changed = 0
    for i in order:
        x, y, w, h = (int(v) for v in stats[i, :4])
        todo = [(labels[y:y + h, x:x + w] == i, (x, y, x + w, y + h), 0)]
        while todo:
            region, box, depth = todo.pop()
            bx0, by0, bx1, by1 = box
            bad = region & ~explained[by0:by1, bx0:bx1]
            n_bad = int(bad.sum())  # a region of the first pass has `least` such pixels (``order``)
            if n_bad < MIN_AREA:
                continue
            found = best_shift(region, box, ref_clipped, reach, radius)
            if found is None or found[2] > MAX_MISMATCH:
                continue
            dx, dy, _ = found
            ys, xs = np.nonzero(bad)
            ys, xs = ys + by0, xs + bx0
            ys2, xs2 = ys + dy, xs + dx
            inside = (ys2 >= 0) & (ys2 < h_img) & (xs2 >= 0) & (xs2 < w_img)
            ys, xs, ys2, xs2 = ys[inside], xs[inside], ys2[inside], xs2[inside]
            ok = reach[ys2, xs2]
            if ok.sum() < MIN_FIXED * n_bad:
                continue
            ys, xs, ys2, xs2 = ys[ok], xs[ok], ys2[ok], xs2[ok]
            aligned[ys, xs] = src[ys2, xs2]
            weight[ys, xs] = 1.0
            explained[ys, xs] = True
            changed += int(ys.size)
            if depth + 1 < PASSES:  # what this shift left unexplained, region by region
                rest = bad & ~explained[by0:by1, bx0:bx1]
                m, lab2, st2, _ = cv2.connectedComponentsWithStats(rest.astype(np.uint8), connectivity=8)
                for k in range(1, m):
                    if st2[k, cv2.CC_STAT_AREA] >= MIN_AREA:
                        kx, ky, kw, kh = (int(v) for v in st2[k, :4])
                        todo.append((lab2[ky:ky + kh, kx:kx + kw] == k,
                                     (bx0 + kx, by0 + ky, bx0 + kx + kw, by0 + ky + kh), depth + 1))
    return aligned, weight, changed
