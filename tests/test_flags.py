"""util/flags.py: the one check at the door for numbers from flags, files and EXIF."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from util.flags import LR_RANGE, NumberRangeError, checked_number, str2bool


def test_in_range_values_pass_through():
    assert checked_number('1e-4', '--lr', *LR_RANGE, lo_open=True) == pytest.approx(1e-4)
    assert checked_number(3.0, '--niter', 1, None, integer=True) == 3
    assert isinstance(checked_number(3.0, '--niter', 1, None, integer=True), int)
    assert checked_number(1, 'x', 1, 1) == 1  # closed bounds include the bound


@pytest.mark.parametrize('value, kwargs, message', [
    ('1e39', {'lo': 0, 'hi': 1, 'lo_open': True}, "--lr must be in (0, 1], got '1e39'"),
    (float('nan'), {}, '--lr must be finite, got nan'),
    ('inf', {}, "--lr must be finite, got 'inf'"),
    ('abc', {}, "--lr must be a number, got 'abc'"),
    (True, {}, '--lr must be a number, got True'),
    (None, {}, '--lr must be a number, got None'),
    ([1], {}, '--lr must be a number, got list [1]'),
    (0, {'lo': 0, 'hi': 1, 'lo_open': True}, '--lr must be in (0, 1], got 0'),
    ('2.5', {'integer': True}, "--lr must be an integer, got '2.5'"),
    (2.5, {'integer': True}, '--lr must be an integer, got 2.5'),
    (-3, {'lo': 0}, '--lr must be in [0, inf), got -3'),
])
def test_bad_values_name_the_flag_and_value(value, kwargs, message):
    with pytest.raises(NumberRangeError) as info:
        checked_number(value, '--lr', **kwargs)
    assert str(info.value) == message


def test_the_source_is_named():
    with pytest.raises(NumberRangeError, match=r'^scene/exposure.txt: exposure value must be in \[-32, 32\], got 200$'):
        checked_number(200, 'exposure value', -32, 32, source='scene/exposure.txt')


def test_a_fraction_too_large_for_a_float_is_refused():
    from fractions import Fraction
    with pytest.raises(NumberRangeError, match='out of range'):
        checked_number(Fraction(10 ** 400), 'time', 0, 1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=12),
                 st.booleans(), st.none()),
       st.floats(-1e6, 1e6), st.floats(0, 1e6), st.booleans())
def test_fuzz_result_in_range_or_own_error(value, lo, width, integer):
    """Any input gives a finite number within the bounds, or a NumberRangeError naming the flag."""
    hi = lo + width
    try:
        out = checked_number(value, '--x', lo, hi, integer=integer)
    except NumberRangeError as exc:
        assert str(exc).startswith('--x ')
        return
    assert math.isfinite(out) and lo <= out <= hi
    assert not integer or isinstance(out, int)


def test_str2bool_unchanged():
    assert str2bool('Yes') and str2bool(True) and not str2bool('0') and not str2bool('off')
