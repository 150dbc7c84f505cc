"""Bad flags and broken weights give a clear error naming the flag or file, and nothing already written is lost."""
import pytest
import torch

import test as test_script
from models.ahdrnet import AHDR
from models.base_model import CheckpointError, NonFiniteLossError, load_backbone_state
from tiny_data import eval_args, single_thread, tiny_opt, train_args


@pytest.mark.parametrize('flag', ['batch_size', 'patch_size', 'iters_per_epoch', 'save_epoch_freq', 'print_freq',
                                  'test_every', 'lr_decay_iters'])
def test_zero_flags_are_refused_by_name(tiny_dataroot, tmp_path, flag, capsys):
    from options.train_options import TrainOptions
    with pytest.raises(SystemExit):
        TrainOptions().parse(train_args(tiny_dataroot, tmp_path, 'x', **{flag: 0}))
    assert f'--{flag} must be at least 1' in capsys.readouterr().err


@pytest.mark.parametrize('flags, message', [
    ({'niter': 0}, 'nothing to train'),
    ({'lr': 'inf'}, '--lr must be finite, got inf'),
    ({'lr': -1}, '--lr must be in (0, 1], got -1.0'),
    # float32 overflow inside the optimizer was a raw RuntimeError naming no flag (issue 21)
    ({'lr': 1e39}, '--lr must be in (0, 1], got 1e+39'),
    ({'lr': 1e10}, '--lr must be in (0, 1], got 10000000000.0'),
    ({'beta2': 1.5}, '--beta2 must be in [0, 1], got 1.5'),
    ({'init_gain': 'nan'}, '--init_gain must be finite, got nan'),
    ({'tile': -1}, '--tile must be in [0, 65536], got -1'),
    ({'max_dataset_size': 'nan'}, '--max_dataset_size must be finite, got nan'),
    ({'max_dataset_size': 0.5}, '--max_dataset_size must be in [1, inf), got 0.5'),
    ({'model': 'selfhdr2', 'colour_threshold': 0}, '--colour_threshold must be in (0, 255], got 0.0'),
    ({'network': 'SCTNet', 'patch_size': 36}, 'multiple of 8'),
    ({'suffix': '{nope}'}, "--suffix '{nope}'"),
])
def test_bad_training_flags(tiny_dataroot, tmp_path, flags, message, capsys):
    from options.train_options import TrainOptions
    with pytest.raises(SystemExit):
        TrainOptions().parse(train_args(tiny_dataroot, tmp_path, 'x', **flags))
    assert message in capsys.readouterr().err


def test_good_suffix_still_formats(tiny_dataroot, tmp_path):
    opt = tiny_opt(tiny_dataroot, tmp_path, 'run', suffix='{network}_{batch_size}')
    assert opt.name == 'run_ahdrnet_2'


def _nan_checkpoint(path):
    torch.manual_seed(0)
    state = AHDR().state_dict()
    state['conv3.weight'][0, 0, 0, 0] = float('nan')
    torch.save({'state_dict': state}, path)


def test_nan_checkpoint_is_refused(tmp_path):
    _nan_checkpoint(tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match='NaN or Inf weights in conv3.weight'):
        load_backbone_state(AHDR(), str(tmp_path / 'bad.pth'))


def test_test_script_fails_on_nan_checkpoint(tiny_dataroot, tmp_path):
    (tmp_path / 'bad').mkdir()
    _nan_checkpoint(tmp_path / 'bad' / 'SelfHDR_model_1.pth')
    with single_thread():
        assert test_script.main(eval_args(tiny_dataroot, tmp_path, 'bad', load_iter=1)) == 1
    # the exit status alone would pass on any failure: the message must name the file and the broken weights
    log = (tmp_path / 'bad' / 'test.log').read_text()
    assert f'{tmp_path / "bad" / "SelfHDR_model_1.pth"} holds NaN or Inf weights in conv3.weight' in log


def test_diverged_weights_are_not_saved(tiny_dataroot, tmp_path):
    import models
    opt = tiny_opt(tiny_dataroot, tmp_path, 'div')
    model = models.create_model(opt)
    model.setup(opt)
    model.save_networks(1)
    good = (tmp_path / 'div' / 'SelfHDR_model_1.pth').read_bytes()
    with torch.no_grad():
        next(model.netSelfHDR.parameters()).fill_(float('nan'))
    with pytest.raises(NonFiniteLossError, match='epoch 1 was not saved'):
        model.save_networks(1)
    assert (tmp_path / 'div' / 'SelfHDR_model_1.pth').read_bytes() == good


# ------------------------------------------------------------------- "good" is verified (issue 21)
@pytest.fixture
def tiny(monkeypatch):
    from tiny_data import use_tiny_backbone
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


@pytest.fixture
def huge_lr_allowed(monkeypatch):
    """--lr 1e10 is refused at the door now; the tests of what happens past the door lift the bound."""
    from options.base_options import BaseOptions
    monkeypatch.setitem(BaseOptions.TRAIN_NUMBER_RANGES, 'lr', (0.0, 1e12, True))


def _train_log(tmp_path, name):
    return (tmp_path / name / 'train.log').read_text()


def test_huge_rgbe_label_is_refused_at_load_naming_scene_and_file(tiny_dataroot, tmp_path):
    import shutil
    import data
    from data.base_dataset import DatasetError
    from util.hdr_io import read_hdr, write_hdr
    root = tmp_path / 'data'
    shutil.copytree(tiny_dataroot, root)
    label = root / 'Training_align' / '002' / 'HDRImg.hdr'
    image = read_hdr(label)
    image[:] = 1.7e38  # the largest RGBE values: finite, but 5000 x overflows float32 in the mu-law loss
    write_hdr(label, image)
    opt = tiny_opt(root, tmp_path, 'x')
    with pytest.raises(DatasetError) as info:
        data.create_dataset('sig17align', 'train', opt)
    assert str(label) in str(info.value) and 'scene 002' in str(info.value) and '1e+10' in str(info.value)


def test_non_finite_loss_names_scenes_files_and_the_cause(tiny, tiny_dataroot, tmp_path, huge_lr_allowed):
    import train
    assert train.main(train_args(tiny_dataroot, tmp_path, 'div', lr=1e10, iters_per_epoch=3)) == 1
    log = _train_log(tmp_path, 'div')
    message = next(line for line in log.splitlines() if 'non-finite loss' in line)
    assert 'epoch 1, iteration 2' in message and 'on the batch of scenes 00' in message
    assert 'inputs and weights are finite, the network output is not (largest weight' in message
    assert f'files: 00' in message and str(tiny_dataroot / 'Training') in message and '_short.tif' in message
    assert 'no checkpoint was saved' in message


def test_non_finite_inputs_and_weights_are_told_apart(tiny, tiny_dataroot, tmp_path):
    import data
    import models
    opt = tiny_opt(tiny_dataroot, tmp_path, 'nan')
    model = models.create_model(opt)
    model.setup(opt)
    batch = next(iter(data.create_dataloader(data.create_dataset('sig17align', 'train', opt), opt, 'train')))
    batch['input1'][0, 0, 0, 0] = float('nan')
    model.set_input(batch)
    with pytest.raises(NonFiniteLossError, match=r'non-finite inputs: input1$') as info:
        model.optimize_parameters()
    assert 'on the batch of scenes' in str(info.value)
    batch['input1'][0, 0, 0, 0] = 0.5
    with torch.no_grad():
        model.netSelfHDR.conv2.weight[0, 0, 0, 0] = float('inf')
    model.set_input(batch)
    with pytest.raises(NonFiniteLossError, match=r'non-finite weights: conv2.weight$'):
        model.optimize_parameters()


def test_a_diverged_last_step_is_never_saved(tiny, tiny_dataroot, tmp_path, huge_lr_allowed):
    """--lr 1e10, one iteration per epoch: the step that diverges is the epoch's last, its loss was finite and its
    weights are finite (~1e10), yet every forward is NaN. Epoch 1 used to be saved and called good."""
    import train
    assert train.main(train_args(tiny_dataroot, tmp_path, 'last', lr=1e10, iters_per_epoch=1, niter=3)) == 1
    assert not list((tmp_path / 'last').glob('SelfHDR_model_*.pth'))
    log = _train_log(tmp_path, 'last')
    assert 'after epoch 1, the weights are finite (largest 1e+10) but give a NaN/Inf output on the last batch' in log
    assert 'epoch 1 was not saved' in log and 'no checkpoint was saved' in log


def test_newest_good_checkpoint_is_one_that_was_checked(tiny, tiny_dataroot, tmp_path, huge_lr_allowed):
    import train
    assert train.main(train_args(tiny_dataroot, tmp_path, 'good', iters_per_epoch=1, niter=1)) == 0
    run = tmp_path / 'good'
    _nan_checkpoint(run / 'SelfHDR_model_5.pth')  # a broken newer file (written by hand, not by training)
    # a fresh optimizer (its saved state would restore the old learning rate)
    assert train.main(train_args(tiny_dataroot, tmp_path, 'good', lr=1e10, iters_per_epoch=1, niter=3,
                                 load_iter=1)) == 1
    log = _train_log(tmp_path, 'good')
    assert (f'the newest good checkpoint (weights read back and checked finite) is {run / "SelfHDR_model_1.pth"} '
            '(epoch 1), kept as it is') in log
    assert 'newer ones unusable: ' in log and 'SelfHDR_model_5.pth holds NaN/Inf weights (conv3.weight)' in log
    assert 'resume from it with --load_iter 1' in log
    assert not (run / 'SelfHDR_model_2.pth').exists()
