"""A camera-sized bracket through merge_brackets with its default flags: peak memory and time; and the tile seams.

    python bench/large_bracket.py --size 6000x4000            # writes bench/results/large_bracket.json
    python bench/large_bracket.py --size 3000x2000 --seams 768x1152

Makes a synthetic 8-bit JPEG bracket (quality 95) of the given width x height: a smooth radiance field with bright
discs (clipped in the long frame) and fine texture, three exposures 1, 4, 16 (relative), given with
`--exposures`. Then runs `python tools/merge_brackets.py --inputs ... --network AHDRNet --checkpoint <shipped>`
with nothing else but `--exposures` and `--output_dir`: the defaults decide precision (`--amp auto`), tiling
(`--tile auto`, `--max_memory` from the available memory), response, pre-alignment and outputs. Recorded: the exit
status, the wall time, the peak RSS of the merge process (ru_maxrss of the child), and the tile the log names.

`--seams WxH`: a smaller bracket that fits whole, merged twice with `--tile 0` (whole image) and `--tile N`
(`--seam_tile`), both as float EXR; the largest absolute and relative difference and the PSNR-mu between them.

Each entry goes into the JSON under its own key (size, and `--extra` when given), so runs of different sizes and
flags accumulate.
"""
import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the seam check reads the outputs with the project's own readers
CHECKPOINT = os.path.join(ROOT, 'pretrained_models', 'ahdrnet_short_stage2', 'SelfHDR_model_1.pth')
TIMES = (1.0, 4.0, 16.0)


def make_bracket(folder, width, height, seed=0):
    """Three JPEGs of one synthetic scene; returns their paths (short, medium, long)."""
    import cv2
    rng = np.random.default_rng(seed)
    # radiance at low resolution, resized up (smooth), plus bright discs and fine texture at full size
    small = rng.random((max(2, height // 200), max(2, width // 200), 3)).astype(np.float32)
    radiance = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC) * 0.05 + 0.005
    for _ in range(12):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(height // 40, height // 10)
        cv2.circle(radiance, (int(cx), int(cy)), int(r), tuple(float(v) for v in rng.random(3) * 0.5 + 0.2), -1)
    texture = rng.random((height, width, 1), dtype=np.float32)
    radiance *= 0.9 + 0.2 * texture
    paths = []
    for name, t in zip(('short', 'medium', 'long'), TIMES):
        ldr = np.clip(radiance * t, 0, 1) ** (1 / 2.2)
        path = os.path.join(folder, f'{name}.jpg')
        cv2.imwrite(path, np.rint(ldr * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths.append(path)
    del radiance, texture
    return paths


def run_merge(paths, out_dir, extra=()):
    argv = [sys.executable, os.path.join(ROOT, 'tools', 'merge_brackets.py'), '--inputs', *paths,
            '--network', 'AHDRNet', '--checkpoint', CHECKPOINT, '--exposures', *map(str, TIMES),
            '--output_dir', out_dir, *extra]
    start = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    wall = time.time() - start
    log = proc.stdout + proc.stderr
    return proc.returncode, wall, log


def _vm_hwm(pid):
    """Peak resident memory so far of a running process (VmHWM), bytes; None once it is gone."""
    try:
        with open(f'/proc/{pid}/status') as handle:
            for line in handle:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_of(paths, out_dir, extra=(), timeout=None):
    """Run one merge, sampling its peak resident memory (VmHWM) every second; on `timeout` seconds it is stopped
    and the peak reached so far is what is reported (`finished` False)."""
    argv = [sys.executable, os.path.join(ROOT, 'tools', 'merge_brackets.py'), '--inputs', *paths,
            '--network', 'AHDRNet', '--checkpoint', CHECKPOINT, '--exposures', *map(str, TIMES),
            '--output_dir', out_dir, *extra]
    log_path = os.path.join(os.path.dirname(out_dir), 'merge.log')
    start = time.time()
    with open(log_path, 'w') as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
        peak, finished = 0, True
        while proc.poll() is None:
            peak = max(peak, _vm_hwm(proc.pid) or 0)
            if timeout and time.time() - start > timeout:
                proc.terminate()
                proc.wait()
                finished = False
                break
            time.sleep(1)
    wall = time.time() - start
    peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    with open(log_path) as handle:
        log = handle.read()
    return {'rc': proc.returncode, 'wall': wall, 'peak': peak, 'log': log, 'finished': finished}


def parse_size(text):
    width, height = (int(v) for v in text.lower().split('x'))
    return width, height


def cpu_info():
    text = open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else ''
    grab = lambda pattern: (re.search(pattern, text) or [None, None])[1]  # noqa: E731
    flags = (grab(r'flags\s*:\s*(.*)') or '').split()
    mem = open('/proc/meminfo').read() if os.path.exists('/proc/meminfo') else ''
    total = re.search(r'MemTotal:\s*(\d+)', mem)
    return {'model': grab(r'model name\s*:\s*(.*)'), 'family': grab(r'cpu family\s*:\s*(\d+)'),
            'model_number': grab(r'\nmodel\s*:\s*(\d+)'), 'cpus': os.cpu_count(),
            'avx512_bf16': 'avx512_bf16' in flags, 'amx_bf16': 'amx_bf16' in flags,
            'ram_gb': round(int(total.group(1)) / 2 ** 20, 1) if total else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--size', type=parse_size, default=None, help='WxH of the large bracket (e.g. 6000x4000)')
    p.add_argument('--seams', type=parse_size, default=None, help='WxH of the whole-vs-tiled comparison')
    p.add_argument('--seam_tile', type=int, default=384)
    p.add_argument('--extra', default='', help="flags added to the defaults, one string (recorded), e.g. '--tile 768'")
    p.add_argument('--timeout', type=float, default=None,
                   help='stop the merge after this many seconds and report the peak memory reached so far')
    p.add_argument('--load_note', default='')
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'large_bracket.json'))
    args = p.parse_args()
    result = {}
    if os.path.isfile(args.out):
        with open(args.out) as handle:
            result = json.load(handle)
    result.pop('cpu', None)  # each entry names its own machine: runs of different sizes come from different CPUs
    result['checkpoint'] = os.path.relpath(CHECKPOINT, ROOT)

    def save(key, entry):
        """Record one entry at once (atomically), so a later step that fails loses nothing measured."""
        result[key] = dict(entry, cpu=cpu_info())
        print(json.dumps(entry), flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        tmp = f'{args.out}.tmp'
        with open(tmp, 'w') as handle:
            json.dump(result, handle, indent=1)
        os.replace(tmp, args.out)

    with tempfile.TemporaryDirectory() as work:
        if args.size:
            width, height = args.size
            paths = make_bracket(work, width, height)
            run = peak_rss_of(paths, os.path.join(work, 'out'), shlex.split(args.extra), args.timeout)
            tiles = re.findall(r'--tile auto: [^\n]*', run['log'])
            amp = re.findall(r'--amp auto: [^\n]*', run['log'])
            entry = {'size': f'{width}x{height}', 'megapixels': round(width * height / 1e6, 1),
                     'flags': 'defaults (--exposures 1 4 16 --output_dir only)' + (
                         f', plus {args.extra}' if args.extra else ''),
                     'finished': run['finished'], 'returncode': run['rc'],
                     'wall_seconds': round(run['wall'], 1), 'peak_rss_gb': round(run['peak'] / 2 ** 30, 2),
                     'tile_log': tiles[:2], 'amp_log': amp[:1], 'load_note': args.load_note,
                     'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
            if run['rc'] or not run['finished']:
                entry['log_tail'] = run['log'][-2000:]
            save(f'merge_{width}x{height}' + (' ' + args.extra.strip() if args.extra.strip() else ''), entry)
        if args.seams:
            from util.hdr_io import read_radiance
            from util.metrics import psnr_mu
            width, height = args.seams
            folder = os.path.join(work, 'seams')
            os.makedirs(folder)
            paths = make_bracket(folder, width, height, seed=1)
            outs = {}
            for tile in (0, args.seam_tile):
                out_dir = os.path.join(folder, f'tile{tile}')
                rc, wall, log = run_merge(paths, out_dir, ['--tile', str(tile), '--formats', 'exr',
                                                           '--exr_type', 'float', '--name', 'x'])
                if rc:
                    raise SystemExit(log[-3000:])
                outs[tile] = read_radiance(os.path.join(out_dir, 'x.exr'))
            whole, tiled = outs[0], outs[args.seam_tile]
            diff = np.abs(whole - tiled)
            entry = {'size': f'{width}x{height}', 'tile': args.seam_tile, 'overlap': 32,
                     'max_abs_diff': float(diff.max()), 'mean_abs_diff': float(diff.mean()),
                     'max_rel_diff': float((diff / np.maximum(np.abs(whole), 1e-3)).max()),
                     'psnr_mu_tiled_vs_whole': float(psnr_mu(tiled, whole)),
                     'output_range': [float(whole.min()), float(whole.max())],
                     'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
            save(f'seams_{width}x{height}_tile{args.seam_tile}', entry)
    print(args.out)


if __name__ == '__main__':
    main()
