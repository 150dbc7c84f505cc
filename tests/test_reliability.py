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
