"""util/malloc.py: the glibc setting is applied once, can be refused, and bad modes are errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from util.malloc import tune_malloc


def test_system_mode_changes_nothing():
    assert tune_malloc('system') is False


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match='tuned'):
        tune_malloc('jemalloc')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt is Linux-only')
def test_tuned_mode_applies_and_memory_still_works():
    # a fresh interpreter, so that the setting does not leak into the other tests' processes
    code = ('from util.malloc import tune_malloc; import torch; '
            'assert tune_malloc("tuned") and tune_malloc("tuned"); '
            'x = torch.ones(64, 1024, 1024); del x; y = torch.zeros(64, 1024, 1024); assert float(y.sum()) == 0; '
            'print("ok")')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith('ok')
