"""train.py end to end on the tiny data set: release-format checkpoints and logs, exact resume (with and without the
optimizer file), a NaN loss that stops training without touching the last checkpoint, DistributedDataParallel on
two CPU processes, and the stage-0 inference -> stage-2 hand-over."""
import shutil
import socket

import numpy as np
import pytest
import torch

import data
import test as test_script
import train
from models import create_model
from models.ahdrnet import AHDR
from models.selfhdr1_model import SelfHDR1Model
from tiny_data import (TRAIN_SCENES, ddp_worker, eval_args, load_state, make_stand_in_structure_labels, single_thread,
                       tiny_ahdr, tiny_opt, train_args, use_tiny_backbone)
from util.hdr_io import read_hdr

LR = 1e-4
STEP = {'lr_policy': 'step', 'lr_decay_iters': 1, 'lr': LR}  # halve the LR after every epoch


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)


@pytest.fixture(scope='module')
def stru_dir(tiny_dataroot, tmp_path_factory):
    return make_stand_in_structure_labels(tiny_dataroot, tmp_path_factory.mktemp('stru'))


def stage_flags(model, stru_dir):
    return {'stru_lable_path': stru_dir} if model == 'selfhdr2' else {}


@pytest.fixture(scope='module')
def two_epoch_runs(tiny_dataroot, tmp_path_factory, stru_dir):
    """Per model, a 2-epoch run with a halving LR, run once and copied by the tests that resume it."""
    runs = {}

    def get(model):
        if model not in runs:
            ckpt = tmp_path_factory.mktemp(f'base_{model}')
            with pytest.MonkeyPatch.context() as mp, single_thread():
                use_tiny_backbone(mp)
                rc = train.main(train_args(tiny_dataroot, ckpt, 'base', model, niter=2, **STEP,
                                           **stage_flags(model, stru_dir)))
            assert rc == 0
            runs[model] = ckpt / 'base'
        return runs[model]
    return get


def copy_run(folder, tmp_path):
    target = tmp_path / 'ckpt' / folder.name
    shutil.copytree(folder, target)
    return target


def optimizer_entry(folder):
    return torch.load(folder / 'SelfHDR_optimizer_Adam.pth', map_location='cpu', weights_only=True)


def test_train_writes_release_checkpoints_and_logs(tiny_dataroot, tmp_path):
    """The real AHDR (64 features), 2 epochs with validation."""
    rc = train.main(train_args(tiny_dataroot, tmp_path, 'Release_Format', niter=2, calc_metrics=True))
    assert rc == 0
    run = tmp_path / 'release_format'  # --name is lower-cased
    expected_keys = list(AHDR().state_dict())
    for epoch in (1, 2):
        content = torch.load(run / f'SelfHDR_model_{epoch}.pth', map_location='cpu', weights_only=True)
        assert list(content) == ['state_dict']
        assert list(content['state_dict']) == expected_keys  # bare keys, release order, no 'module.'
    assert not torch.equal(load_state(run / 'SelfHDR_model_1.pth')['conv3.weight'],
                           load_state(run / 'SelfHDR_model_2.pth')['conv3.weight'])
    entry = optimizer_entry(run)
    # the release's keys, plus the resume manifest (the release's loader reads only 'state_dict')
    assert set(entry) == {'name', 'epoch', 'state_dict', 'iteration', 'schedulers', 'rng'}
    assert entry['iteration'] == 6 and len(entry['schedulers']) == 1
    assert entry['name'] == 'SelfHDR_optimizer_Adam' and entry['epoch'] == 2
    assert entry['state_dict']['state'][0]['step'] == 6  # 2 epochs x 3 iterations
    assert not list(run.glob('*.tmp*'))  # atomic saves leave no temporary files

    options = (run / 'opt_train.txt').read_text()
    assert 'model: selfhdr1' in options and 'iters_per_epoch: 3' in options
    log = (run / 'loss_log.txt').read_text()
    for epoch in (1, 2):
        for i in (1, 2, 3):
            assert f'(epoch: {epoch}, iters: {i},' in log
    assert 'StruExpan:' in log and 'StruPrese:' in log and 'Total:' in log
    assert 'epoch 2: validation PSNR-mu' in log
    psnr = float(log.split('epoch 2: validation PSNR-mu')[1].split()[0])
    assert 5 < psnr < 100
    assert 'end of epoch 2 / 2' in (run / 'train.log').read_text()


@pytest.mark.parametrize('model', ['selfhdr1', 'selfhdr2'])
def test_resume_equals_uninterrupted_run(model, tiny, tiny_dataroot, stru_dir, two_epoch_runs, tmp_path):
    extra = stage_flags(model, stru_dir)
    assert train.main(train_args(tiny_dataroot, tmp_path / 'a', 'full', model, niter=3, **STEP, **extra)) == 0
    full = tmp_path / 'a' / 'full'
    resumed = copy_run(two_epoch_runs(model), tmp_path)
    rc = train.main(train_args(tiny_dataroot, resumed.parent, 'base', model, niter=3, load_iter=2,
                               load_optimizers=True, **STEP, **extra))
    assert rc == 0

    for epoch in (2, 3):
        a, b = load_state(full / f'SelfHDR_model_{epoch}.pth'), load_state(resumed / f'SelfHDR_model_{epoch}.pth')
        assert list(a) == list(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f'epoch {epoch} {key}')
    first = load_state(full / 'SelfHDR_model_1.pth')
    assert not torch.equal(first['conv1.weight'], load_state(full / 'SelfHDR_model_3.pth')['conv1.weight'])

    a, b = optimizer_entry(full), optimizer_entry(resumed)
    assert a['epoch'] == b['epoch'] == 3
    # epoch 3 trains at LR / 4 (halved after epochs 1 and 2) in both runs
    assert a['state_dict']['param_groups'][0]['lr'] == b['state_dict']['param_groups'][0]['lr'] == pytest.approx(LR / 4)
    assert a['state_dict']['state'][0]['step'] == b['state_dict']['state'][0]['step'] == 9
    assert 'lr: 2.500e-05' in (resumed / 'loss_log.txt').read_text()


def test_resume_without_optimizer_file_keeps_the_decayed_lr(tiny, tiny_dataroot, two_epoch_runs, tmp_path):
    run = copy_run(two_epoch_runs('selfhdr1'), tmp_path)
    (run / 'SelfHDR_optimizer_Adam.pth').unlink()  # as with the published models
    rc = train.main(train_args(tiny_dataroot, run.parent, 'base', niter=3, load_iter=2, load_optimizers=True,
                               **STEP))
    assert rc == 0
    entry = optimizer_entry(run)
    assert entry['epoch'] == 3 and entry['state_dict']['param_groups'][0]['lr'] == pytest.approx(LR / 4)
    assert entry['state_dict']['state'][0]['step'] == 3  # a fresh Adam, stepped in epoch 3 only
    log = (run / 'loss_log.txt').read_text()
    assert 'lr: 2.500e-05' in log and 'lr: 1.000e-04' in log  # epochs 1 and 3
    assert 'no optimizer state' in (run / 'train.log').read_text()

    # the model alone, resumed from epoch 2: LR / 4 now, LR / 8 after one more epoch
    opt = tiny_opt(tiny_dataroot, run.parent, 'base', niter=5, load_iter=2, **STEP)
    model = create_model(opt)
    model.setup(opt)
    assert model.start_epoch == 2
    assert model.get_learning_rate() == pytest.approx(LR / 4)
    assert model.update_learning_rate(3) == pytest.approx(LR / 8)


def test_nan_loss_stops_training_and_keeps_the_checkpoint(tiny, tiny_dataroot, two_epoch_runs, tmp_path,
                                                          monkeypatch):
    run = copy_run(two_epoch_runs('selfhdr1'), tmp_path)
    files = ('SelfHDR_model_2.pth', 'SelfHDR_optimizer_Adam.pth')
    before = {name: (run / name).read_bytes() for name in files}
    original = SelfHDR1Model.compute_losses
    calls = []

    def corrupt_second_call(self):
        total = original(self)
        calls.append(1)
        if len(calls) == 2:
            self.loss_StruExpan = self.loss_StruExpan * float('nan')
            total = self.loss_StruExpan + self.loss_StruPrese
        return total

    monkeypatch.setattr(SelfHDR1Model, 'compute_losses', corrupt_second_call)
    rc = train.main(train_args(tiny_dataroot, run.parent, 'base', niter=3, load_iter=2, load_optimizers=True,
                               **STEP))
    assert rc != 0
    assert len(calls) == 2  # stopped at once
    log = (run / 'train.log').read_text()
    assert 'epoch 3, iteration 2' in log and 'StruExpan=nan' in log
    for name in files:
        assert (run / name).read_bytes() == before[name], name
    assert not (run / 'SelfHDR_model_3.pth').exists()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_ddp_two_cpu_processes_match_one_process(tiny, tiny_dataroot, tmp_path):
    """Each of two gloo ranks steps on half of a fixed batch of 4; DDP averages the gradients, so the weights equal
    one process stepping on the whole batch (the losses are means over equal halves)."""
    opt = tiny_opt(tiny_dataroot, tmp_path, 'single', 'selfhdr1', batch_size=4)
    torch.manual_seed(0)
    dataset = data.create_dataset('sig17align', 'train', opt)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=False)))
    torch.save(batch, tmp_path / 'batch.pth')

    # the same processes then run train.main as torchrun would (2 epochs, 3 iterations of 2 crops per rank)
    argv = train_args(tiny_dataroot, tmp_path / 'ckpt', 'ddp_run', niter=2)
    torch.multiprocessing.spawn(ddp_worker, args=(2, free_port(), str(tiny_dataroot), str(tmp_path),
                                                  str(tmp_path / 'batch.pth'), str(tmp_path), free_port(), argv),
                                nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in (0, 1)]

    torch.manual_seed(opt.seed)
    model = create_model(opt)
    model.setup(opt)
    initial = {k: v.clone() for k, v in model.netSelfHDR.state_dict().items()}
    model.set_input(batch)
    model.optimize_parameters()
    single = model.netSelfHDR.state_dict()

    assert ranks[0]['loss'] != ranks[1]['loss']  # the halves differ
    assert np.mean([r['loss'] for r in ranks]) == pytest.approx(model.loss_Total.item(), rel=1e-5)
    for key, value in single.items():
        assert torch.equal(ranks[0]['state_dict'][key], ranks[1]['state_dict'][key]), key
        torch.testing.assert_close(ranks[0]['state_dict'][key], value, rtol=0, atol=1e-6, msg=key)
    assert any(not torch.equal(initial[k], single[k]) for k in single)

    run = tmp_path / 'ckpt' / 'ddp_run'
    trained = [load_state(tmp_path / f'train_rank{r}.pth') for r in (0, 1)]
    saved = load_state(run / 'SelfHDR_model_2.pth')
    assert list(saved) == list(single)  # rank 0 saved the bare backbone, no 'module.' prefix
    for key in saved:
        assert torch.equal(trained[0][key], trained[1][key]), key  # the ranks stayed in sync
        assert torch.equal(saved[key], trained[0][key]), key
    assert optimizer_entry(run)['state_dict']['state'][0]['step'] == 6
    log = (run / 'loss_log.txt').read_text()
    assert log.count('(epoch: 2, iters: 3,') == 1  # only rank 0 logs


def test_stage0_inference_feeds_stage2(tiny, tiny_dataroot, two_epoch_runs, tmp_path):
    run = copy_run(two_epoch_runs('selfhdr1'), tmp_path)
    rc = test_script.main(eval_args(tiny_dataroot, run.parent, 'base', 'selfhdr2', load_iter=2,
                                    stage0_inference=True, save_imgs=True))
    assert rc == 0
    out_dir = run / 'output_2'
    assert sorted(p.name for p in out_dir.iterdir()) == [f'{s}.hdr' for s in TRAIN_SCENES]
    assert sorted(p.name for p in (run / 'output_vis_2').iterdir()) == [f'{s}.png' for s in TRAIN_SCENES]

    # Y_stru = the stage-1 network on the *aligned* training frames (exposures from Training)
    net = tiny_ahdr().eval()
    net.load_state_dict(load_state(run / 'SelfHDR_model_2.pth'))
    opt = tiny_opt(tiny_dataroot, run.parent, 'base', 'selfhdr2', is_train=False, stage0_inference=True)
    dataset = data.create_dataset('sig17align', 'test', opt)
    assert dataset.folders['ldr'] == 'Training_align' and not dataset.has_label
    for sample in dataset:
        with torch.no_grad():
            expected = net(*(sample[f'input{i}'][None] for i in range(3)))[0].permute(1, 2, 0).numpy()
        saved = read_hdr(out_dir / f"{sample['fname']}.hdr")
        assert saved.shape == (48, 64, 3)
        # RGBE keeps 8 mantissa bits of each pixel's largest channel
        step = expected.max(axis=2, keepdims=True) / 128
        assert np.all(np.abs(saved - expected) <= step + 1e-7)

    rc = train.main(train_args(tiny_dataroot, tmp_path / 'ckpt', 'stage2', 'selfhdr2', stru_lable_path=out_dir))
    assert rc == 0
    stage2 = tmp_path / 'ckpt' / 'stage2'
    assert (stage2 / 'SelfHDR_model_1.pth').is_file()
    log = (stage2 / 'loss_log.txt').read_text()
    assert 'Color:' in log and 'Stru:' in log


def test_stage2_without_vgg_weights_offline_is_a_one_line_error(tiny, tiny_dataroot, stru_dir, tmp_path, monkeypatch):
    """--vgg_weights imagenet with no weights at hand (offline, no --vgg_path): exit 2 with the loss's message naming
    what to do, not a traceback."""
    from models import losses, networks

    def offline(*args, **kwargs):
        raise losses.VGGNotAvailableError('VGG19 ImageNet weights are not available offline; give --vgg_path')
    monkeypatch.setattr(networks, 'build_vgg19_features', offline)
    rc = train.main(train_args(tiny_dataroot, tmp_path, 'stage2', 'selfhdr2', stru_lable_path=stru_dir,
                               vgg_weights='imagenet'))
    assert rc == 2 and 'ERROR train: VGG19 ImageNet weights are not available offline; give --vgg_path' in \
        (tmp_path / 'stage2' / 'train.log').read_text()
