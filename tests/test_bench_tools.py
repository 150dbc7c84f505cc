"""The small pieces of the benches that decide what they measure: the RAW rendering of the real bracket, the
model specs of ``bench/bracket_colour.py``, the compute-limit helpers of ``bench/speed.py``, and the rule grid of
``bench/response_estimate.py`` (run on three tiny brackets)."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))

import bracket_colour  # noqa: E402
import render_raw  # noqa: E402


def test_model_spec_names_its_network_or_takes_the_default():
    assert bracket_colour.parse_model('a=ckpt.pth', 'AHDRNet') == ('a', 'AHDRNet', 'ckpt.pth')
    assert bracket_colour.parse_model('b=FSHDR:x/y.pth', 'AHDRNet') == ('b', 'FSHDR', 'x/y.pth')
    # a colon that does not name a network stays part of the path (C:/..., odd file names)
    assert bracket_colour.parse_model('c=C:/m.pth', 'AHDRNet') == ('c', 'AHDRNet', 'C:/m.pth')
    with pytest.raises(SystemExit, match='NAME=CKPT'):
        bracket_colour.parse_model('no_equals_sign', 'AHDRNet')


def test_raw_rendering_keeps_exposure_ratios_and_names_a_bad_file(tmp_path, capsys):
    from dng_maker import write_dng

    rng = np.random.default_rng(0)
    base = np.clip(rng.uniform(0.02, 0.2, (64, 96, 3)), 0, 1)
    short = write_dng(tmp_path / 'short.dng', base, exposure=(1, 100))
    long_ = write_dng(tmp_path / 'long.dng', base * 4, exposure=(1, 25))
    assert render_raw.main([str(short), str(long_), '--out_dir', str(tmp_path / 'png')]) == 0
    imgs = [cv2.imread(str(tmp_path / 'png' / f'{n}.png')) for n in ('short', 'long')]
    assert imgs[0].shape == (32, 48, 3) and imgs[0].dtype == np.uint8  # half-size demosaic
    # no auto-brightening: 4x the light stays several times brighter through the output curve (auto-brightening
    # would stretch both frames to about the same level)
    ok = (imgs[1] < 250) & (imgs[0] > 10)
    ratio = np.median((imgs[1][ok] / imgs[0][ok]) ** 2.222)
    assert 3 < ratio < 10  # the curve's linear toe makes dark codes part faster than a pure power
    bad = tmp_path / 'bad.dng'
    bad.write_bytes(b'not a raw file')
    assert render_raw.main([str(bad), '--out_dir', str(tmp_path / 'png')]) == 2
    assert 'bad.dng' in capsys.readouterr().err


def test_compute_limit_of_the_cpu_kinds_met():
    """bench/speed.py --count_flops: FLOP per cycle from vendor, family and flags, the clock from the model name or
    cpuinfo; an unknown CPU gives no peak rather than a wrong one."""
    import speed

    zen4 = {'model name': 'AMD EPYC', 'cpu family': '25', 'model': '17', 'avx512f': True, 'cpu_mhz': 2596.1}
    zen2 = {'model name': 'AMD EPYC 7B12', 'cpu family': '23', 'model': '49', 'avx512f': False}
    zen5 = {'model name': 'AMD EPYC 9B45', 'cpu family': '26', 'model': '2', 'avx512f': True}
    xeon = {'model name': 'Intel(R) Xeon(R) Platinum 8581C CPU @ 2.60GHz', 'cpu family': '6', 'model': '207',
            'avx512f': True, 'fma': True, 'cpu_mhz': 2100.0}
    assert [speed.fp32_flops_per_cycle(c) for c in (zen4, zen2, zen5, xeon)] == [32, 32, 64, 64]
    assert speed.fp32_flops_per_cycle({'model name': 'Some ARM core', 'cpu family': '8', 'model': '1'}) is None
    assert speed.nominal_ghz(xeon) == 2.6  # the model name wins over the current clock
    assert speed.nominal_ghz(zen4) == pytest.approx(2.5961)


def test_flop_count_of_a_training_step_scales_with_the_batch():
    import torch

    import speed
    from models.ahdrnet import AHDR

    torch.manual_seed(0)
    net = AHDR()
    one = speed.count_train_flops(net, None, torch.device('cpu'), 1)
    assert one * 4 == pytest.approx(489.0e9, rel=1e-3)  # the figure for batch 4 (torch's flop counter)
    assert all(p.grad is None for p in net.parameters())  # counting leaves no gradients behind


def test_hyper_threads_share_a_core():
    import speed

    assert speed.physical_cores({'siblings': '2', 'cpu cores': '2'}, 2) == 2
    assert speed.physical_cores({'siblings': '4', 'cpu cores': '2'}, 2) == 1  # two vCPUs, one core
    assert speed.physical_cores({}, 2) == 2


def test_response_rule_grid_redoes_the_defaults_choice(tmp_path, monkeypatch):
    """bench/response_estimate.py judges rules of --response auto offline from its rows: with the module's own
    limits, its choice must be the one choose_response made on every bracket, or the grid judges another rule."""
    import json
    import os
    for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):  # the bench sets these at import: undo after the test
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    import response_estimate
    from photo.response_choice import MAX_CHANNEL_SPREAD, MAX_RESIDUAL_STOPS, PARAMETRIC_GAIN
    out = tmp_path / 'r.json'
    monkeypatch.setattr(sys, 'argv', ['response_estimate.py', '--crops', '1', '--scenes', '2', '--size', '48', '64',
                                      '--output', str(out)])
    response_estimate.main()
    report = json.loads(out.read_text())
    assert len(report['rows']) == 3 * len(response_estimate.CURVES)
    kinds = {'estimate': 'estimate', 'srgb': 'srgb'}
    for row in report['rows']:
        choice = response_estimate.rule_choice(row, PARAMETRIC_GAIN, MAX_RESIDUAL_STOPS, MAX_CHANNEL_SPREAD)
        assert choice == kinds.get(row['auto_choice'], 'power_law'), row['auto_why']
        assert row['colour_error_deg'][choice] == row['colour_error_deg']['auto']
    choices = {row['auto_choice'] == 'estimate' for row in report['rows']}
    assert choices == {True, False}, 'the tiny brackets must exercise both the estimate and the fallback'
    current = f'gain {PARAMETRIC_GAIN:g}, residual {MAX_RESIDUAL_STOPS:g}, spread {MAX_CHANNEL_SPREAD:g}'
    assert current in report['rules']


def test_speed_table_names_the_cpu_and_compares_with_the_release(tmp_path):
    """bench/speed_table.py's Markdown: the CPU and threads named, the release column, fp32 GFLOP/s with its share
    of the peak, bf16's speed-up over fp32, and `--amp auto`'s over the release, from the two speed.py reports."""
    import json
    import speed_table

    def entry(network, mode, precision, seconds, **extra):
        return {'network': network, 'mode': mode, 'tile': 0, 'precision': precision, 'seconds_median': seconds,
                **extra}
    table = {'cpu': {'model name': 'Test CPU', 'cpu family': '25', 'model': '17'},
             'cpu_text': speed_table.cpu_text({'model name': 'Test CPU', 'cpu family': '25', 'model': '17',
                                               'avx512_bf16': True}, 2),
             'threads': 2, 'networks': ['AHDRNet'], 'runs': 3, 'warmup': 1, 'auto_precision': 'bf16',
             'date': '2026-12-06',
             'release': {'precisions': ['fp32'], 'results': [entry('AHDRNet', 'train', 'fp32', 4.0),
                                                             entry('AHDRNet', '512x512', 'fp32', 3.0)]},
             'ours': {'precisions': ['fp32', 'bf16'], 'nominal_fp32_peak_gflops': 200.0,
                      'results': [entry('AHDRNet', 'train', 'fp32', 2.0, gflops_per_second=180.0,
                                        share_of_nominal_fp32_peak=0.9),
                                  entry('AHDRNet', 'train', 'bf16', 1.0),
                                  entry('AHDRNet', '512x512', 'fp32', 2.5),
                                  {'network': 'AHDRNet', 'mode': '512x512', 'precision': 'bf16', 'error': 'boom'}]}}
    path = tmp_path / 'speed_table_test.json'
    path.write_text(json.dumps(table))
    assert speed_table.main(['--render', str(path)]) == 0
    text = (tmp_path / 'speed_table_test.md').read_text()
    assert 'Test CPU (family 25 model 17; avx512_bf16), 2 threads' in text
    train = next(line for line in text.splitlines() if line.startswith('| AHDRNet | training step'))
    assert train == '| AHDRNet | training step | 4.00 s | 2.00 s | 180 (90%) | 1.00 s (2.00x fp32) | 4.00x |'
    infer = next(line for line in text.splitlines() if line.startswith('| AHDRNet | 512x512'))
    assert infer.endswith('| 3.00 s | 2.50 s | - | - | - |')  # a failed bf16 run is a gap, not a number
    assert speed_table.cpu_key(table['cpu']) == 'test_cpu_f25_m17'

    # on an AMX CPU ours runs fp32 in channels_last too: that entry is the fp32 reference
    for r in table['ours']['results']:
        r['precision'] = r['precision'].replace('fp32', 'fp32+channels_last')
    table['ours']['precisions'] = ['fp32+channels_last', 'bf16']
    path.write_text(json.dumps(table))
    assert speed_table.main(['--render', str(path)]) == 0
    text = (tmp_path / 'speed_table_test.md').read_text()
    assert '| ours fp32+channels_last |' in text and '| ours bf16 |' in text
    train = next(line for line in text.splitlines() if line.startswith('| AHDRNet | training step'))
    assert train == '| AHDRNet | training step | 4.00 s | 2.00 s | 180 (90%) | 1.00 s (2.00x fp32) | 4.00x |'


def test_medium_gate_bench_refuses_an_also_label_that_would_overwrite_a_row(capsys):
    import medium_gate

    for label in ('gated', 'medium_frame', 'on'):
        with pytest.raises(SystemExit) as exit_info:
            medium_gate.main(['--work', 'nowhere', '--checkpoint', 'none.pth', '--also', f'{label}=x.pth'])
        assert exit_info.value.code == 2 and 'is taken' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        medium_gate.main(['--work', 'nowhere', '--checkpoint', 'none.pth', '--also', 'a=x.pth', 'a=y.pth'])


def test_medium_gate_bench_refuses_a_split_the_study_cannot_make(capsys):
    import medium_gate

    for split in ('validation_foo', 'cleen'):
        with pytest.raises(SystemExit) as exit_info:
            medium_gate.main(['--work', 'nowhere', '--checkpoint', 'none.pth', '--splits', 'validation', split])
        assert exit_info.value.code == 2 and f"'{split}': not a split of the study" in capsys.readouterr().err
