"""Shared pieces of the fuzz tests (tests/test_fuzz_inputs.py) and of their longer profile (bench/fuzz.py).

`FUZZ_EXAMPLES` (environment variable SELFHDR_FUZZ_EXAMPLES, default 25) sets how many inputs each fuzz test draws;
the suite keeps it small, derandomised, so CI is deterministic and fast. `mutations(seed)` draws a damaged copy
of valid file bytes: a few bytes overwritten, a run inserted or deleted, and an optional truncation."""
import os

from hypothesis import HealthCheck, settings, strategies as st

FUZZ_EXAMPLES = int(os.environ.get('SELFHDR_FUZZ_EXAMPLES', '25'))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not os.environ.get('SELFHDR_FUZZ_RANDOM'),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large], database=None)


@st.composite
def mutations(draw, seed: bytes):
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(['set', 'insert', 'delete']))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == 'set' and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == 'insert':
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif data:
            del data[pos:pos + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)
