"""Render the JSON files of bench/speed.py as the README's Markdown tables.

    python bench/report.py                      # reads bench/results/speed*.json, prints Markdown

Ours is bench/results/speed.json (`--impl ours --malloc tuned`, what train.py/test.py run); the
other files hold the variants (`speed_<modes>_<impl>_<malloc>.json`). Missing files leave '-' cells.
"""
import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORKS = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')


def load(path):
    """{(network, mode, tile): entry} of one results file, {} when the file does not exist."""
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        report = json.load(handle)
    return {(r['network'], r['mode'], r['tile']): r for r in report['results'] if 'error' not in r}


def cell(entries, network, mode, tile=0, memory=False):
    entry = entries.get((network, mode, tile))
    if entry is None:
        return '-'
    if memory:
        return f"{entry['peak_rss_gb']:.2f} GB"
    return f"{entry['seconds_median']:.2f} s"


def ratio(slow, fast, network, mode, tile=0):
    a, b = slow.get((network, mode, tile)), fast.get((network, mode, tile))
    if a is None or b is None:
        return '-'
    return f"{a['seconds_median'] / b['seconds_median']:.2f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--results', default=os.path.join(ROOT, 'bench', 'results'))
    args = parser.parse_args()
    path = lambda name: os.path.join(args.results, name)  # noqa: E731
    ours = load(path('speed.json'))
    ours_system = load(path('speed_train_ours_system.json'))
    literal_system = load(path('speed_train_literal_system.json'))
    literal_tuned = load(path('speed_train_literal_tuned.json'))
    literal_infer = load(path('speed_infer_literal_system.json'))

    print('Training step (stage-1 loss, forward + backward + Adam, batch 4 of 128x128):\n')
    print('| backbone | release-equivalent, glibc defaults | ours, glibc defaults | release-equivalent, tuned malloc '
          '| ours, tuned malloc (what train.py runs) | ours vs release as each runs | same allocator (tuned) |')
    print('|---|---|---|---|---|---|---|')
    for net in NETWORKS:
        samples = ours.get((net, 'train', 0))
        rate = f" ({samples['samples_per_second']:.2f} samples/s)" if samples else ''
        print(f"| {net} | {cell(literal_system, net, 'train')} | {cell(ours_system, net, 'train')} "
              f"| {cell(literal_tuned, net, 'train')} | {cell(ours, net, 'train')}{rate} "
              f"| {ratio(literal_system, ours, net, 'train')} | {ratio(literal_tuned, ours, net, 'train')} |")

    print('\nInference (batch 1, eval, inference_mode; peak RSS includes ~0.8 GB of interpreter and torch):\n')
    print('| backbone | 256x256 | 512x512 | 1000x1500 whole | 1000x1500 `--tile 512` | peak RSS whole / tiled '
          '| other tiles at 1000x1500 | release-equivalent 256 / 512 / 1000x1500 (glibc defaults) |')
    print('|---|---|---|---|---|---|---|---|')
    for net in NETWORKS:
        others = [f"`--tile {tile}`: {cell(ours, net, mode, tile)}, {cell(ours, net, mode, tile, memory=True)}"
                  for (name, mode, tile) in sorted(ours) if name == net and mode == '1000x1500' and tile not in (0, 512)]
        print(f"| {net} | {cell(ours, net, '256x256')} | {cell(ours, net, '512x512')} "
              f"| {cell(ours, net, '1000x1500')} | {cell(ours, net, '1000x1500', 512)} "
              f"| {cell(ours, net, '1000x1500', memory=True)} / {cell(ours, net, '1000x1500', 512, memory=True)} "
              f"| {'; '.join(others) or '-'} "
              f"| {cell(literal_infer, net, '256x256')} / {cell(literal_infer, net, '512x512')} "
              f"/ {cell(literal_infer, net, '1000x1500')} |")


if __name__ == '__main__':
    main()
