"""Option names, defaults and parsing behaviour of the release."""
import pytest
import torch

from options.base_options import parse_gpu_ids, str2bool
from options.test_options import TestOptions
from options.train_options import TrainOptions

REQUIRED = ['--name', 'Run', '--model', 'selfhdr1', '--network', 'AHDRNet']


def test_release_defaults():
    opt = TrainOptions().parse(REQUIRED)
    expected = dict(dataroot='', dataset_name=['eth'], max_dataset_size=float('inf'), batch_size=16, patch_size=128,
                    shuffle=True, num_dataloader=8, drop_last=True, checkpoints_dir='./ckpt', verbose=True,
                    suffix='', load_path='', load_iter=[0], stage0_inference=False, stru_lable_path='',
                    init_type='default', init_gain=0.02, optimizer='Adam', niter=1000, niter_decay=0,
                    lr_policy='step', lr_decay_iters=200, lr=0.0001, load_optimizers=False, weight_decay=0,
                    beta1=0.9, beta2=0.999, momentum=0, alpha=0.99, print_freq=100, test_every=1000,
                    save_epoch_freq=1, calc_metrics=True, save_imgs=False, iters_per_epoch=1200,
                    vgg_weights='imagenet', pad_mode='release', tile=0)
    for key, value in expected.items():
        assert getattr(opt, key) == value, key
    assert opt.isTrain and opt.name == 'run' and opt.chop is False


def test_malloc_option():
    assert TrainOptions().parse(REQUIRED).malloc == 'tuned'
    assert TestOptions().parse(['--name', 'r', '--model', 'selfhdr2', '--network', 'AHDRNet']).malloc == 'tuned'
    assert TrainOptions().parse(REQUIRED + ['--malloc', 'system']).malloc == 'system'
    with pytest.raises(SystemExit):
        TrainOptions().parse(REQUIRED + ['--malloc', 'jemalloc'])


def test_name_lowercased_suffix_and_chop_for_transformers():
    opt = TestOptions().parse(['--name', 'HDRT', '--model', 'selfhdr2', '--network', 'HDR-Transformer',
                               '--suffix', '{network}_bs{batch_size}', '--load_iter', '1', '5'])
    assert opt.name == 'hdrt_hdr-transformer_bs16'
    assert opt.chop is True and opt.load_iter == [1, 5] and not opt.isTrain
    assert opt.noise == 'gauss0.5'  # the selfhdr2 model added its flags


@pytest.mark.parametrize('text,expected', [('yes', True), ('Y', True), ('TRUE', True), ('t', True), ('1', True),
                                           ('no', False), ('0', False), ('false', False), ('anything', False)])
def test_lenient_booleans(text, expected, caplog):
    assert str2bool(text) is expected
    opt = TrainOptions().parse(REQUIRED + ['--shuffle', text])
    assert opt.shuffle is expected
    # the release's reading is kept; a word that is neither yes nor no (a typo: 'Ture') is said, once
    assert caplog.text.count("'anything' is not a yes/no value; taken as False") == (text == 'anything')


def test_gpu_ids(capsys):
    assert parse_gpu_ids('-1') == []
    assert parse_gpu_ids('auto') == ([0] if torch.cuda.is_available() else [])
    assert parse_gpu_ids('2,3') == [2, 3]
    with pytest.raises(ValueError, match='not an integer'):
        parse_gpu_ids('a')
    default = TrainOptions().parse(REQUIRED)
    assert default.gpu_ids == ([0] if torch.cuda.is_available() else [])
    if not torch.cuda.is_available():  # a usage error, said as argparse says its own: no traceback
        with pytest.raises(SystemExit):
            TrainOptions().parse(REQUIRED + ['--gpu_ids', '0'])
        assert 'asks for CUDA, but no CUDA device is available' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        TrainOptions().parse(REQUIRED + ['--gpu_ids', '5,a'])
    assert "--gpu_ids: 'a' is not an integer" in capsys.readouterr().err


def test_unknown_model_and_network_are_errors(capsys):
    with pytest.raises(SystemExit):
        TrainOptions().parse(['--name', 'x', '--model', 'nope', '--network', 'AHDRNet'])
    assert "Unknown --model 'nope'; available: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        TrainOptions().parse(['--name', 'x', '--model', 'selfhdr1', '--network', 'UNet'])


def test_a_tile_smaller_than_its_overlap_is_refused_at_start(capsys):
    from options.test_options import TestOptions
    with pytest.raises(SystemExit):
        TestOptions().parse(['--name', 'x', '--model', 'selfhdr2', '--network', 'AHDRNet', '--tile', '20'])
    assert '--tile_overlap 32 must be in [0, --tile 20)' in capsys.readouterr().err
    assert TestOptions().parse(['--name', 'x', '--model', 'selfhdr2', '--network', 'AHDRNet', '--tile', '20',
                                '--tile_overlap', '8']).tile == 20


def test_stage2_training_without_structure_labels_is_refused_at_start(capsys):
    with pytest.raises(SystemExit):
        TrainOptions().parse(['--name', 'x', '--model', 'selfhdr2', '--network', 'AHDRNet'])
    assert '--model selfhdr2 trains on two labels' in capsys.readouterr().err


def test_save_writes_options_file(tmp_path):
    options = TrainOptions()
    opt = options.parse(REQUIRED + ['--checkpoints_dir', str(tmp_path), '--vgg_weights', 'auto'])
    path = options.save(opt, 'train')
    text = open(path).read()
    assert path.endswith('run/opt_train.txt')
    assert 'vgg_weights: auto' in text and 'default: imagenet' in text
