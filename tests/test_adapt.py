"""tools/adapt.py: self-supervised fine-tuning of a stage-2 network on a user's own unlabeled brackets.

Tiny brackets (48 x 64; 8-bit JPEG with EXIF, 16-bit TIFF and 8-bit PNG with exposure.txt), the tiny AHDR of
tests/tiny_data.py and a few iterations: the real preparation (merge_brackets, DIS alignment, Y_color, stage-0
inference) and the real train.py run.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

import train
from tiny_data import load_state, single_thread, tiny_ahdr, use_tiny_backbone
from tools import adapt
from tools.adapt import epoch_plan, main
from util.hdr_io import write_ldr16

H, W = 48, 64
STOPS = (0.0, 2.0, 4.0)  # relative times 1, 4, 16, as in the training data


def _radiance(seed):
    """Smooth BGR radiance in the short exposure's scale (0.004 to ~1), with a coloured patch and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 0.004 * (250.0 ** (xx / (W - 1)))
    img = np.stack([base * 0.8, base, base * 1.1 * (0.6 + 0.4 * yy / (H - 1))], axis=2)
    img[10:22, 12:30] *= np.array([0.3, 1.0, 1.6], np.float32)
    img *= 1 + 0.1 * np.sin(xx / 3.0 + seed)[..., None] * np.cos(yy / 4.0)[..., None]
    img *= 1 + 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 1e-4, None).astype(np.float32)


def _frames(seed):
    """Short, medium, long LDR frames; a block moves between them (the dynamic part)."""
    rad = _radiance(seed)
    frames = []
    for i, stops in enumerate(STOPS):
        r = rad.copy()
        x0 = 30 + 4 * (i - 1)
        r[26:38, x0:x0 + 10] = np.array([0.05, 0.2, 0.1], np.float32)
        frames.append(np.clip((r * 2.0 ** stops) ** (1 / 2.2), 0, 1).astype(np.float32))
    return frames


def _save_jpeg(path, ldr_bgr, seconds):
    rgb = np.clip(np.rint(ldr_bgr[:, :, ::-1] * 255), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(int(round(seconds * 1000)), 1000)
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


def _write_exposures(folder):
    (folder / 'exposure.txt').write_text(''.join(f'{v}\n' for v in STOPS))


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A brackets folder (JPEG+EXIF, 16-bit TIFF, 8-bit PNG, one broken) and a tiny-AHDR checkpoint."""
    root = tmp_path_factory.mktemp('adapt')
    brackets = root / 'brackets'
    a, b, c, bad = (brackets / n for n in ('a_jpeg', 'b_tiff', 'c_png', 'd_broken'))
    for folder in (a, b, c, bad):
        folder.mkdir(parents=True)
    for i, frame in enumerate(_frames(1)):
        _save_jpeg(a / f'{i}.jpg', frame, 0.01 * 2.0 ** STOPS[i])
    for i, frame in enumerate(_frames(2)):
        write_ldr16(b / f'{i}.tif', frame)
    _write_exposures(b)
    for i, frame in enumerate(_frames(3)):
        cv2.imwrite(str(c / f'{i}.png'), np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8))
    _write_exposures(c)
    for i, frame in enumerate(_frames(4)[:2]):  # two frames only: not a bracket
        write_ldr16(bad / f'{i}.tif', frame)
    torch.manual_seed(0)
    ckpt = root / 'stage2.pth'
    torch.save({'state_dict': tiny_ahdr().state_dict()}, ckpt)
    return {'root': root, 'brackets': brackets, 'ckpt': ckpt}


def _argv(inputs, out, *extra):
    return ['--brackets', str(inputs['brackets']), '--checkpoint', str(inputs['ckpt']), '--network', 'AHDRNet',
            '--iters', '4', '--save_every', '2', '--batch_size', '2', '--patch_size', '32',
            '--vgg_weights', 'random', '--out', str(out), '-q',
            '--amp', 'none',  # fp32: resumed and uninterrupted runs compared bit for bit (bf16: tests/test_amp.py)
            *map(str, extra)]


@pytest.fixture(scope='module')
def module_monkeypatch():
    mp = pytest.MonkeyPatch()
    use_tiny_backbone(mp)
    yield mp
    mp.undo()


@pytest.fixture(scope='module')
def adapted(inputs, module_monkeypatch, tmp_path_factory):
    """One uninterrupted run (kept work folder, for inspection)."""
    out = tmp_path_factory.mktemp('run') / 'adapted.pth'
    with single_thread():
        rc = main(_argv(inputs, out, '--keep_work', '--decide', 'off'))
    return rc, out


def test_epoch_plan():
    assert epoch_plan(300, 50) == (6, 50)
    assert epoch_plan(4, 50) == (1, 4)
    assert epoch_plan(101, 50) == (3, 34)  # 102 iterations in 3 equal epochs
    with pytest.raises(adapt.AdaptError):
        epoch_plan(0, 50)


def test_writes_release_checkpoint_that_differs(inputs, adapted, capsys):
    rc, out = adapted
    assert rc == 0
    state = load_state(out)
    original = load_state(inputs['ckpt'])
    assert list(state) == list(original)  # bare release keys, same order
    assert not any(k.startswith(('module.', '_orig_mod.')) for k in state)
    assert set(torch.load(out, map_location='cpu', weights_only=True)) == {'state_dict'}
    assert any(not torch.equal(state[k], original[k]) for k in state)
    assert all(torch.isfinite(v).all() for v in state.values())


def test_labels_and_comparisons(inputs, adapted):
    rc, out = adapted
    assert rc == 0
    work = out.with_name(out.name + '.partial')
    ok = ['a_jpeg', 'b_tiff', 'c_png']
    # Y_color and Y_stru for every usable bracket, nothing for the broken one
    for name in ok:
        assert (work / 'data' / 'Training_align' / name / 'HDRImg.hdr').is_file()
        assert (work / 'ckpt' / 'stage0' / 'output_0' / f'{name}.hdr').is_file()
    assert not (work / 'data' / 'Training' / 'd_broken').exists()
    state = json.loads((work / 'state.json').read_text())
    assert [n for n, b in state['brackets'].items() if b['ok']] == ok
    assert not state['brackets']['d_broken']['ok'] and 'd_broken' in state['brackets']['d_broken']['message']
    sheets = sorted((out.parent / 'adapted_compare').glob('*.png'))
    assert [p.stem for p in sheets] == ok
    sheet = cv2.imread(str(sheets[0]))
    assert sheet.shape[1] > 3 * W and sheet.shape[0] > H  # three labelled panels side by side
    log = (work / 'adapt.log').read_text()
    assert 'the stage-2 checkpoint' in log and 'serves as the structure network' in log


def test_resume_after_interrupt_matches_uninterrupted(inputs, adapted, module_monkeypatch, tmp_path, capsys):
    out = tmp_path / 'adapted.pth'
    off = ('--decide', 'off')  # as the uninterrupted run: every bracket trained, the last epoch written
    original_end_epoch = train.end_epoch

    def end_epoch_then_stop(model, val_loader, visualizer, opt, epoch, *rest):
        lr = original_end_epoch(model, val_loader, visualizer, opt, epoch, *rest)
        if epoch == 1:
            raise KeyboardInterrupt  # after epoch 1 was saved, as a Ctrl-C would
        return lr

    with single_thread():
        module_monkeypatch.setattr(train, 'end_epoch', end_epoch_then_stop)
        try:
            rc = main(_argv(inputs, out, *off))
        finally:
            module_monkeypatch.setattr(train, 'end_epoch', original_end_epoch)
        assert rc == 130 and not out.exists()
        work = out.with_name(out.name + '.partial')
        assert (work / 'ckpt' / 'adapt' / 'SelfHDR_model_1.pth').is_file()
        capsys.readouterr()
        assert main(_argv(inputs, out, *off)) == 2  # a leftover run without --resume is refused, naming the folder
        assert str(work) in capsys.readouterr().err
        assert main(_argv(inputs, out, *off, '--iters', '6')) == 2  # --resume with other settings: refused
        rc = main(_argv(inputs, out, *off, '--resume'))
    assert rc == 0
    assert not work.exists()  # removed after success (no --keep_work)
    resumed, straight = load_state(out), load_state(adapted[1])
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6)


def test_given_stage1_is_used(inputs, module_monkeypatch, tmp_path):
    torch.manual_seed(1)
    stage1 = tmp_path / 'stage1.pth'
    torch.save({'state_dict': tiny_ahdr().state_dict()}, stage1)
    out = tmp_path / 'a.pth'
    with single_thread():
        rc = main(_argv(inputs, out, '--stage1', stage1, '--iters', '1', '--keep_work'))
    assert rc == 0
    log = (tmp_path / 'a.pth.partial' / 'adapt.log').read_text()
    assert f'the stage-1 network {stage1}' in log


def _error(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_exit_2_cases_name_the_file(inputs, module_monkeypatch, tmp_path, capsys):
    out = tmp_path / 'x.pth'
    # nothing usable in DIR
    empty = tmp_path / 'empty'
    empty.mkdir()
    rc, err = _error(capsys, _argv({**inputs, 'brackets': empty}, out))
    assert rc == 2 and f'--brackets {empty}' in err and '--input_dir' not in err  # adapt's flag, not merge's
    # --out naming the checkpoint it starts from would overwrite it
    rc, err = _error(capsys, _argv(inputs, inputs['ckpt']))
    assert rc == 2 and 'is the --checkpoint file' in err
    # only broken brackets: each is reported, then exit 2 naming DIR
    only_bad = tmp_path / 'only_bad'
    (only_bad / 'bad').mkdir(parents=True)
    for i, frame in enumerate(_frames(5)[:2]):
        write_ldr16(only_bad / 'bad' / f'{i}.tif', frame)
    rc, err = _error(capsys, _argv({**inputs, 'brackets': only_bad}, out))
    assert rc == 2 and str(only_bad) in err
    assert not out.with_name(out.name + '.partial').exists()
    # a checkpoint that does not fit the network, a missing one, a file that is no checkpoint
    wrong = tmp_path / 'wrong.pth'
    torch.save({'state_dict': {'conv.weight': torch.zeros(1)}}, wrong)
    missing = tmp_path / 'missing.pth'
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    for bad in (wrong, missing, junk):
        rc, err = _error(capsys, _argv({**inputs, 'ckpt': bad}, out))
        assert rc == 2 and str(bad) in err
        rc, err = _error(capsys, _argv(inputs, out, '--stage1', bad))
        assert rc == 2 and str(bad) in err
    assert not out.exists()


def test_colour_labels_are_denoised_unless_turned_off(inputs, adapted, module_monkeypatch, tmp_path):
    from util.hdr_io import read_hdr

    rc, out = adapted
    assert rc == 0
    denoised_work = out.with_name(out.name + '.partial')
    state = json.loads((denoised_work / 'state.json').read_text())
    assert all('Y_color denoised' in b['message'] for b in state['brackets'].values() if b['ok'])
    raw_out = tmp_path / 'raw.pth'
    with single_thread():
        assert main(_argv(inputs, raw_out, '--denoise_labels', 'off', '--iters', '1', '--keep_work')) == 0
    raw_work = tmp_path / 'raw.pth.partial'
    raw_state = json.loads((raw_work / 'state.json').read_text())
    assert not any('denoised' in b['message'] for b in raw_state['brackets'].values())
    label = Path('data') / 'Training_align' / 'c_png' / 'HDRImg.hdr'
    raw, clean = read_hdr(raw_work / label), read_hdr(denoised_work / label)
    assert raw.shape == clean.shape
    # the denoised label is smoother (less energy in the Laplacian) but the same picture
    lap = lambda img: np.abs(cv2.Laplacian(np.log1p(5000 * img), cv2.CV_32F)).mean()  # noqa: E731
    assert lap(clean) < lap(raw)
    assert abs(float(clean.mean()) - float(raw.mean())) < 0.05 * float(raw.mean())


# ------------------------------------------------------------------------------------------ adaptation that never hurts
def test_choose_holdout_spreads_and_keeps_training_data():
    from photo.adapt import choose_holdout

    assert choose_holdout(['a']) == []
    assert choose_holdout(['b', 'a']) == ['b']
    assert choose_holdout(['a', 'b', 'c']) == ['b']
    held = choose_holdout([f's{i:02d}' for i in range(12)])
    assert len(held) == 3 and len(set(held)) == 3 and held == sorted(held)


def test_trusted_mask_excludes_motion_and_unsupported_pixels():
    from photo.adapt import masked_psnr_mu, trusted_mask

    rad = np.full((20, 30, 3), 0.02, np.float32)
    rad[:, 20:] = 0.3                                   # the medium frame clips here; the short sees it
    times = np.array([1.0, 4.0, 16.0])
    frames = [np.clip((rad * t) ** (1 / 2.2), 0, 1) for t in times]
    frames[2][2:6, 2:6] = 0.3                           # something moved in the long frame
    mask = trusted_mask(frames, times)
    assert mask[10, 10]                                 # static, well exposed in the medium frame
    assert not mask[10, 25]                             # the medium clips: the label is the short frame alone
    assert not mask[3:5, 3:5].any()                     # the long frame disagrees: ghost in the label
    label = rad.copy()
    pred = rad.copy()
    pred[~mask] = 1.0                                   # errors outside the mask do not count
    assert masked_psnr_mu(pred, label, mask) > 100
    pred[10, 10] *= 1.5
    assert masked_psnr_mu(pred, label, mask) < 60


def _state(out):
    return json.loads((out.with_name(out.name + '.partial') / 'state.json').read_text())


def test_decision_holds_out_scores_and_keeps_what_it_reports(inputs, module_monkeypatch, tmp_path, capsys):
    from photo import adapt as photo_adapt

    out = tmp_path / 'decided.pth'
    with single_thread():
        rc = main(_argv(inputs, out, '--keep_work'))
    assert rc == 0
    work = out.with_name(out.name + '.partial')
    state = _state(out)
    assert state['holdout'] == ['b_tiff']
    assert (work / 'data' / 'Holdout_align' / 'b_tiff' / 'HDRImg.hdr').is_file()
    assert not (work / 'data' / 'Training_align' / 'b_tiff').exists()      # never trained on
    assert not (work / 'ckpt' / 'stage0' / 'output_0' / 'b_tiff.hdr').exists()
    d = json.loads(out.with_name('decided_decision.json').read_text())
    assert d == state['decision'] and d['brackets'] == ['b_tiff'] and 0 < d['trusted_fraction'] <= 1
    scores = {int(k): v for k, v in d['psnr_mu_by_epoch'].items()}
    assert sorted(scores) == [0, 1, 2]
    best = max((1, 2), key=lambda e: scores[e])
    written = load_state(out)
    if scores[best] >= scores[0] + photo_adapt.MIN_GAIN_DB:
        assert d['kept'] == f'epoch {best}'
        kept = load_state(work / 'ckpt' / 'adapt' / f'SelfHDR_model_{best}.pth')
    else:
        assert d['kept'] == 'original'
        kept = load_state(inputs['ckpt'])
    assert all(torch.equal(written[k], kept[k]) for k in kept)
    assert f'decision: kept the {d["kept"]}' in capsys.readouterr().out


def test_decision_keeps_the_original_when_fine_tuning_does_not_help(inputs, module_monkeypatch, tmp_path, capsys):
    out = tmp_path / 'same.pth'
    with single_thread():  # a learning rate too small to change anything: no epoch can gain 0.05 dB
        rc = main(_argv(inputs, out, '--lr', '1e-12'))
    assert rc == 0
    written, original = load_state(out), load_state(inputs['ckpt'])
    assert all(torch.equal(written[k], original[k]) for k in original)
    printed = capsys.readouterr().out
    assert 'decision: kept the original' in printed and 'original weights are kept' in printed
    # the before/after sheets say which model the "after" panel shows
    from photo.adapt import after_label
    assert after_label({'decision': {'kept': 'original'}}, 300) == 'after: the original kept (fine-tuning did not help)'
    assert after_label({'decision': {'kept': 'epoch 2'}}, 300) == 'after: adapted (epoch 2)'
    assert after_label({}, 300) == 'after: adapted, 300 iterations'  # --decide off


@pytest.mark.parametrize('flag, value', [('--lr', 'inf'), ('--lr', '0'), ('--iters', '0'), ('--seed', '-1'),
                                         ('--gamma', 'nan'), ('--max_memory', '-2'), ('--tile', '-5'),
                                         ('--patch_size', '4')])
def test_numeric_flags_are_checked_before_any_bracket_is_read(inputs, tmp_path, capsys, flag, value):
    out = tmp_path / 'never.pth'
    assert main(_argv(inputs, out, flag, value)) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err  # names the flag and the value
    assert not out.exists() and not out.with_name(out.name + '.partial').exists()


def test_decision_scores_fshdr_on_aligned_frames():
    """FSHDR is trained on aligned frames, so the decision scores it on the held-out brackets' aligned frames."""
    from photo.adapt import score

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x1, x2, x3):
            seen.append(float(x2[:, 3:].mean()))
            return x2[:, 3:]

    rng = np.random.default_rng(0)
    frames = [rng.uniform(0.2, 0.3, (16, 16, 3)).astype(np.float32) for _ in range(3)]
    aligned = [f + 0.5 for f in frames]
    item = {'frames': frames, 'aligned': aligned, 'times': np.array([1.0, 4.0, 16.0]),
            'label': np.full((16, 16, 3), 0.1, np.float32), 'mask': np.ones((16, 16), bool)}
    score(Spy(), 'FSHDR', [item])
    score(Spy(), 'AHDRNet', [item])
    assert seen[0] == pytest.approx(0.75, abs=0.01) and seen[1] == pytest.approx(0.25, abs=0.01)


def test_a_gated_checkpoint_is_adapted_and_keeps_its_gate(inputs, module_monkeypatch, tmp_path):
    """The medium gate rides along: the backbone is fine-tuned (and compared with the gate on every candidate), the
    written checkpoint carries the original's gate unchanged."""
    from models.medium_gate import GATE_KEY, MediumGate, gated_checkpoint, read_gate

    torch.manual_seed(5)
    gate = MediumGate()
    gated = tmp_path / 'gated.pth'
    torch.save(gated_checkpoint(load_state(inputs['ckpt']), gate), gated)
    out = tmp_path / 'adapted_gated.pth'
    argv = _argv(inputs, out)
    argv[argv.index('--checkpoint') + 1] = str(gated)
    with single_thread():
        assert main(argv) == 0
    written = torch.load(out, weights_only=True)
    assert GATE_KEY in written
    assert all(torch.equal(a, b) for a, b in zip(read_gate(out).state_dict().values(), gate.state_dict().values()))
    assert json.loads(out.with_name('adapted_gated_decision.json').read_text())['kept']


def test_fine_tuning_leaves_the_colour_loss_out_where_the_medium_frame_is_clipped(tmp_path):
    # there the colour label is the short frame alone; fitting it fooled the decision on a validation domain (README)
    args = adapt.build_parser().parse_args(['--brackets', 'b', '--checkpoint', 'c.pth', '--network', 'AHDRNet',
                                            '--out', 'o.pth'])
    argv = adapt.train_argv(args, adapt.Work(tmp_path), epochs=2, per_epoch=3, resume=False)
    assert argv[argv.index('--colour_skip_clipped') + 1] == 'True'
    from options.train_options import TrainOptions
    assert TrainOptions().parse(argv).colour_skip_clipped is True  # a flag stage 2's options know


def test_decision_keeps_the_original_when_no_held_out_pixel_can_be_trusted(tmp_path):
    from types import SimpleNamespace

    from photo.adapt import HOLDOUT, Work, decide, load_holdout
    from util.hdr_io import write_hdr, write_ldr16
    from util.synthetic import EXPOSURE_NAME, FRAME_NAMES

    work = Work(tmp_path)
    frames = [np.full((16, 24, 3), v, np.float32) for v in (0.6, 1.0, 1.0)]  # the medium frame clipped everywhere
    for folder in (work.data / HOLDOUT / 'b', work.data / f'{HOLDOUT}_align' / 'b'):
        folder.mkdir(parents=True)
        for name, frame in zip(FRAME_NAMES, frames):
            write_ldr16(folder / name, frame)
    (work.data / HOLDOUT / 'b' / EXPOSURE_NAME).write_text('0\n2\n4\n')
    write_hdr(work.data / f'{HOLDOUT}_align' / 'b' / 'HDRImg.hdr', np.full((16, 24, 3), 0.3, np.float32))
    assert load_holdout(work, ['b']) == []  # nothing to score: not a NaN score
    kept, decision = decide(SimpleNamespace(checkpoint='original.pth'), work,
                            {'holdout': ['b'], 'brackets': {'b': {'ok': True}}}, epochs=2)
    assert kept == Path('original.pth') and decision['kept'] == 'original' and 'trusted' in decision['why']
    assert json.loads(json.dumps(decision)) == decision  # written as the decision file: no NaN in it


def test_a_run_interrupted_under_the_previous_recipe_is_not_resumed(tmp_path):
    from photo.adapt import AdaptError, open_work, settings_of
    args = adapt.build_parser().parse_args(['--brackets', str(tmp_path), '--checkpoint', 'c.pth', '--network',
                                            'AHDRNet', '--out', str(tmp_path / 'o.pth'), '--resume'])
    old = settings_of(args)
    del old['recipe']  # a state written before the fourteenth session's recipe
    partial = tmp_path / 'o.pth.partial'
    partial.mkdir()
    (partial / 'state.json').write_text(json.dumps({'settings': old, 'brackets': {}, 'prepared': False}))
    with pytest.raises(AdaptError, match='recipe'):
        open_work(args, tmp_path / 'o.pth')
