"""The learning-rate probe behind the small-budget recipe (README, "Training"): supervised AHDRNet, 300 iterations
(3 epochs x 100), batch 4 of 64x64 crops, Adam, cosine decay, on the colour-augmented demo data (32 training
scenes); validation PSNR-mu on the 8 demo test scenes after the last epoch, for each learning rate.

    python bench/recipe_probe.py                          # 2e-4 5e-4 1e-3 -> bench/results/recipe_probe.json
    python bench/recipe_probe.py --lrs 1e-3 --out /tmp/probe.json

About 10 minutes per rate on a quiet 2-core CPU in fp32 (``--amp none``), about 2 with bf16 on a CPU with AMX. The figures in bench/results/recipe_probe.json before this script
existed were copied by hand from three such train.py runs (its `note` says so)."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    """CPU model, relevant flags and threads, as the study names them."""
    sys.path.insert(0, str(ROOT))
    from tools.study import describe_machine, machine_info

    return describe_machine(machine_info())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--lrs', type=float, nargs='+', default=[2e-4, 5e-4, 1e-3])
    parser.add_argument('--dataroot', default=str(ROOT / 'datasets' / 'demo'))
    parser.add_argument('--iters', type=int, default=300, help='iterations in all (3 epochs)')
    parser.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'recipe_probe.json'))
    parser.add_argument('--amp', default='auto', choices=('none', 'bf16', 'auto'),
                        help="train.py's --amp (auto: bf16 where the CPU has it natively, as train.sh runs)")
    args = parser.parse_args(argv)
    if args.iters % 3:
        parser.error(f'--iters must be a multiple of 3 (three epochs), got {args.iters}')
    if not Path(args.dataroot, 'Training').is_dir():
        subprocess.run([sys.executable, 'tools/make_demo_data.py', '--root', args.dataroot], cwd=ROOT, check=True)
    runs = []
    with tempfile.TemporaryDirectory() as ckpt:
        for lr in args.lrs:
            name = f'probe_{lr:g}'
            cmd = [sys.executable, 'train.py', '--dataroot', args.dataroot, '--dataset_name', 'sig17align',
                   '--model', 'supervised', '--network', 'AHDRNet', '--name', name, '--checkpoints_dir', ckpt,
                   '--gpu_ids', '-1', '-j', '0', '--verbose', 'False', '--batch_size', '4', '--patch_size', '64',
                   '--niter', '3', '--iters_per_epoch', str(args.iters // 3), '--lr', str(lr), '--lr_policy',
                   'cosine', '--test_every', '3', '--print_freq', '25', '--seed', '0', '--amp', args.amp]
            start = time.time()
            proc = subprocess.run(cmd, cwd=ROOT)
            log = Path(ckpt, name, 'train.log')
            found = re.findall(r'validation PSNR-mu ([-\d.]+) dB', log.read_text()) if log.is_file() else []
            runs.append({'lr': lr, f'val_psnr_mu_after_{args.iters}': float(found[-1]) if found else None,
                         'returncode': proc.returncode, 'seconds': round(time.time() - start, 1)})
    result = {'what': f'learning-rate probe: supervised AHDRNet, {args.iters} iterations (3 epochs), batch 4, 64x64 '
                      'crops, Adam, cosine decay, demo data; validation PSNR-mu on the demo test scenes',
              'command': 'python bench/recipe_probe.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
              'machine': _machine(), 'cpu_count': os.cpu_count(),
              'amp': args.amp, 'date': time.strftime('%Y-%m-%d'), 'runs': runs}
    Path(args.out).write_text(json.dumps(result, indent=1) + '\n')
    print(json.dumps(result, indent=1))
    return 0 if all(r['returncode'] == 0 for r in runs) else 1


if __name__ == '__main__':
    sys.exit(main())
