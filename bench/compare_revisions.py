"""Speed of the working tree against an earlier revision, side by side in one run (same machine, same load).

    python bench/compare_revisions.py --base 298539b^ --networks HDR-Transformer SCTNet --modes train 256x256

Checks the base revision out into a temporary git worktree, then runs each tree's own `bench/speed.py` for each
network and mode, alternating base and current `--rounds` times so that a change of load hits both alike. Writes
the per-round medians and their ratio to bench/results/compare_<label>.json with the CPU model and flags."""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_description():
    model, flags = platform.processor() or 'unknown', []
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name' and model in ('', 'unknown', platform.processor()):
                    model = value.strip()
                elif key in ('cpu family', 'model') and key not in dict(flags):
                    flags.append((key, value.strip()))
                elif key == 'flags':
                    wanted = ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'fma')
                    flags.append(('flags', ' '.join(f for f in value.split() if f in wanted)))
                    break
    except OSError:
        pass
    return {'cpu': model, **dict(flags)}


def run_speed(tree, network, mode, args, out):
    cmd = [sys.executable, os.path.join(tree, 'bench', 'speed.py'), '--networks', network, '--modes', mode,
           '--runs', str(args.runs), '--warmup', '1', '--threads', str(args.threads), '--output', out]
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(out) as handle:
        result = json.load(handle)
    return find_seconds(result, network, mode)


def find_seconds(result, network, mode):
    """The median seconds of one network/mode in a speed.json (its layout differs little between revisions)."""
    entries = result.get('results', result)
    for entry in entries if isinstance(entries, list) else []:
        if entry.get('network') == network and entry.get('mode') == mode and entry.get('tile', 0) in (0, None):
            return entry['seconds_median']
    raise KeyError(f'{network} {mode} not found in the speed output')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--base', required=True, help='git revision to compare against')
    p.add_argument('--networks', nargs='+', required=True)
    p.add_argument('--modes', nargs='+', default=['train', '256x256'])
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--label', default='')
    args = p.parse_args(argv)
    base_sha = subprocess.check_output(['git', 'rev-parse', '--short', args.base], cwd=ROOT, text=True).strip()
    head_sha = subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, text=True).strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = os.path.join(tmp, 'base')
        subprocess.run(['git', 'worktree', 'add', '--detach', '-f', base_tree, base_sha], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for network in args.networks:
                for mode in args.modes:
                    times = {'base': [], 'current': []}
                    for _ in range(args.rounds):
                        for which, tree in (('base', base_tree), ('current', ROOT)):
                            times[which].append(run_speed(tree, network, mode, args, os.path.join(tmp, 'out.json')))
                    base, current = min(times['base']), min(times['current'])
                    rows.append({'network': network, 'mode': mode, 'base_seconds': times['base'],
                                 'current_seconds': times['current'], 'current_over_base': current / base})
                    print(f'{network:16s} {mode:10s} base {base:8.3f} s  current {current:8.3f} s  '
                          f'ratio {current / base:.3f}', flush=True)
        finally:
            subprocess.run(['git', 'worktree', 'remove', '--force', base_tree], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    label = args.label or f'{base_sha}_vs_{head_sha}'
    out = os.path.join(ROOT, 'bench', 'results', f'compare_{label}.json')
    report = {'base': base_sha, 'current': head_sha, 'threads': args.threads, 'runs': args.runs,
              'rounds': args.rounds, 'machine': cpu_description(), 'rows': rows,
              'note': 'seconds are the best of the rounds, each a median of --runs runs of bench/speed.py'}
    with open(out + '.tmp', 'w') as handle:
        json.dump(report, handle, indent=2)
    os.replace(out + '.tmp', out)
    print('wrote', out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
