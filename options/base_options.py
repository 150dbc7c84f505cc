"""Flags shared by train.py and test.py, with the release's names, meanings and defaults."""
import argparse
import logging
import os

import torch

from models import backbones
from util.flags import LR_RANGE, NumberRangeError, bool_or_auto, checked_number, str2bool  # noqa: F401 (re-export)
from util.tiling import tile_flag

logger = logging.getLogger(__name__)

NETWORK_CHOICES = backbones.NAMES




def parse_gpu_ids(text):
    """'0' -> [0], '2,3' -> [2, 3], '-1' -> [] (CPU), 'all' -> every visible GPU, 'auto' -> GPU 0 if any."""
    text = str(text).strip().lower()
    if text == 'auto':
        return [0] if torch.cuda.is_available() else []
    if text == 'all':
        return list(range(torch.cuda.device_count()))
    ids = []
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"--gpu_ids: '{part}' is not an integer (use e.g. '0', '2,3', '-1' or 'all')") from None
        if value >= 0:
            ids.append(value)
    return ids


class BaseOptions:
    """Defines the common flags and parses them; `parse()` has no side effect besides printing."""

    def __init__(self):
        self.isTrain = False

    def initialize(self, parser):
        # data
        parser.add_argument('--dataroot', type=str, default='', help='root of the data set folders')
        parser.add_argument('--dataset_name', type=str, nargs='+', default=['eth'],
                            help='data set(s): sig17align, sen, tursun (data/<name>_dataset.py)')
        parser.add_argument('--lenient_data', type=str2bool, default=False,
                            help='grey/alpha frames and stray files in the data folders: convert or skip them with a '
                                 'warning and a count, instead of stopping with an error')
        parser.add_argument('--max_dataset_size', type=float, default=float('inf'),
                            help='use at most this many scenes of a data set')
        parser.add_argument('--batch_size', type=int, default=16, help='training batch size')
        parser.add_argument('--patch_size', type=int, default=128, help='training crop size')
        parser.add_argument('--sensor_noise_aug', type=float, default=0.0,
                            help='training only: the share of training crops whose three frames get more sensor '
                                 'noise (shot and read noise drawn log-uniform, data/base_dataset.NOISE_AUG_*), '
                                 'labels unchanged; 0 (the release) adds none')
        parser.add_argument('--shuffle', type=str2bool, default=True, help='shuffle the training set')
        parser.add_argument('-j', '--num_dataloader', type=int, default=8, help='DataLoader worker processes')
        parser.add_argument('--drop_last', type=str2bool, default=True, help='drop the last incomplete batch')
        # device
        parser.add_argument('--gpu_ids', type=str, default='auto',
                            help="'0', '2,3', '-1' for CPU, 'all'; default: GPU 0 when CUDA exists, else CPU")
        # experiment
        parser.add_argument('--checkpoints_dir', type=str, default='./ckpt', help='where runs are stored')
        parser.add_argument('-v', '--verbose', type=str2bool, default=True, help='print the network')
        parser.add_argument('--suffix', type=str, default='',
                            help='formatted with the options and appended to --name, e.g. {network}_{lr}')
        parser.add_argument('--name', type=str, required=True, help='experiment name (lower-cased)')
        parser.add_argument('--model', type=str, required=True,
                            help='selfhdr1, selfhdr2 or supervised (models/<model>_model.py)')
        parser.add_argument('--network', type=str, required=True, choices=NETWORK_CHOICES, help='backbone')
        parser.add_argument('--load_path', type=str, default='', help='explicit checkpoint to load')
        parser.add_argument('--load_iter', type=int, nargs='+', default=[0],
                            help='epoch(s) to load; >0 loads SelfHDR_model_<n>.pth')
        parser.add_argument('--chop', type=str2bool, default=False,
                            help='pad test inputs to a multiple of 8 (set by the model for transformer backbones)')
        parser.add_argument('--supervised', type=str2bool, default=False,
                            help='train on the ground truth (Training/*/HDRImg.hdr) instead of the colour component; '
                                 'set by --model supervised')
        parser.add_argument('--stage0_inference', type=str2bool, default=False,
                            help='run on Training_align to produce the structure labels')
        parser.add_argument('--stru_lable_path', type=str, default='',
                            help='(sic) folder of structure-label .hdr files for stage 2')
        parser.add_argument('--init_type', type=str, default='default',
                            choices=('default', 'normal', 'xavier', 'kaiming', 'orthogonal', 'uniform'),
                            help='weight initialisation; default keeps the constructors\' own')
        parser.add_argument('--init_gain', type=float, default=0.02, help='gain for normal/xavier/orthogonal')
        parser.add_argument('--calc_metrics', type=str2bool, default=True, help='compute metrics when a label exists')
        parser.add_argument('--save_imgs', type=str2bool, default=False, help='write output images')
        # additions of ours (not in the release)
        parser.add_argument('--seed', type=int, default=0, help='random seed')
        parser.add_argument('--iters_per_epoch', type=int, default=1200,
                            help='training iterations per epoch (the data set length is this x batch size)')
        parser.add_argument('--pad_mode', type=str, default='release', choices=('release', 'clean'),
                            help="transformer test padding: 'release' pads 8 when a side is already a multiple "
                                 "of 8 (reproduces the release); 'clean' pads only what is needed")
        parser.add_argument('--tile', type=tile_flag, default=0,
                            help='test in overlapping tiles of this size (0: whole image, as the release); auto: the '
                                 'whole image when it fits --max_memory (on a CPU: up to 768x768 pixels, larger '
                                 'ones run faster in tiles), else the largest tiles that do')
        parser.add_argument('--max_memory', type=float, default=0,
                            help='GB the process may use, for --tile auto (0: 80%% of the memory available at the '
                                 'start; on a GPU, 90%% of its free memory)')
        parser.add_argument('--tile_overlap', type=int, default=32, help='overlap between tiles, in pixels')
        parser.add_argument('--medium_gate', type=str, default='auto', choices=('auto', 'on', 'off'),
                            help="testing: the checkpoint's medium gate (models/medium_gate.py) after the backbone: "
                                 "auto = when the checkpoint has one (the release's never do), off = the backbone "
                                 "alone; training always trains the backbone alone")
        parser.add_argument('--amp', type=str, default='none', choices=('none', 'bf16', 'fp16', 'auto'),
                            help='autocast precision on CUDA or CPU (fp16: CUDA only, with gradient scaling); auto: '
                                 'bf16 where the hardware has it, else fp32; losses and metrics stay fp32')
        parser.add_argument('--channels_last', type=str, default='auto',
                            help='channels_last memory format: true, false, or auto (on for a CPU with AMX, fp32 and bf16, '
                                 'where it runs the convolutions up to 2x faster; off elsewhere)')
        parser.add_argument('--compile', type=bool_or_auto, nargs='?', const=True, default=False,
                            help='torch.compile the networks (uncompiled, with a warning, where compiling fails): '
                                 'true, false, or auto (on for training, except in channels_last on a CPU with AMX, '
                                 'where eager is as fast; off for testing); checkpoints stay in the bare release '
                                 'format')
        parser.add_argument('--vgg_weights', type=str, default='imagenet', choices=('imagenet', 'auto', 'random'),
                            help="VGG19 for the structure loss: 'imagenet' needs the weights (torchvision cache or "
                                 "--vgg_path); 'auto' falls back to random weights with a warning; 'random' is explicit")
        parser.add_argument('--vgg_path', type=str, default='', help='file with torchvision VGG19 ImageNet weights')
        parser.add_argument('--malloc', type=str, default='tuned', choices=('tuned', 'system'),
                            help="'tuned' keeps freed tensor memory in glibc's heap (fewer page faults on CPU, "
                                 "see util/malloc.py); 'system' leaves glibc's defaults")
        return parser

    def gather_options(self, args=None):
        parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        parser = self.initialize(parser)
        opt, _ = parser.parse_known_args(args)

        # Let the model and the data sets add their flags (import here: models import options only lazily).
        import models
        import data
        try:
            setter = models.get_option_setter(opt.model)
        except ValueError as exc:  # an unknown --model: a usage error, said as argparse says its own
            parser.error(str(exc))
        parser = setter(parser, self.isTrain)
        opt, _ = parser.parse_known_args(args)
        for name in opt.dataset_name:
            try:
                setter = data.get_option_setter(name)
            except ValueError:
                continue  # an unknown data set is reported when it is created, not while parsing
            parser = setter(parser, self.isTrain)
        self.parser = parser
        return parser.parse_args(args)

    def format_options(self, opt):
        lines = ['----------------- Options ---------------']
        for key, value in sorted(vars(opt).items()):
            default = self.parser.get_default(key)
            note = '' if value == default else f'\t[default: {default}]'
            lines.append(f'{key:>25}: {value!s:<30}{note}')
        lines.append('----------------- End -------------------')
        return '\n'.join(lines)

    def parse(self, args=None):
        opt = self.gather_options(args)
        opt.isTrain = self.isTrain
        opt.name = opt.name.lower()
        self.validate(opt)
        if opt.suffix:
            try:
                opt.name = (opt.name + '_' + opt.suffix.format(**vars(opt))).lower()
            except (KeyError, IndexError, ValueError) as exc:
                self.parser.error(f'--suffix {opt.suffix!r}: {exc!r} is not an option name to format with '
                                  f'(e.g. {{network}}_{{batch_size}})')
        opt.load_iter = list(opt.load_iter)
        requested = opt.gpu_ids
        try:
            opt.gpu_ids = parse_gpu_ids(requested)
        except ValueError as exc:
            self.parser.error(str(exc))
        if opt.gpu_ids and not torch.cuda.is_available():
            self.parser.error(f"--gpu_ids {requested} asks for CUDA, but no CUDA device is available; "
                              "use --gpu_ids -1 for the CPU")
        count = torch.cuda.device_count() if opt.gpu_ids else 0
        absent = [i for i in opt.gpu_ids if i >= count]
        if absent:
            self.parser.error(f"--gpu_ids {requested}: no GPU {','.join(map(str, absent))}; this machine shows "
                              f"{count} CUDA device(s), ids 0 to {count - 1} (CUDA_VISIBLE_DEVICES renumbers them "
                              "from 0)")
        if opt.amp == 'fp16' and not opt.gpu_ids:
            self.parser.error('--amp fp16 is CUDA-only (the CPU has no fast fp16 kernels); use --amp bf16 or auto')
        # What the backbone needs, from its row of the table: test-time padding (the release's `chop`) and
        # aligned frames (read by the data sets, which do not import models).
        net = backbones.backbone(opt.network)
        opt.chop = opt.chop or net.pad_multiple > 0
        opt.aligned_input = net.aligned_input
        print('Device: ' + (f'CUDA GPU(s) {opt.gpu_ids}' if opt.gpu_ids else 'CPU'))
        print(self.format_options(opt))
        return opt

    # Flags whose value divides or counts something: 0 or less is a user error, said at start-up with the flag's
    # name instead of a ZeroDivisionError or an empty sampler deep inside training.
    POSITIVE_INT_FLAGS = ('batch_size', 'patch_size', 'iters_per_epoch', 'max_test_images')
    TRAIN_POSITIVE_INT_FLAGS = ('save_epoch_freq', 'print_freq', 'test_every', 'lr_decay_iters')

    # Numeric flags and their documented ranges (lo, hi, lo excluded): checked at start-up by util.flags.checked_number
    # so that a value that is not finite, or that overflows float32 inside the optimizer (--lr 1e39), is an error
    # naming the flag instead of a RuntimeError deep inside training. Flags a model or data set adds are checked when
    # present.
    NUMBER_RANGES = {
        'init_gain': (0.0, 100.0, False), 'seed': (0, 2 ** 63 - 1, False), 'tile': (0, 1 << 16, False),
        'max_memory': (0.0, 1 << 20, False),
        'tile_overlap': (0, 1 << 16, False), 'batch_size': (1, 1 << 16, False), 'patch_size': (1, 1 << 16, False),
        'iters_per_epoch': (1, 10 ** 9, False),
        'colour_threshold': (0.0, 255.0, True), 'sensor_noise_aug': (0.0, 1.0, False),
    }
    TRAIN_NUMBER_RANGES = {
        'lr': (LR_RANGE[0], LR_RANGE[1], True), 'weight_decay': (0.0, 1.0, False), 'beta1': (0.0, 1.0, False),
        'beta2': (0.0, 1.0, False), 'momentum': (0.0, 1.0, False), 'alpha': (0.0, 1.0, False),
        'niter': (0, 10 ** 7, False), 'niter_decay': (0, 10 ** 7, False), 'lr_decay_iters': (1, 10 ** 7, False),
        'save_epoch_freq': (1, 10 ** 7, False), 'print_freq': (1, 10 ** 9, False), 'test_every': (1, 10 ** 7, False),
    }

    def validate(self, opt):
        flags = self.POSITIVE_INT_FLAGS + (self.TRAIN_POSITIVE_INT_FLAGS if self.isTrain else ())
        for flag in flags:
            value = getattr(opt, flag, None)
            if isinstance(value, int) and value < 1:
                self.parser.error(f'--{flag} must be at least 1, got {value}')
        ranges = dict(self.NUMBER_RANGES, **(self.TRAIN_NUMBER_RANGES if self.isTrain else {}))
        for flag, (lo, hi, lo_open) in ranges.items():
            value = getattr(opt, flag, None)
            if value is None or (flag == 'tile' and value == 'auto'):
                continue
            try:
                checked_number(value, f'--{flag}', lo, hi, lo_open=lo_open, integer=isinstance(lo, int))
            except NumberRangeError as exc:
                self.parser.error(str(exc))
        tile, overlap = getattr(opt, 'tile', 0), getattr(opt, 'tile_overlap', 0)
        if isinstance(tile, int) and tile > 0 and not 0 <= overlap < tile:  # said now, not after the model loads
            self.parser.error(f'--tile_overlap {overlap} must be in [0, --tile {tile}) (tiles overlap by less than '
                              'their side)')
        for flag in ('max_dataset_size', 'max_test_images'):  # counts whose default, inf, means 'all'
            cap = getattr(opt, flag, None)
            if cap is not None and cap != float('inf'):
                try:
                    checked_number(cap, f'--{flag}', 1, None)
                except NumberRangeError as exc:
                    self.parser.error(f'{exc} (or inf for all)')
        if not self.isTrain:
            return
        if opt.model == 'selfhdr2' and not opt.stru_lable_path:  # said before the data are read, not at step 1
            self.parser.error('--model selfhdr2 trains on two labels: give the structure labels (stage 1 run on the '
                              'aligned training frames, test.py --stage0_inference) with --stru_lable_path; train.sh '
                              'shows the three steps')
        if opt.niter < 0 or opt.niter_decay < 0 or opt.niter + opt.niter_decay < 1:
            self.parser.error(f'--niter {opt.niter} and --niter_decay {opt.niter_decay}: nothing to train '
                              '(need at least one epoch, neither negative)')
        multiple = backbones.backbone(opt.network).crop_multiple
        if opt.patch_size % multiple:
            self.parser.error(f'--patch_size {opt.patch_size}: {opt.network} trains on windows of {multiple} pixels, '
                              f'so the crop must be a multiple of {multiple} (e.g. 64 or 128)')

    def save(self, opt, phase):
        """Write the options to `<checkpoints_dir>/<name>/opt_<phase>.txt` (called by the entry points). A training
        resumed with --continue_train appends its options under a dated header, so the record of how the saved
        epochs were trained survives a resume (and one that fails)."""
        import time

        folder = os.path.join(opt.checkpoints_dir, opt.name)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'opt_{phase}.txt')
        text = self.format_options(opt) + '\n'
        if phase == 'train' and getattr(opt, 'continue_train', False) and os.path.isfile(path):
            with open(path) as handle:
                earlier = handle.read()
            text = (f'{earlier}\n# --continue_train True, {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}: '
                    f'the options of the resumed run\n{text}')
        tmp = path + '.tmp'
        with open(tmp, 'w') as handle:
            handle.write(text)
        os.replace(tmp, path)
        return path
