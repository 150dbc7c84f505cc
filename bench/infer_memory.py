"""Peak memory of one inference forward per input pixel, per backbone and precision: the figures behind
`--tile auto` (`infer_bytes_per_pixel` in models/backbones.py, read by util.tiling.choose_tile).

    python bench/infer_memory.py                      # writes bench/results/infer_memory.json
    python bench/infer_memory.py --networks AHDRNet --sizes 256 512

Each (network, precision, size) runs in a fresh process with the tuned allocator our entry points use
(util/malloc.py): the network (random weights) and its three inputs are built, then one forward runs under
`inference_mode` (and bf16 autocast for bf16), padded as test.py pads. The figure is the growth of the peak RSS
(ru_maxrss) over the forward; the bytes per pixel are the slope between the two sizes (what a larger tile adds),
and the intercept is what a forward costs whatever its size. Sizes are counted as the network sees them (the
transformers' release padding included), as util.tiling.forward_bytes counts them.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(network, precision, size):
    sys.path.insert(0, ROOT)
    from util.malloc import tune_malloc
    tune_malloc()
    import torch

    from models import networks
    from models.backbones import backbone
    from util.tiling import padded

    torch.manual_seed(0)
    fmt = torch.channels_last if 'channels_last' in precision else torch.contiguous_format
    net = networks.define_network(network).eval().to(memory_format=fmt)
    multiple = backbone(network).pad_multiple
    fn = padded(net, multiple=multiple) if multiple else net
    xs = [torch.rand(1, 6, size, size).contiguous(memory_format=fmt) for _ in range(3)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.time()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision.startswith('bf16')):
        out = fn(*xs)
    seconds = time.time() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({'network': network, 'precision': precision, 'size': size, 'forward_bytes': after - before,
                      'rss_before': before, 'rss_after': after, 'seconds': round(seconds, 2),
                      'finite': bool(torch.isfinite(out.float()).all())}))


def fit(network, runs):
    """Bytes per pixel = slope of the forward's memory between the two sizes, in pixels of the input as the network
    sees it (padded as test.py pads: util.tiling.forward_bytes adds the same padding)."""
    sys.path.insert(0, ROOT)
    from models.backbones import backbone
    from util.tiling import chop_padding
    multiple = backbone(network).pad_multiple
    side = [r['size'] + (sum(chop_padding(r['size'], multiple)) if multiple else 0) for r in runs]
    (s1, r1), (s2, r2) = zip(side, [r['forward_bytes'] for r in runs])
    slope = (r2 - r1) / (s2 * s2 - s1 * s1)
    return {'bytes_per_pixel': round(slope), 'intercept_bytes': round(r2 - slope * s2 * s2), 'padded_sides': side,
            'runs': runs}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--networks', nargs='+', default=['AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet'])
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'],
                   help="fp32, bf16, bf16+channels_last (the layout --channels_last auto picks for bf16 on AMX)")
    p.add_argument('--sizes', nargs=2, type=int, default=[192, 384])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--load_note', default='')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'infer_memory.json'))
    p.add_argument('--child', nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    previous = {}
    if os.path.isfile(args.out):
        with open(args.out) as handle:
            previous = json.load(handle).get('networks', {})
    rows = previous
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for network in args.networks:
        for precision in args.precisions:
            runs = []
            for size in args.sizes:
                proc = subprocess.run([sys.executable, __file__, '--child', network, precision, str(size)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode:
                    raise SystemExit(proc.stderr[-2000:])
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), flush=True)
            rows.setdefault(network, {})[precision] = fit(network, runs)
    import torch
    result = {'what': 'peak RSS growth of one inference forward (tuned malloc), slope between two square sizes',
              'torch': torch.__version__, 'threads': args.threads, 'load_note': args.load_note,
              'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'networks': rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as handle:
        json.dump(result, handle, indent=1)
    print(args.out)


if __name__ == '__main__':
    main()
