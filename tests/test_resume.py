"""Resuming without naming an epoch (--continue_train), after a clean stop, a kill between the two checkpoint
files, or a SIGTERM; temporary files of interrupted saves are cleaned up."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from tiny_data import single_thread, train_args, use_tiny_backbone

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


def _optimizer_epoch(run):
    return torch.load(run / 'SelfHDR_optimizer_Adam.pth', map_location='cpu', weights_only=True)['epoch']


def test_continue_train_resumes_the_newest_complete_epoch(tiny, tiny_dataroot, tmp_path):
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=2)) == 0
    run = tmp_path / 'run'
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=3, continue_train=True)) == 0
    assert (run / 'SelfHDR_model_3.pth').is_file() and _optimizer_epoch(run) == 3
    assert 'resuming after epoch 2 (networks and optimizer state)' in (run / 'train.log').read_text()


def test_continue_train_after_a_kill_between_model_and_optimizer(tiny, tiny_dataroot, tmp_path):
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=2)) == 0
    run = tmp_path / 'run'
    # as if killed after the epoch-3 model file was renamed into place, before the optimizer file: the newest
    # complete pair is epoch 2, and epoch 3 is trained again (the per-epoch seeds make it the same epoch)
    stale_copy = (run / 'SelfHDR_model_2.pth').read_bytes()
    (run / 'SelfHDR_model_3.pth').write_bytes(stale_copy)
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=4, continue_train=True)) == 0
    assert 'resuming after epoch 2 (networks and optimizer state)' in (run / 'train.log').read_text()
    assert (run / 'SelfHDR_model_3.pth').read_bytes() != stale_copy
    assert _optimizer_epoch(run) == 4


def test_continue_train_without_optimizer_file_uses_the_newest_model(tiny, tiny_dataroot, tmp_path):
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=2)) == 0
    run = tmp_path / 'run'
    (run / 'SelfHDR_optimizer_Adam.pth').write_bytes(b'truncated')
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=3, continue_train=True)) == 0
    log = (run / 'train.log').read_text()
    assert 'resuming after epoch 2' in log and 'FRESH optimizer' in log
    assert _optimizer_epoch(run) == 3


def test_continue_train_with_nothing_saved_starts_from_scratch(tiny, tiny_dataroot, tmp_path):
    assert train.main(train_args(tiny_dataroot, tmp_path, 'new', niter=1, continue_train=True)) == 0
    assert (tmp_path / 'new' / 'SelfHDR_model_1.pth').is_file()
    assert 'starting from scratch' in (tmp_path / 'new' / 'train.log').read_text()


def test_continue_train_with_load_path_resumes_the_run(tiny, tiny_dataroot, tmp_path):
    """train.sh's stage 2 starts from --load_path; the same command plus --continue_train resumes the run's newest
    epoch (it silently started over from --load_path's weights, overwriting the saved epochs)."""
    assert train.main(train_args(tiny_dataroot, tmp_path, 'base', niter=1)) == 0
    start = str(tmp_path / 'base' / 'SelfHDR_model_1.pth')
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=2, load_path=start)) == 0
    run = tmp_path / 'run'
    epoch2 = (run / 'SelfHDR_model_2.pth').read_bytes()
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=3, load_path=start,
                                 continue_train=True)) == 0
    log = (run / 'train.log').read_text()
    assert 'resuming after epoch 2 (networks and optimizer state)' in log and 'is not loaded again' in log
    assert (run / 'SelfHDR_model_2.pth').read_bytes() == epoch2 and _optimizer_epoch(run) == 3
    # --load_iter N with --load_path: this run's epoch N too (it loaded --load_path's weights at epoch N)
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=4, load_path=start, load_iter=3,
                                 load_optimizers=True)) == 0
    log = (run / 'train.log').read_text()
    assert '--load_iter 3: continuing this run after that epoch' in log
    assert f'loaded SelfHDR from {run / "SelfHDR_model_3.pth"}' in log
    # the same without checkpoints in the run: it starts from --load_path
    assert train.main(train_args(tiny_dataroot, tmp_path, 'fresh', niter=1, load_path=start,
                                 continue_train=True)) == 0
    assert f'starting from --load_path {start}' in (tmp_path / 'fresh' / 'train.log').read_text()


def test_a_fresh_run_over_an_old_one_warns_and_nothing_to_do_is_said(tiny, tiny_dataroot, tmp_path):
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=2)) == 0
    run = tmp_path / 'run'
    first_options = (run / 'opt_train.txt').read_text()
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=1)) == 0
    assert 'already holds checkpoints of epochs 1, 2 from an earlier run' in (run / 'train.log').read_text()
    # a resume asking for no more epochs than are done (the new run's 1) says so; the options record keeps the
    # earlier run's options above the resumed one's
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=1, continue_train=True)) == 0
    assert 'nothing to train: the run is at epoch 1' in (run / 'train.log').read_text()
    record = (run / 'opt_train.txt').read_text()
    assert record.count('# --continue_train True') == 1 and record.split('\n# --continue_train')[0].strip()
    assert first_options.splitlines()[0] in record


def test_stale_temporary_files_are_removed_at_start(tiny, tiny_dataroot, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    stale = run / 'SelfHDR_model_1.pth.tmp12345'
    stale.write_bytes(b'half a checkpoint')
    keep = run / 'notes.txt'
    keep.write_text('mine')
    assert train.main(train_args(tiny_dataroot, tmp_path, 'run', niter=1)) == 0
    assert not stale.exists() and keep.read_text() == 'mine'
    assert 'interrupted save' in (run / 'train.log').read_text()


def test_sigterm_stops_cleanly_and_the_run_resumes(tiny_dataroot, tmp_path):
    """A real process: SIGTERM after the first checkpoint exits 130, leaves no temporary file, and
    --continue_train picks the run up."""
    args = train_args(tiny_dataroot, tmp_path, 'term', niter=200)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / 'term'
    deadline = time.time() + 240
    while not (run / 'SelfHDR_optimizer_Adam.pth').exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert 'interrupted (SIGTERM)' in err and 'resume with --continue_train True' in err
    assert not list(run.glob('*.tmp*'))
    last = max(int(p.stem.split('_')[-1]) for p in run.glob('SelfHDR_model_*.pth'))
    with single_thread():
        rc = train.main(train_args(tiny_dataroot, tmp_path, 'term', niter=last + 1, continue_train=True))
    assert rc == 0 and (run / f'SelfHDR_model_{last + 1}.pth').is_file()


# Writes per epoch: the model file, then the optimizer file (the manifest). 3 and 4 are epoch 2's.
@pytest.mark.parametrize('kill_at,phase', [(3, 'during'), (3, 'after'), (4, 'during'), (4, 'after')])
def test_kill_9_at_any_moment_of_a_save_resumes_to_the_same_run(tiny, tiny_dataroot, tmp_path, kill_at, phase,
                                                                 uninterrupted):
    args = train_args(tiny_dataroot, tmp_path, 'killed', niter=3)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(ROOT / 'tests' / 'kill_at_save.py'), str(kill_at), phase, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / 'killed'
    assert not (run / 'SelfHDR_model_3.pth').exists()
    assert train.main(train_args(tiny_dataroot, tmp_path, 'killed', niter=3, continue_train=True)) == 0
    assert not list(run.glob('*.tmp*'))
    reference, state = uninterrupted
    for epoch in (1, 2, 3):
        got = torch.load(run / f'SelfHDR_model_{epoch}.pth', map_location='cpu', weights_only=True)['state_dict']
        assert all(torch.equal(got[k], v) for k, v in state[epoch].items()), f'epoch {epoch} differs'
    assert _epoch_losses(run, 3) == _epoch_losses(reference, 3)
    manifest = torch.load(run / 'SelfHDR_optimizer_Adam.pth', map_location='cpu', weights_only=True)
    assert manifest['epoch'] == 3 and manifest['iteration'] == 9 and 'torch' in manifest['rng']


@pytest.fixture(scope='module')
def uninterrupted(tiny_dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp('uninterrupted')
    with pytest.MonkeyPatch.context() as mp, single_thread():
        use_tiny_backbone(mp)
        assert train.main(train_args(tiny_dataroot, out, 'ref', niter=3)) == 0
    run = out / 'ref'
    return run, {e: torch.load(run / f'SelfHDR_model_{e}.pth', map_location='cpu', weights_only=True)['state_dict']
                 for e in (1, 2, 3)}


def _epoch_losses(run, epoch):
    """The loss lines of one epoch in loss_log.txt, without their timings."""
    lines = [line for line in (run / 'loss_log.txt').read_text().splitlines() if f'epoch: {epoch},' in line]
    return [re.sub(r'time: [\d.]+, data: [\d.]+', '', line) for line in lines]


@pytest.mark.parametrize('kill_at', [3, 4])  # during epoch 2's model file, during its optimizer file
def test_explicit_resume_of_a_half_saved_epoch_names_the_last_complete_one(tiny, tiny_dataroot, tmp_path, kill_at):
    """kill -9 inside epoch 2's save, then `--load_iter 2`: the error names epoch 1 and the flags that resume from it,
    and the interrupted save's temporary file is gone after that (failing) start."""
    args = train_args(tiny_dataroot, tmp_path, 'half', niter=2, iters_per_epoch=1)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(ROOT / 'tests' / 'kill_at_save.py'), str(kill_at), 'during', *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / 'half'
    assert list(run.glob('*.tmp*'))
    rc = train.main(train_args(tiny_dataroot, tmp_path, 'half', niter=2, iters_per_epoch=1, load_iter=2,
                               load_optimizers=True))
    assert rc == 1
    log = (run / 'train.log').read_text()
    assert 'epoch 2 was not saved completely' in log
    assert 'the last complete epoch is 1: resume from it with --load_iter 1 --load_optimizers True' in log
    assert not list(run.glob('*.tmp*'))
    assert train.main(train_args(tiny_dataroot, tmp_path, 'half', niter=2, iters_per_epoch=1, load_iter=1,
                                 load_optimizers=True)) == 0
    assert (run / 'SelfHDR_model_2.pth').is_file()


def test_stale_temporaries_are_removed_even_when_the_next_start_fails(tiny, tiny_dataroot, tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    stale = [run / 'SelfHDR_model_1.pth.tmp999', run / 'SelfHDR_optimizer_Adam.pth.tmp998', run / 'opt_train.txt.tmp']
    for path in stale:
        path.write_bytes(b'half')
    assert train.main(train_args(tmp_path / 'no_such_data', tmp_path, 'run', niter=1)) == 2
    assert not any(path.exists() for path in stale)
