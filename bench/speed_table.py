"""One speed table per CPU kind, release side by side, from one command.

    python bench/speed_table.py                       # every backbone; writes bench/results/speed_table_<cpu>.{json,md}
    python bench/speed_table.py --networks AHDRNet FSHDR --runs 3
    python bench/speed_table.py --render bench/results/speed_table_<cpu>.json   # re-render the Markdown only

It runs ``bench/speed.py`` twice on the machine at hand, each configuration in a fresh process: the release-equivalent
formulation (``--impl literal``) in fp32 with glibc's malloc defaults, as the release runs; and ours, as
``train.py``/``test.py`` run (tuned malloc), in fp32 with its FLOPs counted against the CPU's nominal fp32 peak, and
where the CPU has native bf16 (``--amp auto`` picks it) also in bf16 and, with a C++ compiler for
``torch.compile``, bf16 + compile, both in the layout ``--channels_last auto`` picks (channels_last on AMX). Modes: the stage-1 training step (batch 4 of 128x128) and 512x512 inference. The
table names the CPU (model, family/model, flags that matter) and the thread count; the file name carries the CPU kind,
so tables of different machines sit side by side in bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'bench'))

NETWORKS = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')
MODES = ('train', '512x512')
MODE_NAMES = {'train': 'training step', '512x512': '512x512 inference'}


def cpu_key(cpu: dict) -> str:
    """A file-name key for the CPU kind, e.g. ``amd_epyc_f25_m17``."""
    name = re.sub(r'[^a-z0-9]+', '_', str(cpu.get('model name', 'cpu')).lower()).strip('_')
    return f"{name}_f{cpu.get('cpu family', 'x')}_m{cpu.get('model', 'x')}"


def cpu_text(cpu: dict, threads: int) -> str:
    flags = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if cpu.get(f)]
    return (f"{cpu.get('model name', 'unknown CPU')} (family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}; "
            f"{', '.join(flags) or 'no AVX2'}), {threads} threads")


def covers(output: str, networks, precisions) -> bool:
    """Whether ``output`` (a speed.py report left by an interrupted table) already holds every configuration."""
    if not os.path.isfile(output):
        return False
    with open(output) as handle:
        done = entries(json.load(handle))
    return all((n, m, p) in done for n in networks for m in MODES for p in precisions)


def run_speed(args, extra: list[str], output: str, precisions) -> dict:
    if covers(output, args.networks, precisions):
        print(f'{output}: complete from an earlier, interrupted run; kept', flush=True)
        with open(output) as handle:
            return json.load(handle)
    cmd = [sys.executable, os.path.join(ROOT, 'bench', 'speed.py'), '--networks', *args.networks,
           '--modes', *MODES, '--runs', str(args.runs), '--warmup', str(args.warmup), '--threads', str(args.threads),
           '--device', 'cpu', '--output', output, *extra]
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with open(output) as handle:
        return json.load(handle)


def entries(report: dict) -> dict:
    return {(r['network'], r['mode'], r.get('precision', 'fp32')): r for r in report['results']
            if 'error' not in r and r.get('tile', 0) == 0}


def render(table: dict) -> str:
    """The Markdown table of one machine's ``table`` (what main writes as JSON)."""
    release, ours = entries(table['release']), entries(table['ours'])
    precisions = table['ours']['precisions']
    fp32 = precisions[0]  # ours in fp32, in the layout --channels_last auto picks for it ('fp32+channels_last' on AMX)
    peak = table['ours'].get('nominal_fp32_peak_gflops')
    head = ['backbone', 'mode', 'release-equivalent fp32', f'ours {fp32}', 'fp32 GFLOP/s (share of nominal peak)']
    head += [f'ours {p}' for p in precisions if p != fp32] + ['`--amp auto` vs release']
    lines = [f"**{table['cpu_text']}**, {table['date']} (`python bench/speed_table.py`; medians of "
             f"{table['runs']} runs after {table['warmup']} warm-up, each configuration in a fresh process; "
             f"nominal fp32 peak {peak:.0f} GFLOP/s)" if peak else
             f"**{table['cpu_text']}**, {table['date']} (`python bench/speed_table.py`)",
             '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    auto = table['auto_precision']
    for net in table['networks']:
        for mode in MODES:
            base = release.get((net, mode, 'fp32'))
            row = [net, MODE_NAMES[mode], f"{base['seconds_median']:.2f} s" if base else '-']
            ref = ours.get((net, mode, fp32))
            row.append(f"{ref['seconds_median']:.2f} s" if ref else '-')
            if ref and 'gflops_per_second' in ref:
                share = ref.get('share_of_nominal_fp32_peak')
                row.append(f"{ref['gflops_per_second']:.0f}" + (f' ({share:.0%})' if share else ''))
            else:
                row.append('-')
            for p in precisions:
                if p == fp32:
                    continue
                e = ours.get((net, mode, p))
                row.append(f"{e['seconds_median']:.2f} s ({ref['seconds_median'] / e['seconds_median']:.2f}x fp32)"
                           if e and ref else '-')
            chosen = ours.get((net, mode, auto))
            row.append(f"{base['seconds_median'] / chosen['seconds_median']:.2f}x" if chosen and base else '-')
            lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
    lines.append(f"`--amp auto` runs {auto} on this CPU; the release-equivalent column is the spec-literal "
                 'formulation with glibc malloc defaults (`--impl literal --malloc system`).')
    return '\n'.join(lines) + '\n'


def write_atomic(path: str, text: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        handle.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--networks', nargs='+', default=list(NETWORKS), choices=NETWORKS)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--render', default=None, help='re-render the Markdown of a table JSON written earlier; no runs')
    p.add_argument('--results', default=os.path.join(ROOT, 'bench', 'results'))
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as handle:
            table = json.load(handle)
        text = render(table)
        write_atomic(os.path.splitext(args.render)[0] + '.md', text)
        print(text)
        return 0

    import torch

    from models.base_model import has_cpp_compiler, resolve_channels_last
    from speed import cpu_description
    cpu = cpu_description()
    # each precision in the layout train.py/test.py pick for it (--channels_last auto: NHWC on AMX)
    layout = '+channels_last' if resolve_channels_last('auto', None, torch.device('cpu')) else ''
    precisions = ['fp32' + layout]
    if cpu.get('native_bf16'):
        layout = '+channels_last' if resolve_channels_last('auto', torch.bfloat16, torch.device('cpu')) else ''
        precisions.append('bf16' + layout)
        if has_cpp_compiler():
            precisions.append('bf16+compile' + layout)
    stem = os.path.join(args.results, f'speed_table_{cpu_key(cpu)}')
    os.makedirs(args.results, exist_ok=True)
    start = time.time()
    release = run_speed(args, ['--impl', 'literal', '--malloc', 'system', '--precisions', 'fp32'],
                        stem + '_release.json', ['fp32'])
    ours = run_speed(args, ['--impl', 'ours', '--malloc', 'tuned', '--count_flops', '--precisions', *precisions],
                     stem + '_ours.json', precisions)
    table = {'cpu': cpu, 'cpu_text': cpu_text(cpu, args.threads), 'threads': args.threads,
             'networks': list(args.networks), 'runs': args.runs, 'warmup': args.warmup,
             'auto_precision': precisions[1] if len(precisions) > 1 else 'fp32',
             'date': time.strftime('%Y-%m-%d', time.gmtime()), 'wall_seconds': round(time.time() - start, 1),
             'release': release, 'ours': ours}
    write_atomic(stem + '.json', json.dumps(table, indent=1) + '\n')
    for part in ('_release.json', '_ours.json'):  # folded into the table's JSON
        os.remove(stem + part)
    text = render(table)
    write_atomic(stem + '.md', text)
    print(text)
    print(f'wrote {stem}.json and .md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
