"""Whether the transformers' token Linear layers (Mlp fc1/fc2) run faster as torch's GEMM or as oneDNN 1x1
convolutions (`models.transformer_layers.TokenLinear`) on the CPU at hand:

    python bench/token_linear_path.py       # writes bench/results/token_linear_path_<cpu>.json

Per backbone (HDR-Transformer, SCTNet), both forms alternating in one process (order swapped every run, medians of
3 after one warm-up each): 512x512 inference in fp32 and under bf16 autocast, with the largest output difference
between the forms, and a training step (batch 4 of 128x128, L1 of the output, Adam) in fp32 and under bf16 autocast.
2 threads.
"""
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import models.transformer_layers as tl  # noqa: E402
from alternating_forms import alternate  # noqa: E402
from models.networks import define_network  # noqa: E402
from speed import cpu_description, make_inputs  # noqa: E402
from speed_table import cpu_key, write_atomic  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.tiling import padded  # noqa: E402

FORMS = {'linear': nn.Linear.forward, 'conv1x1': tl.TokenLinear.forward}  # TokenLinear's forward per form
RUNS = 3


def use(form):
    tl.TokenLinear.forward = FORMS[form]


def measure(name):
    torch.manual_seed(0)
    net = define_network(name)
    row = {}
    net.eval()
    xs = make_inputs(1, 512, 512, torch.device('cpu'))
    f = padded(lambda *a: net(*a))
    for prec in ['fp32', 'bf16']:
        def infer(form):
            use(form)
            with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=prec == 'bf16'):
                return f(*xs).float()
        times, outs = alternate(FORMS, infer, RUNS)
        diff = (outs['linear'] - outs['conv1x1']).abs().max().item()
        row[f'infer512_{prec}'] = {k: statistics.median(v) for k, v in times.items()} | {'max_abs_diff': diff}
        print(name, prec, row[f'infer512_{prec}'], flush=True)
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    xs = make_inputs(4, 128, 128, torch.device('cpu'))

    for prec in ['fp32', 'bf16']:
        def step(form):
            use(form)
            opt.zero_grad(set_to_none=True)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=prec == 'bf16'):
                out = net(*xs)
            out.float().abs().mean().backward()
            opt.step()
        times, _ = alternate(FORMS, step, RUNS)
        row[f'train_{prec}'] = {k: statistics.median(v) for k, v in times.items()}
        print(name, 'train', prec, row[f'train_{prec}'], flush=True)
    return row


def main():
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--networks', nargs='+', default=['HDR-Transformer', 'SCTNet'])
    p.add_argument('--output', default=None, help='default: bench/results/token_linear_path_<cpu>.json')
    args = p.parse_args()
    tune_malloc('tuned')
    torch.set_num_threads(2)
    try:
        res = {name: measure(name) for name in args.networks}
    finally:
        use('conv1x1')
    cpu = cpu_description()
    out = args.output or os.path.join(ROOT, 'bench', 'results', f'token_linear_path_{cpu_key(cpu)}.json')
    write_atomic(out, json.dumps({'cpu': cpu, 'threads': 2, 'torch': torch.__version__, 'networks': res}, indent=1))
    print('wrote', out)


if __name__ == '__main__':
    main()
