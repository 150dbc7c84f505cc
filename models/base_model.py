"""BaseModel: the life cycle every model follows (setup, set_input, optimize_parameters, test, save, load)."""
import logging
import os
import random
import re
import shutil
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import nullcontext

import numpy as np
import torch

from util.flags import str2bool
from util.fs import is_write_failure, write_failure
from util.tiling import auto_tile, padded, tiled_forward
from . import networks
from .backbones import backbone

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, unreadable, or not matching the backbone."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or Inf; training stops so that no checkpoint is overwritten with broken weights."""


def atomic_torch_save(obj, path):
    """Save to a temporary file in the same folder, then rename, so a crash never leaves a half-written file.

    A failed write (full disk, read-only folder) is an OutputWriteError naming the path and the cause."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if is_write_failure(exc):
            raise write_failure(exc, path, 'checkpoint') from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def clean_state_dict(state):
    """Strip DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') prefixes."""
    cleaned = OrderedDict()
    for key, value in state.items():
        for prefix in ('module.', '_orig_mod.'):
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def read_cpu_flags(path='/proc/cpuinfo'):
    """The feature flags of the first CPU in `path` (Linux's /proc/cpuinfo format); empty where it cannot be read."""
    try:
        with open(path) as handle:
            return set(next((line.split(':', 1)[1].split() for line in handle if line.startswith('flags')), []))
    except OSError:
        return set()


def cpu_has_native_bf16(flags=None):
    """avx512_bf16 or AMX in the CPU flags (`flags`; read from /proc/cpuinfo when None): bf16 matrix work runs in
    hardware (elsewhere it is emulated, slower)."""
    flags = read_cpu_flags() if flags is None else flags
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def resolve_amp(amp, device, cpu_flags=None):
    """--amp none|bf16|fp16|auto -> the autocast dtype (None = fp32), saying why in the log.

    auto: bf16 on CUDA devices that support it and on CPUs with native bf16, fp32 elsewhere. fp16 on the CPU is
    refused: it has no fast fp16 kernels there. `cpu_flags`: the CPU's feature flags (read from /proc/cpuinfo when
    None)."""
    if amp in (None, 'none'):
        return None
    native = cpu_has_native_bf16() if cpu_flags is None else cpu_has_native_bf16(cpu_flags)
    if amp == 'auto':
        if device.type == 'cuda' and torch.cuda.is_bf16_supported():
            logger.info('--amp auto: bf16 (CUDA device supports it)')
            return torch.bfloat16
        if device.type == 'cpu' and native:
            logger.info('--amp auto: bf16 (the CPU has native bf16: avx512_bf16/amx)')
            return torch.bfloat16
        logger.info('--amp auto: fp32 (%s)', 'no bf16 on this CUDA device' if device.type == 'cuda'
                    else 'this CPU emulates bf16, which is slower than fp32')
        return None
    if amp == 'fp16' and device.type == 'cpu':
        raise ValueError('--amp fp16 is not supported on the CPU (no fast fp16 kernels); use --amp bf16 or auto')
    if amp == 'bf16' and device.type == 'cpu' and not native:
        logger.warning('--amp bf16 on a CPU without native bf16: it runs emulated and slower than fp32')
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]


def resolve_channels_last(flag, amp_dtype, device, cpu_flags=None):
    """--channels_last auto|True|False -> whether networks and 4-D inputs run in channels_last, saying why in the log.

    auto: on for a CPU with AMX, whose oneDNN kernels take NHWC tensors as they are and reorder NCHW ones at every
    convolution: measured on a 2-vCPU Xeon (family 6 model 167), AHDRNet's bf16 training step 1.06 -> 0.50 s,
    FSHDR's 1.55 -> 0.64 s with their polyphase split skipped in NHWC, the transformers' 2-15 % faster
    (bench/results/channels_last*_amx_f6_m167.json), and in fp32 every backbone's step 2-6 % faster
    (bench/results/fp32_channels_last_all_amx_f6_m167.json). Off elsewhere (CUDA, CPUs without AMX: not measured),
    which keep the release's layout. The layout changes no result beyond float rounding."""
    if str(flag).strip().lower() != 'auto':
        return str2bool(flag)  # the options' own lenient boolean
    flags = read_cpu_flags() if cpu_flags is None else cpu_flags
    chosen = device.type == 'cpu' and amp_dtype in (None, torch.bfloat16) and 'amx_bf16' in flags
    if chosen:
        logger.info('--channels_last auto: on (a CPU with AMX: its kernels take NHWC directly)')
    return chosen


def resolve_compile(flag, is_train, channels_last):
    """--compile auto|True|False -> whether the networks run through torch.compile, saying why in the log.

    auto: on for training, whose thousands of iterations repay the 20-90 s warm-up (AHDRNet's bf16 step 1.9x ->
    3.3x its fp32 on a Xeon with AMX in NCHW, README "Speed"), except where the networks run in channels_last
    (`resolve_channels_last`: a CPU with AMX), where eager bf16 is faster for the CNNs (AHDRNet 0.51 against
    0.63 s, FSHDR 0.66 against 0.79 s) and equal for the transformers (fp32 in channels_last, the layout of
    `--amp none` on AMX, was not measured compiled: it stays eager there too); off for testing (one pass over the
    scenes does not repay the warm-up)."""
    if str(flag).strip().lower() != 'auto':
        return str2bool(flag)
    if not is_train:
        logger.info('--compile auto: off (testing: one pass does not repay the compile warm-up)')
        return False
    if channels_last:
        logger.info('--compile auto: off (the networks run in channels_last, where eager was as fast or faster on AMX)')
        return False
    logger.info('--compile auto: on (training repays the compile warm-up)')
    return True


def saved_model_epochs(save_dir, model_names=('SelfHDR',)):
    """Sorted epochs for which every network's `<name>_model_<epoch>.pth` exists in `save_dir`."""
    if not os.path.isdir(save_dir):
        return []
    found = None
    for name in model_names:
        pattern = re.compile(rf'{re.escape(name)}_model_(\d+)\.pth')
        epochs = {int(m.group(1)) for m in map(pattern.fullmatch, os.listdir(save_dir)) if m}
        found = epochs if found is None else found & epochs
    return sorted(found or ())


def remove_stale_temporaries(save_dir):
    """Delete the temporary files of saves that a kill interrupted (`*.pth.tmp<pid>`), saying which."""
    if not os.path.isdir(save_dir):
        return []
    stale = [f for f in os.listdir(save_dir) if re.fullmatch(r'.+\.pth\.tmp\d+|opt_\w+\.txt\.tmp', f)]
    for name in stale:
        os.remove(os.path.join(save_dir, name))
        logger.warning('removed %s: the temporary file of an interrupted save', os.path.join(save_dir, name))
    return stale


def rng_states():
    """Every random generator a run draws from, as tensors and plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {'torch': torch.get_rng_state(), 'python': random.getstate(),
              'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                        'has_gauss': int(has_gauss), 'gauss': float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what rng_states() saved. torch's setters take CPU byte tensors only, so states that were loaded
    onto a GPU (map_location='cuda') are brought back first."""
    torch.set_rng_state(states['torch'].cpu())
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    n = states['numpy']
    np.random.set_state((n['kind'], n['keys'].cpu().numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    if 'cuda' in states and torch.cuda.is_available() and len(states['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in states['cuda']])


def non_finite_entries(state):
    """Names of the floating-point tensors of a state dict that hold NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def checkpoint_problem(path):
    """None when `path` reads back as a checkpoint whose tensors are all finite, else what is wrong with it (a
    "good checkpoint" message names only files that passed this)."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # missing, truncated or foreign file
        return f'{path} cannot be read ({type(exc).__name__})'
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        return f'{path} is not a model checkpoint'
    broken = non_finite_entries(state)
    return f'{path} holds NaN/Inf weights ({", ".join(broken[:4])})' if broken else None


def checkpoint_read_error(path, exc):
    """What a failed torch.load of `path` means, in a line (torch's own message for a foreign file is a page about
    weights_only that suggests loading it unsafely)."""
    import pickle

    try:
        with open(path, 'rb') as handle:
            head = handle.read(2)
    except OSError as read_exc:  # unreadable (permissions) or gone since the caller looked
        return f'cannot read checkpoint {path}: {read_exc.strerror or read_exc}'
    if not head:
        return f'{path} is empty (an interrupted copy or save?)'
    if head != b'PK' and head[:1] != b'\x80':  # torch.save writes a zip archive (before torch 1.6: a bare pickle)
        return f'{path} is not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)'
    if isinstance(exc, pickle.UnpicklingError) and 'weights only' in str(exc).lower():
        return (f'{path} holds Python objects besides tensors and numbers, which are not unpickled from a file '
                'that could run code when loaded; save its state_dict alone (torch.save({"state_dict": ...}))')
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
    return f'cannot read checkpoint {path}: truncated or corrupt ({type(exc).__name__}{": " + first if first else ""})'


def load_backbone_state(net, path, device='cpu'):
    """Strictly load a release-format checkpoint into `net`, naming missing, unexpected or mis-shaped keys."""
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(checkpoint_read_error(path, exc)) from exc
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path} is not a model checkpoint (expected {{'state_dict': {{name: tensor}}}})")
    state = clean_state_dict(state)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mis_shaped:
        def head(items):
            return ', '.join(items[:8]) + (f' ... ({len(items)} in all)' if len(items) > 8 else '')
        problems = []
        if missing:
            problems.append(f'missing keys: {head(missing)}')
        if unexpected:
            problems.append(f'unexpected keys: {head(unexpected)}')
        if mis_shaped:
            problems.append(f'mis-shaped keys (checkpoint vs network): {head(mis_shaped)}')
        raise CheckpointError(f'{path} does not match {type(net).__name__}: ' + '; '.join(problems))
    broken = non_finite_entries(state)
    if broken:
        raise CheckpointError(f'{path} holds NaN or Inf weights in {", ".join(broken[:8])}'
                              + (f' ... ({len(broken)} entries in all)' if len(broken) > 8 else '')
                              + ': the run that wrote it diverged; use an earlier checkpoint')
    net.load_state_dict(state, strict=True)
    return checkpoint


def has_cpp_compiler():
    """Whether a C++ compiler is on the PATH ($CXX, g++, clang++ or c++): torch.compile's inductor needs one."""
    return any(name and shutil.which(name) for name in (os.environ.get('CXX'), 'g++', 'clang++', 'c++'))


def _eager_backward_lowering():
    """Compile the backward graph together with the forward one, so that a backward compile error surfaces at the
    forward call (where CompiledOrEager catches it) rather than later inside loss.backward()."""
    config = getattr(getattr(torch, '_functorch', None), 'config', None)
    if config is None or not hasattr(config, 'force_non_lazy_backward_lowering'):
        return nullcontext()
    return config.patch(force_non_lazy_backward_lowering=True)


class CompiledOrEager(torch.nn.Module):
    """A network run through torch.compile that falls back to the plain network, with a warning, if compiling fails.

    torch.compile compiles lazily, at the first call and again for each new input shape, so its errors (no compiler,
    an unsupported op) come from a forward call, not from wrapping. The network is registered as `_orig_mod`, the
    name torch's own wrapper uses, so networks.unwrap and clean_state_dict reach the bare release keys; the compiled
    callable is kept out of the module tree so that its parameters are not listed twice."""

    def __init__(self, module, compiled, name='network'):
        super().__init__()
        self._orig_mod = module
        self.__dict__['_compiled'] = compiled
        self.__dict__['_label'] = name

    @property
    def is_compiled(self):
        return self.__dict__['_compiled'] is not None

    def forward(self, *inputs):
        compiled = self.__dict__['_compiled']
        if compiled is None:
            return self._orig_mod(*inputs)
        try:
            with _eager_backward_lowering():
                return compiled(*inputs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # dynamo/inductor raise many types (BackendCompilerFailed, Unsupported, ...)
            detail = (str(exc).strip().splitlines() or [''])[0][:300]
            logger.warning('--compile: compiling %s failed (%s: %s); continuing uncompiled',
                           self.__dict__['_label'], type(exc).__name__, detail)
            self.__dict__['_compiled'] = None
            return self._orig_mod(*inputs)


def compile_network(net, name='network'):
    """`net` wrapped in CompiledOrEager, or `net` itself (with a warning) where torch.compile cannot be used."""
    if not hasattr(torch, 'compile'):
        logger.warning('--compile: this torch has no torch.compile; %s runs uncompiled', name)
        return net
    if not has_cpp_compiler():
        logger.warning('--compile: no C++ compiler found ($CXX, g++, clang++, c++), which torch.compile needs; '
                       '%s runs uncompiled', name)
        return net
    try:
        compiled = torch.compile(net)
    except Exception as exc:  # e.g. a Python version that dynamo does not support yet
        logger.warning('--compile: torch.compile(%s) failed (%s: %s); running uncompiled', name,
                       type(exc).__name__, exc)
        return net
    logger.info('--compile: %s will be compiled at its first call (this takes a while)', name)
    return CompiledOrEager(net, compiled, name)


class BaseModel(ABC):
    """Subclasses set `loss_names`, `visual_names`, `model_names` (networks are `self.net<name>`), and
    `optimizer_names` (optimizers are `self.optimizer_<name>`), and implement set_input/forward/optimize."""

    def __init__(self, opt):
        self.opt = opt
        self.isTrain = opt.isTrain
        self.gpu_ids = list(opt.gpu_ids)
        self.device = torch.device('cuda', self.gpu_ids[0]) if self.gpu_ids else torch.device('cpu')
        self.save_dir = os.path.join(opt.checkpoints_dir, opt.name)
        self.loss_names = []
        self.visual_names = []
        self.model_names = []
        self.optimizer_names = []
        self.optimizers = []
        self.schedulers = []
        self.start_epoch = 0
        self.is_main_process = getattr(opt, 'rank', 0) == 0
        self.amp_dtype = resolve_amp(getattr(opt, 'amp', 'none'), self.device)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype == torch.float16 and self.device.type == 'cuda')
        if len(self.gpu_ids) > 1 and not getattr(opt, 'distributed', False) and self.amp_dtype == torch.bfloat16:
            # torch's DataParallel runs each replica in a thread that re-enters autocast with `enabled` only, so the
            # replicas compute in float16 (the thread's default), without the gradient scaling fp16 needs.
            raise ValueError(f'--gpu_ids {",".join(map(str, self.gpu_ids))} with --amp {opt.amp} (bf16): DataParallel '
                             'would run its replicas in float16, unscaled. Use one process per GPU instead: '
                             f'torchrun --nproc_per_node {len(self.gpu_ids)} train.py ... (DistributedDataParallel), '
                             'or one GPU, or --amp fp16 / none')
        self.memory_format = (torch.channels_last if resolve_channels_last(getattr(opt, 'channels_last', False),
                                                                           self.amp_dtype, self.device)
                              else torch.contiguous_format)

    @staticmethod
    def modify_commandline_options(parser, is_train):
        return parser

    @abstractmethod
    def set_input(self, input):
        """Unpack a batch from the data loader and move it to the device."""

    @abstractmethod
    def forward(self):
        """Compute the outputs (self.data_out) from the inputs."""

    @abstractmethod
    def optimize_parameters(self):
        """One training step: forward, losses, backward, optimizer step."""

    # ----------------------------------------------------------------------------------------------- hooks
    def on_epoch_start(self, epoch, iters_per_epoch):
        """Called by train.py before each epoch (1-based) with the epoch's iteration count; per-model state that
        depends on the position in training is set here, so a resumed run replays it."""

    # ----------------------------------------------------------------------------------------------- set-up
    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, tensor):
        tensor = tensor.to(self.device, non_blocking=True)
        if tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=self.memory_format)
        return tensor

    def setup(self, opt):
        """Schedulers, checkpoint loading, optimizer resume; then check that every listed name resolves."""
        if self.isTrain:
            self.schedulers = [networks.get_scheduler(optimizer, opt) for optimizer in self.optimizers]
            if self.is_main_process:
                remove_stale_temporaries(self.save_dir)
        load_iter = opt.load_iter[0] if isinstance(opt.load_iter, (list, tuple)) else opt.load_iter
        from_run = False  # resuming this run's own checkpoints, whatever --load_path started it from
        if self.isTrain and getattr(opt, 'continue_train', False) and load_iter <= 0:
            # train.sh's stage 2 starts from --load_path (stage 1's weights); resuming it with the same command plus
            # --continue_train must take the run's newest epoch, not start over from those weights
            load_iter, with_optimizers = self.latest_complete_epoch(start=opt.load_path)
            opt.load_optimizers = with_optimizers
            from_run = load_iter > 0
        elif self.isTrain and load_iter > 0:  # an explicit epoch to continue after is this run's own
            from_run = True
            if opt.load_path:
                logger.info('--load_iter %d: continuing this run after that epoch; --load_path %s (its starting '
                            'weights) is not loaded again', load_iter, opt.load_path)
        elif self.isTrain and self.is_main_process:
            self.warn_if_the_run_exists()
        if load_iter > 0 or opt.load_path:
            self.load_networks(load_iter, from_run=from_run)
            if self.isTrain:
                self.start_epoch = load_iter
                manifest = self.load_optimizers(load_iter) if opt.load_optimizers else None
                self.resume_schedulers(load_iter)
                if manifest:
                    self.restore_training_state(manifest)
        self._check_names()
        if resolve_compile(getattr(opt, 'compile', False), self.isTrain,
                           self.memory_format == torch.channels_last):
            self.compile_networks()
        if getattr(opt, 'verbose', False) and self.is_main_process:
            self.print_networks()

    def compile_networks(self):
        """--compile: wrap every network in torch.compile after its weights are loaded; checkpoints stay bare
        (save_networks and load_networks go through networks.unwrap)."""
        for name in self.model_names:
            net = getattr(self, 'net' + name)
            if not isinstance(net, CompiledOrEager):
                setattr(self, 'net' + name, compile_network(net, 'net' + name))

    def _check_names(self):
        """Fail at start-up, not at the first print, when a listed loss/visual/network name does not exist."""
        for name in self.model_names:
            if not isinstance(getattr(self, 'net' + name, None), torch.nn.Module):
                raise AttributeError(f'{type(self).__name__}: model_names lists {name!r} but self.net{name} is missing')
        for name in self.optimizer_names:
            if not isinstance(getattr(self, 'optimizer_' + name, None), torch.optim.Optimizer):
                raise AttributeError(f'{type(self).__name__}: optimizer_names lists {name!r} '
                                     f'but self.optimizer_{name} is missing')
        # Subclasses initialise every loss_<name> and visual to None in __init__, so a typo fails here.
        for name in self.loss_names:
            if not hasattr(self, 'loss_' + name):
                raise AttributeError(f'{type(self).__name__}: loss_names lists {name!r} but self.loss_{name} is missing')
        for name in self.visual_names:
            if not hasattr(self, name):
                raise AttributeError(f'{type(self).__name__}: visual_names lists {name!r} but self.{name} is missing')

    def resume_schedulers(self, epoch):
        """Bring the learning rate to where an uninterrupted run would be after `epoch` epochs.

        The release only sets `last_epoch`, which leaves the first learning rate in place when the optimizer file is
        not loaded (the published models ship none); replaying the schedule gives the right rate either way."""
        for optimizer, scheduler in zip(self.optimizers, self.schedulers):
            for group in optimizer.param_groups:
                group['lr'] = group.get('initial_lr', self.opt.lr)
            fresh = networks.get_scheduler(optimizer, self.opt)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                for step in range(1, epoch + 1):
                    self._step_scheduler(fresh, step)
            scheduler.__dict__.update(fresh.__dict__)

    @staticmethod
    def _step_scheduler(scheduler, epoch, metric=None):
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if metric is not None:
                scheduler.step(metric)
        elif type(scheduler).__module__.startswith('timm'):
            scheduler.step(epoch)
        else:
            scheduler.step()

    def update_learning_rate(self, epoch, metric=None):
        """Step every scheduler once (called at the end of each epoch); returns the new learning rate."""
        for scheduler in self.schedulers:
            self._step_scheduler(scheduler, epoch, metric)
        lr = self.optimizers[0].param_groups[0]['lr'] if self.optimizers else 0.0
        logger.info('learning rate = %.7f', lr)
        return lr

    def get_learning_rate(self):
        return self.optimizers[0].param_groups[0]['lr'] if self.optimizers else 0.0

    def eval(self):
        for name in self.model_names:
            getattr(self, 'net' + name).eval()

    def train(self):
        for name in self.model_names:
            getattr(self, 'net' + name).train()

    # ------------------------------------------------------------------------------------------------- test
    def run_network(self, net, *inputs):
        """Test-time forward of a backbone: the release's padding for windowed backbones, optional tiling."""
        fn = net
        if self.opt.chop:
            # the table's multiple; 8 (the release's) when --chop is forced on a backbone that needs none
            fn = padded(net, multiple=backbone(self.opt.network).pad_multiple or 8,
                        mode=getattr(self.opt, 'pad_mode', 'release'))
        tile = getattr(self.opt, 'tile', 0)
        if tile == 'auto':
            tile = self.auto_tile(*inputs[0].shape[-2:])
        with self.autocast():
            out = tiled_forward(fn, inputs, tile, getattr(self.opt, 'tile_overlap', 32))
        return out.float()

    def auto_tile(self, height, width):
        """--tile auto for a height x width input: the whole image when its forward fits the memory left under
        --max_memory (default: 80% of the available memory; on a GPU 90% of its free memory) and, on a CPU, has at
        most 768x768 pixels (larger ones run faster in tiles), else the largest tile that fits
        (util.tiling.auto_tile, from the backbone's measured memory per pixel); logged when it changes."""
        from .medium_gate import extra_bytes_per_pixel

        row = backbone(self.opt.network)
        said = getattr(self, '_auto_tile_said', set())
        per_pixel = row.infer_bytes_per_pixel[0 if self.amp_dtype is None else 1]
        per_pixel += extra_bytes_per_pixel(getattr(self, 'netSelfHDR', None))
        tile = auto_tile(height, width, per_pixel,
                         getattr(self.opt, 'max_memory', 0), getattr(self.opt, 'tile_overlap', 32),
                         multiple=row.pad_multiple, device=self.device, log=(height, width) not in said)
        self._auto_tile_said = said | {(height, width)}
        return tile

    def test(self):
        with torch.inference_mode():
            self.forward()

    def get_current_visuals(self):
        return OrderedDict((name, getattr(self, name)) for name in self.visual_names if getattr(self, name, None) is not None)

    def get_current_losses(self):
        return OrderedDict((name, float(getattr(self, 'loss_' + name).detach())) for name in self.loss_names)

    # ----------------------------------------------------------------------------------------- checkpoints
    def network_path(self, name, epoch):
        return os.path.join(self.save_dir, f'{name}_model_{epoch}.pth')

    def save_networks(self, epoch):
        """`<save_dir>/<name>_model_<epoch>.pth` = {'state_dict': bare backbone state dict}, plus the optimizers."""
        if not self.is_main_process:
            return
        os.makedirs(self.save_dir, exist_ok=True)
        states = {}
        for name in self.model_names:
            net = networks.unwrap(getattr(self, 'net' + name))
            # contiguous: a channels_last run (--channels_last auto on AMX) saves the same bytes as any other
            state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in net.state_dict().items())
            broken = non_finite_entries(state)
            if broken:
                # A step can produce a finite loss and still leave NaN weights (an overflowing update): never
                # write those over a good checkpoint.
                raise NonFiniteLossError(f'the weights of net{name} became NaN/Inf during epoch {epoch} '
                                         f'({", ".join(broken[:4])}); epoch {epoch} was not saved')
            states[name] = state
        # Finite weights can still be useless: after a diverging last step (--lr far too high) they may be ~1e10 and
        # every forward NaN. "Good" is checked, not assumed: the networks must give a finite output on the last batch.
        problem = self.output_problem()
        if problem:
            raise NonFiniteLossError(f'after epoch {epoch}, {problem}; epoch {epoch} was not saved')
        for name in self.model_names:
            atomic_torch_save({'state_dict': states[name]}, self.network_path(name, epoch))
        self.save_optimizers(epoch)

    def output_problem(self):
        """Before a save: a description of why the current weights give a non-finite output on the last training
        batch, or None (also when there is nothing to check). Models with inputs override it."""
        return None

    def resume_hint(self, epoch):
        """What to say when epoch `epoch` cannot be resumed (a save that a kill interrupted): the last complete
        epoch (networks and optimizer state of the same epoch) and the flags that resume from it."""
        epochs = [e for e in saved_model_epochs(self.save_dir, self.model_names) if e != epoch]
        optimizer_epochs = {self._optimizer_epoch(name) for name in self.optimizer_names}
        complete = next(iter(optimizer_epochs)) if len(optimizer_epochs) == 1 else None
        if complete is not None and complete in epochs:
            return (f'epoch {epoch} was not saved completely (an interrupted save?); the last complete epoch is '
                    f'{complete}: resume from it with --load_iter {complete} --load_optimizers True, or let '
                    '--continue_train True pick it')
        if epochs:
            return (f'epoch {epoch} was not saved completely (an interrupted save?); the newest network without its '
                    f'optimizer state is epoch {epochs[-1]}: resume with --load_iter {epochs[-1]} (fresh optimizer), '
                    'or --continue_train True')
        return f'no complete epoch is saved in {self.save_dir}: start without --load_iter'

    def load_networks(self, epoch, from_run=False):
        """Load every network: from --load_path when given (unless `from_run`: a resumed run's own epoch), else
        this run's checkpoint of `epoch`."""
        load_path = '' if from_run else self.opt.load_path
        for name in self.model_names:
            path = load_path or self.network_path(name, epoch)
            if not load_path and self.isTrain and not os.path.isfile(path):
                raise CheckpointError(f'checkpoint not found: {path}; {self.resume_hint(epoch)}')
            net = networks.unwrap(getattr(self, 'net' + name))
            load_backbone_state(net, path, device='cpu')
            logger.info('loaded %s from %s', name, path)

    def warn_if_the_run_exists(self):
        """A fresh training under a --name that already holds checkpoints overwrites them epoch by epoch, and the old
        run's later epochs stay beside the new ones: say so (a warning, not a refusal: train.sh reruns its demo)."""
        epochs = saved_model_epochs(self.save_dir, self.model_names)
        if epochs:
            logger.warning('%s already holds checkpoints of epochs %s from an earlier run; this run starts afresh and '
                           'overwrites them as it goes (resume that run with --continue_train True, or choose '
                           'another --name)', self.save_dir, ', '.join(map(str, epochs)))

    def latest_complete_epoch(self, start=''):
        """(epoch, optimizer state usable) of the newest checkpoint to resume from, for --continue_train; `start`:
        the --load_path a run without checkpoints starts from (for the log).

        Checkpoints are written model files first, then the optimizer file (which carries its epoch), each
        atomically. So the newest complete unit is the optimizer file's epoch when that epoch's model files exist;
        after a kill between the two writes, the newest model files are resumed with a fresh optimizer, and the
        log says so. Epoch 0 (nothing saved yet) starts from scratch."""
        epochs = saved_model_epochs(self.save_dir, self.model_names)
        if not epochs:
            logger.info('--continue_train: no checkpoint in %s yet; starting from %s', self.save_dir,
                        f'--load_path {start}' if start else 'scratch')
            return 0, False
        if start:
            logger.info('--continue_train: the run has checkpoints, so --load_path %s (its starting weights) is not '
                        'loaded again', start)
        optimizer_epochs = {self._optimizer_epoch(name) for name in self.optimizer_names}
        if len(optimizer_epochs) == 1 and next(iter(optimizer_epochs)) in epochs:
            epoch = next(iter(optimizer_epochs))
            logger.info('--continue_train: resuming after epoch %d (networks and optimizer state) from %s',
                        epoch, self.save_dir)
            return epoch, True
        epoch = epochs[-1]
        logger.warning('--continue_train: resuming after epoch %d from %s with a FRESH optimizer: no optimizer '
                       'state of that epoch (found epoch %s)', epoch, self.save_dir,
                       ', '.join(str(e) for e in sorted(optimizer_epochs, key=str)))
        return epoch, False

    def _optimizer_epoch(self, name):
        try:
            entry = torch.load(self.optimizer_path(name), map_location='cpu', weights_only=True)
            return int(entry['epoch']) if entry.get('name') == f'SelfHDR_optimizer_{name}' else None
        except Exception:  # missing, truncated or foreign file: not resumable
            return None

    def optimizer_path(self, name):
        return os.path.join(self.save_dir, f'SelfHDR_optimizer_{name}.pth')

    def save_optimizers(self, epoch):
        """The optimizer file is written last, after the epoch's model files: it is the manifest of the unit.

        Besides the release's keys (name, epoch, state_dict, which the release's loader reads) it carries what else
        a resumed run needs to continue exactly: the scheduler states, the iteration count and the RNG states."""
        extra = {'iteration': epoch * getattr(self.opt, 'iters_per_epoch', 0),
                 'schedulers': [scheduler.state_dict() for scheduler in self.schedulers],
                 'rng': rng_states()}
        if self.scaler.is_enabled():  # fp16: the loss scale it has found, not 65536 again after a resume
            extra['scaler'] = self.scaler.state_dict()
        for name in self.optimizer_names:
            optimizer = getattr(self, 'optimizer_' + name)
            entry = {'name': f'SelfHDR_optimizer_{name}', 'epoch': epoch, 'state_dict': optimizer.state_dict(), **extra}
            atomic_torch_save(entry, self.optimizer_path(name))

    def load_optimizers(self, epoch):
        """Load the optimizer states of `epoch`; returns the manifest entry (None without one).

        Optional: the published models ship no optimizer file, so a missing one only warns."""
        manifest = None
        for name in self.optimizer_names:
            path = self.optimizer_path(name)
            if not os.path.isfile(path):
                logger.warning('no optimizer state at %s; resuming with a fresh optimizer', path)
                continue
            try:
                # On the CPU: the file also holds the RNG states, which torch.set_rng_state takes as CPU tensors
                # only; optimizer.load_state_dict moves the optimizer's state to its parameters' device itself.
                entry = torch.load(path, map_location='cpu', weights_only=True)
            except Exception as exc:  # truncated or foreign file
                raise CheckpointError(f'cannot read optimizer state {path}: {exc}; delete it to resume with a fresh '
                                      'optimizer, or resume with --load_optimizers False') from exc
            if not isinstance(entry, dict) or entry.get('name') != f'SelfHDR_optimizer_{name}' \
                    or entry.get('epoch') != epoch:
                found = (entry.get('name'), entry.get('epoch')) if isinstance(entry, dict) else (type(entry), None)
                raise CheckpointError(f'{path} holds {found[0]} of epoch {found[1]}, '
                                      f'not SelfHDR_optimizer_{name} of epoch {epoch}: {self.resume_hint(epoch)}')
            getattr(self, 'optimizer_' + name).load_state_dict(entry['state_dict'])
            logger.info('loaded optimizer state from %s', path)
            manifest = entry
        return manifest

    def restore_training_state(self, manifest):
        """Scheduler and RNG states of a manifest written by save_optimizers (older files have neither)."""
        # Schedules that are a function of the epoch were replayed under the current flags (so a run may be extended
        # with a larger --niter); only the plateau policy depends on its history, which the manifest holds.
        states = manifest.get('schedulers')
        if states is not None and len(states) == len(self.schedulers):
            for scheduler, state in zip(self.schedulers, states):
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.load_state_dict(state)
        if manifest.get('scaler') and self.scaler.is_enabled():
            self.scaler.load_state_dict(manifest['scaler'])
        if manifest.get('rng'):
            set_rng_states(manifest['rng'])
        logger.info('resumed at epoch %s, iteration %s', manifest.get('epoch'), manifest.get('iteration', '?'))

    def print_networks(self):
        for name in self.model_names:
            net = getattr(self, 'net' + name)
            count = sum(p.numel() for p in net.parameters())
            logger.info('%s', net)
            logger.info('[Network %s] total number of parameters: %.3f M', name, count / 1e6)
