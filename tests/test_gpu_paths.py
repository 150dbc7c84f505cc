"""The GPU-only paths of training, checked on the CPU with stand-ins (issue 22): a resume whose checkpoint was mapped
onto another device, DistributedDataParallel of every backbone through validation (2 gloo processes), DataParallel
with bf16 refused, no host syncs in the transformers' forward, per-rank training noise, the GradScaler in the
checkpoint, --gpu_ids against the device count, and the cuDNN flags of --deterministic."""
import random
import socket
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import models.base_model as base_model
from models import create_model
from tiny_data import single_thread, tiny_opt, use_tiny_backbone

PROJECT = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _to_meta(obj):
    if torch.is_tensor(obj):
        return obj.to('meta')
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------- 1. resume on a GPU
def test_resume_with_a_gpu_device_restores_rng_states_on_the_cpu(tiny, tiny_dataroot, tmp_path, monkeypatch):
    """A model on a GPU used to load its optimizer file with map_location=<the GPU>, which put the RNG states there;
    torch.set_rng_state takes CPU byte tensors only. The 'meta' device stands in for the GPU: whatever torch.load is
    asked to map anywhere but the CPU lands there (and would fail to restore)."""
    opt = tiny_opt(tiny_dataroot, tmp_path, 'rng', 'selfhdr1', load_optimizers=True)
    model = create_model(opt)
    model.setup(opt)
    for param in model.netSelfHDR.parameters():
        param.grad = torch.ones_like(param)
    model.optimizer.step()  # some Adam state to load back
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    (tmp_path / 'rng').mkdir()
    model.save_optimizers(1)
    expected = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    real_load = torch.load

    def load_mapped(path, map_location=None, **kwargs):
        obj = real_load(path, map_location='cpu', **kwargs)
        on_cpu = map_location is None or torch.device(map_location).type == 'cpu'
        return obj if on_cpu else _to_meta(obj)

    monkeypatch.setattr(base_model.torch, 'load', load_mapped)
    resumed = create_model(opt)
    resumed.device = torch.device('cuda', 0)  # what a GPU run has; nothing below launches CUDA work
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    manifest = resumed.load_optimizers(1)
    resumed.restore_training_state(manifest)
    assert torch.equal(torch.get_rng_state(), expected[0])
    assert random.getstate() == expected[1]
    assert np.array_equal(np.random.get_state()[1], expected[2])
    state = resumed.optimizer.state_dict()['state']
    assert len(state) == len(list(resumed.netSelfHDR.parameters()))
    assert all(not v.is_meta for s in state.values() for v in s.values() if torch.is_tensor(v))


# -------------------------------------------------------------------------------- 2. DDP of every backbone
BACKBONES = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')
# Small transformers with the releases' structure (buffers included: masks and relative-position indices).
TINY_TRANSFORMER = {'HDR-Transformer': dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4,
                                            mlp_ratio=2.0),
                    'SCTNet': dict(img_size=16, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4,
                                   mlp_ratio=2.0)}
GRAD_STRIDES = 'Grad strides do not match bucket view strides'


def _tiny_networks(original):
    from tiny_data import tiny_ahdr

    def define_network(name, **kwargs):
        if kwargs:
            return original(name, **kwargs)
        if name == 'AHDRNet':
            return tiny_ahdr()
        return original(name, **TINY_TRANSFORMER.get(name, {}))
    return define_network


def ddp_train_worker(rank, world_size, ports, dataroot, checkpoints_dir, out_dir, networks_to_run):
    """One rank: train.main as torchrun starts it (environment variables), once per backbone, with validation every
    epoch and the plateau policy (an all_reduce per epoch); writes its final weights and the warnings it saw."""
    import datetime
    import json
    import os
    import torch.distributed as dist
    import train
    from models import networks
    from tiny_data import train_args

    torch.set_num_threads(1)
    networks.define_network = _tiny_networks(networks.define_network)
    init = dist.init_process_group
    # a collective that the other rank never joins fails in seconds instead of gloo's default 30 minutes
    dist.init_process_group = lambda *a, **k: init(*a, timeout=datetime.timedelta(seconds=20), **k)
    report = {}
    for network, port in zip(networks_to_run, ports):
        os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=str(port))
        trained = {}
        original_train = train.train

        def keep_model(opt):
            trained['model'] = original_train(opt)
            return trained['model']

        train.train = keep_model
        argv = train_args(dataroot, checkpoints_dir, f'ddp_{network}', 'selfhdr1', network=network, niter=2,
                          iters_per_epoch=2, calc_metrics=True, test_every=1, lr_policy='plateau')
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter('always')
            rc = train.main(argv)
        train.train = original_train
        report[network] = {'rc': rc, 'warnings': [str(w.message)[:200] for w in seen]}
        if rc == 0:
            state = networks.unwrap(trained['model'].netSelfHDR).state_dict()
            torch.save(state, os.path.join(out_dir, f'{network}_rank{rank}.pth'))
    with open(os.path.join(out_dir, f'report_rank{rank}.json'), 'w') as handle:
        json.dump(report, handle)


def run_ranks(fn, args, nprocs=2, timeout=240):
    """torch.multiprocessing.spawn with a deadline: a hung collective fails the test instead of hanging it."""
    context = torch.multiprocessing.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method='spawn')
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f'the {nprocs} ranks did not finish in {timeout} s')


def test_ddp_every_backbone_trains_validates_and_steps_plateau(tiny_dataroot, tmp_path):
    """2 gloo processes run train.py per backbone for 2 epochs, validating after each (rank 0 only) and stepping the
    plateau policy (an all_reduce): with the buffers broadcast through DDP, rank 0's eval forward met the other
    rank's all_reduce or its shutdown. The ranks end with the same weights, rank 0 logged both validations, and
    no rank warned about gradient strides (a gradient copy per step)."""
    import json
    ports = [free_port() for _ in BACKBONES]
    run_ranks(ddp_train_worker, (2, ports, str(tiny_dataroot), str(tmp_path / 'ckpt'), str(tmp_path), BACKBONES))
    reports = [json.loads((tmp_path / f'report_rank{r}.json').read_text()) for r in (0, 1)]
    for network in BACKBONES:
        assert [reports[r][network]['rc'] for r in (0, 1)] == [0, 0], (network, reports)
        states = [torch.load(tmp_path / f'{network}_rank{r}.pth', weights_only=True) for r in (0, 1)]
        for key in states[0]:
            assert torch.equal(states[0][key], states[1][key]), (network, key)
        log = (tmp_path / 'ckpt' / f'ddp_{network.lower()}' / 'train.log').read_text()
        assert log.count('validation PSNR-mu') == 2, network
        for r in (0, 1):
            assert not [w for w in reports[r][network]['warnings'] if GRAD_STRIDES in w], (network, r)


@pytest.fixture
def one_process_group():
    """A gloo process group of one rank (DDP's reducer and its checks run as with several)."""
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize('network', BACKBONES)
def test_ddp_wrapper_syncs_no_buffers_and_evaluates_unwrapped(network, one_process_group, tiny_dataroot, tmp_path,
                                                              monkeypatch):
    from models import networks
    monkeypatch.setattr(networks, 'define_network', _tiny_networks(networks.define_network))
    opt = tiny_opt(tiny_dataroot, tmp_path, 'ddp_args', 'supervised', network=network)
    opt.distributed, opt.rank, opt.world_size = True, 0, 1
    with single_thread():
        model = create_model(opt)
        model.setup(opt)
        ddp = model.netSelfHDR
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        assert not ddp.will_sync_module_buffers()
        called = []
        monkeypatch.setattr(type(ddp), 'forward', lambda self, *a, **k: called.append(1))
        x = torch.rand(1, 6, 16, 16)
        model.set_input({'input0': x, 'input1': x, 'input2': x, 'expo': torch.tensor([[1.0, 4.0, 16.0]])})
        model.eval()
        model.test()
    assert called == [] and model.data_out.shape == (1, 3, 16, 16)


def test_ddp_gradients_keep_the_parameter_layout_under_autocast(one_process_group, tiny_dataroot, tmp_path,
                                                                monkeypatch):
    """Under autocast, SCTNet's 1x1 convolution weights got gradients with other strides on their size-1 dimensions,
    which DDP copies into its buckets at every step, warning once."""
    from models import networks
    monkeypatch.setattr(networks, 'define_network', _tiny_networks(networks.define_network))
    opt = tiny_opt(tiny_dataroot, tmp_path, 'ddp_strides', 'supervised', network='SCTNet', amp='bf16')
    opt.distributed, opt.rank, opt.world_size = True, 0, 1
    with single_thread():
        torch.manual_seed(0)
        model = create_model(opt)
        model.setup(opt)
        xs = [torch.rand(1, 6, 16, 16) for _ in range(3)]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter('always')
            with model.autocast():
                out = model.netSelfHDR(*xs)
            out.float().mean().backward()
    assert not [w for w in seen if GRAD_STRIDES in str(w.message)]
    params = list(networks.unwrap(model.netSelfHDR).parameters())
    assert any(1 in p.shape for p in params)
    assert all(p.grad.stride() == p.stride() for p in params if p.grad is not None)


# ------------------------------------------------------------------------ 3. DataParallel with bf16; --gpu_ids
@pytest.fixture
def two_fake_gpus(monkeypatch):
    """What the options and BaseModel see on a machine with 2 bf16-capable GPUs (no CUDA call is made)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)


@pytest.mark.parametrize('amp', ['bf16', 'auto'])
def test_dataparallel_with_bf16_is_refused_in_favour_of_torchrun(two_fake_gpus, amp, tiny_dataroot, tmp_path):
    opt = tiny_opt(tiny_dataroot, tmp_path, 'dp', 'supervised', gpu_ids='0,1', amp=amp)
    with pytest.raises(ValueError, match='torchrun --nproc_per_node 2 train.py'):
        create_model(opt)


def test_gpu_ids_are_checked_against_the_device_count(two_fake_gpus, tiny_dataroot, tmp_path, capsys):
    with pytest.raises(SystemExit):  # a usage error, as argparse reports its own (no traceback)
        tiny_opt(tiny_dataroot, tmp_path, 'ids', 'supervised', gpu_ids='0,3')
    assert 'no GPU 3; this machine shows 2 CUDA device(s), ids 0 to 1' in capsys.readouterr().err
    assert tiny_opt(tiny_dataroot, tmp_path, 'ids', 'supervised', gpu_ids='1').gpu_ids == [1]


# ------------------------------------------------------------------------------------- 5. GradScaler in checkpoints
def test_fp16_loss_scale_is_saved_and_restored(tiny, tiny_dataroot, tmp_path):
    """A CPU GradScaler stands in for the CUDA one of --amp fp16 (same state_dict)."""
    opt = tiny_opt(tiny_dataroot, tmp_path, 'scale', 'supervised', load_optimizers=True)
    model = create_model(opt)
    model.setup(opt)
    model.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 16)
    model.scaler.scale(torch.ones(()))  # creates the scale tensor
    model.scaler.update(new_scale=512.0)  # as if overflows had halved it
    (tmp_path / 'scale').mkdir()
    model.save_optimizers(1)
    resumed = create_model(opt)
    resumed.scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 16)
    resumed.restore_training_state(resumed.load_optimizers(1))
    assert resumed.scaler.get_scale() == 512.0


# -------------------------------------------------------------------------------------------- 5. per-rank noise
def test_training_noise_differs_between_ranks_and_rank0_keeps_the_release_sequence(tiny, tiny_dataroot, tmp_path):
    from models.losses import AugmentNoise
    noises = []
    for rank in (0, 1):
        opt = tiny_opt(tiny_dataroot, tmp_path, f'noise{rank}', 'selfhdr2', stru_lable_path=str(tmp_path))
        opt.rank = rank
        model = create_model(opt)
        model.on_epoch_start(2, 3)  # the counter of an uninterrupted run: 3 draws before epoch 2
        noises.append(model.augment_noise((1, 3, 8, 8)))
    release = AugmentNoise('gauss0.5')
    release.calls = 3
    assert torch.equal(noises[0], release((1, 3, 8, 8)))
    assert not torch.allclose(noises[0], noises[1])
    assert noises[1].std().item() == pytest.approx(0.5 / 255, rel=0.3)


# ------------------------------------------------------------------------------ 4. no host syncs in a forward
@pytest.mark.parametrize('size, window, shift', [((16, 16), 4, 2), ((16, 24), 8, 4), ((32, 16), 8, 4), ((24, 40), 8, 4),
                                                  ((16, 16), 4, 0)])
def test_masked_windows_from_the_geometry_match_the_mask(size, window, shift):
    from models.transformer_layers import masked_windows, shifted_window_mask, windows_with_mask
    expected = (tuple(torch.nonzero(windows_with_mask(shifted_window_mask(*size, window, shift))).flatten().tolist())
                if shift else ())
    assert masked_windows(*size, window, shift) == expected


class HostSyncCounter:
    """Counts the calls that read a tensor's values back to the host (on a GPU each waits for the queue to drain),
    and torch.tensor / torch.nonzero calls (a host-to-device copy and a data-dependent shape)."""

    READS = ('tolist', 'item', '__bool__', '__float__', '__int__', '__index__')

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), name))
        for name in ('tensor', 'nonzero'):
            monkeypatch.setattr(torch, name, self._wrap(getattr(torch, name), f'torch.{name}'))
        self.active = False

    def _wrap(self, fn, name):
        def counted(*args, **kwargs):
            # only the project's own calls: torch's optimizers read their CPU step counters, which is no sync
            if self.active and sys._getframe(1).f_code.co_filename.startswith(PROJECT):
                self.calls.append(name)
            return fn(*args, **kwargs)
        return counted


@pytest.mark.parametrize('network', ['HDR-Transformer', 'SCTNet'])
@pytest.mark.parametrize('size', [16, 24])  # 16: the stored masks; 24: masks built for the runtime size
def test_transformer_forward_makes_no_host_sync_after_the_first(network, size, monkeypatch):
    from models import networks
    torch.manual_seed(0)
    net = networks.define_network(network, **TINY_TRANSFORMER[network]).train()
    xs = [torch.rand(1, 6, size, size) for _ in range(3)]
    counter = HostSyncCounter(monkeypatch)
    with single_thread():
        net(*xs).mean().backward()  # the first call may fill caches
        counter.active = True
        net(*xs).mean().backward()
        with torch.no_grad():
            net.eval()(*xs)
    assert counter.calls == []


def test_training_step_reads_the_loss_back_once_after_the_backward(tiny, tiny_dataroot, tmp_path, monkeypatch):
    """A step's only host read is the finite-loss check, made once the backward is queued; run_epoch sums the losses
    on the device and reads the losses back at print_freq only."""
    import data
    import train
    from util.visualizer import Visualizer
    opt = tiny_opt(tiny_dataroot, tmp_path, 'syncs', 'supervised', print_freq=100, iters_per_epoch=3)
    opt.rank, opt.distributed = 0, False
    model = create_model(opt)
    model.setup(opt)
    loader = list(data.create_dataloader(data.create_dataset('sig17align', 'train', opt), opt, 'train'))
    events = []
    counter = HostSyncCounter(monkeypatch)
    backward = torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, 'backward', lambda self, *a, **k: (events.append('backward'),
                                                                        backward(self, *a, **k))[1])
    counter.calls = events
    counter.active = True
    total = train.run_epoch(model, loader, Visualizer(opt, enabled=False), opt, 1, 1)
    counter.active = False
    per_step = ['backward', '__bool__']
    printed = ['__float__'] * len(model.loss_names)  # get_current_losses at the epoch's last iteration
    assert events == per_step * 2 + per_step + printed + ['__float__']  # + the epoch sum, read once
    assert total > 0


@pytest.mark.parametrize('deterministic', [False, True])
def test_cudnn_flags_follow_deterministic(deterministic, tiny_dataroot, tmp_path, monkeypatch):
    import train
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', torch.backends.cudnn.deterministic)
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    called = []
    monkeypatch.setattr(torch, 'use_deterministic_algorithms', lambda *a, **k: called.append((a, k)))
    opt = tiny_opt(tiny_dataroot, tmp_path, 'cudnn', 'supervised', deterministic=deterministic)
    opt.gpu_ids = [0]
    train.configure_backends(opt)
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cudnn.deterministic is deterministic
    assert bool(called) is deterministic
