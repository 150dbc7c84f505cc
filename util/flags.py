"""Values from the outside world, checked at the door: command-line flags, numbers read from files and EXIF.

Every number the project takes from a user (a flag, a line of ``exposure.txt``, an EXIF exposure time, a response
table) goes through :func:`checked_number`, which refuses NaN, Inf, values outside a documented range and
non-integers where an integer is meant, with a :class:`NumberRangeError` that names where the value came from
(``--lr``, ``scene/exposure.txt``, ``IMG_0001.JPG (EXIF ExposureTime)``) and the value itself. A number that passes
is a Python ``float`` (or ``int``) that stays finite in float32 arithmetic downstream (exposure times, radiance).
"""
from __future__ import annotations

import logging
import math
import numbers

__all__ = ['NumberRangeError', 'checked_number', 'str2bool',
           'STOPS_RANGE', 'SECONDS_RANGE', 'LR_RANGE', 'RADIANCE_MAX']

# Documented ranges (see README, "Errors").
STOPS_RANGE = (-32.0, 32.0)        # exposure values in stops: t = 2**v stays in float32 with room for 1/t and X/t
SECONDS_RANGE = (1e-9, 1e6)        # exposure times in seconds (EXIF, --exposures, exposure files in seconds)
LR_RANGE = (0.0, 1.0)              # learning rate: (0, 1], exclusive of 0; above 1 every optimizer here diverges
RADIANCE_MAX = 1e10                # radiance labels: the mu-law loss (5000 x) and metrics stay finite in float32


class NumberRangeError(ValueError):
    """A number from a flag, a file or EXIF that is not finite, not in its documented range, or not an integer."""


def _describe(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def checked_number(value, name: str, lo: float | None = None, hi: float | None = None, source: str = '',
                   integer: bool = False, lo_open: bool = False, hi_open: bool = False):
    """``value`` as a finite float (or int with ``integer=True``) with ``lo <= value <= hi``, else NumberRangeError.

    ``name`` says what the number is (``'--lr'``, ``'exposure value'``); ``source`` where it came from (a path,
    ``'EXIF ExposureTime'``); both appear in the message with the offending value. ``lo_open``/``hi_open`` exclude
    the bound itself. ``None`` bounds are not checked. Strings are parsed (``'1e-4'``); booleans are refused."""
    where = f'{source}: ' if source else ''
    if isinstance(value, bool) or value is None:
        raise NumberRangeError(f'{where}{name} must be a number, got {_describe(value)}')
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if integer else float(text)
        except ValueError:
            raise NumberRangeError(f'{where}{name} must be {"an integer" if integer else "a number"}, '
                                   f'got {_describe(value)}') from None
    elif isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (OverflowError, ValueError):  # e.g. a huge Fraction
            raise NumberRangeError(f'{where}{name} is out of range, got {value}') from None
    else:
        raise NumberRangeError(f'{where}{name} must be a number, got {type(value).__name__} {_describe(value)}')
    if isinstance(number, float) and not math.isfinite(number):
        raise NumberRangeError(f'{where}{name} must be finite, got {_describe(value)}')
    if integer:
        if isinstance(number, float):
            if number != int(number):
                raise NumberRangeError(f'{where}{name} must be an integer, got {_describe(value)}')
            number = int(number)
    too_low = lo is not None and (number <= lo if lo_open else number < lo)
    too_high = hi is not None and (number >= hi if hi_open else number > hi)
    if too_low or too_high:
        left = '-inf' if lo is None else f'{lo:g}'
        right = 'inf' if hi is None else f'{hi:g}'
        bounds = f'{"(" if lo_open or lo is None else "["}{left}, {right}{")" if hi_open or hi is None else "]"}'
        raise NumberRangeError(f'{where}{name} must be in {bounds}, got {_describe(value)}')
    return number


def check_number_flags(args, ranges: dict) -> None:
    """Check each numeric flag of an argparse namespace against ``ranges``: ``{flag: (lo, hi, integer)}`` or
    ``(lo, hi, integer, lo_open)``; a flag that is absent or None is skipped. Raises NumberRangeError naming the
    first flag outside its range (the command line's door check: nothing has run yet)."""
    for flag, bounds in ranges.items():
        lo, hi, integer, lo_open = (tuple(bounds) + (False,))[:4]
        value = getattr(args, flag, None)
        if value is not None:
            checked_number(value, f'--{flag}', lo, hi, integer=integer, lo_open=lo_open)


TRUE_WORDS = ('yes', 'y', 'true', 't', '1')
_WARNED = set()  # non-boolean words str2bool has warned about
FALSE_WORDS = ('no', 'n', 'false', 'f', '0', '')


def str2bool(value):
    """The release's lenient boolean: 'yes', 'y', 'true', 't', '1' (any case) are true, anything else false; a
    value that is neither a true nor a false word (a typo such as 'Ture') is still false, as in the release, but
    said in a warning."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS and word not in _WARNED:
        _WARNED.add(word)  # once per value: the options are parsed several times over
        logging.getLogger(__name__).warning('%r is not a yes/no value; taken as False (the release\'s reading: '
                                            'anything but yes, y, true, t, 1)', value)
    return word in TRUE_WORDS


def bool_or_auto(value):
    """'auto' (any case) as it is, anything else through `str2bool`: the options that choose by the machine."""
    if isinstance(value, str) and value.strip().lower() == 'auto':
        return 'auto'
    return str2bool(value)
