"""The defaults of the user-facing runs: train.sh, test.sh and tools/study.py pass --amp auto (bf16 where the
hardware has it, fp32 elsewhere) and --compile where it pays; `amp=none` / `--amp none` give the release's fp32.
The shell scripts run with a stand-in `python` on the PATH that records its command lines."""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_script(script, tmp_path, **env):
    """Run `sh <script>` with a stub `python` that appends each command line to a file; returns the lines."""
    if shutil.which('sh') is None:
        pytest.skip('no sh')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    record = tmp_path / 'calls.txt'
    stub = bin_dir / 'python'
    stub.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(record))}\n')
    stub.chmod(0o755)
    environ = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', ckpt=str(tmp_path / 'ckpt'),
                   dataroot=str(tmp_path / 'data'), **env)
    proc = subprocess.run(['sh', str(ROOT / script)], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line.split() for line in record.read_text().splitlines()], proc.stdout


def _flag(argv, name):
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize('budget, compiled', [('demo', 'False'), ('short', 'auto')])
def test_train_sh_passes_amp_auto_and_compiles_the_long_budget(tmp_path, budget, compiled):
    calls, stdout = _run_script('train.sh', tmp_path, budget=budget)
    trainings = [c for c in calls if c[0] == 'train.py']
    tests = [c for c in calls if c[0] == 'test.py']
    assert len(trainings) == 2 and len(tests) == 2
    for argv in trainings + tests:
        assert _flag(argv, '--amp') == 'auto'
    for argv in trainings:
        assert _flag(argv, '--compile') == compiled
    assert all('--compile' not in argv for argv in tests)  # evaluations are too short to repay a compile
    assert f'--compile {compiled}' in stdout  # the script says what it chose


def test_train_sh_amp_none_is_the_release_fp32(tmp_path):
    calls, _ = _run_script('train.sh', tmp_path, amp='none', compile='False')
    for argv in calls:
        if argv[0] in ('train.py', 'test.py'):
            assert _flag(argv, '--amp') == 'none'
            assert argv[0] == 'test.py' or _flag(argv, '--compile') == 'False'


def test_test_sh_passes_amp_auto(tmp_path):
    calls, _ = _run_script('test.sh', tmp_path)
    (argv,) = [c for c in calls if c[0] == 'test.py']
    assert _flag(argv, '--amp') == 'auto'
    assert _flag(argv, '--tile') == 'auto'  # whole images where they fit (on a CPU up to 768x768), tiles otherwise
    (tmp_path / 'none').mkdir()
    calls, _ = _run_script('test.sh', tmp_path / 'none', amp='none')
    (argv,) = [c for c in calls if c[0] == 'test.py']
    assert _flag(argv, '--amp') == 'none'


# ------------------------------------------------------------------------------------------------ tools/study.py
@pytest.fixture
def study(monkeypatch):
    from tools import study
    monkeypatch.setattr(study, 'PRECISION', dict(study.PRECISION))  # restored after the test
    return study


def test_study_defaults_are_amp_auto_and_compile_auto(study):
    args = study.build_parser().parse_args([])
    assert args.amp == 'auto' and args.compile == 'auto'


@pytest.mark.parametrize('budget, flag, expected', [('short', 'auto', True), ('long', 'auto', True),
                                                    ('tiny', 'auto', False), ('tiny', 'True', True),
                                                    ('short', 'False', False)])
def test_study_compiles_the_long_budgets_only(study, monkeypatch, budget, flag, expected):
    from models import base_model
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': {'avx2', 'fma'})  # NCHW
    monkeypatch.setattr(study.torch.cuda, 'is_available', lambda: False)
    assert study.precision_settings('none', flag, budget)['compile'] is expected


@pytest.mark.parametrize('amp, flag, expected', [('auto', 'auto', False), ('auto', 'True', True),
                                                 ('none', 'auto', False)])
def test_study_does_not_compile_channels_last_runs_on_amx(study, monkeypatch, amp, flag, expected):
    """On an AMX CPU the networks run in channels_last (bf16 and fp32), where eager is as fast as compiled."""
    from models import base_model
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': {'avx512_bf16', 'amx_bf16'})
    monkeypatch.setattr(study.torch.cuda, 'is_available', lambda: False)
    assert study.precision_settings(amp, flag, 'short')['compile'] is expected


def test_study_auto_follows_the_cpu(study, monkeypatch):
    import torch

    from models import base_model
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda flags=None: True)
    assert study.precision_settings('auto', 'auto', 'short')['dtype'] is torch.bfloat16
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda flags=None: False)
    assert study.precision_settings('auto', 'auto', 'short')['dtype'] is None
    assert study.precision_settings('none', 'auto', 'short')['dtype'] is None


def test_study_passes_its_precision_to_train_and_test(study, monkeypatch, tmp_path):
    import train
    seen = []

    def fake_main(argv):
        seen.append(list(argv))
        (tmp_path / 'ckpt' / _flag(argv, '--name')).mkdir(parents=True, exist_ok=True)
        return 0

    monkeypatch.setattr(train, 'main', fake_main)
    from models import base_model
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': {'avx512f', 'avx512_bf16'})
    study.PRECISION.update(study.precision_settings('auto', 'auto', 'short'))
    study.train_run('stage1', 'selfhdr1', tmp_path / 'data', tmp_path / 'ckpt', 'AHDRNet', study.BUDGETS['short'])
    (argv,) = seen
    assert _flag(argv, '--amp') == 'auto' and _flag(argv, '--compile') == 'True'
    assert _flag(study.common_args(tmp_path, tmp_path, 'AHDRNet'), '--amp') == 'auto'  # test.py's stage-0 run


# ------------------------------------------------------------------------------------------------ tools/adapt.py
def _adapt_args(*extra):
    from tools import adapt
    return adapt.build_parser().parse_args(['--brackets', 'b', '--checkpoint', 'c.pth', '--network', 'AHDRNet',
                                            '--out', 'o.pth', *extra])


@pytest.mark.parametrize('extra, amp, compiled', [
    ((), 'auto', 'False'),  # 600 iterations: the compile warm-up is not repaid
    (('--iters', '2000'), 'auto', 'auto'),  # train.py decides by the layout (eager in NHWC on AMX)
    (('--amp', 'none', '--compile', 'False', '--iters', '2000'), 'none', 'False'),
    (('--compile', 'True'), 'auto', 'True'),
])
def test_adapt_passes_amp_auto_to_train_and_test(tmp_path, extra, amp, compiled):
    from tools import adapt
    args = _adapt_args(*extra)
    work = adapt.Work(tmp_path)
    train_argv = adapt.train_argv(args, work, epochs=2, per_epoch=3, resume=False)
    assert _flag(train_argv, '--amp') == amp and _flag(train_argv, '--compile') == compiled
    assert _flag(adapt.device_flags(args), '--amp') == amp  # also what the stage-0 test.py run gets


def test_adapt_refuses_fp16_on_the_cpu():
    from tools import adapt
    with pytest.raises(adapt.AdaptError, match='fp16'):
        adapt._check_args(_adapt_args('--amp', 'fp16'))
