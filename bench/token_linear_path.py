"""Whether the transformers' token Linear layers (Mlp fc1/fc2) run faster as torch's GEMM or as oneDNN 1x1
convolutions (`models.transformer_layers.TokenLinear`) on the CPU at hand:

    python bench/token_linear_path.py       # writes bench/results/token_linear_path_<cpu>.json

Per backbone (HDR-Transformer, SCTNet), both forms alternating in one process (order swapped every run, medians of
3 after one warm-up each): 512x512 inference in fp32 and under bf16 autocast, with the largest output difference
between the forms, and a float32 training step (batch 4 of 128x128, L1 of the output, Adam). 2 threads.
"""
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import models.transformer_layers as tl  # noqa: E402
from models.networks import define_network  # noqa: E402
from speed import cpu_description, make_inputs  # noqa: E402
from speed_table import cpu_key, write_atomic  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402
from util.tiling import padded  # noqa: E402

tune_malloc('tuned')
torch.set_num_threads(2)
fast, slow = tl.TokenLinear.forward, nn.Linear.forward
res = {}
for name in ['HDR-Transformer', 'SCTNet']:
    torch.manual_seed(0)
    net = define_network(name)
    r = {}
    for prec in ['fp32', 'bf16']:
        net.eval()
        xs = make_inputs(1, 512, 512, torch.device('cpu'))
        f = padded(lambda *a: net(*a))
        times = {'linear': [], 'conv1x1': []}
        outs = {}
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=prec == 'bf16'):
            for form in times:
                tl.TokenLinear.forward = fast if form == 'conv1x1' else slow
                f(*xs)  # warm-up
            for i in range(3):
                for form in (list(times) if i % 2 == 0 else list(times)[::-1]):
                    tl.TokenLinear.forward = fast if form == 'conv1x1' else slow
                    start = time.perf_counter()
                    outs[form] = f(*xs).float()
                    times[form].append(time.perf_counter() - start)
        diff = (outs['linear'] - outs['conv1x1']).abs().max().item()
        r[f'infer512_{prec}'] = {k: statistics.median(v) for k, v in times.items()} | {'max_abs_diff': diff}
        print(name, prec, r[f'infer512_{prec}'], flush=True)
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    xs = make_inputs(4, 128, 128, torch.device('cpu'))
    times = {'linear': [], 'conv1x1': []}
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):
            loss = net(*xs).abs().mean()
        loss.backward()
        opt.step()
    for form in times:
        tl.TokenLinear.forward = fast if form == 'conv1x1' else slow
        step()  # warm-up
    for i in range(3):
        for form in (list(times) if i % 2 == 0 else list(times)[::-1]):
            tl.TokenLinear.forward = fast if form == 'conv1x1' else slow
            start = time.perf_counter()
            step()
            times[form].append(time.perf_counter() - start)
    r['train_fp32'] = {k: statistics.median(v) for k, v in times.items()}
    print(name, 'train fp32', r['train_fp32'], flush=True)
    res[name] = r
tl.TokenLinear.forward = fast
cpu = cpu_description()
out = os.path.join(ROOT, 'bench', 'results', f'token_linear_path_{cpu_key(cpu)}.json')
write_atomic(out, json.dumps({'cpu': cpu, 'threads': 2, 'torch': torch.__version__, 'networks': res}, indent=1))
print('wrote', out)
