"""Tiny data and settings for the end-to-end tests of the models, train.py and test.py.

* `make_tiny_dataset(root)`: a SIGGRAPH17-layout data set (3 training + 2 test scenes of 48 x 64, with the
  `_align` folders and Y_color) made by the demo generator, in a couple of seconds.
* `use_tiny_backbone(monkeypatch)`: `--network AHDRNet` builds an AHDR with 8 features instead of 64, so a
  training step costs milliseconds on a loaded CPU; everything else (models, loops, checkpoints) is the real code.
* `train_args` / `eval_args`: the command lines of the tiny runs; `tiny_opt`: the parsed options.
* `ddp_worker`: the per-process body of the DistributedDataParallel test (must be importable for spawn).
"""
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

SIZE = (48, 64)  # (H, W) of every tiny scene
N_TRAIN, N_TEST = 3, 2
TRAIN_SCENES = [f'{i:03d}' for i in range(1, N_TRAIN + 1)]
TEST_SCENES = [f'{i:03d}' for i in range(1, N_TEST + 1)]
# AHDR's own constructor arguments, scaled down; the attribute names (checkpoint keys) are those of the release.
TINY_AHDR = {'nFeat': 8, 'growthRate': 4, 'nDenselayer': 2}


def make_tiny_dataset(root):
    """Training/Test (+ _align) folders of the demo generator, at 48 x 64."""
    from data.demo import ensure_demo_dataset
    return Path(ensure_demo_dataset(root, n_train=N_TRAIN, n_test=N_TEST, size=SIZE, seed=0))


def tiny_ahdr():
    from models.ahdrnet import AHDR
    return AHDR(**TINY_AHDR)


def _tiny_define_network(original):
    def define_network(name, **kwargs):
        if name == 'AHDRNet' and not kwargs:
            return tiny_ahdr()
        return original(name, **kwargs)
    return define_network


_VGG_CACHE = {}


def _cached_vgg(original):
    def build_vgg19_features(weights='imagenet', path=''):
        # Building torchvision's VGG19 initialises its 120M-parameter classifier: seconds per model on a busy CPU.
        # Random weights are built once (outside the global RNG stream) and shared; the features stay frozen.
        if weights != 'random':
            return original(weights, path)
        if 'random' not in _VGG_CACHE:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                _VGG_CACHE['random'] = original('random', path)
        return _VGG_CACHE['random']
    return build_vgg19_features


def use_tiny_backbone(monkeypatch):
    """Make `--network AHDRNet` build the small AHDR and `--vgg_weights random` reuse one random VGG19 (both undone
    by the monkeypatch fixture)."""
    from models import networks
    monkeypatch.setattr(networks, 'define_network', _tiny_define_network(networks.define_network))
    monkeypatch.setattr(networks, 'build_vgg19_features', _cached_vgg(networks.build_vgg19_features))


@contextmanager
def single_thread():
    """One intra-op thread: on a machine shared by several test runs, two OpenMP threads per process spin and run
    an order of magnitude slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _flags(**flags):
    args = []
    for key, value in flags.items():
        args.append(f'--{key}')
        if isinstance(value, (list, tuple)):
            args.extend(str(v) for v in value)
        else:
            args.append(str(value))
    return args


def common_args(dataroot, checkpoints_dir, name, model, **flags):
    base = {'dataroot': dataroot, 'dataset_name': 'sig17align', 'model': model, 'network': 'AHDRNet',
            'name': name, 'checkpoints_dir': checkpoints_dir, 'num_dataloader': 0, 'verbose': False,
            'gpu_ids': -1}
    base.update(flags)
    return _flags(**base)


def train_args(dataroot, checkpoints_dir, name, model='selfhdr1', **flags):
    """A tiny training run: batch 2, 32 x 32 crops, 3 iterations per epoch, random VGG, no validation."""
    base = {'batch_size': 2, 'patch_size': 32, 'iters_per_epoch': 3, 'vgg_weights': 'random', 'niter': 1,
            'calc_metrics': False, 'print_freq': 1}
    base.update(flags)
    return common_args(dataroot, checkpoints_dir, name, model, **base)


def eval_args(dataroot, checkpoints_dir, name, model='selfhdr2', **flags):
    return common_args(dataroot, checkpoints_dir, name, model, **flags)


def tiny_opt(dataroot, checkpoints_dir, name, model='selfhdr1', is_train=True, **flags):
    """Parsed options of a tiny run (train or test flags)."""
    from options.test_options import TestOptions
    from options.train_options import TrainOptions
    if is_train:
        return TrainOptions().parse(train_args(dataroot, checkpoints_dir, name, model, **flags))
    return TestOptions().parse(eval_args(dataroot, checkpoints_dir, name, model, **flags))


def make_stand_in_structure_labels(dataroot, folder):
    """Stand-in Y_stru for stage-2 tests that do not depend on a stage-0 run: each scene's Y_color, darkened on its
    left half so that stage 2's colour mask is neither all ones nor all zeros. Returns `folder`."""
    from util.hdr_io import read_hdr, write_hdr
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for scene in TRAIN_SCENES:
        image = read_hdr(Path(dataroot) / 'Training_align' / scene / 'HDRImg.hdr')
        image[:, : image.shape[1] // 2] *= 0.5
        write_hdr(folder / f'{scene}.hdr', image)
    return folder


def load_state(path):
    """The state dict of a release-format checkpoint file."""
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def ddp_worker(rank, world_size, port, dataroot, checkpoints_dir, batch_path, out_dir, train_port=None,
               train_argv=None):
    """One rank of the DDP test: the model wraps itself in DDP (gloo, CPU), steps once on its half of the batch,
    and writes its bare backbone weights to `<out_dir>/rank<rank>.pth`. With `train_argv`, the rank then runs
    `train.main(train_argv)` as torchrun would start it (environment variables) and writes its final weights to
    `<out_dir>/train_rank<rank>.pth`."""
    import torch.distributed as dist
    from models import create_model, networks

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    networks.define_network = _tiny_define_network(networks.define_network)  # a spawned process of its own
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    try:
        opt = tiny_opt(dataroot, checkpoints_dir, 'ddp', 'selfhdr1')
        opt.distributed, opt.rank, opt.world_size = True, rank, world_size
        torch.manual_seed(opt.seed)
        model = create_model(opt)
        model.setup(opt)
        if not isinstance(model.netSelfHDR, torch.nn.parallel.DistributedDataParallel):
            raise TypeError(f'rank {rank}: the model did not wrap its backbone in DDP')
        batch = torch.load(batch_path, weights_only=False)
        per_rank = batch['input0'].shape[0] // world_size
        half = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in batch.items()}
        model.set_input(half)
        model.optimize_parameters()
        state = networks.unwrap(model.netSelfHDR).state_dict()
        torch.save({'state_dict': state, 'loss': model.loss_Total.item()}, os.path.join(out_dir, f'rank{rank}.pth'))
    finally:
        dist.destroy_process_group()
    if train_argv is None:
        return
    import train
    os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(train_port))
    trained = {}
    original_train = train.train

    def keep_model(opt):
        trained['model'] = original_train(opt)
        return trained['model']

    train.train = keep_model
    rc = train.main(train_argv)
    if rc != 0:
        raise RuntimeError(f'rank {rank}: train.main returned {rc}')
    state = networks.unwrap(trained['model'].netSelfHDR).state_dict()
    torch.save({'state_dict': state}, os.path.join(out_dir, f'train_rank{rank}.pth'))
