"""The README's end-to-end figures, written to bench/results/ by the command that makes them.

    python bench/pipeline_runs.py demo       # `sh train.sh` (budget demo) from here: wall time and final metrics
                                             #   -> bench/results/demo_run.json
    python bench/pipeline_runs.py shipped    # `sh test.sh`: the shipped model on the 8 demo test scenes
                                             #   -> bench/results/shipped_model_test_sh.json

Each records the command, its exit status, the wall time, the CPU, the thread setting and the metrics JSON that
test.py wrote (metrics_<dataset>_epoch_<epoch>.json). `demo` takes minutes on a quiet 2-core CPU (the README's
figure: 6 min 14 s); run it on a quiet machine, the wall time is the figure."""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results'


def cpu_model():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def shipped_name() -> str:
    """The checkpoint folder test.sh evaluates by default (its ``name=${name:-...}`` line), so this bench follows
    whatever model is shipped."""
    match = re.search(r'^name=\$\{name:-([^}]+)\}', (ROOT / 'test.sh').read_text(), re.MULTILINE)
    if not match:
        raise SystemExit('test.sh: no default name=${name:-...} line found')
    return match.group(1)


def run(script, env_extra, metrics_file):
    env = dict(os.environ, **env_extra)
    start = time.time()
    proc = subprocess.run(['sh', script], cwd=ROOT, env=env)
    seconds = time.time() - start
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return {'command': f'sh {script}', 'env': env_extra, 'returncode': proc.returncode,
            'wall_seconds': round(seconds, 1), 'metrics_file': str(metrics_file.relative_to(ROOT)), 'metrics': metrics,
            'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'date': time.strftime('%Y-%m-%d'),
            'python': platform.python_version()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('what', choices=('demo', 'shipped'))
    args = parser.parse_args(argv)
    if args.what == 'demo':
        # train.sh's demo budget: 2 epochs per stage, name 'demo', checkpoints in ./ckpt (see train.sh)
        result = run('train.sh', {'budget': 'demo'}, ROOT / 'ckpt' / 'demo_stage2' / 'metrics_sig17align_epoch_2.json')
        out = RESULTS / 'demo_run.json'
    else:
        name = os.environ.get('name') or shipped_name()  # test.sh evaluates $name when it is set
        result = run('test.sh', {}, ROOT / 'pretrained_models' / name / 'metrics_sig17align_epoch_1.json')
        out = RESULTS / 'shipped_model_test_sh.json'
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result, indent=2))
    print(f'wrote {out}')
    return result['returncode']


if __name__ == '__main__':
    sys.exit(main())
