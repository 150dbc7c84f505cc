"""Shared test helpers: where the golden reference lives, and option namespaces for tiny runs."""
import argparse
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT.parent / 'shared' / 'golden'
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)


@pytest.fixture
def golden_dir():
    if not GOLDEN.is_dir():
        pytest.skip(f'golden reference not found at {GOLDEN} (it sits beside the checkout in CI)')
    return GOLDEN


def make_opt(**overrides):
    """Parse the real option classes with the given flags (no side effects besides printing)."""
    from options.test_options import TestOptions
    from options.train_options import TrainOptions
    is_train = overrides.pop('is_train', True)
    args = []
    for key, value in overrides.items():
        args.append(f'--{key}')
        if isinstance(value, (list, tuple)):
            args.extend(str(v) for v in value)
        else:
            args.append(str(value))
    options = TrainOptions() if is_train else TestOptions()
    return options.parse(args)


@pytest.fixture
def opt_factory():
    return make_opt


@pytest.fixture(scope='session')
def tiny_dataroot(tmp_path_factory):
    """A 48 x 64 SIGGRAPH17-layout data set (3 training, 2 test scenes, with the _align folders); see tiny_data.py."""
    from tiny_data import make_tiny_dataset
    return make_tiny_dataset(tmp_path_factory.mktemp('tiny_sig17'))


@pytest.fixture(autouse=True)
def _drop_log_handlers_added_by_the_test():
    """The command-line tools call logging.basicConfig, which hands the root logger a handler on the sys.stderr of
    that moment: under pytest, one test's capture stream, closed when the test ends. Left in place, every later log
    record fails on it ('--- Logging error ---' tracebacks in other tests' stderr) and stops later basicConfig calls
    from taking effect, so tests would pass or fail by their order. Each test starts with the handlers it found."""
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
