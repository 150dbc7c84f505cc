"""Every user path for every backbone on tiny data: stage-1 training with validation, stage-0 labels, stage 2,
test.py whole and tiled, and tools/merge_brackets.py. Guards the padded (transformer) forward in each path."""
import json

import numpy as np
import pytest
import torch

import test as test_script
import train as train_script
from models import networks
from tiny_data import TRAIN_SCENES, eval_args, single_thread, train_args
from tools.merge_brackets import main as merge_main
from util.hdr_io import read_hdr

BACKBONES = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope='module')
def trained(tiny_dataroot, tmp_path_factory):
    """Per backbone: one stage-1 epoch of one iteration, with validation (the padded forward in train.py)."""
    ckpt = tmp_path_factory.mktemp('paths')
    done = {}
    for net in BACKBONES:
        args = train_args(tiny_dataroot, ckpt, f's1_{net}', 'selfhdr1', network=net, iters_per_epoch=1,
                          calc_metrics=True, test_every=1)
        with single_thread():
            assert train_script.main(args) == 0, net
        done[net] = ckpt
    return done


@pytest.mark.parametrize('network', BACKBONES)
def test_validation_ran_during_training(trained, network):
    log = (trained[network] / f's1_{network.lower()}' / 'train.log').read_text()
    assert 'validation PSNR-mu' in log


@pytest.mark.parametrize('network', BACKBONES)
def test_stage0_then_stage2(trained, tiny_dataroot, network):
    ckpt, name = trained[network], f's1_{network.lower()}'
    assert test_script.main(eval_args(tiny_dataroot, ckpt, name, network=network, load_iter=1,
                                      stage0_inference=True, save_imgs=True)) == 0
    labels = ckpt / name / 'output_1'
    assert sorted(p.stem for p in labels.glob('*.hdr')) == TRAIN_SCENES
    args = train_args(tiny_dataroot, ckpt, f's2_{network}', 'selfhdr2', network=network, iters_per_epoch=1,
                      stru_lable_path=labels, calc_metrics=True, test_every=1)
    assert train_script.main(args) == 0
    assert (ckpt / f's2_{network.lower()}' / 'SelfHDR_model_1.pth').is_file()


@pytest.mark.parametrize('network', BACKBONES)
@pytest.mark.parametrize('tile', [0, 32])
def test_test_script_whole_and_tiled(trained, tiny_dataroot, network, tile):
    ckpt, name = trained[network], f's1_{network.lower()}'
    assert test_script.main(eval_args(tiny_dataroot, ckpt, name, network=network, load_iter=1, tile=tile,
                                      tile_overlap=8)) == 0
    summary = json.loads((ckpt / name / 'metrics_sig17align_epoch_1.json').read_text())
    assert summary['scenes'] == 2 and np.isfinite(summary['psnr_mu'])


@pytest.mark.parametrize('network', BACKBONES)
def test_merge_brackets(trained, tiny_dataroot, network, tmp_path, capsys):
    scene = tiny_dataroot / 'Test' / '001'
    frames = sorted(str(p) for p in scene.glob('*.tif'))
    stops = (scene / 'exposure.txt').read_text().split()
    ckpt = trained[network] / f's1_{network.lower()}' / 'SelfHDR_model_1.pth'
    rc = merge_main(['--inputs', *frames, '--network', network, '--checkpoint', str(ckpt), '--exposures', *stops,
                     '--exposures_in', 'stops', '--output_dir', str(tmp_path), '--name', 'out', '-q'])
    assert rc == 0, capsys.readouterr().err
    out = read_hdr(tmp_path / 'out.hdr')
    assert out.shape[:2] == read_hdr(scene / 'HDRImg.hdr').shape[:2] and np.isfinite(out).all()


def test_padded_wrapper_matches_padded_forward():
    from util.tiling import padded, padded_forward
    net = lambda a, b, c: a + 2 * b - c  # noqa: E731
    xs = [torch.rand(1, 6, 13, 21) for _ in range(3)]
    assert torch.equal(padded(net)(*xs), padded_forward(net, xs))
    assert padded(net)(*xs).shape == xs[0].shape
    assert set(networks.PADDED_NETWORKS) == {'HDR-Transformer', 'SCTNet'}
