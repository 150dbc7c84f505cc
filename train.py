"""Train a SelfHDR model (stage 1, stage 2 or the supervised baseline).

    python train.py --dataroot D --dataset_name sig17align --model selfhdr1 --network AHDRNet --name run ...
    torchrun --nproc_per_node 2 train.py ...        # DistributedDataParallel (NCCL on GPUs, gloo on CPU);
                                                    # --batch_size stays the global batch, split over the ranks
"""
import copy
import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import models
from models.base_model import (CheckpointError, NonFiniteLossError, checkpoint_problem, remove_stale_temporaries,
                               saved_model_epochs)
from data.base_dataset import DatasetError
from models.losses import VGGNotAvailableError
from options.train_options import TrainOptions
from util import metrics
from util.fs import OutputWriteError, write_failure_cause
from util.hdr_io import ImageReadError, ImageWriteError
from util.malloc import tune_malloc
from util.visualizer import Visualizer, setup_logging

logger = logging.getLogger('train')


def setup_distributed(opt):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; one process per GPU (or per CPU worker with gloo)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    opt.distributed = world_size > 1
    opt.rank = int(os.environ.get('RANK', '0'))
    opt.world_size = world_size
    if not opt.distributed:
        return
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if opt.gpu_ids:
        # More processes than GPUs (e.g. a check on one GPU): the ranks share the GPUs, over gloo, since NCCL refuses
        # two ranks on one device.
        count = torch.cuda.device_count()
        shared = int(os.environ.get('LOCAL_WORLD_SIZE', world_size)) > count
        opt.gpu_ids = [local_rank % count]
        torch.cuda.set_device(opt.gpu_ids[0])
        if shared and opt.rank == 0:
            logger.warning('%d processes share %d GPU(s): gloo instead of NCCL (slower; for checks)', world_size, count)
        dist.init_process_group('gloo' if shared else 'nccl')
    else:
        dist.init_process_group('gloo')


def set_epoch_seed(opt, epoch):
    """Seed each epoch from (seed, epoch, rank) so that a resumed run replays the same epoch exactly: on the CPU
    always, on a GPU with --deterministic True (cuDNN's autotuner may pick other algorithms in another process)."""
    seed = opt.seed + 1000 * epoch + 100003 * opt.rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def configure_backends(opt):
    """cuDNN on a GPU run: autotuned algorithms (benchmark, the fastest) by default; with --deterministic, fixed
    deterministic algorithms and torch's deterministic kernels where they exist, so that a resumed run replays the
    uninterrupted one bit for bit (slower; the replay is exact on the CPU either way)."""
    if not opt.gpu_ids:
        return
    deterministic = bool(getattr(opt, 'deterministic', False))
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # cuBLAS's reproducible workspace
        torch.use_deterministic_algorithms(True, warn_only=True)


def validate(model, loader):
    """Mean PSNR-mu of the validation crops (monitoring only, as in the release)."""
    model.eval()
    scores = []
    for batch in loader:
        model.set_input(batch)
        model.test()
        out = model.data_out[0].float().cpu().permute(1, 2, 0).numpy()
        label = model.label[0].float().cpu().permute(1, 2, 0).numpy()
        scores.append(metrics.psnr_mu(out, label))
    model.train()
    return float(np.mean(scores)) if scores else float('nan')


def newest_good_checkpoint(model):
    """Where to resume from after a divergence: the newest checkpoint on disk whose weights are read back and checked
    finite here (not assumed), with the flag that resumes from it."""
    epochs = saved_model_epochs(model.save_dir, model.model_names)
    skipped = []
    for epoch in reversed(epochs):
        paths = [model.network_path(name, epoch) for name in model.model_names]
        problem = next((p for p in map(checkpoint_problem, paths) if p), None)
        if problem is None:
            note = f' (newer ones unusable: {"; ".join(skipped)})' if skipped else ''
            return (f'the newest good checkpoint (weights read back and checked finite) is {paths[0]} (epoch {epoch}), '
                    f'kept as it is{note}; resume from it with --load_iter {epoch}')
        skipped.append(problem)
    if skipped:
        return f'no good checkpoint in {model.save_dir}: {"; ".join(skipped)}'
    return f'no checkpoint was saved in {model.save_dir}'


def batch_files(loader, scenes):
    """The files of a batch's scenes, from the data set's record of what it read (for error messages)."""
    names = scenes if isinstance(scenes, (list, tuple)) else [scenes]
    files = getattr(getattr(loader, 'dataset', None), 'files', {}) or {}
    parts = []
    for name in dict.fromkeys(names):  # unique, in order
        entry = files.get(name)
        if entry:
            listed = list(entry.get('ldr', [])) + [entry[k] for k in ('label', 'other_label') if k in entry]
            parts.append(f'{name}: {", ".join(listed)}')
    return '; '.join(parts)


def build_loaders(opt):
    """(train loader, its DistributedSampler or None, validation loader or None)."""
    dataset_name = opt.dataset_name[0]
    train_set = data.create_dataset(dataset_name, 'train', opt)
    sampler = None
    loader_opt = opt
    if opt.distributed:
        # --batch_size is the global batch: each rank loads its share, so an epoch keeps --iters_per_epoch steps
        # of --batch_size crops (the single-process protocol) whatever the number of processes.
        if opt.batch_size % opt.world_size:
            raise ValueError(f'--batch_size {opt.batch_size} is not divisible by the {opt.world_size} processes')
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, shuffle=opt.shuffle, seed=opt.seed,
                                                                  drop_last=opt.drop_last)
        loader_opt = copy.copy(opt)
        loader_opt.batch_size = opt.batch_size // opt.world_size
    train_loader = data.create_dataloader(train_set, loader_opt, 'train', sampler=sampler)
    val_loader = None
    if opt.calc_metrics and opt.rank == 0:
        try:
            val_set = data.create_dataset(dataset_name, 'val', opt)
            val_loader = data.create_dataloader(val_set, opt, 'val')
        except (FileNotFoundError, ValueError) as exc:
            logger.warning('no validation: %s', exc)
    return train_loader, sampler, val_loader


def run_epoch(model, loader, visualizer, opt, epoch, total_epochs):
    """One pass over the training loader; returns the sum of the step losses."""
    iters = len(loader)
    data_start = time.time()
    epoch_loss = torch.zeros((), dtype=torch.float64, device=model.device)  # summed where it is: no sync per step
    progress = tqdm(loader, desc=f'epoch {epoch}/{total_epochs}', disable=opt.rank != 0, leave=False)
    for i, batch in enumerate(progress, start=1):
        t_data = time.time() - data_start
        step_start = time.time()
        model.set_input(batch)
        try:
            model.optimize_parameters()
            epoch_loss += model.loss_Total.detach()
        except NonFiniteLossError as exc:
            files = batch_files(loader, batch.get('fname', []))
            raise NonFiniteLossError(f'epoch {epoch}, iteration {i}: {exc}' + (f' (files: {files})' if files else '')
                                     + f'; training stopped; {newest_good_checkpoint(model)}') from None
        if i % opt.print_freq == 0 or i == iters:
            losses = model.get_current_losses()
            progress.set_postfix({k: f'{v:.4f}' for k, v in losses.items()})
            visualizer.print_current_losses(epoch, i, losses, time.time() - step_start, t_data,
                                            lr=model.get_learning_rate(), global_step=(epoch - 1) * iters + i)
        data_start = time.time()
    return float(epoch_loss)


def end_epoch(model, val_loader, visualizer, opt, epoch, total_epochs, mean_loss):
    """Save, validate and step the learning rate after an epoch; returns the new learning rate."""
    visualizer.log_images(model.get_current_visuals(), epoch)
    if epoch % opt.save_epoch_freq == 0 or epoch == total_epochs:
        try:
            model.save_networks(epoch)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f'{exc}; training stopped; {newest_good_checkpoint(model)}') from None
    if val_loader is not None and (epoch % opt.test_every == 0 or epoch == total_epochs):
        metric = validate(model, val_loader)
        visualizer.log_scalar('val/psnr_mu', metric, epoch, f'epoch {epoch}: validation PSNR-mu {metric:.3f} dB')
    # The plateau policy ('min') watches the epoch's mean training loss, averaged over the ranks.
    plateau_value = None
    if opt.lr_policy == 'plateau':
        shared = torch.tensor([mean_loss], device=model.device)
        if opt.distributed:
            dist.all_reduce(shared)
            shared /= opt.world_size
        plateau_value = shared.item()
    return model.update_learning_rate(epoch, plateau_value)


def train(opt):
    torch.manual_seed(opt.seed)  # the backbone's seeded construction reproduces the release's initial weights
    np.random.seed(opt.seed)
    if opt.rank == 0:
        # Before anything can fail (data, options, checkpoints): an interrupted save's temporaries never outlive the
        # next start, even one that stops with an error.
        remove_stale_temporaries(os.path.join(opt.checkpoints_dir, opt.name))
    configure_backends(opt)
    train_loader, sampler, val_loader = build_loaders(opt)
    model = models.create_model(opt)
    model.setup(opt)
    visualizer = Visualizer(opt, enabled=opt.rank == 0)
    total_epochs = opt.niter + opt.niter_decay
    iters = len(train_loader)
    if model.start_epoch >= total_epochs and opt.rank == 0:
        logger.warning('nothing to train: the run is at epoch %d and --niter%s asks for %d epochs in all; raise '
                       '--niter to train further', model.start_epoch, ' + --niter_decay' if opt.niter_decay else '',
                       total_epochs)
    for epoch in range(model.start_epoch + 1, total_epochs + 1):
        set_epoch_seed(opt, epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.on_epoch_start(epoch, iters)
        model.train()
        epoch_start = time.time()
        epoch_loss = run_epoch(model, train_loader, visualizer, opt, epoch, total_epochs)
        lr = end_epoch(model, val_loader, visualizer, opt, epoch, total_epochs, epoch_loss / max(1, iters))
        if opt.rank == 0:
            logger.info('end of epoch %d / %d (%.1f s), learning rate %.3e', epoch, total_epochs,
                        time.time() - epoch_start, lr)
    visualizer.close()
    return model


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT: stop where we are; a save in progress is abandoned by its atomic writer."""


def _raise_interrupted(signum, frame):
    raise TrainingInterrupted(signal.Signals(signum).name)


def main(argv=None):
    options = TrainOptions()
    opt = options.parse(argv)
    tune_malloc(opt.malloc)
    setup_distributed(opt)
    try:
        if opt.rank == 0:
            options.save(opt, 'train')
            setup_logging(os.path.join(opt.checkpoints_dir, opt.name, 'train.log'))
        else:
            setup_logging(level=logging.WARNING)
    except OSError as exc:
        target = exc.filename or os.path.join(opt.checkpoints_dir, opt.name)
        print(f'error: cannot write to {target}: {write_failure_cause(exc, target)}', file=sys.stderr)
        return 1
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _raise_interrupted)
    try:
        train(opt)
    except (NonFiniteLossError, CheckpointError, OutputWriteError, ImageWriteError) as exc:
        logger.error('%s', exc)
        return 1
    except (DatasetError, ImageReadError, VGGNotAvailableError) as exc:  # the user's data or set-up: the message
        logger.error('%s', exc)                                            # names the file, folder or flag
        return 2
    except KeyboardInterrupt as exc:
        # The atomic writers remove their temporary file on the way out, so every checkpoint on disk is complete.
        epochs = saved_model_epochs(os.path.join(opt.checkpoints_dir, opt.name))
        logger.error('interrupted (%s); %s; resume with --continue_train True', exc or 'SIGINT',
                     f'the last complete checkpoint is epoch {epochs[-1]}' if epochs else 'no checkpoint was saved')
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if opt.distributed and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    sys.exit(main())
