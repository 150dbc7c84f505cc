"""CPU/GPU speed and memory of each backbone: a stage-1 training step and inference at several sizes.

    python bench/speed.py                          # all backbones, default sizes, writes bench/results/speed.json
    python bench/speed.py --networks AHDRNet --sizes 256x256 1000x1500 --tile 0 256

Every configuration runs in a fresh subprocess so that its peak memory (ru_maxrss, includes ~0.8 GB of
interpreter and torch) is its own. Times are medians of --runs runs after --warmup runs.

`--impl literal` times the spec-literal formulation of each network instead of ours: the release's
computation written plainly (per-frame stems, dilated convolutions, out-of-place ops, unfused attention),
taken from the reference forwards the tests check our networks against. Timed on the same machine in
the same way, it is the release-equivalent baseline for "ours vs the release" where the release's own
figures (RELEASE below) came from a different CPU. `--malloc tuned|system`: as our entry points run by default, or
glibc's defaults as the release runs (util/malloc.py).
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
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if args.impl == 'literal':
        literal = use_literal_formulation(args.network)

        def forward(*x):
            return literal(net, *x)
    else:
        forward = net
    amp = {'bf16': torch.bfloat16, 'fp16': torch.float16}.get(args.amp)
    times = []
    if args.mode == 'train':
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler('cuda', enabled=amp == torch.float16)
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(args.batch, 128, 128, device)]
        label = inputs[1][:, :3] * 1.1
        l1 = networks.L1MuLoss()
        for i in range(args.warmup + args.runs):
            sync(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = forward(*inputs)
            out = out.float()
            weights = reference_weights(inputs[1][:, 3:])
            mask = expansion_mask(label, inputs[1][:, :3], weights)
            loss = l1(out, label, mask) + 4 * l1(out, inputs[1][:, :3], weights)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    else:
        net.eval()
        h, w = map(int, args.mode.split('x'))
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(1, h, w, device)]
        fn = forward
        if args.network in networks.PADDED_NETWORKS:
            def fn(*x):
                return padded_forward(forward, x, 8, 'release')
        for i in range(args.warmup + args.runs):
            sync(device)
            start = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                tiled_forward(fn, inputs, args.tile, args.tile_overlap)
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    result = {'seconds_median': statistics.median(times), 'seconds_all': times,
              'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}
    if device.type == 'cuda':
        result['peak_cuda_gb'] = torch.cuda.max_memory_allocated() / 1024 ** 3
    print('RESULT ' + json.dumps(result))


def cpu_description():
    """Model name, family/model and whether AVX-512 is there: release figures came from a Zen 4 with it."""
    info = {'machine': platform.machine()}
    try:
        with open('/proc/cpuinfo') as handle:
            lines = handle.read().splitlines()
    except OSError:
        return info
    for key in ('model name', 'cpu family', 'model'):
        found = [l.split(':', 1)[1].strip() for l in lines if l.split(':')[0].strip() == key]
        if found:
            info[key] = found[0]
    flags = [l for l in lines if l.startswith('flags')]
    info['avx512f'] = bool(flags) and ' avx512f' in flags[0]
    info['logical_cpus'] = os.cpu_count()
    return info


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
    parser.add_argument('--skip_untiled_full', action='store_true',
                        help='skip untiled 1000x1500 for the transformers (minutes each on a CPU)')
    parser.add_argument('--impl', default='ours', choices=('ours', 'literal'),
                        help="'literal': the spec-literal (release-equivalent) formulation, for comparison")
    parser.add_argument('--malloc', default='tuned', choices=('tuned', 'system'),
                        help="glibc malloc of the child processes (util/malloc.py): 'tuned' as train.py and "
                             "test.py run by default, or 'system' (glibc's defaults, as the release runs)")
    parser.add_argument('--output', default=os.path.join(ROOT, 'bench', 'results', 'speed.json'))
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--network', help=argparse.SUPPRESS)
    parser.add_argument('--mode', help=argparse.SUPPRESS)
    parser.add_argument('--tile', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_config(args)

    results = []
    for network in args.networks:
        for mode in args.modes:
            for tile in ([0] if mode == 'train' else args.tiles):
                if (args.skip_untiled_full and mode == '1000x1500' and tile == 0
                        and network in networks.PADDED_NETWORKS):
                    continue
                cmd = [sys.executable, __file__, '--child', '--network', network, '--mode', mode,
                       '--tile', str(tile), '--tile_overlap', str(args.tile_overlap), '--batch', str(args.batch),
                       '--runs', str(args.runs_full if mode == '1000x1500' and args.runs_full else args.runs), '--warmup', str(args.warmup), '--threads', str(args.threads),
                       '--device', args.device, '--amp', args.amp, '--impl', args.impl, '--malloc', args.malloc]
                if args.channels_last:
                    cmd.append('--channels_last')
                done = subprocess.run(cmd, capture_output=True, text=True)
                line = [l for l in done.stdout.splitlines() if l.startswith('RESULT ')]
                entry = {'network': network, 'mode': mode, 'tile': tile}
                if done.returncode != 0 or not line:
                    entry['error'] = (done.stderr or done.stdout)[-500:]
                else:
                    entry.update(json.loads(line[0][len('RESULT '):]))
                    if mode == 'train':
                        entry['samples_per_second'] = args.batch / entry['seconds_median']
                    release = RELEASE.get(network, {}).get(mode)
                    if release and args.device == 'cpu' and tile == 0 and args.batch == 4:
                        entry['release_seconds_zen4'] = release
                        if mode == 'train':
                            entry['release_samples_per_second_zen4'] = 4 / release
                results.append(entry)
                print(json.dumps({k: v for k, v in entry.items() if k != 'seconds_all'}), flush=True)
    report = {'device': args.device, 'cpu': cpu_description(), 'threads': args.threads,
              'impl': args.impl, 'malloc': args.malloc,
              'torch': torch.__version__, 'dtype': 'float32' if args.amp == 'none' else args.amp,
              'batch': args.batch, 'runs': args.runs, 'runs_full': args.runs_full or args.runs, 'warmup': args.warmup,
              'channels_last': args.channels_last, 'malloc_env': os.environ.get('GLIBC_TUNABLES', ''),
              'results': results}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    tmp = args.output + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(tmp, args.output)


if __name__ == '__main__':
    main()
