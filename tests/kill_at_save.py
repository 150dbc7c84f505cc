"""Run train.py (tiny backbone) and SIGKILL this process at one moment of the N-th checkpoint write.

    python tests/kill_at_save.py N PHASE <train.py arguments>

PHASE `during`: half of the file's bytes are in its temporary file when the kill comes; `after`: the file was
renamed into place and the next write has not started. Used by tests/test_resume.py as a real kill -9."""
import io
import os
import signal
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import pytest  # noqa: E402
import torch  # noqa: E402

from tiny_data import use_tiny_backbone  # noqa: E402


def main():
    kill_at, phase, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    use_tiny_backbone(pytest.MonkeyPatch())
    from models import base_model
    import train

    real_save = base_model.atomic_torch_save
    calls = [0]

    def save_then_maybe_die(obj, path):
        calls[0] += 1
        if calls[0] == kill_at and phase == 'during':
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            with open(f'{path}.tmp{os.getpid()}', 'wb') as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, path)
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    base_model.atomic_torch_save = save_then_maybe_die
    return train.main(argv)


if __name__ == '__main__':
    sys.exit(main())
