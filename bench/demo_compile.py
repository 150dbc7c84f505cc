"""Does --compile pay for a short training (train.sh's demo budget, tools/adapt.py's 300 iterations)?

    python bench/demo_compile.py                     # writes bench/results/demo_compile.json

Measured in CPU seconds of one thread (time.process_time plus the finished child processes, i.e. the C++ compiler,
in a fresh process with one intra-op thread and one inductor compile thread, inductor's caches off: a first run),
not in wall time, so that the figures hold on a machine shared with other work (ours was: see `load_note`). For bf16 eager and
bf16 compiled (`--amp bf16 --compile True`, what `auto` gives on a native-bf16 CPU), the full AHDRNet stage-1 model
(`selfhdr1`: the demo's batch 4 of 64x64 crops, Adam) takes `--steps` training steps, then one validation-sized
inference forward (1 x 256x384, the demo test scenes' size: a new shape, which torch.compile compiles again).
Reported per configuration: the first step, the median of the others, and the first and second validation
forwards. The compile warm-up is the compiled run's first step and first validation in excess of the eager
run's; the break-even iteration count is that warm-up over the per-step saving.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(compile_, steps, work):
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, 'tests'))
    from util.malloc import tune_malloc
    tune_malloc()
    import torch
    torch.set_num_threads(1)
    import models
    from tiny_data import make_tiny_dataset, tiny_opt

    data = make_tiny_dataset(os.path.join(work, 'tiny'))
    opt = tiny_opt(data, os.path.join(work, 'ckpt'), f'c{compile_}', 'selfhdr1', amp='bf16', compile=compile_,
                   batch_size=4, patch_size=64)
    torch.manual_seed(0)
    model = models.create_model(opt)
    model.setup(opt)
    model.train()
    g = torch.Generator().manual_seed(0)

    def batch(n, h, w):
        ldr = [torch.rand(n, 3, h, w, generator=g) for _ in range(3)]
        expo = torch.tensor([[1.0, 4.0, 16.0]]).repeat(n, 1)
        out = {f'input{i}': torch.cat([x ** 2.2 / t, x], 1) for i, (x, t) in enumerate(zip(ldr, (1.0, 4.0, 16.0)))}
        out['label'] = (ldr[1] ** 2.2 / 4.0).clamp(0, 1)
        out['expo'] = expo
        return out

    import resource

    def cpu():  # this process and its finished children (the C++ compiler runs inductor's kernels through)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    step_times = []
    for _ in range(steps):
        model.set_input(batch(4, 64, 64))
        start = cpu()
        model.optimize_parameters()
        step_times.append(cpu() - start)
    val_times = []
    model.eval()
    for _ in range(2):
        model.set_input(batch(1, 256, 384))
        start = cpu()
        model.test()
        val_times.append(cpu() - start)
    net = model.netSelfHDR
    print(json.dumps({'compile': compile_, 'compiled': bool(getattr(net, 'is_compiled', False)),
                      'first_step_cpu_s': step_times[0], 'median_step_cpu_s': statistics.median(step_times[1:]),
                      'steps': steps, 'first_val_cpu_s': val_times[0], 'second_val_cpu_s': val_times[1],
                      'loss': float(model.loss_Total.detach())}))


def cpu_info():
    text = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
    grab = lambda pattern: (re.search(pattern, text) or [None, None])[1]  # noqa: E731
    flags = (grab(r'flags\s*:\s*(.*)') or '').split()
    return {'model': grab(r'model name\s*:\s*(.*)') or platform.processor(), 'family': grab(r'cpu family\s*:\s*(\d+)'),
            'model_number': grab(r'\nmodel\s*:\s*(\d+)'), 'cpus': os.cpu_count(),
            'avx512_bf16': 'avx512_bf16' in flags, 'amx_bf16': 'amx_bf16' in flags}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=8)
    p.add_argument('--load_note', default='')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'demo_compile.json'))
    p.add_argument('--child', nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0] == 'True', int(args.child[1]), args.child[2])
        return
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for compile_ in (False, True):
            start = time.time()
            proc = subprocess.run([sys.executable, __file__, '--child', str(compile_), str(args.steps), work],
                                  capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1',
                                                                           TORCHINDUCTOR_COMPILE_THREADS='1',
                                                                           TORCHINDUCTOR_FORCE_DISABLE_CACHES='1'))
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row['wall_s'] = round(time.time() - start, 1)
            rows['bf16+compile' if compile_ else 'bf16'] = row
            print(json.dumps(row), flush=True)
    eager, comp = rows['bf16'], rows['bf16+compile']
    warmup = (comp['first_step_cpu_s'] - eager['first_step_cpu_s']) + (comp['first_val_cpu_s'] - eager['first_val_cpu_s'])
    saving = eager['median_step_cpu_s'] - comp['median_step_cpu_s']
    import torch
    result = {'what': __doc__.split('\n\n')[2].replace('\n', ' '), 'cpu': cpu_info(), 'torch': torch.__version__,
              'threads': 1, 'load_note': args.load_note, 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
              'runs': rows, 'compile_warmup_cpu_s': round(warmup, 1), 'saving_per_step_cpu_s': round(saving, 3),
              'break_even_steps': round(warmup / saving) if saving > 0 else None}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: result[k] for k in ('compile_warmup_cpu_s', 'saving_per_step_cpu_s', 'break_even_steps')}))
    print(args.out)


if __name__ == '__main__':
    main()
