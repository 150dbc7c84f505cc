"""The long fuzz profile of tests/test_fuzz_inputs.py (frame readers, exposure files, EXIF times, response tables,
options): the same tests with many more, random (not derandomised) examples each.

    python bench/fuzz.py --examples 2000            # writes bench/results/fuzz.json

A failure prints hypothesis' falsifying example; keep it as an explicit regression test in tests/test_fuzz_inputs.py
(an @example or a named test). Not run by the test suite."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--examples', type=int, default=2000, help='examples per fuzz test')
    parser.add_argument('--derandomize', action='store_true', help='the fixed sequence CI uses, only longer')
    parser.add_argument('-k', default='', help='pytest -k expression to pick tests')
    parser.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'fuzz.json'))
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error(f'--examples must be at least 1, got {args.examples}')
    env = dict(os.environ, SELFHDR_FUZZ_EXAMPLES=str(args.examples))
    if not args.derandomize:
        env['SELFHDR_FUZZ_RANDOM'] = '1'
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(ROOT / 'tests' / 'test_fuzz_inputs.py')]
    if args.k:
        cmd += ['-k', args.k]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    result = {'examples_per_test': args.examples, 'derandomized': args.derandomize, 'returncode': proc.returncode,
              'summary': tail[-1] if tail else '', 'seconds': round(seconds, 1), 'python': platform.python_version(),
              'machine': platform.processor() or platform.machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + '\n')
    print(proc.stdout[-6000:], proc.stderr[-2000:], sep='\n')
    print(f'wrote {args.out}')
    return proc.returncode


if __name__ == '__main__':
    sys.exit(main())
