"""Adding a backbone takes its module plus one row of models/backbones.py, nothing else: a toy fifth backbone,
registered by that one row alone (monkeypatched into the table), is seen by the registry and the options, trains a
stage-1 step, is saved, and goes through test.py."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import test as test_script
import train as train_script
from models import backbones, networks
from options.base_options import NETWORK_CHOICES
from tiny_data import eval_args, single_thread, tiny_opt, train_args, use_tiny_backbone


class ToyNet(nn.Module):
    """The smallest network the backbone contract allows: three (N, 6, H, W) exposures in, (N, 3, H, W) in (0, 1)
    out, explicit keyword arguments with defaults, no options."""

    def __init__(self, features=4):
        super().__init__()
        self.conv_in = nn.Conv2d(18, features, 3, padding=1)
        self.conv_out = nn.Conv2d(features, 3, 3, padding=1)

    def forward(self, x1, x2, x3):
        return torch.sigmoid(self.conv_out(torch.relu(self.conv_in(torch.cat((x1, x2, x3), 1)))))


# pad_multiple / crop_multiple != 0 / 1, so that the options' padding and crop checks read this row.
TOY = backbones.Backbone('Toy', ToyNet.__module__, 'ToyNet', pad_multiple=4, crop_multiple=4, aligned_input=False)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, TOY.name, TOY)  # the one row
    use_tiny_backbone(monkeypatch)  # one shared random VGG19 for the perceptual loss, as in the other tiny runs
    with single_thread():
        yield TOY.name


def test_one_row_reaches_every_consumer_and_leaves_with_it(monkeypatch):
    assert TOY.name not in NETWORK_CHOICES
    with monkeypatch.context() as patch:
        patch.setitem(backbones.BACKBONES, TOY.name, TOY)
        assert backbones.NAMES[-1] == TOY.name and TOY.name in NETWORK_CHOICES
        assert networks.NETWORKS[TOY.name] == (TOY.module, 'ToyNet')
        assert TOY.name in networks.PADDED_NETWORKS
        assert isinstance(networks.define_network(TOY.name), ToyNet)
    assert TOY.name not in backbones.NAMES and TOY.name not in networks.NETWORKS
    with pytest.raises(ValueError, match="Unknown --network 'Toy'"):
        networks.define_network(TOY.name)


def test_options_take_the_row(toy, tiny_dataroot, tmp_path):
    opt = tiny_opt(tiny_dataroot, tmp_path, 'toy', network=toy)
    assert opt.network == toy and opt.chop and not opt.aligned_input
    with pytest.raises(SystemExit):  # crops must be a multiple of the row's crop_multiple (4)
        tiny_opt(tiny_dataroot, tmp_path, 'toy', network=toy, patch_size=30)


def test_options_refuse_the_name_without_the_row(tiny_dataroot, tmp_path):
    with pytest.raises(SystemExit):
        tiny_opt(tiny_dataroot, tmp_path, 'toy', network=TOY.name)


def test_train_step_save_and_test_path(toy, tiny_dataroot, tmp_path):
    assert train_script.main(train_args(tiny_dataroot, tmp_path, 'toy', 'selfhdr1', network=toy,
                                        iters_per_epoch=1)) == 0
    checkpoint = tmp_path / 'toy' / 'SelfHDR_model_1.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    assert list(state) == list(ToyNet().state_dict())
    assert test_script.main(eval_args(tiny_dataroot, tmp_path, 'toy', network=toy, load_iter=1)) == 0
    summary = json.loads((tmp_path / 'toy' / 'metrics_sig17align_epoch_1.json').read_text())
    assert summary['scenes'] == 2 and np.isfinite(summary['psnr_mu'])
