"""The one prepared GPU check: one call of under 8 minutes on a lent CUDA machine (bench/gpu_check.sh starts it).

    python bench/gpu_check.py --pack        # here, before the call: copy what the golden section needs into
                                            # bench/golden_pack/ (untracked, not ignored: it travels with the tree)
    bash bench/gpu_check.sh                 # there: every section; $OUT/gpu_check.json, .log and _verdict.txt
    python bench/gpu_check.py --dry_run     # on a CPU: every section that can run there, tiny backbones

Sections, in order (each in a child process under its own time cap; the whole run keeps to --budget_s, and a
section that fails, times out or finds no time left is recorded and the next one runs):

  env         torch/CUDA/cuDNN/NCCL versions, device, CPU, compiler, triton
  golden      fp32 forward (TF32 off) of each backbone with the release's weights against the golden outputs,
              max abs error <= 1e-4; the weights come from the pack (parameters, plus checksums of the buffers, which
              the constructors rebuild), or from a golden folder (--golden, $GOLDEN_DIR, ../shared/golden)
  resume      train.py for 1 epoch, then --continue_train to epoch 2 (fp16 with its GradScaler on a GPU, and
              --deterministic True), against 2 uninterrupted epochs: the epoch-2 losses and the final weights agree
  ddp         torchrun --nproc_per_node 2 train.py with a transformer backbone through its final validation, with the
              plateau policy (an all_reduce per epoch): NCCL on 2 GPUs, gloo on one (both ranks share it)
  amp         one fp32, one bf16 and one fp16 training step per backbone: finite, within 2% of fp32
  gate        a backbone with a medium gate on the device against the CPU (fp32, <= 1e-4), and under autocast (fp16
              on a GPU): finite, in [0, 1]
  compile     bf16 + torch.compile of one backbone (--compile_network): compiled, its step and 512x512 timed
  throughput  training step (batch 4 of 128x128) and 256/512 inference per backbone, fp32/bf16/fp16/channels_last;
              the table goes into the verdict

The dry run (--dry_run: the CPU, tiny backbones built like the tests', gloo, compile through the 'eager' backend,
no fp16) runs every section except those that need a GPU's kernels to mean anything, which it names as skipped.
Exit status 0 when every section that ran passed.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / 'bench', ROOT / 'tests'):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

BACKBONES = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')
GOLDEN_DIRS = {'AHDRNet': 'AHDR', 'FSHDR': 'FSHDR', 'HDR-Transformer': 'HDRTransformer', 'SCTNet': 'SCTNet'}
PACK = ROOT / 'bench' / 'golden_pack'
GOLDEN_TOL = 1e-4
AMP_REL_TOL = 0.02
RESUME_TOL = 1e-4
# (section, time cap in seconds), in the order they run
SECTIONS = (('env', 30), ('golden', 60), ('resume', 100), ('ddp', 120), ('amp', 90), ('gate', 40), ('compile', 100),
            ('throughput', 120))
MIN_SECTION_S = 15
# Small backbones with the releases' structure (buffers included) for CPU dry runs; the same as tests/test_gpu_paths.
TINY = {'AHDRNet': dict(nFeat=8, growthRate=4, nDenselayer=2),
        'HDR-Transformer': dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4,
                                mlp_ratio=2.0),
        'SCTNet': dict(img_size=16, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4, mlp_ratio=2.0)}


# ------------------------------------------------------------------------------------------------------ helpers
def write_json(path, obj):
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as handle:
        json.dump(obj, handle, indent=2, default=str)
    os.replace(tmp, path)


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def strict_fp32(torch):
    """No TF32 in matmuls or convolutions: the golden tolerance is for IEEE fp32."""
    try:
        torch.backends.cuda.matmul.fp32_precision = 'ieee'
        torch.backends.cudnn.conv.fp32_precision = 'ieee'
    except AttributeError:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def use_tiny_networks():
    """--network NAME builds the TINY variant (CPU dry runs; called in every process that builds networks)."""
    from models import networks
    original = networks.define_network
    if getattr(original, 'tiny', False):
        return

    def define_network(name, **kwargs):
        return original(name, **(kwargs or TINY.get(name, {})))
    define_network.tiny = True
    networks.define_network = define_network


def buffer_names(net):
    return {name for name, _ in net.named_buffers()}


def tensor_digest(tensor):
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def quiet_options(argv):
    from options.train_options import TrainOptions
    with contextlib.redirect_stdout(io.StringIO()):
        return TrainOptions().parse(argv)


def gpu_flag(args):
    return '0' if args.device == 'cuda' else '-1'


def step_batch(size, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    ldr = [torch.rand(2, 3, size, size, generator=g) for _ in range(3)]
    expo = torch.tensor([[1.0, 4.0, 16.0]] * 2)
    batch = {f'input{i}': torch.cat([x ** 2.2 / t, x], 1) for i, (x, t) in enumerate(zip(ldr, expo[0]))}
    batch['label'] = (ldr[1] ** 2.2 / 4.0).clamp(0, 1)
    batch['expo'] = expo
    return batch


def one_step(opt, batch):
    """(loss, model) of one optimize_parameters() from the seeded initial weights."""
    import torch
    import models
    torch.manual_seed(0)
    model = models.create_model(opt)
    model.setup(opt)
    model.train()
    model.set_input(batch)
    model.optimize_parameters()
    return float(model.loss_Total.detach()), model


def train_command(args, *extra, launcher=None):
    """train.py through this file's --train_entry (which builds the tiny backbones on a dry run)."""
    entry = [str(Path(__file__).resolve()), '--train_entry'] + (['--tiny'] if args.tiny else []) + ['--']
    return (launcher or [sys.executable]) + entry + list(extra)


def train_flags(args, data, ckpt, name, network, **flags):
    base = {'dataroot': data, 'dataset_name': 'sig17align', 'model': 'supervised', 'network': network, 'name': name,
            'checkpoints_dir': ckpt, 'num_dataloader': 0, 'verbose': False, 'gpu_ids': gpu_flag(args),
            'batch_size': 2, 'patch_size': 32, 'iters_per_epoch': 3, 'calc_metrics': False, 'print_freq': 1,
            'lr_policy': 'step', 'lr_decay_iters': 1}
    base.update(flags)
    out = []
    for key, value in base.items():
        out += [f'--{key}', str(value)]
    return out


def epoch_losses(log_path, epoch):
    """{iteration: {loss name: value}} of one epoch in a run's loss_log.txt."""
    found = {}
    pattern = re.compile(rf'\(epoch: {epoch}, iters: (\d+),[^)]*\) (.*)')
    for line in Path(log_path).read_text().splitlines():
        match = pattern.search(line)
        if match:
            pairs = re.findall(r'(\w+): ([-+0-9.eE]+|nan|inf)', match.group(2))
            found[int(match.group(1))] = {k: float(v) for k, v in pairs}
    return found


def run_logged(cmd, timeout, device):
    # one intra-op thread on a CPU dry run: two spinning OpenMP threads per process on a shared CPU run far slower
    env = dict(os.environ, OMP_NUM_THREADS='1') if device == 'cpu' else None
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return done, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------ --pack
def pack(golden, target=PACK):
    """Copy what the golden section needs from a golden folder into `target` (about 25 MB): per backbone the
    inputs/outputs (io.pt), the parameters (params.pt) and the buffers' checksums (buffers.json; the constructors
    rebuild the 20-50 MB of masks and indices, which would not fit the 64 MiB that travels)."""
    import torch
    from models import networks
    golden = Path(golden)
    target.mkdir(parents=True, exist_ok=True)
    for network, folder in GOLDEN_DIRS.items():
        state = torch.load(golden / folder / 'state_dict.pth', map_location='cpu', weights_only=True)
        buffers = buffer_names(networks.get_network_class(network)())
        out = target / folder
        out.mkdir(exist_ok=True)
        torch.save({k: v for k, v in state.items() if k not in buffers}, out / 'params.pt')
        write_json(out / 'buffers.json', {'order': list(state), 'digests': {k: tensor_digest(v) for k, v in state.items()
                                                                             if k in buffers}})
        shutil.copyfile(golden / folder / 'io.pt', out / 'io.pt')
    size = sum(p.stat().st_size for p in target.rglob('*') if p.is_file())
    print(f'packed {golden} into {target} ({size / 2 ** 20:.1f} MiB); it is untracked but not ignored, so it travels '
          f'with the working tree; delete it after the GPU call')
    return target


def golden_source(args):
    """('pack', folder) or ('full', folder) or (None, reason)."""
    if args.golden:
        folder = Path(args.golden)
        return ('pack', folder) if (folder / 'AHDR' / 'params.pt').exists() else ('full', folder)
    if (PACK / 'AHDR' / 'params.pt').exists():
        return 'pack', PACK
    for candidate in (os.environ.get('GOLDEN_DIR'), ROOT.parent / 'shared' / 'golden', ROOT / 'shared' / 'golden'):
        if candidate and (Path(candidate) / 'AHDR' / 'state_dict.pth').exists():
            return 'full', Path(candidate)
    return None, f'no golden tensors: run `python bench/gpu_check.py --pack` before the call (looked in {PACK})'


# ----------------------------------------------------------------------------------------------------- sections
def section_env(args, work, result):
    import torch
    import speed
    from models.base_model import has_cpp_compiler
    result.update(torch=torch.__version__, cuda_available=torch.cuda.is_available(), cuda_runtime=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                  cpu=speed.cpu_description(), cpu_threads=torch.get_num_threads(),
                  cpp_compiler=bool(has_cpp_compiler()), nccl_available=torch.distributed.is_nccl_available())
    try:
        import triton
        result['triton'] = triton.__version__
    except ImportError:
        result['triton'] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(device=props.name, capability=f'{props.major}.{props.minor}',
                      memory_gb=props.total_memory / 2 ** 30, device_count=torch.cuda.device_count(),
                      bf16_supported=torch.cuda.is_bf16_supported())
    result['ok'] = args.device == 'cpu' or torch.cuda.is_available()


def section_golden(args, work, result):
    """The release's weights (never the tiny stand-ins) on the device, fp32 without TF32."""
    import torch
    from models import networks
    kind, root = golden_source(args)
    if kind is None:
        raise FileNotFoundError(root)
    strict_fp32(torch)
    device = torch.device(args.device)
    result.update(golden=str(root), source=kind, tolerance=GOLDEN_TOL)
    per = result.setdefault('networks', {})
    for network in args.networks:
        folder = root / GOLDEN_DIRS[network]
        entry = per.setdefault(network, {})
        try:
            net = networks.get_network_class(network)()
            if kind == 'pack':
                params = torch.load(folder / 'params.pt', map_location='cpu', weights_only=True)
                meta = json.loads((folder / 'buffers.json').read_text())
                missing, unexpected = net.load_state_dict(params, strict=False)
                wrong = [k for k in missing if k not in meta['digests']] + list(unexpected)
                wrong += [k for k, v in net.state_dict().items() if k in meta['digests']
                          and tensor_digest(v) != meta['digests'][k]]
                entry['keys_in_release_order'] = list(net.state_dict()) == meta['order']
                if wrong:
                    raise ValueError(f'parameters or buffers differ from the release: {wrong[:5]}')
            else:
                net.load_state_dict(torch.load(folder / 'state_dict.pth', map_location='cpu', weights_only=True))
            net = net.to(device).eval()
            try:
                tensors = torch.load(folder / 'io.pt', map_location='cpu', weights_only=True)
            except Exception:  # our own reference file; one entry holds more than tensors
                tensors = torch.load(folder / 'io.pt', map_location='cpu', weights_only=False)
            for prefix in ('', 'rect_'):
                if prefix + 'x0' in tensors:
                    xs = [tensors[prefix + f'x{i}'].to(device) for i in range(3)]
                    with torch.no_grad():
                        y = net(*xs).float().cpu()
                    entry[(prefix or 'square_') + 'max_abs_err'] = (y - tensors[prefix + 'y']).abs().max().item()
            entry['ok'] = (entry.get('keys_in_release_order', True)
                           and all(v <= GOLDEN_TOL for k, v in entry.items() if k.endswith('max_abs_err')))
        except Exception as exc:
            entry.update(ok=False, error=f'{type(exc).__name__}: {exc}'[:600])
        write_json(args.result, result)
    result['ok'] = bool(per) and all(e.get('ok') for e in per.values())


def section_resume(args, work, result):
    """1 epoch + --continue_train to 2 against 2 uninterrupted epochs (fp16 and its GradScaler on a GPU)."""
    import torch
    from tiny_data import make_tiny_dataset
    data = make_tiny_dataset(work / 'tiny')
    network = args.resume_network
    amp = 'fp16' if args.device == 'cuda' else 'none'
    common = dict(amp=amp, deterministic=True)
    ckpt = work / 'resume'
    runs = {'uninterrupted': [train_flags(args, data, ckpt, 'whole', network, niter=2, **common)],
            'resumed': [train_flags(args, data, ckpt, 'parts', network, niter=1, **common),
                        train_flags(args, data, ckpt, 'parts', network, niter=2, continue_train=True, **common)]}
    result.update(network=network, amp=amp, tolerance=RESUME_TOL)
    for label, commands in runs.items():
        for argv in commands:
            done, seconds = run_logged(train_command(args, *argv), max(10, args.timeout / 3), args.device)
            result.setdefault('runs', []).append({'run': label, 'rc': done.returncode, 'seconds': seconds})
            if done.returncode:
                result['stderr_tail'] = (done.stderr or done.stdout)[-2000:]
                raise RuntimeError(f'{label} run exited {done.returncode}')
    whole, parts = ckpt / 'whole', ckpt / 'parts'
    losses = [epoch_losses(run / 'loss_log.txt', 2) for run in (whole, parts)]
    result['epoch2_losses'] = {'uninterrupted': losses[0], 'resumed': losses[1]}
    diffs = [abs(losses[0][i][k] - losses[1][i][k]) / max(abs(losses[0][i][k]), 1e-12)
             for i in losses[0] for k in losses[0][i]] if losses[0] and set(losses[0]) == set(losses[1]) else [1.0]
    result['max_rel_loss_diff'] = max(diffs)
    states = [torch.load(run / 'SelfHDR_model_2.pth', map_location='cpu', weights_only=True)['state_dict']
              for run in (whole, parts)]
    result['max_weight_diff'] = max((states[0][k].float() - states[1][k].float()).abs().max().item()
                                    for k in states[0])
    if amp == 'fp16':
        entry = torch.load(parts / 'SelfHDR_optimizer_Adam.pth', map_location='cpu', weights_only=True)
        result['scaler_saved'] = 'scaler' in entry
    result['ok'] = (result['max_rel_loss_diff'] <= RESUME_TOL and result['max_weight_diff'] <= RESUME_TOL
                    and result.get('scaler_saved', True))


def section_ddp(args, work, result):
    """torchrun, 2 processes, a transformer backbone, validation each epoch (rank 0 alone) and the plateau policy."""
    import torch
    from tiny_data import make_tiny_dataset
    data = make_tiny_dataset(work / 'tiny')
    network = next((n for n in args.networks if n in ('HDR-Transformer', 'SCTNet')), args.networks[0])
    gpus = torch.cuda.device_count() if args.device == 'cuda' else 0
    result.update(network=network, processes=2, gpus=gpus,
                  backend='nccl' if gpus >= 2 else ('gloo on one shared GPU' if gpus == 1 else 'gloo (CPU)'))
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
                '--master_port', str(free_port())]
    argv = train_flags(args, data, work / 'ddp', 'ddp', network, niter=2, iters_per_epoch=2, calc_metrics=True,
                       test_every=1, lr_policy='plateau')
    done, seconds = run_logged(train_command(args, *argv, launcher=launcher), max(10, args.timeout - 10), args.device)
    log = (work / 'ddp' / 'ddp' / 'train.log')
    text = log.read_text() if log.exists() else ''
    output = done.stdout + done.stderr
    result.update(rc=done.returncode, seconds=seconds, validations=text.count('validation PSNR-mu'),
                  grad_strides_warning='Grad strides do not match' in output)
    ckpt = work / 'ddp' / 'ddp' / 'SelfHDR_model_2.pth'
    if ckpt.exists():
        state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
        result['bare_keys'] = not any(k.startswith(('module.', '_orig_mod.')) for k in state)
    if done.returncode:
        result['output_tail'] = output[-2500:]
    result['ok'] = (done.returncode == 0 and result['validations'] == 2 and result.get('bare_keys', False)
                    and not result['grad_strides_warning'])


def model_opt(args, network, amp, work, name):
    return quiet_options(train_flags(args, str(work / 'none'), str(work / 'ckpt'), name, network, amp=amp,
                                     vgg_weights='random'))


def section_amp(args, work, result):
    import torch
    if args.tiny:
        use_tiny_networks()
    batch = step_batch(16 if args.tiny else 64)
    dtypes = ('none', 'bf16', 'fp16') if args.device == 'cuda' else ('none', 'bf16')
    result['skipped'] = [] if args.device == 'cuda' else ['fp16 (CUDA only)']
    per = result.setdefault('networks', {})
    for network in args.networks:
        entry = per.setdefault(network, {})
        try:
            for amp in dtypes:
                start = time.perf_counter()
                loss, model = one_step(model_opt(args, network, amp, work, f'amp_{amp}'), batch)
                finite = all(torch.isfinite(p).all().item() for p in model.netSelfHDR.parameters())
                entry[amp] = {'loss': loss, 'finite': bool(finite and loss == loss and abs(loss) != float('inf')),
                              'seconds': time.perf_counter() - start}
                if amp != 'none':
                    rel = abs(loss - entry['none']['loss']) / max(abs(entry['none']['loss']), 1e-12)
                    entry[amp].update(rel_diff_vs_fp32=rel, ok=entry[amp]['finite'] and rel <= AMP_REL_TOL)
                write_json(args.result, result)
            entry['ok'] = entry['none']['finite'] and all(entry[a]['ok'] for a in dtypes if a != 'none')
        except Exception as exc:
            entry.update(ok=False, error=f'{type(exc).__name__}: {exc}'[:600])
        write_json(args.result, result)
    result['ok'] = bool(per) and all(e.get('ok') for e in per.values())


def _timing_sweep(args, result, network_list, variants, modes):
    import torch
    import speed
    from models import networks
    if args.tiny:
        use_tiny_networks()
    device = torch.device(args.device)
    amp_of = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
    runs, warmup = (1, 1) if args.tiny else (3, 1)
    entries = result.setdefault('results', [])
    began = time.perf_counter()
    for network in network_list:
        for variant in variants:
            setting = speed.parse_precision(variant)
            if setting['amp'] == 'fp16' and device.type == 'cpu':
                continue
            for mode in modes:
                entry = {'network': network, 'precision': variant, 'mode': mode}
                if time.perf_counter() - began > args.timeout - 20:  # stop inside the cap: not a failure
                    entry['skipped'] = 'section time cap reached'
                    entries.append(entry)
                    continue
                try:
                    torch.manual_seed(0)
                    net = networks.define_network(network)
                    entry.update(speed.time_network(net, network, mode, device, amp=amp_of[setting['amp']],
                                                   channels_last=setting['channels_last'],
                                                   compile=setting['compile'], batch=1 if args.tiny else 4,
                                                   warmup=warmup, runs=runs))
                    if mode == 'train':
                        entry['samples_per_second'] = (1 if args.tiny else 4) / entry['seconds_median']
                except Exception as exc:
                    entry['error'] = f'{type(exc).__name__}: {exc}'[:600]
                    if device.type == 'cuda':
                        torch.cuda.empty_cache()
                entries.append(entry)
                write_json(args.result, result)
    result['ok'] = bool(entries) and all('error' not in e for e in entries)


def section_compile(args, work, result):
    import torch
    backend = 'inductor' if args.device == 'cuda' else 'eager'  # CPU dry run: dynamo without code generation
    if backend != 'inductor':
        real = torch.compile
        torch.compile = lambda model, **kw: real(model, backend=backend, **kw)
    result.update(backend=backend, network=args.compile_network)
    _timing_sweep(args, result, [args.compile_network], ['bf16+compile'],
                  ['train', '32x32' if args.tiny else '512x512'])
    result['ok'] = result['ok'] and all(e.get('compiled') for e in result['results'] if 'skipped' not in e)


def section_gate(args, work, result):
    """The medium gate on the device: a backbone with a gate (models/medium_gate.py) on the device against the same
    on the CPU in fp32, and under the device's autocast (the gate itself stays fp32): finite, in [0, 1]."""
    import copy

    import torch
    from models import networks
    from models.medium_gate import MediumGate, gated_checkpoint, with_gate
    strict_fp32(torch)
    torch.manual_seed(0)
    net = networks.define_network('AHDRNet').eval()
    gate = MediumGate(consistency=1.5)  # with the shipped model's clamp to the medium frame's noise band
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_(0, 0.3)  # a gate that acts, not the initial near-uniform one
    path = work / 'gated.pth'
    work.mkdir(parents=True, exist_ok=True)
    torch.save(gated_checkpoint(net.state_dict(), gate), path)
    device = torch.device(args.device)
    on_cpu = with_gate(copy.deepcopy(net), path)
    on_device = with_gate(copy.deepcopy(net).to(device), path)
    ldr = torch.rand(1, 3, 3, 48, 64, generator=torch.Generator().manual_seed(1)).sort(dim=1).values
    xs = [torch.cat([x ** 2.2 / t, x], 1) for x, t in zip(ldr.unbind(1), (1.0, 4.0, 16.0))]
    amp = torch.float16 if device.type == 'cuda' else torch.bfloat16
    with torch.no_grad():
        reference = on_cpu(*xs)
        fp32 = on_device(*[x.to(device) for x in xs]).cpu()
        with torch.autocast(device.type, dtype=amp):
            mixed = on_device(*[x.to(device) for x in xs]).float().cpu()
    result.update(max_abs_err_fp32=(fp32 - reference).abs().max().item(),
                  max_abs_err_autocast=(mixed - reference).abs().max().item(), autocast=str(amp).split('.')[-1],
                  autocast_finite_in_range=bool(torch.isfinite(mixed).all() and mixed.min() >= 0 and mixed.max() <= 1))
    result['ok'] = result['max_abs_err_fp32'] <= GOLDEN_TOL and result['autocast_finite_in_range']


def section_throughput(args, work, result):
    variants = ['fp32', 'bf16', 'fp16', 'channels_last'] if args.device == 'cuda' else ['fp32']
    _timing_sweep(args, result, args.networks, variants, ['train', '32x32'] if args.tiny else
                  ['train', '256x256', '512x512'])


SECTION_BODIES = {'env': section_env, 'golden': section_golden, 'resume': section_resume, 'ddp': section_ddp,
                  'amp': section_amp, 'gate': section_gate, 'compile': section_compile,
                  'throughput': section_throughput}


def run_bounded(cmd, limit, log):
    """Exit status of `cmd`, or None when it ran past `limit` seconds; then its whole process group (torchrun's
    workers, train.py runs) is killed."""
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        return child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return None


def run_section(args):
    """Child process: one section; the result file is rewritten as figures come in."""
    import logging
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    import torch
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)) if args.device == 'cuda' else 1)
    result = {'section': args.section, 'device': args.device}
    try:
        SECTION_BODIES[args.section](args, Path(args.work), result)
    except Exception as exc:
        result.update(ok=False, error=f'{type(exc).__name__}: {exc}'[:800], traceback=traceback.format_exc()[-3000:])
    write_json(args.result, result)
    return 0 if result.get('ok') else 1


def train_entry(argv, tiny):
    """train.py's main in this process, with the tiny backbones on a dry run (torchrun starts this too)."""
    import train
    if tiny:
        use_tiny_networks()
    return train.main(argv)


def throughput_table(entries):
    rows = ['| backbone | precision | mode | median s | samples/s | peak GB |', '|---|---|---|---|---|---|']
    for e in entries:
        if 'skipped' in e:
            rows.append(f"| {e['network']} | {e['precision']} | {e['mode']} | not timed ({e['skipped']}) | | |")
            continue
        if 'error' in e:
            rows.append(f"| {e['network']} | {e['precision']} | {e['mode']} | error: {e['error'][:60]} | | |")
            continue
        peak = e.get('peak_memory_gb') or e.get('peak_gb') or ''
        rows.append(f"| {e['network']} | {e['precision']} | {e['mode']} | {e.get('seconds_median', float('nan')):.4f} "
                    f"| {e.get('samples_per_second', '') and round(e['samples_per_second'], 2)} | {peak} |")
    return '\n'.join(rows)


def verdict(report):
    lines = [f"gpu_check on {report['device']} ({report.get('device_name', '')}), {report['elapsed_s']:.0f} s: "
             + ('ALL SECTIONS THAT RAN PASSED' if report['all_ok'] else 'FAILURES')]
    for name, entry in report['sections'].items():
        status = entry['status']
        why = entry.get('reason') or entry.get('error', '')
        lines.append(f'  {name:<11} {status}' + (f' ({why[:200]})' if why and status != 'ok' else ''))
    skipped = [n for n, e in report['sections'].items() if e['status'] == 'skipped']
    lines.append('skipped: ' + (', '.join(f"{n} ({report['sections'][n]['reason']})" for n in skipped) or 'none'))
    if report['dry_run']:
        lines.append('dry run (CPU stand-ins, says nothing about a GPU): tiny backbones except in golden; no fp16 steps '
                     '(CUDA only); compile through the eager backend; throughput fp32 only; DDP and resume on gloo/CPU')
    results = report['sections'].get('throughput', {}).get('results')
    if results:
        lines += ['', 'throughput:', throughput_table(results)]
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------------- driver
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == '--train_entry':
        tiny = len(argv) > 1 and argv[1] == '--tiny'
        rest = argv[argv.index('--') + 1:]
        return train_entry(rest, tiny)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--pack', action='store_true', help='copy the golden tensors into bench/golden_pack and exit')
    parser.add_argument('--golden', default='', help='golden folder (a pack, or one like ../shared/golden)')
    parser.add_argument('--dry_run', action='store_true',
                        help='on the CPU: tiny backbones, gloo, eager compile backend; GPU-only parts named skipped')
    parser.add_argument('--sections', nargs='+', default=[name for name, _ in SECTIONS],
                        choices=[name for name, _ in SECTIONS], help='sections to run (in the fixed order)')
    parser.add_argument('--networks', nargs='+', default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument('--resume_network', default='AHDRNet', choices=BACKBONES)
    parser.add_argument('--compile_network', default='AHDRNet', choices=BACKBONES)
    parser.add_argument('--budget_s', type=float, default=440, help='wall-clock budget of the whole run, seconds')
    parser.add_argument('--out', default=os.environ.get('OUT') or str(ROOT / 'bench' / 'results'),
                        help='folder of gpu_check.json, .log and _verdict.txt (default $OUT, else bench/results)')
    parser.add_argument('--work', default='', help='scratch folder (default a temporary one, removed at the end)')
    parser.add_argument('--cap_factor', type=float, default=1.0,
                        help='multiply every section cap (a CPU dry run on a machine busy with other work)')
    parser.add_argument('--section', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    parser.add_argument('--device', choices=('cuda', 'cpu'), help=argparse.SUPPRESS)
    parser.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--timeout', type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pack:
        kind, folder = golden_source(argparse.Namespace(golden=args.golden or str(ROOT.parent / 'shared' / 'golden')))
        if kind != 'full':
            parser.error(f'--pack needs a golden folder with state_dict.pth files (--golden DIR): {folder}')
        pack(folder)
        return 0
    if args.section:
        return run_section(args)
    import torch
    args.device = 'cpu' if args.dry_run else 'cuda'
    if not args.dry_run and not torch.cuda.is_available():
        parser.error('no CUDA device: run on a GPU machine, or use --dry_run on a CPU')

    start = time.monotonic()
    deadline = start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, log_path, verdict_path = out / 'gpu_check.json', out / 'gpu_check.log', out / 'gpu_check_verdict.txt'
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='gpu_check_'))
    work.mkdir(parents=True, exist_ok=True)
    report = {'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'device': args.device, 'dry_run': args.dry_run,
              'device_name': torch.cuda.get_device_name(0) if args.device == 'cuda' else 'CPU stand-ins',
              'networks': args.networks, 'budget_s': args.budget_s, 'sections': {}}
    if args.dry_run and 'golden' in args.sections and golden_source(args)[0] is None:
        args.sections = [s for s in args.sections if s != 'golden']
        report['sections']['golden'] = {'status': 'skipped', 'reason': golden_source(args)[1]}
    with open(log_path, 'w') as log:
        for name, cap in SECTIONS:
            if name not in args.sections:
                continue
            left = deadline - time.monotonic()
            if left < MIN_SECTION_S:
                report['sections'][name] = {'status': 'skipped', 'reason': f'{left:.0f} s of the budget left'}
                write_json(report_path, report)
                continue
            limit = min(cap * args.cap_factor, left)
            result_path = work / f'{name}.json'
            cmd = [sys.executable, str(Path(__file__).resolve()), '--section', name, '--result', str(result_path),
                   '--timeout', str(limit), '--device', args.device, '--work', str(work), '--out', str(out),
                   '--resume_network', args.resume_network, '--compile_network', args.compile_network,
                   '--networks', *args.networks] + (['--golden', args.golden] if args.golden else []) \
                + (['--tiny'] if args.dry_run else [])
            log.write(f'===== {name} (limit {limit:.0f} s)\n')
            log.flush()
            began = time.monotonic()
            rc = run_bounded(cmd, limit, log)
            status = {0: 'ok', None: f'timed out after {limit:.0f} s'}.get(rc, f'failed (exit {rc})')
            entry = json.loads(result_path.read_text()) if result_path.exists() else {}
            entry.update(status=status, seconds=time.monotonic() - began)
            report['sections'][name] = entry
            report['elapsed_s'] = time.monotonic() - start
            write_json(report_path, report)
            log.write(f'===== {name}: {status} in {entry["seconds"]:.1f} s\n')
            log.flush()
            print(f'{name:<11} {status:<28} {entry["seconds"]:6.1f} s', flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    ran = [s for s in report['sections'].values() if s['status'] != 'skipped']
    report['all_ok'] = bool(ran) and all(s['status'] == 'ok' for s in ran)
    report['elapsed_s'] = time.monotonic() - start
    write_json(report_path, report)
    verdict_path.write_text(verdict(report))
    print(verdict_path.read_text(), end='')
    print(f'wrote {report_path}, {log_path} and {verdict_path}')
    return 0 if report['all_ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
