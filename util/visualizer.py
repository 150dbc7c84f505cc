"""One place for run output: console (through tqdm, so progress bars stay intact), a loss log file and
TensorBoard scalars/images. Only the main process of a distributed run writes."""
import logging
import os
import time

import numpy as np

from util.tonemap import mu_law_torch

logger = logging.getLogger(__name__)


def setup_logging(log_file=None, level=logging.INFO):
    """Console + optional file logging for the entry points (library code only gets loggers)."""
    handlers = [logging.StreamHandler()]
    if log_file:
        os.makedirs(os.path.dirname(log_file) or '.', exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format='%(asctime)s %(levelname)s %(name)s: %(message)s',
                        handlers=handlers, force=True)


class Visualizer:
    def __init__(self, opt, enabled=True, tensorboard=True):
        self.enabled = enabled
        self.save_dir = os.path.join(opt.checkpoints_dir, opt.name)
        self.log_name = os.path.join(self.save_dir, 'loss_log.txt')
        self.writer = None
        if not enabled:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        with open(self.log_name, 'a') as handle:
            handle.write(f'================ Training ({time.strftime("%c")}) ================\n')
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.writer = SummaryWriter(os.path.join(self.save_dir, 'tensorboard'))
            except ImportError:
                logger.warning('tensorboardX is not installed: no TensorBoard logs')

    def print_current_losses(self, epoch, iteration, losses, t_comp, t_data, lr=None, global_step=None):
        if not self.enabled:
            return
        message = f'(epoch: {epoch}, iters: {iteration}, time: {t_comp:.3f}, data: {t_data:.3f}'
        message += f', lr: {lr:.3e}) ' if lr is not None else ') '
        message += ' '.join(f'{name}: {value:.6f}' for name, value in losses.items())
        logger.info(message)
        with open(self.log_name, 'a') as handle:
            handle.write(message + '\n')
        if self.writer is not None and global_step is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f'loss/{name}', value, global_step)
            if lr is not None:
                self.writer.add_scalar('lr', lr, global_step)

    def log_scalar(self, tag, value, step, message=None):
        if not self.enabled:
            return
        if message:
            logger.info(message)
            with open(self.log_name, 'a') as handle:
                handle.write(message + '\n')
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def log_images(self, visuals, step):
        """Mu-law tone-mapped first image of each visual, BGR flipped to RGB for display."""
        if not self.enabled or self.writer is None:
            return
        for name, tensor in visuals.items():
            if tensor is None:
                continue
            image = mu_law_torch(tensor[:1].detach().float().clamp(0, 1)).cpu()[0].flip(0).numpy()
            self.writer.add_image(f'images/{name}', np.clip(image, 0, 1), step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
