"""CPU/GPU speed and memory of each backbone: a stage-1 training step and inference at several sizes.

    python bench/speed.py                          # all backbones, default sizes, writes bench/results/speed.json
    python bench/speed.py --networks AHDRNet --modes 256x256 1000x1500 --tiles 0 256
    python bench/speed.py --networks AHDRNet FSHDR --modes train --precisions fp32 bf16 --count_flops

Every configuration runs in a fresh subprocess so that its peak memory (ru_maxrss, includes ~0.8 GB of
interpreter and torch) is its own. Times are medians of --runs runs after --warmup runs.

`--impl literal` times the spec-literal formulation of each network instead of ours: the release's
computation written plainly (per-frame stems, dilated convolutions, out-of-place ops, unfused attention),
taken from the reference forwards the tests check our networks against. Timed on the same machine in
the same way, it is the release-equivalent baseline for "ours vs the release" where the release's own
figures (RELEASE below) came from a different CPU. `--malloc tuned|system`: as our entry points run by default, or
glibc's defaults as the release runs (util/malloc.py).

The precision axis: `--precisions fp32 bf16 bf16+compile channels_last` times every listed variant (tokens joined
by '+': fp32, bf16, fp16, compile, channels_last) for every network and mode, into speed_precision_<device>.json
by default. `compile` is torch.compile with the same fall-back as --compile in train.py/test.py (the entry records
whether it compiled; the compile time is in the warm-up runs, `warmup_seconds`, so keep --warmup >= 1). The report
records the CPU model, whether it has native bf16 (avx512_bf16, AMX) and the thread count.

`--count_flops` counts each configuration's FLOPs (torch's flop counter; inference counted at 256x256 and scaled by
the pixels) and reports GFLOP/s against the nominal fp32 FMA peak (FLOP per cycle from the CPU kind x nominal clock x
physical cores) and a measured sgemm rate.

    python bench/speed.py --precisions fp32 bf16 bf16+compile channels_last --modes train 256x256 512x512 1000x1500
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from models import networks  # noqa: E402
from models.base_model import CompiledOrEager, compile_network  # noqa: E402
from models.selfhdr1_model import expansion_mask, reference_weights  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.tiling import padded_forward, tiled_forward  # noqa: E402

# The release on a 2-vCPU AMD EPYC Zen 4 KVM (AVX-512), shared/golden/README.md section 3, seconds and GB.
# Compare with these only on that CPU; elsewhere use --impl literal on the same machine.
RELEASE = {
    'AHDRNet': {'train': 3.45, '256x256': 1.73, '512x512': 6.92, '1000x1500': 47.6, 'rss_1000x1500': 9.83},
    'FSHDR': {'train': 5.56, '256x256': 1.81, '512x512': 8.24, '1000x1500': 52.3, 'rss_1000x1500': 11.66},
    'HDR-Transformer': {'train': 7.95, '256x256': 5.58, '512x512': 31.8, '1000x1500': 184.0},
    'SCTNet': {'train': 11.1, '256x256': 7.57, '512x512': 41.0, '1000x1500': 237.0},
}


# --precisions tokens: autocast dtype, memory format, torch.compile.
PRECISION_TOKENS = ('fp32', 'bf16', 'fp16', 'compile', 'channels_last')
DEFAULT_PRECISIONS = ('fp32', 'bf16', 'bf16+compile', 'channels_last')


def parse_precision(variant):
    """'bf16+compile' -> {'amp': 'bf16', 'channels_last': False, 'compile': True}; unknown tokens are errors."""
    tokens = variant.split('+')
    unknown = [t for t in tokens if t not in PRECISION_TOKENS]
    if unknown or not tokens:
        raise ValueError(f"--precisions {variant!r}: unknown {', '.join(unknown)} (use {', '.join(PRECISION_TOKENS)} "
                         "joined by '+')")
    dtypes = [t for t in tokens if t in ('fp32', 'bf16', 'fp16')]
    if len(dtypes) > 1:
        raise ValueError(f'--precisions {variant!r}: more than one dtype')
    amp = dtypes[0] if dtypes and dtypes[0] != 'fp32' else 'none'
    return {'amp': amp, 'channels_last': 'channels_last' in tokens, 'compile': 'compile' in tokens}


def precision_name(amp, channels_last, compiled):
    tokens = ['fp32' if amp == 'none' else amp] + (['compile'] if compiled else []) \
        + (['channels_last'] if channels_last else [])
    return '+'.join(tokens)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def make_inputs(n, h, w, device):
    g = torch.Generator().manual_seed(0)
    ldr = [torch.rand(n, 3, h, w, generator=g) for _ in range(3)]
    return [torch.cat([x ** 2.2 / t, x], 1).to(device) for x, t in zip(ldr, (1.0, 4.0, 16.0))]


def use_literal_formulation(network):
    """Point the network class at its spec-literal forward from tests/ (the formulation the golden
    tests compare ours with). Returns the forward to call as fn(net, x1, x2, x3)."""
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    if network == 'AHDRNet':
        from test_ahdrnet import reference_forward
        return reference_forward
    if network == 'FSHDR':
        from test_fshdr import reference_forward
        return reference_forward
    if network == 'HDR-Transformer':
        from test_hdr_transformer import reference_forward
        return reference_forward
    if network == 'SCTNet':
        import models.sctnet as sct
        from test_sctnet import literal_block_forward, literal_forward
        sct.SwinTransformerBlock.forward = literal_block_forward
        sct._conv = lambda conv, x: conv(x)
        return literal_forward
    raise ValueError(f'no literal formulation for {network}')


def run_config(args):
    """Runs in the child process: one network, one configuration."""
    tune_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = networks.define_network(args.network).to(device)
    forward = None
    if args.impl == 'literal':
        if args.compile:
            raise ValueError('--compile times our formulation only (--impl ours)')
        literal = use_literal_formulation(args.network)
        torch.set_num_threads(args.threads)  # the tests' conftest, imported with the literal forwards, sets its own

        def forward(*x):
            return literal(net, *x)
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    result = time_network(net, args.network, args.mode, device, amp=amp, channels_last=args.channels_last,
                          compile=args.compile, forward=forward, batch=args.batch, warmup=args.warmup,
                          runs=args.runs, tile=args.tile, tile_overlap=args.tile_overlap)
    result['threads_used'] = torch.get_num_threads()
    result['peak_rss_gb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    if args.count_flops and device.type == 'cpu':
        # after the timed runs (the count adds a step of its own); the formulation timed, eager, fp32 arithmetic
        if args.mode == 'train':
            result['gflop_per_step'] = count_train_flops(net, forward, device, args.batch) / 1e9
        else:  # counted at 256x256 and scaled by the pixels: the networks' work is linear in them (whole image)
            h, w = map(int, args.mode.split('x'))
            result['gflop_per_step'] = count_forward_flops(net, forward, args.network, device) / 1e9 * h * w / 256 ** 2
        result['gflops_per_second'] = result['gflop_per_step'] / result['seconds_median']
    print('RESULT ' + json.dumps(result))


def count_forward_flops(net, forward, network, device, size=256):
    """Floating-point operations of one batch-1 inference at size x size (padded as the benchmark pads)."""
    from torch.utils.flop_counter import FlopCounterMode

    forward = net if forward is None else forward
    net.eval()
    inputs = make_inputs(1, size, size, device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if network in networks.PADDED_NETWORKS:
            padded_forward(forward, inputs, 8, 'release')
        else:
            forward(*inputs)
    return counter.get_total_flops()


def count_train_flops(net, forward, device, batch):
    """Floating-point operations of one training step (forward and backward of the network; the loss and Adam are
    a rounding error), counted by torch's flop counter: 2 per multiply-add of every convolution and matrix product."""
    from torch.utils.flop_counter import FlopCounterMode

    forward = net if forward is None else forward
    net.train()
    inputs = make_inputs(batch, 128, 128, device)
    with FlopCounterMode(display=False) as counter:
        out = forward(*inputs)
        out.float().mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def stage1_loss(out, inputs, label, l1):
    """The stage-1 loss the benchmarks time: masked L1 to `label` where it expands the medium frame, plus 4x the
    medium frame's own weighted L1."""
    weights = reference_weights(inputs[1][:, 3:])
    mask = expansion_mask(label, inputs[1][:, :3], weights)
    return l1(out, label, mask) + 4 * l1(out, inputs[1][:, :3], weights)


def time_network(net, network, mode, device, amp=None, channels_last=False, compile=False, forward=None, batch=4,
                 warmup=1, runs=5, tile=0, tile_overlap=32):
    """Seconds of `mode` ('train': a stage-1 step on `batch` crops of 128x128; 'HxW': batch-1 inference) for `net`
    on `device`, under autocast `amp` (None = fp32), channels_last and torch.compile as asked. `forward(*x)` replaces
    net(*x) (the literal formulation). Also used by bench/gpu_check.py."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, memory_format=fmt)
    forward = net if forward is None else forward
    if compile:
        forward = compile_network(net, network)
    times, warmup_times = [], []
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    if mode == 'train':
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler('cuda', enabled=amp == torch.float16 and device.type == 'cuda')
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(batch, 128, 128, device)]
        label = inputs[1][:, :3] * 1.1
        l1 = networks.L1MuLoss()
        for i in range(warmup + runs):
            sync(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = forward(*inputs)
            loss = stage1_loss(out.float(), inputs, label, l1)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sync(device)
            (times if i >= warmup else warmup_times).append(time.perf_counter() - start)
    else:
        net.eval()
        h, w = map(int, mode.split('x'))
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(1, h, w, device)]
        fn = forward
        if network in networks.PADDED_NETWORKS:
            def fn(*x):
                return padded_forward(forward, x, 8, 'release')
        for i in range(warmup + runs):
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                tiled_forward(fn, inputs, tile, tile_overlap)
            sync(device)
            (times if i >= warmup else warmup_times).append(time.perf_counter() - start)
    result = {'seconds_median': statistics.median(times), 'seconds_all': times, 'warmup_seconds': warmup_times}
    if compile:
        result['compiled'] = isinstance(forward, CompiledOrEager) and forward.is_compiled
    if device.type == 'cuda':
        result['peak_cuda_gb'] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
    return result


def cpu_description():
    """Model name, family/model, and the flags that decide the speed of fp32 and bf16: AVX-512 (release figures came
    from a Zen 4 with it), avx512_bf16 and AMX (native bf16 matrix work; without them bf16 is emulated)."""
    info = {'machine': platform.machine()}
    try:
        with open('/proc/cpuinfo') as handle:
            lines = handle.read().splitlines()
    except OSError:
        return info
    for key in ('model name', 'cpu family', 'model', 'siblings', 'cpu cores'):
        found = [l.split(':', 1)[1].strip() for l in lines if l.split(':')[0].strip() == key]
        if found:
            info[key] = found[0]
    mhz = [l.split(':', 1)[1].strip() for l in lines if l.split(':')[0].strip() == 'cpu MHz']
    if mhz:
        info['cpu_mhz'] = float(mhz[0])
    flags = [l for l in lines if l.startswith('flags')]
    names = set(flags[0].split(':', 1)[1].split()) if flags else set()
    info['avx512f'] = 'avx512f' in names
    for flag in ('avx2', 'fma', 'avx512_bf16', 'avx512_fp16', 'amx_tile', 'amx_bf16'):
        info[flag] = flag in names
    info['native_bf16'] = info['avx512_bf16'] or info['amx_bf16']
    info['logical_cpus'] = os.cpu_count()
    return info


def fp32_flops_per_cycle(cpu):
    """Nominal fp32 FLOP per cycle and core (two per lane of each FMA pipe), from the vendor, family and flags: AMD
    Zen 2 to Zen 4 have two 256-bit FMA pipes (Zen 4 runs AVX-512 on them in two halves), Zen 5 two 512-bit ones (the
    server and desktop parts), Zen 1 two 128-bit ones; Intel server cores with AVX-512 two 512-bit FMA units, AVX2
    cores two 256-bit ones. None when unknown."""
    name = cpu.get('model name', '')
    try:
        family, model = int(cpu.get('cpu family', -1)), int(cpu.get('model', -1))
    except ValueError:
        return None
    # Intel: assumes the two FMA units of Xeon Gold 6xxx/Platinum and later server cores; Silver, Bronze and some
    # Gold 5xxx have one (half this figure)
    if 'AMD' in name:
        if family == 23:
            return 32 if model >= 0x30 else 16
        if family == 25:
            return 32
        if family == 26:
            return 64 if cpu.get('avx512f') else 32
        return None
    if 'Intel' in name:
        return 64 if cpu.get('avx512f') else 32 if cpu.get('fma') else None
    return None


def physical_cores(cpu, threads):
    """Cores that `threads` threads can occupy: where the vCPUs are hyper-threads (cpuinfo's 'siblings' over
    'cpu cores'), two threads share one core's FMA units."""
    try:
        per_core = max(1, int(cpu.get('siblings', 1)) // max(1, int(cpu.get('cpu cores', 1))))
    except ValueError:
        per_core = 1
    return max(1, threads // per_core)


def nominal_ghz(cpu):
    """The nominal clock: Intel's model name ends with it ('@ 2.60GHz'); elsewhere /proc/cpuinfo's 'cpu MHz', which in
    these virtual machines is the base (TSC) clock, not the boosted one (on bare metal it is the current clock)."""
    import re

    found = re.search(r'@\s*([0-9.]+)\s*GHz', cpu.get('model name', ''))
    if found:
        return float(found.group(1))
    return cpu.get('cpu_mhz', 0) / 1000 or None


def measured_sgemm_gflops(threads, size=2048, reps=8):
    """The machine's fp32 matrix-product rate as torch's BLAS reaches it with `threads` threads: the practical
    ceiling for convolutions, beside the nominal peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * size ** 3 * reps / (time.perf_counter() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--networks', nargs='+', default=list(networks.NETWORKS))
    parser.add_argument('--modes', nargs='+', default=['train', '256x256', '512x512', '1000x1500'],
                        help="'train' (batch --batch of 128x128, stage-1 loss) and/or HxW inference sizes")
    parser.add_argument('--tiles', nargs='+', type=int, default=[0],
                        help='tile sizes for inference (0 = whole image); e.g. 0 512')
    parser.add_argument('--tile_overlap', type=int, default=32)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--runs_full', type=int, default=None,
                        help='runs for 1000x1500 inference (default --runs; minutes each for tiled transformers)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'))
    parser.add_argument('--channels_last', action='store_true')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the network (falls back to eager with a warning; see warmup_seconds)')
    parser.add_argument('--precisions', nargs='*', default=None,
                        help="precision axis: variants such as fp32 bf16 bf16+compile channels_last (tokens fp32, "
                             "bf16, fp16, compile, channels_last joined by '+'); replaces --amp/--channels_last/"
                             f"--compile. Bare --precisions: {' '.join(DEFAULT_PRECISIONS)}")
    parser.add_argument('--skip_untiled_full', action='store_true',
                        help='skip untiled 1000x1500 for the transformers (minutes each on a CPU)')
    parser.add_argument('--impl', default='ours', choices=('ours', 'literal'),
                        help="'literal': the spec-literal (release-equivalent) formulation, for comparison")
    parser.add_argument('--malloc', default='tuned', choices=('tuned', 'system'),
                        help="glibc malloc of the child processes (util/malloc.py): 'tuned' as train.py and "
                             "test.py run by default, or 'system' (glibc's defaults, as the release runs)")
    parser.add_argument('--count_flops', action='store_true',
                        help="count each configuration's FLOPs (torch's flop counter; inference counted at 256x256 and "
                             "scaled by the pixels) and report GFLOP/s against the CPU's nominal fp32 peak and its "
                             "measured sgemm rate")
    parser.add_argument('--output', default=None,
                        help='default bench/results/speed.json, or speed_precision_<device>.json with --precisions')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--network', help=argparse.SUPPRESS)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    parser.add_argument('--tile', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_config(args)

    if args.precisions is None:
        variants = [precision_name(args.amp, args.channels_last, args.compile)]
    else:
        variants = list(args.precisions) or list(DEFAULT_PRECISIONS)
    try:
        settings = {v: parse_precision(v) for v in variants}
    except ValueError as exc:
        parser.error(str(exc))
    if args.output is None:
        name = 'speed.json' if args.precisions is None else f'speed_precision_{args.device}.json'
        args.output = os.path.join(ROOT, 'bench', 'results', name)

    results = []
    single = settings[variants[0]] if len(variants) == 1 else None
    cpu = cpu_description()
    for network in args.networks:
        for variant in variants:
            setting = settings[variant]
            for mode in args.modes:
                for tile in ([0] if mode == 'train' else args.tiles):
                    if (args.skip_untiled_full and mode == '1000x1500' and tile == 0
                            and network in networks.PADDED_NETWORKS):
                        continue
                    results.append(run_child(args, network, mode, tile, variant, setting))
                    # written after every configuration, so an interrupted run keeps what it measured
                    write_report(args, cpu, variants, single, {}, results)
    limits = {}
    if args.count_flops and args.device == 'cpu':
        per_cycle, ghz, cores = fp32_flops_per_cycle(cpu), nominal_ghz(cpu), physical_cores(cpu, args.threads)
        limits = {'fp32_flops_per_cycle_per_core': per_cycle, 'nominal_ghz': ghz, 'physical_cores_used': cores,
                  'nominal_fp32_peak_gflops': per_cycle * ghz * cores if per_cycle and ghz else None,
                  'measured_sgemm_gflops': measured_sgemm_gflops(args.threads),
                  'flops_note': 'inference: whole-image FLOPs (useful work; tile overlaps not counted); shares of '
                                'the fp32 peak are given for fp32 entries only'}
        peak = limits['nominal_fp32_peak_gflops']
        for entry in results:
            if 'gflops_per_second' in entry and entry.get('amp') == 'none':
                if peak:
                    entry['share_of_nominal_fp32_peak'] = entry['gflops_per_second'] / peak
                entry['share_of_measured_sgemm'] = entry['gflops_per_second'] / limits['measured_sgemm_gflops']
        print(json.dumps(limits), flush=True)
    write_report(args, cpu, variants, single, limits, results)


def write_report(args, cpu, variants, single, limits, results):
    """The JSON report of the configurations run so far (atomically)."""
    report = {'device': args.device, 'cpu': cpu, 'threads': args.threads, **limits,
              'impl': args.impl, 'malloc': args.malloc,
              'torch': torch.__version__,
              'dtype': ('float32' if single['amp'] == 'none' else single['amp']) if single else 'per entry',
              'precisions': variants,
              'batch': args.batch, 'runs': args.runs, 'runs_full': args.runs_full or args.runs, 'warmup': args.warmup,
              'channels_last': single['channels_last'] if single else 'per entry',
              'compile': single['compile'] if single else 'per entry',
              'malloc_env': os.environ.get('GLIBC_TUNABLES', ''),
              'omp_num_threads_env': os.environ.get('OMP_NUM_THREADS'),
              'results': results}
    if args.device == 'cuda' and torch.cuda.is_available():
        report['cuda_device'] = torch.cuda.get_device_name(0)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, args.output)


def run_child(args, network, mode, tile, variant, setting):
    """One configuration in a fresh process; returns its entry (with 'error' when the child failed)."""
    cmd = [sys.executable, __file__, '--child', '--network', network, '--mode', mode,
           '--tile', str(tile), '--tile_overlap', str(args.tile_overlap), '--batch', str(args.batch),
           '--runs', str(args.runs_full if mode == '1000x1500' and args.runs_full else args.runs),
           '--warmup', str(args.warmup), '--threads', str(args.threads),
           '--device', args.device, '--amp', setting['amp'], '--impl', args.impl, '--malloc', args.malloc]
    if args.count_flops:
        cmd.append('--count_flops')
    if setting['channels_last']:
        cmd.append('--channels_last')
    if setting['compile']:
        cmd.append('--compile')
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
    entry = {'network': network, 'mode': mode, 'tile': tile, 'precision': variant, **setting}
    if done.returncode != 0 or not line:
        entry['error'] = (done.stderr or done.stdout)[-500:]
    else:
        entry.update(json.loads(line[0][len('RESULT '):]))
        if mode == 'train':
            entry['samples_per_second'] = args.batch / entry['seconds_median']
        release = RELEASE.get(network, {}).get(mode)
        plain = setting['amp'] == 'none' and not setting['compile'] and not setting['channels_last']
        if release and args.device == 'cpu' and tile == 0 and args.batch == 4 and plain:
            entry['release_seconds_zen4'] = release
            if mode == 'train':
                entry['release_samples_per_second_zen4'] = 4 / release
    print(json.dumps({k: v for k, v in entry.items() if k not in ('seconds_all', 'warmup_seconds')}), flush=True)
    return entry


if __name__ == '__main__':
    main()
