"""Bad data and hostile environments, through train.py and test.py: each case exits non-zero (2 for the user's
data, 1 for the run's environment) with a message naming the file or flag, and nothing already written is lost."""
import errno
import shutil

import cv2
import numpy as np
import pytest
import torch

import test as test_script
import train
from tiny_data import eval_args, single_thread, train_args, use_tiny_backbone
from util import fs, metrics
from util.hdr_io import read_hdr, write_hdr


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


@pytest.fixture
def dataroot(tiny_dataroot, tmp_path):
    """A private copy of the tiny data set, free to damage."""
    return shutil.copytree(tiny_dataroot, tmp_path / 'data')


def _log(tmp_path, name, kind='train'):
    return (tmp_path / 'ckpt' / name / f'{kind}.log').read_text()


def _make_frame_grey(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), img[:, :, 1])


def _add_alpha(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), np.dstack([img, np.full(img.shape[:2], 65535, img.dtype)]))


@pytest.mark.parametrize('damage, what', [(_make_frame_grey, 'grey'), (_add_alpha, '4-channel')])
def test_grey_or_alpha_frame_is_an_error_unless_lenient(tiny, dataroot, tmp_path, damage, what):
    frame = sorted((dataroot / 'Training' / '001').glob('*.tif'))[1]
    damage(frame)
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(dataroot, ckpt, 'strict')) == 2
    log = _log(tmp_path, 'strict')
    assert str(frame) in log and what in log and '--lenient_data True' in log
    assert not list((ckpt / 'strict').glob('*.pth'))
    assert train.main(train_args(dataroot, ckpt, 'lenient', lenient_data=True)) == 0
    assert '1 frames were grey or had an alpha channel and were converted' in _log(tmp_path, 'lenient')


def test_stray_file_beside_the_scenes_is_an_error_unless_lenient(tiny, dataroot, tmp_path):
    (dataroot / 'Training' / 'notes.zip').write_bytes(b'PK')
    (dataroot / 'Training' / '.DS_Store').write_bytes(b'\0')  # hidden files are ignored
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(dataroot, ckpt, 'strict')) == 2
    log = _log(tmp_path, 'strict')
    assert 'notes.zip' in log and '--lenient_data True' in log and '.DS_Store' not in log
    assert train.main(train_args(dataroot, ckpt, 'lenient', lenient_data=True)) == 0
    assert 'skipped 1 files' in _log(tmp_path, 'lenient')


def test_full_disk_during_a_checkpoint_save_names_the_path_and_keeps_the_last_one(tiny, tiny_dataroot, tmp_path,
                                                                                   monkeypatch):
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(tiny_dataroot, ckpt, 'run', niter=1)) == 0
    good = (ckpt / 'run' / 'SelfHDR_model_1.pth').read_bytes()

    def full_disk(obj, path):
        with open(path, 'wb') as handle:
            handle.write(b'\0' * 10)
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 10')
    from models import base_model
    monkeypatch.setattr(base_model.torch, 'save', full_disk)
    monkeypatch.setattr(fs, 'free_bytes', lambda path: 4096)
    assert train.main(train_args(tiny_dataroot, ckpt, 'run', niter=2, continue_train=True)) == 1
    log = _log(tmp_path, 'run')
    assert 'no space left on the device' in log and str(ckpt / 'run' / 'SelfHDR_model_2.pth') in log
    assert (ckpt / 'run' / 'SelfHDR_model_1.pth').read_bytes() == good
    assert not (ckpt / 'run' / 'SelfHDR_model_2.pth').exists() and not list((ckpt / 'run').glob('*.tmp*'))


def test_read_only_output_folder_in_test_py(tiny, tiny_dataroot, tmp_path, monkeypatch):
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(tiny_dataroot, ckpt, 'run', niter=1)) == 0
    import util.hdr_io

    def read_only(path, img, params=()):
        raise OSError(errno.EROFS, 'Read-only file system', path)
    monkeypatch.setattr(util.hdr_io.cv2, 'imwrite', read_only)
    assert test_script.main(eval_args(tiny_dataroot, ckpt, 'run', model='selfhdr1', load_iter=1,
                                      save_imgs=True)) == 1
    log = _log(tmp_path, 'run', 'test')
    assert 'read-only file system' in log and str(ckpt / 'run' / 'output_1') in log


def test_checkpoints_dir_that_is_a_file(tiny, tiny_dataroot, tmp_path, capsys):
    blocker = tmp_path / 'ckpt'
    blocker.write_text('not a folder')
    assert train.main(train_args(tiny_dataroot, blocker, 'run')) == 1
    err = capsys.readouterr().err
    assert 'cannot write to' in err and str(blocker) in err
    assert blocker.read_text() == 'not a folder'


def test_extreme_ground_truth_names_the_scene(tiny, dataroot, tmp_path):
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(dataroot, ckpt, 'run', niter=1)) == 0
    scene = sorted(p for p in (dataroot / 'Test').iterdir() if p.is_dir())[0]
    gt = read_hdr(scene / 'HDRImg.hdr')
    gt[0, 0] = 1e37  # finite radiance whose mu-law overflows float32
    write_hdr(scene / 'HDRImg.hdr', gt)
    assert test_script.main(eval_args(dataroot, ckpt, 'run', model='selfhdr1', load_iter=1)) == 1
    log = _log(tmp_path, 'run', 'test')
    assert f'scene {scene.name}' in log and 'psnr_mu' in log and 'not finite' in log
    assert 'math domain error' not in log


def test_truncated_optimizer_file_names_the_file(tiny, tiny_dataroot, tmp_path):
    ckpt = tmp_path / 'ckpt'
    assert train.main(train_args(tiny_dataroot, ckpt, 'run', niter=1)) == 0
    optimizer = ckpt / 'run' / 'SelfHDR_optimizer_Adam.pth'
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    assert train.main(train_args(tiny_dataroot, ckpt, 'run', niter=2, load_iter=1, load_optimizers=True)) == 1
    log = _log(tmp_path, 'run')
    assert f'cannot read optimizer state {optimizer}' in log and '--load_optimizers False' in log


@pytest.mark.parametrize('pred, gt, message', [
    (np.full((8, 8, 3), np.nan, np.float32), np.zeros((8, 8, 3), np.float32), 'prediction holds 192 NaN/Inf'),
    (np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), 1e37, np.float32), 'mu-law of the ground truth'),
    (np.full((8, 8, 3), -1.0, np.float32), np.zeros((8, 8, 3), np.float32), 'mu-law of the prediction'),
])
def test_metrics_refuse_values_they_cannot_score(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        metrics.psnr_mu(pred, gt)


def test_psnr_of_overflowing_error_is_a_clear_error():
    with pytest.raises(ValueError, match='mean squared error is inf'):
        metrics.psnr(np.full((4, 4), 1e200), np.zeros((4, 4)))


def test_a_write_failure_with_a_cause_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    """--checkpoints_dir /proc/x fails with ENOENT; /proc shows 0 bytes free, which was reported as a full disk."""
    import errno

    monkeypatch.setattr(fs, 'free_bytes', lambda path: 0)
    cause = fs.write_failure_cause(OSError(errno.ENOENT, 'No such file or directory'), tmp_path / 'x' / 'opt.txt')
    assert cause == 'a folder on the path does not exist and cannot be made there'
    assert 'no space' in fs.write_failure_cause(RuntimeError('unexpected pos 64 vs 10'), tmp_path / 'm.pth')
