"""Where a training step's (or an inference pass's) time goes: torch.profiler over one stage-1 step or one forward
per backbone, operators ranked by their own CPU time, with the share they take (issue 24: profile before choosing
formulations).

    python bench/profile_step.py --networks HDR-Transformer SCTNet --precision fp32 --threads 2
    python bench/profile_step.py --mode infer --size 512 --precision bf16 --networks HDR-Transformer

Writes bench/results/profile_step_<precision>.json (profile_infer<size>_<precision>.json for --mode infer; or
--output): per network the seconds, the FLOPs and the top --top operators (self CPU seconds, calls, share). Same
step as bench/speed.py's 'train' mode; the inference pass is its 512x512 mode untiled (inference_mode, autocast).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import torch  # noqa: E402

from models import networks  # noqa: E402
from speed import count_forward_flops, count_train_flops, cpu_description, make_inputs, stage1_loss  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402


def step(net, optimizer, inputs, amp):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=amp, enabled=amp is not None):
        out = net(*inputs)
    stage1_loss(out.float(), inputs, inputs[1][:, :3] * 1.1, networks.L1MuLoss()).backward()
    optimizer.step()


def infer(net, inputs, amp):
    with torch.inference_mode(), torch.autocast('cpu', dtype=amp, enabled=amp is not None):
        net(*inputs)


def profile_network(name, amp, batch, top, mode='train', size=512, channels_last=False):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if mode == 'train':
        net = networks.define_network(name).train().to(memory_format=fmt)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(batch, 128, 128, torch.device('cpu'))]

        def run():
            step(net, optimizer, inputs, amp)
    else:
        net = networks.define_network(name).eval().to(memory_format=fmt)
        inputs = [x.contiguous(memory_format=fmt) for x in make_inputs(1, size, size, torch.device('cpu'))]

        def run():
            infer(net, inputs, amp)
    run()  # warm-up: allocator, oneDNN primitives
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{'op': e.key, 'self_seconds': e.self_cpu_time_total / 1e6, 'calls': e.count,
             'share': e.self_cpu_time_total / total} for e in events[:top]]
    if mode == 'train':
        gflop = count_train_flops(net, None, torch.device('cpu'), batch) / 1e9
    else:
        gflop = count_forward_flops(net, None, name, torch.device('cpu'), size) / 1e9
    return {'seconds_unprofiled': seconds, 'gflop_per_step': gflop, 'profiled_self_seconds': total / 1e6,
            'top_ops': rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--networks', nargs='+', default=list(networks.NETWORKS))
    p.add_argument('--precision', default='fp32', choices=('fp32', 'bf16'))
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--top', type=int, default=15)
    p.add_argument('--mode', default='train', choices=('train', 'infer'),
                   help='train: one stage-1 step at --batch x 128^2; infer: one --size^2 forward')
    p.add_argument('--size', type=int, default=512, help='image side for --mode infer')
    p.add_argument('--channels_last', action='store_true', help='network and inputs in channels_last (NHWC)')
    p.add_argument('--output', default=None)
    args = p.parse_args()
    tune_malloc('tuned')
    torch.set_num_threads(args.threads)
    amp = torch.bfloat16 if args.precision == 'bf16' else None
    report = {'cpu': cpu_description(), 'threads': args.threads, 'precision': args.precision, 'mode': args.mode,
              'channels_last': args.channels_last,
              'batch': args.batch if args.mode == 'train' else 1, 'torch': torch.__version__, 'networks': {}}
    if args.mode == 'infer':
        report['size'] = args.size
    for name in args.networks:
        report['networks'][name] = result = profile_network(name, amp, args.batch, args.top, args.mode, args.size,
                                                                       args.channels_last)
        print(f"{name}: {result['seconds_unprofiled']:.2f} s, {result['gflop_per_step']:.0f} GFLOP", flush=True)
        for row in result['top_ops']:
            print(f"  {row['op']:<45} {row['self_seconds']:7.3f} s {row['calls']:6d} calls {100 * row['share']:5.1f} %")
    kind = 'step' if args.mode == 'train' else f'infer{args.size}'
    out = args.output or os.path.join(ROOT, 'bench', 'results', f'profile_{kind}_{args.precision}.json')
    tmp = out + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(report, handle, indent=1)
    os.replace(tmp, out)
    print('wrote', out)


if __name__ == '__main__':
    main()
