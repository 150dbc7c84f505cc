"""Whether a bf16 LayerNorm is faster as torch's bf16 kernel or as float32 between two casts, on the machine at hand:
`models.transformer_layers.LAYER_NORM_FLOAT32_DEVICES` names the devices that take the float32 form; this measures
both on the transformer backbones so that the choice can be re-checked on another CPU. (Not for GPUs: CUDA autocast
already runs layer_norm in float32 and returns float32, so the two forms differ there in their output dtype only.)

    python bench/layer_norm_path.py                          # HDR-Transformer and SCTNet, 512x512, bf16 inference
    python bench/layer_norm_path.py --runs 6 --networks SCTNet

Inference under bf16 autocast, batch 1, the two forms alternating in one process (each network warmed up once per
form first, the order swapped every run), so that the drift of a shared machine falls on both; reports the median
seconds per form, their ratio and each form's PSNR against the fp32 output. Writes
bench/results/layer_norm_path_<cpu>.json (or --output).
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

FORMS = {'bf16_kernel': lambda device: (), 'via_float32': lambda device: (device,)}


def measure(name, device, size, runs):
    def switch(form):
        def apply():
            transformer_layers.LAYER_NORM_FLOAT32_DEVICES = FORMS[form](device.type)
        return apply
    result = measure_forms(name, device, size, runs, {form: switch(form) for form in FORMS})
    result['via_float32_over_bf16_kernel'] = (result['via_float32']['seconds_median']
                                              / result['bf16_kernel']['seconds_median'])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--networks', nargs='+', default=['HDR-Transformer', 'SCTNet'])
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--runs', type=int, default=4)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--output', default=None)
    args = p.parse_args(argv)
    tune_malloc('tuned')
    torch.set_num_threads(args.threads)
    device = torch.device('cpu')
    default = transformer_layers.LAYER_NORM_FLOAT32_DEVICES
    report = {'cpu': cpu_description(), 'threads': args.threads, 'device': 'cpu', 'size': args.size,
              'runs': args.runs, 'torch': torch.__version__, 'default_float32_devices': list(default),
              'networks': {}}
    out = args.output or os.path.join(ROOT, 'bench', 'results', f"layer_norm_path_{cpu_key(report['cpu'])}.json")
    try:
        for name in args.networks:
            report['networks'][name] = row = measure(name, device, args.size, args.runs)
            print(f"{name} {args.size}x{args.size} bf16: bf16 kernel {row['bf16_kernel']['seconds_median']:.2f} s, "
                  f"via float32 {row['via_float32']['seconds_median']:.2f} s "
                  f"(ratio {row['via_float32_over_bf16_kernel']:.3f}); PSNR vs fp32 "
                  f"{row['bf16_kernel']['psnr_vs_fp32']:.1f} / {row['via_float32']['psnr_vs_fp32']:.1f} dB", flush=True)
            write_atomic(out, json.dumps(report, indent=1))  # per network: an interrupted run keeps what it had
    finally:
        transformer_layers.LAYER_NORM_FLOAT32_DEVICES = default
    print('wrote', out)


if __name__ == '__main__':
    main()
