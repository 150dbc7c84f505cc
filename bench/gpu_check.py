"""GPU checks in one prepared run of at most 8 minutes (bench/gpu_check.sh is the wrapper to start it with).

    bash bench/gpu_check.sh                                     # on a CUDA machine: everything, about 7.5 minutes
    python bench/gpu_check.py --device cpu --quick --networks AHDRNet --sections golden amp   # dry run on a CPU

Sections, in order of priority (each runs in a child process under its own timeout, and the whole run under
--budget_s; a section that fails, times out or has no time left is recorded and the next one runs):

  env         torch/CUDA/cuDNN/NCCL versions, the device, the CPU, C++ compiler and triton present
  golden      fp32 forward of each backbone on the device against ../shared/golden (max abs error <= 1e-4, TF32 off)
  amp         one training step per backbone (models/supervised_model.py, --amp none/bf16/fp16): finite, and the
              bf16/fp16 loss within 2% of fp32
  ddp         a one-process NCCL DistributedDataParallel step started by torchrun (the model wraps itself in DDP;
              same loss as without DDP, bare checkpoint keys), then train.py under torchrun on a tiny data set
  throughput  training step (batch 4 of 128x128) and inference (256x256, 512x512, 1000x1500) per backbone for fp32,
              bf16, fp16 and channels_last (bench/speed.py's timing)
  compile     the same for bf16+compile (compile time in warmup_seconds; AHDRNet first, then as time allows)
  study       tools/study.py --budget tiny with the minutes left

Everything goes to one JSON (gpu_check.json) and one log (gpu_check.log) in $OUT when set, else bench/results/;
the JSON is rewritten after every section, so a run killed from outside keeps what it measured. Exit status 0 when
every section that ran passed its checks, 1 otherwise.
"""
import argparse
import contextlib
import io
import json
import os
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
GOLDEN_TOL = 1e-4
AMP_REL_TOL = 0.02
# (section, timeout in seconds); the run stops starting sections when the budget is spent.
SECTIONS = (('env', 40), ('golden', 60), ('amp', 90), ('ddp', 100), ('throughput', 120), ('compile', 150),
            ('study', 150))
MIN_SECTION_S = 20


# ------------------------------------------------------------------------------------------------------ helpers
def golden_root():
    """../shared/golden beside the checkout (as tests/conftest.py has it), or shared/golden inside it, or $GOLDEN_DIR."""
    for candidate in (os.environ.get('GOLDEN_DIR'), ROOT.parent / 'shared' / 'golden', ROOT / 'shared' / 'golden'):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


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


def quiet_options(argv, is_train=True):
    """Parsed TrainOptions/TestOptions without their printed option table."""
    from options.test_options import TestOptions
    from options.train_options import TrainOptions
    with contextlib.redirect_stdout(io.StringIO()):
        return (TrainOptions() if is_train else TestOptions()).parse(argv)


def model_opt(args, network, amp, work, name, **flags):
    argv = ['--dataroot', str(work / 'data'), '--dataset_name', 'sig17align', '--model', 'supervised',
            '--network', network, '--name', name, '--checkpoints_dir', str(work / 'ckpt'), '-j', '0',
            '--verbose', 'False', '--gpu_ids', '0' if args.device == 'cuda' else '-1', '--amp', amp,
            '--vgg_weights', 'random']
    for key, value in flags.items():
        argv += [f'--{key}', str(value)]
    return quiet_options(argv)


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


# ----------------------------------------------------------------------------------------------------- sections
def section_env(args, work, result):
    import torch
    import speed
    from models.base_model import has_cpp_compiler
    result['torch'] = torch.__version__
    result['cuda_available'] = torch.cuda.is_available()
    result['cuda_runtime'] = torch.version.cuda
    result['cudnn'] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    result['cpu'] = speed.cpu_description()
    result['cpu_threads'] = torch.get_num_threads()
    result['cpp_compiler'] = bool(has_cpp_compiler())
    try:
        import triton
        result['triton'] = triton.__version__
    except ImportError:
        result['triton'] = None
    result['nccl_available'] = torch.distributed.is_nccl_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update(device=props.name, capability=f'{props.major}.{props.minor}', memory_gb=props.total_memory / 2 ** 30,
                      device_count=torch.cuda.device_count(), bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):
            version = torch.cuda.nccl.version()
            result['nccl'] = '.'.join(map(str, version)) if isinstance(version, tuple) else str(version)
    smi = shutil.which('nvidia-smi')
    if smi:
        done = subprocess.run([smi, '--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit',
                               '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
        result['nvidia_smi'] = done.stdout.strip() or done.stderr.strip()
    result['ok'] = args.device == 'cpu' or torch.cuda.is_available()


def section_golden(args, work, result):
    import torch
    from models import networks
    root = golden_root()
    if root is None:
        raise FileNotFoundError(f'no golden tensors at {ROOT.parent / "shared" / "golden"} (or $GOLDEN_DIR)')
    strict_fp32(torch)
    device = torch.device(args.device)
    result['golden'] = str(root)
    result['tolerance'] = GOLDEN_TOL
    per = result.setdefault('networks', {})
    for network in args.networks:
        folder = root / GOLDEN_DIRS[network]
        entry = per.setdefault(network, {})
        try:
            net = networks.define_network(network)
            net.load_state_dict(torch.load(folder / 'state_dict.pth', map_location='cpu', weights_only=True),
                                strict=True)
            net = net.to(device).eval()
            try:
                io_tensors = torch.load(folder / 'io.pt', map_location='cpu', weights_only=True)
            except Exception:  # our own trusted reference file; one of them holds more than tensors
                io_tensors = torch.load(folder / 'io.pt', map_location='cpu', weights_only=False)
            for prefix in ('', 'rect_'):
                if prefix + 'x0' not in io_tensors:
                    continue
                xs = [io_tensors[prefix + f'x{i}'].to(device) for i in range(3)]
                with torch.no_grad():
                    y = net(*xs).float().cpu()
                err = (y - io_tensors[prefix + 'y']).abs().max().item()
                entry[(prefix or 'square_') + 'max_abs_err'] = err
            entry['ok'] = all(v <= GOLDEN_TOL for k, v in entry.items() if k.endswith('max_abs_err'))
        except Exception as exc:
            entry.update(ok=False, error=f'{type(exc).__name__}: {exc}')
        write_json(args.result, result)
    result['ok'] = all(e.get('ok') for e in per.values())


def section_amp(args, work, result):
    import torch
    batch = step_batch(32 if args.quick else 64)
    dtypes = ('none', 'bf16', 'fp16') if args.device == 'cuda' else ('none', 'bf16')
    per = result.setdefault('networks', {})
    for network in args.networks:
        entry = per.setdefault(network, {})
        try:
            for amp in dtypes:
                start = time.perf_counter()
                loss, model = one_step(model_opt(args, network, amp, work, f'amp_{amp}'), batch)
                params_finite = all(torch.isfinite(p).all().item() for p in model.netSelfHDR.parameters())
                entry[amp] = {'loss': loss, 'finite': bool(params_finite and torch.isfinite(torch.tensor(loss))),
                              'out_dtype': str(model.data_out.dtype), 'seconds': time.perf_counter() - start}
                if amp != 'none':
                    rel = abs(loss - entry['none']['loss']) / max(abs(entry['none']['loss']), 1e-12)
                    entry[amp]['rel_diff_vs_fp32'] = rel
                    entry[amp]['ok'] = entry[amp]['finite'] and rel <= AMP_REL_TOL
                write_json(args.result, result)
            entry['ok'] = entry['none']['finite'] and all(entry[a]['ok'] for a in dtypes if a != 'none')
        except Exception as exc:
            entry.update(ok=False, error=f'{type(exc).__name__}: {exc}')
        write_json(args.result, result)
    result['ok'] = all(e.get('ok') for e in per.values())


def section_ddp(args, work, result):
    """torchrun --nproc_per_node 1 of this file's ddp_rank body, then of train.py on the tiny data set."""
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1', '--master_addr', '127.0.0.1']
    rank_out = work / 'ddp_rank.json'
    cmd = torchrun + ['--master_port', str(free_port()), str(Path(__file__).resolve()), '--section', 'ddp_rank',
                      '--device', args.device, '--work', str(work), '--result', str(rank_out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, args.timeout - 45))
    result['ddp_step'] = json.loads(rank_out.read_text()) if rank_out.exists() else {}
    result['ddp_step']['rc'] = done.returncode
    if done.returncode:
        result['ddp_step']['stderr_tail'] = done.stderr[-1500:]
    write_json(args.result, result)

    from tiny_data import make_tiny_dataset
    dataroot = make_tiny_dataset(work / 'tiny')
    name = 'torchrun_train'
    cmd = torchrun + ['--master_port', str(free_port()), str(ROOT / 'train.py'), '--dataroot', str(dataroot),
                      '--dataset_name', 'sig17align', '--model', 'supervised', '--network', args.networks[0],
                      '--name', name, '--checkpoints_dir', str(work / 'ckpt'), '-j', '0', '--verbose', 'False',
                      '--gpu_ids', '0' if args.device == 'cuda' else '-1', '--batch_size', '2', '--patch_size', '32',
                      '--iters_per_epoch', '3', '--niter', '1', '--calc_metrics', 'False', '--print_freq', '1']
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=45, cwd=ROOT)
    entry = {'rc': done.returncode, 'seconds': time.perf_counter() - start,
             'note': 'one process: train.py runs without DDP when WORLD_SIZE is 1 (the DDP step is above)'}
    ckpt = work / 'ckpt' / name / 'SelfHDR_model_1.pth'
    if done.returncode == 0 and ckpt.exists():
        import torch
        state = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
        entry['bare_keys'] = not any(k.startswith(('module.', '_orig_mod.')) for k in state)
    else:
        entry['stderr_tail'] = (done.stderr or done.stdout)[-1500:]
    result['torchrun_train'] = entry
    result['ok'] = bool(result['ddp_step'].get('ok')) and entry.get('bare_keys', False)


def section_ddp_rank(args, work, result):
    """Runs under torchrun: NCCL (gloo on the CPU) process group of one, the model wraps its backbone in DDP."""
    import torch
    import torch.distributed as dist
    from models import networks
    rank = int(os.environ.get('RANK', '0'))
    if args.device == 'cuda':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
    backend = 'nccl' if args.device == 'cuda' else 'gloo'
    dist.init_process_group(backend)
    try:
        result.update(backend=dist.get_backend(), world_size=dist.get_world_size(), rank=rank)
        batch = step_batch(32)
        network = args.networks[0]
        plain_loss, plain = one_step(model_opt(args, network, 'none', work, 'ddp_plain'), batch)
        opt = model_opt(args, network, 'none', work, 'ddp')
        opt.distributed, opt.rank, opt.world_size = True, rank, dist.get_world_size()
        loss, model = one_step(opt, batch)
        result['wrapped_in_ddp'] = isinstance(model.netSelfHDR, torch.nn.parallel.DistributedDataParallel)
        result.update(loss=loss, plain_loss=plain_loss, network=network)
        diff = max((a.detach() - b.detach()).abs().max().item() for a, b in
                   zip(networks.unwrap(model.netSelfHDR).parameters(), networks.unwrap(plain.netSelfHDR).parameters()))
        result['max_weight_diff_vs_plain'] = diff
        model.save_networks(1)
        state = torch.load(model.network_path('SelfHDR', 1), map_location='cpu', weights_only=True)['state_dict']
        result['bare_keys'] = list(state) == list(networks.unwrap(plain.netSelfHDR).state_dict())
        result['ok'] = (result['wrapped_in_ddp'] and result['bare_keys'] and abs(loss - plain_loss) <= 1e-4 * abs(plain_loss)
                        and diff <= 1e-4)
    finally:
        dist.destroy_process_group()


def _timing_sweep(args, result, variants, modes):
    import torch
    import speed
    from models import networks
    device = torch.device(args.device)
    amp_of = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
    runs, warmup = (1, 1) if args.quick else (5, 2)
    full = (1, 1) if args.quick else (2, 1)  # 1000x1500: seconds per run for the transformers
    entries = result.setdefault('results', [])
    for network in args.networks:
        for variant in variants:
            setting = speed.parse_precision(variant)
            if setting['amp'] == 'fp16' and device.type == 'cpu':
                continue
            for mode in modes:
                entry = {'network': network, 'precision': variant, 'mode': mode}
                try:
                    torch.manual_seed(0)
                    net = networks.define_network(network)
                    entry.update(speed.time_network(
                        net, network, mode, device, amp=amp_of['fp32' if setting['amp'] == 'none' else setting['amp']],
                        channels_last=setting['channels_last'], compile=setting['compile'],
                        batch=1 if args.quick else 4, warmup=(full if mode == '1000x1500' else (runs, warmup))[1],
                        runs=(full if mode == '1000x1500' else (runs, warmup))[0]))
                    if mode == 'train':
                        entry['samples_per_second'] = (1 if args.quick else 4) / entry['seconds_median']
                except Exception as exc:
                    entry['error'] = f'{type(exc).__name__}: {exc}'[:800]
                    if device.type == 'cuda':
                        torch.cuda.empty_cache()
                entries.append(entry)
                write_json(args.result, result)
    result['ok'] = all('error' not in e for e in entries)


def section_throughput(args, work, result):
    modes = ['train', '64x64'] if args.quick else ['train', '256x256', '512x512', '1000x1500']
    _timing_sweep(args, result, args.precisions, modes)


def section_compile(args, work, result):
    import torch
    if args.compile_backend != 'inductor':  # dry runs on a CPU: dynamo without code generation
        real = torch.compile
        torch.compile = lambda model, **kw: real(model, backend=args.compile_backend, **kw)
    result['backend'] = args.compile_backend
    modes = ['train', '64x64'] if args.quick else ['train', '512x512']
    _timing_sweep(args, result, args.compile_precisions, modes)
    result['ok'] = result['ok'] and all(e.get('compiled') for e in result['results'])


def section_study(args, work, result):
    out = Path(args.out) / 'study_tiny'
    cmd = [sys.executable, str(ROOT / 'tools' / 'study.py'), '--budget', 'tiny', '--network', args.networks[0],
           '--work', str(work / 'study'), '--out', str(out), '--vgg', 'auto']
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, args.timeout - 5), cwd=ROOT)
    result.update(rc=done.returncode, seconds=time.perf_counter() - start, stdout_tail=done.stdout[-1500:])
    if done.returncode:
        result['stderr_tail'] = done.stderr[-1500:]
    summary = out / 'results.json'
    if summary.exists():
        methods = json.loads(summary.read_text()).get('methods', {})
        result['methods'] = {name: {k: row.get(k) for k in ('psnr_mu', 'psnr_l', 'psnr_mu_permuted')}
                             for name, row in methods.items()}
    result['ok'] = done.returncode == 0


SECTION_BODIES = {'env': section_env, 'golden': section_golden, 'amp': section_amp, 'ddp': section_ddp,
                  'ddp_rank': section_ddp_rank, 'throughput': section_throughput, 'compile': section_compile,
                  'study': section_study}


def run_bounded(cmd, limit, log):
    """Exit status of `cmd`, or None when it ran past `limit` seconds; then its whole process group (torchrun's
    workers, the study's trainings) is killed."""
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
    from util.malloc import tune_malloc
    tune_malloc('tuned')
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)) if args.device == 'cuda' else args.threads)
    result = {'section': args.section, 'device': args.device}
    work = Path(args.work)
    try:
        SECTION_BODIES[args.section](args, work, result)
    except Exception as exc:
        result.update(ok=False, error=f'{type(exc).__name__}: {exc}', traceback=traceback.format_exc()[-3000:])
    write_json(args.result, result)
    return 0 if result.get('ok') else 1


# ------------------------------------------------------------------------------------------------------- driver
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sections', nargs='+', default=[name for name, _ in SECTIONS],
                        choices=[name for name, _ in SECTIONS], help='sections to run (in the fixed order)')
    parser.add_argument('--networks', nargs='+', default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument('--device', default=None, choices=('cuda', 'cpu'),
                        help='default cuda when available; cpu for a dry run of the checks that have a CPU fallback')
    parser.add_argument('--budget_s', type=float, default=450, help='wall-clock budget of the whole run, seconds')
    parser.add_argument('--quick', action='store_true', help='tiny sizes and one run per timing (dry runs)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of the sections on a CPU dry run')
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'bf16', 'fp16', 'channels_last'],
                        help="variants of the throughput section (bench/speed.py's --precisions tokens)")
    parser.add_argument('--compile_precisions', nargs='+', default=['bf16+compile'],
                        help='variants of the compile section')
    parser.add_argument('--compile_backend', default='inductor',
                        help="torch.compile backend of the compile section ('eager' for a quick dry run)")
    parser.add_argument('--out', default=os.environ.get('OUT') or str(ROOT / 'bench' / 'results'),
                        help='folder of gpu_check.json and gpu_check.log (default $OUT, else bench/results)')
    parser.add_argument('--work', default='', help='scratch folder (default a temporary one, removed at the end)')
    parser.add_argument('--section', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    parser.add_argument('--timeout', type=float, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import speed
    try:
        for variant in args.precisions + args.compile_precisions:
            speed.parse_precision(variant)
    except ValueError as exc:
        parser.error(str(exc))
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.section:
        return run_section(args)

    start = time.monotonic()
    deadline = start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path, log_path = out / 'gpu_check.json', out / 'gpu_check.log'
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix='gpu_check_'))
    work.mkdir(parents=True, exist_ok=True)
    report = {'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'device': args.device, 'networks': args.networks,
              'budget_s': args.budget_s, 'quick': args.quick, 'sections': {}}
    with open(log_path, 'w') as log:
        for name, timeout in SECTIONS:
            if name not in args.sections:
                continue
            left = deadline - time.monotonic()
            if left < MIN_SECTION_S:
                report['sections'][name] = {'status': 'skipped', 'reason': f'{left:.0f} s of the budget left'}
                write_json(report_path, report)
                continue
            limit = min(timeout, left) if name != 'study' else left
            result_path = work / f'{name}.json'
            cmd = [sys.executable, str(Path(__file__).resolve()), '--section', name, '--result', str(result_path),
                   '--timeout', str(limit), '--device', args.device, '--work', str(work), '--out', str(out),
                   '--threads', str(args.threads), '--compile_backend', args.compile_backend,
                   '--precisions', *args.precisions, '--compile_precisions', *args.compile_precisions,
                   '--networks', *args.networks] + (['--quick'] if args.quick else [])
            log.write(f'===== {name} (limit {limit:.0f} s)\n')
            log.flush()
            began = time.monotonic()
            rc = run_bounded(cmd, limit, log)
            status = {0: 'ok', None: f'timed out after {limit:.0f} s'}.get(rc, f'failed (exit {rc})')
            entry = json.loads(result_path.read_text()) if result_path.exists() else {}
            entry['status'] = status
            entry['seconds'] = time.monotonic() - began
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
    write_json(report_path, report)
    print(f'wrote {report_path} and {log_path}; all ok: {report["all_ok"]}')
    return 0 if report['all_ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
