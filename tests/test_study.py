"""tools/study.py end to end at the tiny budget (tiny AHDR, random VGG): results files, the permuted copy, resume."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tiny_data import single_thread, use_tiny_backbone
from tools import study
from util.hdr_io import read_hdr, read_ldr

METHODS = ('selfhdr', 'supervised', 'medium_frame', 'unaligned_merge', 'colour_component', 'flow_merge',
           'structure_component')


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory):
    work = tmp_path_factory.mktemp('study')
    with pytest.MonkeyPatch.context() as mp, single_thread():
        use_tiny_backbone(mp)
        assert study.main(['--budget', 'tiny', '--work', str(work), '--vgg', 'random']) == 0
    return work


def test_results_files(tiny_study):
    out = tiny_study / 'results'
    results = json.loads((out / 'results.json').read_text())
    assert set(results['methods']) == set(METHODS)
    for name in METHODS:
        row = results['methods'][name]
        for key in ('psnr_mu', 'psnr_l', 'ssim_mu', 'ssim_l', 'pu21_psnr', 'psnr_mu_permuted'):
            assert np.isfinite(row[key]), (name, key)
        assert 'psnr_mu_motion' in row, name
    # per-pixel, channel-independent anchors cannot depend on the channel order
    for name in ('medium_frame', 'unaligned_merge', 'colour_component', 'flow_merge'):
        row = results['methods'][name]
        assert row['psnr_mu_permuted'] == pytest.approx(row['psnr_mu'], abs=1e-3)
    assert results['machine']['cpu'] and results['machine']['torch_threads'] >= 1
    assert results['budget']['iters'] == study.BUDGETS['tiny'].iters
    assert set(results['labels']) == {'colour_component', 'structure_component', 'stage2_target'}
    assert all(results['seconds'][run] > 0 for run in ('supervised', 'stage1', 'stage2'))
    # each training records the machine it ran on (a resumed run may span several)
    assert all(results['run_machines'][run] == [results['machine_text']] for run in ('supervised', 'stage1', 'stage2'))
    text = (out / 'results.md').read_text()
    assert 'selfhdr' in text and results['machine_text'] in text
    assert (out / 'crops.png').stat().st_size > 0 and (out / 'curves.png').stat().st_size > 0


def test_every_split_scores_every_method_per_region(tiny_study):
    out = tiny_study / 'results'
    results = json.loads((out / 'results.json').read_text())
    assert list(results['splits']) == list(study.TEST_SPLITS)
    for split, record in results['splits'].items():
        assert set(record['methods']) == set(METHODS), split
        assert record['settings'] == {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in study.TEST_SPLITS[split].items()}
        for name, row in record['methods'].items():
            assert np.isfinite(row['psnr_mu']) and np.isfinite(row['psnr_l']), (split, name)
            for region in ('clipped', 'well_exposed', 'dark', 'motion'):
                assert f'psnr_mu_{region}' in row, (split, name, region)
    # the study's own test split is the top-level table
    assert results['splits']['current']['methods']['selfhdr']['psnr_mu'] == results['methods']['selfhdr']['psnr_mu']
    # the clipped split does clip: its medium frames are clipped over a large part of the image
    scenes = sorted((tiny_study / 'splits' / 'clipped' / 'Test').iterdir())
    fractions = [(read_ldr(sorted(s.glob('*.tif'))[1]).max(axis=2) > 0.95).mean() for s in scenes]
    assert min(fractions) > 0.2, fractions
    text = (out / 'results.md').read_text()
    assert all(f'Split `{split}`' in text for split in study.TEST_SPLITS)
    assert (out / 'worst_regions.png').stat().st_size > 0
    # the validation split: training HDRIs, every split's settings in turn, scored like a split
    assert set(results['validation']['methods']) == set(METHODS)
    assert 'Split `validation`' in text


def test_exposure_regions_partition_the_image():
    mid = np.array([[[0.01, 0.02, 0.03], [0.5, 0.5, 0.99]], [[0.3, 0.2, 0.1], [0.04, 0.5, 0.01]]], np.float32)
    regions = study.exposure_regions(mid)
    assert regions['dark'].tolist() == [[True, False], [False, False]]
    assert regions['clipped'].tolist() == [[False, True], [False, False]]
    assert regions['well_exposed'].tolist() == [[False, False], [True, True]]


def test_motion_regions_are_where_alignment_changes_the_merge():
    rng = np.random.default_rng(0)
    aligned = rng.uniform(0.05, 0.5, (16, 20, 3)).astype(np.float32)
    unaligned = aligned.copy()
    unaligned[4:8, 10:15] *= 3  # a ghost: the unaligned merge is wrong there only
    regions = study.motion_regions({'unaligned_merge': {'a': unaligned, 'b': aligned},
                                    'colour_component': {'a': aligned, 'b': aligned}})
    expected = np.zeros((16, 20), bool)
    expected[4:8, 10:15] = True
    assert np.array_equal(regions['a'], expected) and not regions['b'].any()
    # PSNR-mu over the region sees only the ghost's error
    gt = aligned
    assert study.psnr_mu_in(unaligned, gt, regions['a']) < 20
    assert study.psnr_mu_in(aligned, gt, regions['a']) > 100
    assert np.isnan(study.psnr_mu_in(unaligned, gt, regions['b']))


def test_colour_component_anchor_uses_aligned_frames(tiny_study):
    results = json.loads((tiny_study / 'results' / 'results.json').read_text())
    # the aligned merge is scored against the same ground truth as the unaligned one, and they differ
    assert results['methods']['colour_component']['psnr_mu'] != results['methods']['unaligned_merge']['psnr_mu']


def test_permuted_copy_cycles_channels(tiny_study):
    src, perm = tiny_study / 'data' / 'Test', tiny_study / 'data_permuted' / 'Test'
    scene = sorted(p.name for p in src.iterdir() if p.is_dir())[0]
    gt, gt_perm = read_hdr(src / scene / 'HDRImg.hdr'), read_hdr(perm / scene / 'HDRImg.hdr')
    assert np.allclose(gt_perm, gt[..., list(study.PERMUTATION)], rtol=1e-2, atol=1e-6)
    tif = sorted((src / scene).glob('*.tif'))[0]
    assert np.array_equal(read_ldr(perm / scene / tif.name), read_ldr(tif)[..., list(study.PERMUTATION)])
    assert (perm / scene / 'exposure.txt').read_text() == (src / scene / 'exposure.txt').read_text()


def test_rerun_skips_finished_and_resumes_interrupted(tiny_study):
    ckpt = tiny_study / 'ckpt'
    last = study.BUDGETS['tiny'].epochs
    before = {run: (ckpt / run / f'SelfHDR_model_{last}.pth').stat().st_mtime_ns for run in ('supervised', 'stage1')}
    # an interrupted stage 2: its last epoch is missing
    (ckpt / 'stage2' / f'SelfHDR_model_{last}.pth').unlink()
    with pytest.MonkeyPatch.context() as mp, single_thread():
        use_tiny_backbone(mp)
        assert study.main(['--budget', 'tiny', '--work', str(tiny_study), '--vgg', 'random']) == 0
    for run, mtime in before.items():
        assert (ckpt / run / f'SelfHDR_model_{last}.pth').stat().st_mtime_ns == mtime  # not retrained
    assert (ckpt / 'stage2' / f'SelfHDR_model_{last}.pth').is_file()
    # Resumed from its own last complete epoch, not retrained from the stage-1 start: 'loaded SelfHDR from' alone is
    # in every stage-2 log (its --load_path start), so the check names the resumed epoch and the file it came from.
    log = (ckpt / 'stage2' / 'train.log').read_text()
    assert f'--continue_train: resuming after epoch {last - 1}' in log
    assert f'loaded SelfHDR from {ckpt / "stage2" / f"SelfHDR_model_{last - 1}.pth"}' in log


def test_a_rerun_with_other_settings_is_refused(tiny_study):
    """--n_train or --iters changed on an existing --work: the finished networks would be reused and the new settings
    reported (they were), so the study stops naming what differs."""
    settings = json.loads((tiny_study / study.SETTINGS_FILE).read_text())
    assert settings['iters'] == study.BUDGETS['tiny'].iters and settings['network'] == 'AHDRNet'
    before = sorted(p.name for p in (tiny_study / 'ckpt').iterdir())
    args = study.build_parser().parse_args(['--budget', 'tiny', '--work', str(tiny_study), '--n_train', '5'])
    with pytest.raises(ValueError, match=rf"n_train {settings['n_train']!r} -> 5\); .*give another --work"):
        study.run_study(args)  # main() logs it and exits 1
    assert sorted(p.name for p in (tiny_study / 'ckpt').iterdir()) == before
    assert json.loads((tiny_study / study.SETTINGS_FILE).read_text()) == settings
    # before any network is trained, other settings simply replace the recorded ones
    fresh = tiny_study.parent / 'fresh_study'
    study.check_work_settings(fresh, dict(settings, n_train=3))
    study.check_work_settings(fresh, dict(settings, n_train=5))
    assert json.loads((fresh / study.SETTINGS_FILE).read_text())['n_train'] == 5


def test_stage0_labels_written_for_every_training_scene(tiny_study):
    out = tiny_study / 'ckpt' / 'stage1' / f"output_{study.BUDGETS['tiny'].epochs}"
    assert len(list(out.glob('*.hdr'))) == study.BUDGETS['tiny'].n_train


def test_stage2_start_needs_a_continuation_ablation(capsys, tmp_path):
    start = tmp_path / 'stage2.pth'
    start.write_bytes(b'')
    with pytest.raises(SystemExit) as exit_info:
        study.main(['--budget', 'tiny', '--work', str(tmp_path / 'never'), '--stage2_start', str(start)])
    assert exit_info.value.code == 2 and 'stage2_noise_aug' in capsys.readouterr().err
    assert not (tmp_path / 'never').exists()


def test_unknown_budget_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        study.build_parser().parse_args(['--budget', 'huge'])


@pytest.mark.parametrize('flag, value', [('--iters', '-1'), ('--n_train', 'nan'), ('--n_train', '2.5'),
                                         ('--stage2_start', 'no/such/stage2.pth')])
def test_numeric_overrides_are_checked_at_the_door(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        study.main(['--budget', 'tiny', '--work', str(tmp_path / 'never'), flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / 'never').exists()  # refused before anything was written


def test_ablations_train_and_score(tiny_study):
    """Every ablation trains its own networks beside the finished main runs, and is scored in the results."""
    with pytest.MonkeyPatch.context() as mp, single_thread():
        use_tiny_backbone(mp)
        assert study.main(['--budget', 'tiny', '--work', str(tiny_study), '--vgg', 'random',
                           '--ablations', *study.ABLATIONS]) == 0
    results = json.loads((tiny_study / 'results' / 'results.json').read_text())
    assert set(results['ablations']) == set(study.ABLATIONS)
    for name, row in results['ablations'].items():
        assert np.isfinite(row['psnr_mu']) and np.isfinite(row['psnr_mu_permuted']), name
    ckpt, last = tiny_study / 'ckpt', study.BUDGETS['tiny'].epochs

    def option(run, key):
        value = re.search(rf'^\s*{key}: (\S+)', (ckpt / run / 'opt_train.txt').read_text(), re.M).group(1)
        return {'True': 1.0, 'False': 0.0}.get(value, None) if value in ('True', 'False') else float(value)

    for run in ('stage2_no_stru_loss', 'stage2_stage1_half', 'stage1_no_align', 'stage2_no_align',
                'stage2_from_scratch', 'stage2_colour_threshold_10', 'stage2_keep_clipped',
                'stage2_colour_threshold_60'):
        assert (ckpt / run / f'SelfHDR_model_{last}.pth').is_file(), run
    assert option('stage2_keep_clipped', 'colour_keep_clipped') == 1 and option('stage2', 'colour_keep_clipped') == 0
    # every ablation is scored on every split and on the validation split too
    for record in list(results['splits'].values()) + [results['validation']]:
        assert set(study.ABLATIONS) <= set(record['methods'])
    # the recipe starts every stage 2 from the stage-1 network that made its labels; the ablation does not
    assert study.BUDGETS['tiny'].stage2_init == 'stage1'
    loaded = {run: (ckpt / run / 'train.log').read_text() for run in
              ('stage2', 'stage2_stage1_half', 'stage2_no_align', 'stage2_from_scratch')}
    assert f"stage1{os.sep}SelfHDR_model_{last}.pth" in loaded['stage2']
    assert f"stage1{os.sep}SelfHDR_model_{max(1, last // 2)}.pth" in loaded['stage2_stage1_half']
    assert f"stage1_no_align{os.sep}SelfHDR_model_{last}.pth" in loaded['stage2_no_align']
    assert 'loaded SelfHDR from' not in loaded['stage2_from_scratch']
    # ... at its own (lower) peak learning rate; from scratch it uses the budget's rate
    assert option('stage2', 'lr') == study.BUDGETS['tiny'].stage2_lr != study.BUDGETS['tiny'].lr
    assert option('stage2_from_scratch', 'lr') == option('stage1', 'lr') == study.BUDGETS['tiny'].lr
    # the recipe's wider colour mask; the paper's stage 2 and the colour_threshold_release ablation keep 10/255
    assert option('stage2', 'colour_threshold') == study.BUDGETS['tiny'].stage2_colour_threshold == 30
    for run in ('stage2_from_scratch', 'stage2_colour_threshold_10'):
        assert option(run, 'colour_threshold') == 10, run
    assert option('stage2_colour_threshold_60', 'colour_threshold') == 60
    # stage2_continued: half the budget more of stage 2, from the finished stage-2 network at half its peak rate
    more = max(1, study.BUDGETS['tiny'].epochs // 2)
    assert (ckpt / 'stage2_continued' / f'SelfHDR_model_{more}.pth').is_file()
    assert f"stage2{os.sep}SelfHDR_model_{last}.pth" in (ckpt / 'stage2_continued' / 'train.log').read_text()
    assert option('stage2_continued', 'lr') == study.BUDGETS['tiny'].stage2_lr / 2
    assert option('stage2_continued', 'colour_threshold') == option('stage2', 'colour_threshold')
    # the iterations it has seen: stage 1, stage 2 and its own (tiny: 2 epochs of 2 each, then 1 epoch of 2)
    assert results['ablations']['stage2_continued']['iterations'] == 4 + 4 + 2
    # stage2_noise_aug: the same continuation with half the crops noisier
    assert option('stage2_noise_aug', 'sensor_noise_aug') == study.NOISE_AUG_SHARE == 0.5
    assert option('stage2_continued', 'sensor_noise_aug') == option('stage2', 'sensor_noise_aug') == 0
    assert option('stage2_noise_aug', 'lr') == option('stage2_continued', 'lr')
    assert f"stage2{os.sep}SelfHDR_model_{last}.pth" in (ckpt / 'stage2_noise_aug' / 'train.log').read_text()
    # stage1_half: structure labels from the stage-1 network at half its budget
    assert len(list((ckpt / 'stage1' / f'output_{max(1, last // 2)}').glob('*.hdr'))) == study.BUDGETS['tiny'].n_train
    # no_align: its colour labels are the unaligned merge, so they differ from the aligned ones
    scene = sorted(p.name for p in (tiny_study / 'data' / 'Training_align').iterdir() if p.is_dir())[0]
    aligned = read_hdr(tiny_study / 'data' / 'Training_align' / scene / 'HDRImg.hdr')
    unaligned = read_hdr(tiny_study / 'data_no_align' / 'Training_align' / scene / 'HDRImg.hdr')
    assert aligned.shape == unaligned.shape and not np.allclose(aligned, unaligned)
    assert 'no_stru_loss' in (tiny_study / 'results' / 'results.md').read_text()


def test_train_sh_short_budget_is_the_studys_recipe():
    """`budget=short sh train.sh` trains the study's recipe at its short budget: the study's data and settings."""
    text = (Path(study.__file__).resolve().parents[1] / 'train.sh').read_text()
    line = next(ln for ln in text.splitlines() if ln.strip().startswith('short)'))
    values = dict(re.findall(r'd_(\w+)=([^;\s]+)', line))
    b = study.BUDGETS['short']
    assert int(values['train']) == b.n_train and int(values['test']) == b.n_test
    assert int(values['niter']) * int(values['iters']) == b.iters and int(values['iters']) == b.iters_per_epoch
    assert float(values['lr']) == b.lr and float(values['lr2']) == b.stage2_lr
    assert float(values['thr']) == b.stage2_colour_threshold and values['variety'] == b.data


def test_an_interrupted_training_keeps_its_seconds(tmp_path, monkeypatch):
    """A run that spans sessions (stopped by SIGTERM, train.py's exit 130) still counts the seconds it trained."""
    import time

    import train

    def interrupted(argv):
        time.sleep(0.05)
        return 130

    monkeypatch.setattr(train, 'main', interrupted)
    for _ in range(2):
        with pytest.raises(RuntimeError, match='run the same command to resume'):
            study.train_run('stage1', 'selfhdr1', tmp_path / 'data', tmp_path / 'ckpt', 'AHDRNet',
                            study.BUDGETS['tiny'])
    assert study.run_seconds(tmp_path / 'ckpt' / 'stage1') >= 0.1


def test_gap_by_region_names_the_region_that_decides():
    """Shares of the pooled mu-law MSE difference add up to the whole, and the largest one decides."""
    def row(clipped, well, dark):
        return {'psnr_mu_clipped': clipped, 'psnr_mu_well_exposed': well, 'psnr_mu_dark': dark,
                'pixels_clipped': 100, 'pixels_well_exposed': 800, 'pixels_dark': 100}

    gap = study.gap_by_region({'selfhdr': row(30.0, 40.0, 30.0), 'supervised': row(20.0, 40.0, 31.0)})
    assert gap['decides'] == 'clipped' and gap['contribution']['well_exposed'] == 0.0
    assert gap['contribution']['dark'] < 0 < gap['contribution']['clipped']
    assert gap['mse_difference'] == pytest.approx(sum(gap['contribution'].values()))
    assert gap['mse_difference'] == pytest.approx(0.1 * (1e-2 - 1e-3) + 0.1 * (10 ** -3.1 - 1e-3))
    assert study.gap_by_region({'selfhdr': row(30.0, 40.0, 30.0)}) is None


def test_every_split_says_which_region_decides_the_gap(tiny_study):
    results = json.loads((tiny_study / 'results' / 'results.json').read_text())
    for split, record in results['splits'].items():
        gap = record['gap_selfhdr_supervised']
        assert gap['decides'] in study.EXPOSURE_REGIONS, split
        assert sum(gap['shares'].values()) == pytest.approx(1.0)
    assert (tiny_study / 'results' / 'results.md').read_text().count('The gap is decided by') >= len(results['splits'])


def test_skip_supervised_scores_selfhdr_now_and_a_later_run_adds_the_baseline(tiny_study, tmp_path):
    # a long run scored before its baseline is trained: the same work folder without the supervised run
    import shutil

    work = tmp_path / 'work'
    shutil.copytree(tiny_study, work, symlinks=True, ignore=shutil.ignore_patterns('results', 'supervised'))
    argv = ['--budget', 'tiny', '--work', str(work), '--vgg', 'random', '--splits', 'current']
    with pytest.MonkeyPatch.context() as mp, single_thread():
        use_tiny_backbone(mp)
        assert study.main(argv + ['--skip_supervised']) == 0
        results = json.loads((work / 'results' / 'results.json').read_text())
        assert 'supervised' not in results['methods'] and results['skipped'] == ['supervised']
        assert 'selfhdr' in results['splits']['current']['methods']
        assert results['splits']['current']['gap_selfhdr_supervised'] is None
        assert not (work / 'ckpt' / 'supervised').exists()
        assert '--skip_supervised' in (work / 'results' / 'results.md').read_text()
        assert study.main(argv) == 0
    results = json.loads((work / 'results' / 'results.json').read_text())
    assert 'supervised' in results['methods'] and 'skipped' not in results


def test_the_aligned_test_copy_is_made_again_when_its_source_changes(tmp_path):
    src = tmp_path / 'split'
    for sub, name in (('Test', 'exposure.txt'), ('Test_align', '0_short.tif')):
        (src / sub / '001').mkdir(parents=True)
        (src / sub / '001' / name).write_bytes(b'first')
    dst = tmp_path / 'aligned'
    study.make_aligned_test_copy(src, dst)
    assert (dst / 'Test' / '001' / '0_short.tif').read_bytes() == b'first'
    (dst / 'Test' / '001' / 'note').write_text('made by the first copy')
    study.make_aligned_test_copy(src, dst)  # unchanged source: the copy stays
    assert (dst / 'Test' / '001' / 'note').is_file()
    (src / 'Test_align' / '001' / '0_short.tif').write_bytes(b'second, re-aligned')  # the split rendered again
    study.make_aligned_test_copy(src, dst)
    assert (dst / 'Test' / '001' / '0_short.tif').read_bytes() == b'second, re-aligned'
    assert not (dst / 'Test' / '001' / 'note').exists()
