"""photo/prealign.py: homographies of handheld brackets recovered across exposures; failures are warnings."""
import cv2
import numpy as np
import pytest

from photo.prealign import corner_shift, equalised_grey, estimate_homography, prealign

H, W = 96, 128


def _texture(seed=0, h=H + 40, w=W + 40):
    """Linear radiance with blobs and edges at many scales (features for ORB), 0.002 .. ~1."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for _ in range(60):
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(2, 12)),
                   float(rng.uniform(0.1, 1)), -1)
    for _ in range(25):
        x, y = int(rng.integers(w)), int(rng.integers(h))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(4, 20)), y + int(rng.integers(4, 20))),
                      float(rng.uniform(0.05, 1)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 0.8) + 0.002
    return np.stack([img * 0.9, img, img * 1.1], axis=2).clip(0, 1) ** 1.0 * 0.25  # short-exposure scale


def _shake(angle_deg, tx, ty, scale=1.0):
    m = cv2.getRotationMatrix2D((W / 2, H / 2), angle_deg, scale)
    m[:, 2] += (tx, ty)
    return np.vstack([m, [0, 0, 1]])


def _frame(rad, hom, t):
    """The crop seen by a frame whose pixels map to the reference through ``hom`` (frame -> reference)."""
    big = np.clip(rad * t, 0, 1)
    off = np.array([[1, 0, 20], [0, 1, 20], [0, 0, 1]], np.float64)  # reference crop sits at (20, 20)
    m = off @ hom  # frame pixel p shows what the reference shows at hom @ p
    return cv2.warpPerspective(big, m, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def _bracket(homs, times=(1, 4, 16)):
    rad = _texture()
    lin = [_frame(rad, hom, t) for hom, t in zip(homs, times)]
    codes = [l ** (1 / 2.2) for l in lin]
    return codes, lin, list(times)


def test_recovers_shake_across_exposures():
    truth = [_shake(1.0, 3.0, -2.0), np.eye(3), _shake(-0.8, -2.5, 1.5, 1.01)]
    codes, lin, times = _bracket(truth)
    res = prealign(codes, lin, times, reference=1)
    assert not res.failed and res.moved == [0, 2]
    for i in (0, 2):
        # the recovered warp agrees with the truth to well under a pixel over the image
        diff = res.homographies[i] @ np.linalg.inv(truth[i])
        assert corner_shift(diff / diff[2, 2], H, W) < 1.0
    # the output keeps the reference's geometry: the warped short frame matches the reference where unclipped
    ref = lin[1]
    short_eq = res.frames[0].astype(np.float64) ** 2.2 * 4
    ok = res.valid[..., None] & (ref < 0.9) & (ref > 0.02)
    assert np.median(np.abs(short_eq - ref)[ok]) < 0.01
    assert res.frames[1] is codes[1] and not res.valid.all() and res.valid.mean() > 0.8


def test_tripod_bracket_is_not_resampled():
    codes, lin, times = _bracket([np.eye(3)] * 3)
    res = prealign(codes, lin, times, reference=1)
    assert res.moved == [] and res.valid.all()
    for a, b in zip(res.frames, codes):
        assert a is b


def test_featureless_frame_is_a_warning_not_a_crash():
    codes, lin, times = _bracket([np.eye(3)] * 3)
    flat = np.full_like(codes[2], 0.5)
    res = prealign([codes[0], codes[1], flat], [lin[0], lin[1], flat ** 2.2], times, reference=1)
    assert 2 in res.failed and 'feature' in res.failed[2] or 'match' in res.failed.get(2, '')
    assert res.frames[2] is flat


def test_unrelated_frame_is_refused():
    codes, lin, times = _bracket([np.eye(3)] * 3)
    other = _frame(_texture(seed=5), np.eye(3), 16)
    res = prealign([codes[0], codes[1], other ** (1 / 2.2)], [lin[0], lin[1], other], times, reference=1)
    assert 2 in res.failed


def test_equalised_grey_matches_exposures():
    lin = _frame(_texture(), np.eye(3), 1)
    a = equalised_grey(lin, 4.0)
    b = equalised_grey(np.clip(lin * 4, 0, 1), 1.0)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_estimate_homography_on_blank_images():
    blank = np.zeros((H, W), np.uint8)
    hom, why = estimate_homography(blank, blank)
    assert hom is None and 'feature' in why
