"""photo/response_choice.py: the default (auto) response of a bracket, its reliability check and its messages."""
import logging

import numpy as np
import pytest

from photo.response import encode, gamma_table, normalise_table, srgb_table
from photo.response_choice import choose_response, is_8bit, unreliable_reasons

TIMES = (1.0, 4.0, 16.0)
PATHS = ['short.jpg', 'medium.jpg', 'long.jpg']


def _scene(h=96, w=128, seed=0):
    """Static linear radiance over ~10 stops with texture and colour (BGR, short-exposure scale)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 2.0 ** (-10 + 10.5 * xx / (w - 1)) * (0.7 + 0.3 * np.sin(yy / 5.0) ** 2)
    img = base[..., None] * np.array([0.8, 1.0, 1.2])
    return img * np.exp(0.1 * rng.standard_normal(img.shape))


def _filmic_table():
    """An S-shaped camera curve (toe and shoulder), code -> radiance."""
    x = np.linspace(0, 1, 200001)
    y = (x * 4) ** 1.6 / ((x * 4) ** 1.6 + 0.35)
    y = (y / y[-1]) ** (1 / 2.2)
    lin = np.interp(np.arange(256) / 255, y, x)
    return normalise_table(np.repeat(lin[:, None], 3, axis=1))


def _bracket(table, rad=None, times=TIMES, bits=8):
    rad = _scene() if rad is None else rad
    q = 2 ** bits - 1
    return [(np.rint(encode(np.clip(rad * t, 0, 1), table) * q) / q).astype(np.float32) for t in times]


@pytest.mark.parametrize('make', [_filmic_table, lambda: gamma_table(1.8), srgb_table], ids=['filmic', 'g1.8', 'srgb'])
def test_auto_estimates_the_curve_of_an_8bit_bracket(make, caplog):
    true = make()
    with caplog.at_level(logging.WARNING):
        res = choose_response('auto', _bracket(true), TIMES, PATHS)
    assert res.name == 'estimate' and res.why.startswith('auto: estimated')
    z = np.arange(20, 236)
    d = np.log2(res.table[z]) - np.log2(true[z])
    assert np.sqrt(np.mean((d - d.mean()) ** 2)) < 0.1  # the shape, in stops (a common scale is an exposure)
    assert np.ptp(d.mean(axis=0)) < 1e-9                 # one curve for the three channels: no tint
    assert not caplog.records


def test_auto_keeps_16bit_frames_in_the_training_encoding():
    res = choose_response('auto', _bracket(gamma_table(2.2), bits=16), TIMES, PATHS)
    assert res.is_training_gamma and '16-bit' in res.why


def test_auto_falls_back_to_srgb_without_overlap_and_says_why(caplog):
    # a bracket 8 stops apart: the frames share no well-exposed pixels, the estimate has nothing to stand on
    frames = _bracket(_filmic_table(), rad=_scene() * 0.05, times=(1.0, 256.0, 65536.0))
    with caplog.at_level(logging.WARNING):
        res = choose_response('auto', frames, (1.0, 256.0, 65536.0), PATHS)
    assert res.name == 'srgb' and 'unreliable' in res.why and 'sRGB is used' in res.why
    assert 'short.jpg and medium.jpg share almost no well-exposed pixels' in caplog.text
    assert 'medium.jpg: the estimate from this bracket is unreliable' in caplog.text


def test_an_asked_for_estimate_is_kept_but_questioned(caplog):
    # wrong exposure times (the bracket is 2 stops apart, the times say 0.5): the curve bends, the check notices
    frames = _bracket(srgb_table())
    with caplog.at_level(logging.WARNING):
        res = choose_response('estimate', frames, (1.0, 2 ** 0.5, 2.0), PATHS)
    assert res.name == 'estimate'
    assert 'may be wrong' in caplog.text and 'implausible curve' in caplog.text


def test_reliability_check_names_each_reason():
    good = {'coverage': 0.9, 'residual_stops': 0.02, 'channel_spread_stops': 0.01, 'slope_min': 1.4, 'slope_max': 2.3}
    assert unreliable_reasons(good) == []
    bad = {'coverage': 0.3, 'residual_stops': 0.5, 'channel_spread_stops': 0.3, 'slope_min': 0.1, 'slope_max': 30}
    text = '; '.join(unreliable_reasons(bad))
    for word in ('codes 20..235', 'residual', 'disagree', 'implausible'):
        assert word in text


def test_is_8bit():
    assert is_8bit(_bracket(srgb_table()))
    assert not is_8bit(_bracket(srgb_table(), bits=16))


@pytest.mark.parametrize('gamma', [1.8, 2.0])
def test_unreliable_estimate_falls_back_to_the_power_law_the_ratios_fit(gamma, caplog):
    # most of the frame clipped in the medium and long frames: too little for a free curve, enough for one number
    from photo.response_choice import parametric_fallback

    rad = _scene() * 4.0
    frames = _bracket(gamma_table(gamma), rad=rad)
    res = parametric_fallback(frames, TIMES)
    assert res.name.startswith('gamma') and abs(float(res.name[5:]) - gamma) < 0.1, res.why
    assert 'residual' in res.why


def test_power_law_fallback_keeps_srgb_for_an_srgb_camera():
    from photo.response_choice import parametric_fallback

    res = parametric_fallback(_bracket(srgb_table(), rad=_scene() * 4.0), TIMES)
    assert res.name == 'srgb' and 'no better' in res.why
