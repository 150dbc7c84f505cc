"""A bright object that moved while the medium frame clips it is found again in the short frame by its shape."""
import numpy as np

from util.align import AlignConfig, align_pair
from util.clipped_objects import refind_clipped_objects

T_SHORT, T_MID, T_LONG = 1.0, 4.0, 16.0
H, W = 96, 128


def _scene(centres, radius=11, seed=0):
    """Radiance (short-exposure scale): a dim textured background and bright textured discs at ``centres``
    (x, y), which the medium exposure clips and the short one does not."""
    rng = np.random.default_rng(seed)
    rad = (0.02 + 0.01 * rng.random((H, W, 1))) * np.array([1.0, 0.9, 0.8], np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    texture = 0.6 + 0.3 * np.sin(xx / 2.0) * np.cos(yy / 3.0)
    for cx, cy in centres:
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
        rad[disc] = (texture[disc, None] * np.array([1.0, 0.95, 0.9])).astype(np.float32)
    return rad.astype(np.float32)


def _expose(rad, t):
    return (np.clip(rad * t, 0, 1) ** (1 / 2.2)).astype(np.float32)


def _no_flow(ref, src):  # a flow that cannot follow the object (flat white gives it nothing to match)
    return np.zeros(ref.shape[:2] + (2,), np.float32)


def _disc(cx, cy, radius):
    yy, xx = np.mgrid[0:H, 0:W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2


def _align(mid, short, **cfg):
    return align_pair(mid, short, T_MID, T_SHORT, estimator=_no_flow, cfg=AlignConfig(feather_sigma=0.0, **cfg))


def test_a_moved_bright_object_is_taken_from_the_short_frame_shifted_by_its_shape():
    mid, short = _expose(_scene([(40, 50)]), T_MID), _expose(_scene([(60, 38)]), T_SHORT)
    assert (mid[_disc(40, 50, 11)] >= 0.99).all() and (short.max() < 0.99)
    before, _, _ = _align(mid, short, clipped_objects=False)
    inside = _disc(40, 50, 9)
    assert (before[inside].max(axis=1) * 4 ** (1 / 2.2) < 0.89).all()  # the flow's result: background, grey
    out, weight, _ = _align(mid, short)
    shifted = np.roll(short, (12, -20), axis=(0, 1))  # the object moved by (+20, -12) from medium to short
    np.testing.assert_array_equal(out[inside], shifted[inside])
    assert (weight[inside] == 1).all()
    # outside the clipped region nothing changes
    np.testing.assert_array_equal(out[~_disc(40, 50, 12)], before[~_disc(40, 50, 12)])


def test_two_objects_in_one_clipped_region_moving_apart_get_one_shift_each():
    mid = _expose(_scene([(40, 50), (58, 50)]), T_MID)  # two discs touching: one clipped region
    short = _expose(_scene([(16, 50), (82, 42)]), T_SHORT)  # left one moved (-24, 0), right one (+24, -8)
    out, _, _ = _align(mid, short)
    for (cx, cy), (dx, dy) in (((40, 50), (-24, 0)), ((58, 50), (24, -8))):
        core = _disc(cx, cy, 7)
        shifted = np.roll(short, (-dy, -dx), axis=(0, 1))
        # (where the two discs meet, the first shift may take a pixel or two of the other disc's edge)
        assert (out[core] == shifted[core]).all(axis=1).mean() > 0.97


def test_a_static_object_a_long_frame_and_an_absent_object_are_left_as_the_flow_had_them():
    mid, short = _expose(_scene([(40, 50)]), T_MID), _expose(_scene([(40, 50)]), T_SHORT)
    still, _, _ = _align(mid, short)
    np.testing.assert_array_equal(still, _align(mid, short, clipped_objects=False)[0])
    # no object at all in the short frame (occluded): nothing matches the region's shape, the fallback stays
    empty = _expose(_scene([]), T_SHORT)
    gone, _, _ = _align(mid, empty)
    np.testing.assert_array_equal(gone, _align(mid, empty, clipped_objects=False)[0])
    # a longer frame is never searched
    long_ = _expose(_scene([(60, 38)]), T_LONG)
    out = align_pair(mid, long_, T_MID, T_LONG, estimator=_no_flow, cfg=AlignConfig(feather_sigma=0.0))[0]
    ref = align_pair(mid, long_, T_MID, T_LONG, estimator=_no_flow,
                     cfg=AlignConfig(feather_sigma=0.0, clipped_objects=False))[0]
    np.testing.assert_array_equal(out, ref)


def test_inputs_are_not_modified_and_a_nan_reaches_nothing():
    mid, short = _expose(_scene([(40, 50)]), T_MID), _expose(_scene([(60, 38)]), T_SHORT)
    before, weight, _ = _align(mid, short, clipped_objects=False)
    short[0, 0] = np.nan
    copies = [a.copy() for a in (before, weight, mid, short)]
    out, new_weight, moved = refind_clipped_objects(before, weight, mid, short, T_MID, T_SHORT)
    for a, b in zip((before, weight, mid, short), copies):
        np.testing.assert_array_equal(a, b)
    assert moved >= _disc(40, 50, 9).sum() and np.isfinite(out).all()
    assert (new_weight[_disc(40, 50, 9)] == 1).all()
    # nothing to do: no clipped pixel, or the frame is not shorter
    dark = _expose(_scene([]), T_MID)
    assert refind_clipped_objects(before, weight, dark, short, T_MID, T_SHORT)[2] == 0
    assert refind_clipped_objects(before, weight, mid, short, T_MID, T_MID)[2] == 0
