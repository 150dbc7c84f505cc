"""Which bf16 window-attention path is faster on the machine at hand: F.scaled_dot_product_attention or the chunked
WindowAttentionFunction (bf16 GEMMs). `models.transformer_layers.SDPA_DEVICES` names the devices that take SDPA;
this measures both paths on the transformer backbones so that choice can be re-checked on another CPU or GPU.

    python bench/attention_path.py                          # HDR-Transformer and SCTNet, 512x512, bf16 inference
    python bench/attention_path.py --device cuda --runs 5

Inference under bf16 autocast, batch 1, the paths alternating in one process (each network warmed up once per path
first); reports the median seconds per path, the ratio, and each path's PSNR against the fp32 output (the two paths
round differently, both to bf16). Writes bench/results/attention_path_<cpu or gpu>.json (or --output).
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

import torch  # noqa: E402

from alternating_forms import measure_forms  # noqa: E402
from models import transformer_layers  # noqa: E402
from speed import cpu_description  # noqa: E402
from speed_table import cpu_key, write_atomic  # noqa: E402
from util.malloc import tune_malloc  # noqa: E402

PATHS = {'sdpa': lambda device: (device,), 'chunked': lambda device: ()}


def measure(name, device, size, runs):
    def switch(path):
        def apply():
            transformer_layers.SDPA_DEVICES = PATHS[path](device.type)
        return apply
    result = measure_forms(name, device, size, runs, {path: switch(path) for path in PATHS})
    result['sdpa_over_chunked'] = result['sdpa']['seconds_median'] / result['chunked']['seconds_median']
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--networks', nargs='+', default=['HDR-Transformer', 'SCTNet'])
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--device', default='cpu')
    p.add_argument('--output', default=None)
    args = p.parse_args(argv)
    tune_malloc('tuned')
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    default = transformer_layers.SDPA_DEVICES
    report = {'cpu': cpu_description(), 'threads': args.threads, 'device': args.device, 'size': args.size,
              'runs': args.runs, 'torch': torch.__version__, 'default_sdpa_devices': list(default), 'networks': {}}
    if device.type == 'cuda':
        report['gpu'] = torch.cuda.get_device_name(device)
    key = cpu_key(report['cpu']) if device.type == 'cpu' else 'gpu_' + report['gpu'].lower().replace(' ', '_')
    out = args.output or os.path.join(ROOT, 'bench', 'results', f'attention_path_{key}.json')
    try:
        for name in args.networks:
            report['networks'][name] = row = measure(name, device, args.size, args.runs)
            print(f"{name} {args.size}x{args.size} bf16: sdpa {row['sdpa']['seconds_median']:.2f} s, chunked "
                  f"{row['chunked']['seconds_median']:.2f} s (sdpa / chunked {row['sdpa_over_chunked']:.2f}); "
                  f"PSNR vs fp32 {row['sdpa']['psnr_vs_fp32']:.1f} / {row['chunked']['psnr_vs_fp32']:.1f} dB",
                  flush=True)
            write_atomic(out, json.dumps(report, indent=1))  # per network: an interrupted run keeps what it had
    finally:
        transformer_layers.SDPA_DEVICES = default
    print('wrote', out)


if __name__ == '__main__':
    main()
