"""test.py end to end on the tiny data set with release-format checkpoints: the saved HDR/PNG outputs, the log,
per-scene CSV and summary JSON against util.metrics, several epochs, a missing checkpoint, tiling, and the aligned
folders FSHDR reads (Test_align, and Scenes_align / dataset_align as the alignment tool writes them)."""
import csv
import json
import re

import cv2
import numpy as np
import pytest
import torch

import data
import test as test_script
from models.ahdrnet import AHDR
from tiny_data import SIZE, TEST_SCENES, eval_args, single_thread, tiny_opt
from tools.prepare_data import prepare_split
from util import metrics
from util.hdr_io import read_hdr, read_ldr, write_ldr8, write_ldr16
from util.tonemap import mu_law

METRICS = ('psnr_l', 'psnr_mu', 'ssim_l', 'ssim_mu')


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def release_state(seed):
    """A release-format state dict of the real AHDR; the output bias moves the output off the flat 0.5 of a fresh
    network so that the metrics vary between checkpoints."""
    torch.manual_seed(seed)
    net = AHDR()
    with torch.no_grad():
        net.conv3.bias.fill_(-1.0 - seed)
    return net.state_dict()


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """`<ckpt>/release/SelfHDR_model_{1,2}.pth` = {'state_dict': bare AHDR keys}, as the published models ship."""
    ckpt = tmp_path_factory.mktemp('ckpt')
    (ckpt / 'release').mkdir()
    states = {epoch: release_state(epoch) for epoch in (1, 2)}
    for epoch, state in states.items():
        torch.save({'state_dict': state}, ckpt / 'release' / f'SelfHDR_model_{epoch}.pth')
    return ckpt, states


@pytest.fixture(scope='module')
def expected_outputs(tiny_dataroot, checkpoints):
    """The network's test output per epoch and scene, computed here without test.py."""
    _, states = checkpoints
    samples = list(data.create_dataset('sig17align', 'test',
                                       tiny_opt(tiny_dataroot, tiny_dataroot, 'x', 'selfhdr2', is_train=False)))
    outputs = {}
    for epoch, state in states.items():
        net = AHDR().eval()
        net.load_state_dict(state)
        for sample in samples:
            with torch.no_grad():
                out = net(*(sample[f'input{i}'][None] for i in range(3)))
            outputs[epoch, sample['fname']] = out[0].permute(1, 2, 0).numpy()
    labels = {s['fname']: s['label'].permute(1, 2, 0).numpy() for s in samples}
    return outputs, labels


def assert_rgbe_close(saved, expected):
    """RGBE keeps 8 mantissa bits of each pixel's largest channel and truncates."""
    step = expected.max(axis=2, keepdims=True) / 128
    assert saved.shape == expected.shape
    assert np.all(np.abs(saved - expected) <= step + 1e-7)


def read_csv(path):
    with open(path, newline='') as handle:
        return list(csv.DictReader(handle))


def test_outputs_logs_and_metrics_for_several_epochs(tiny_dataroot, checkpoints, expected_outputs):
    ckpt, _ = checkpoints
    outputs, labels = expected_outputs
    rc = test_script.main(eval_args(tiny_dataroot, ckpt, 'release', load_iter=[1, 2], save_imgs=True))
    assert rc == 0
    run = ckpt / 'release'
    summaries = {}
    for epoch in (1, 2):
        assert sorted(p.name for p in (run / f'output_{epoch}').iterdir()) == [f'{s}.hdr' for s in TEST_SCENES]
        assert sorted(p.name for p in (run / f'output_vis_{epoch}').iterdir()) == [f'{s}.png' for s in TEST_SCENES]
        rows = read_csv(run / f'metrics_sig17align_epoch_{epoch}.csv')
        assert [r['scene'] for r in rows] == TEST_SCENES
        for row in rows:
            scene = row['scene']
            out, label = outputs[epoch, scene], labels[scene]
            saved = read_hdr(run / f'output_{epoch}' / f'{scene}.hdr')
            assert_rgbe_close(saved, out)
            png = cv2.imread(str(run / f'output_vis_{epoch}' / f'{scene}.png'), cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and png.shape == (*SIZE, 3)
            reference = np.round(mu_law(np.clip(out, 0, 1)) * 255)
            assert np.abs(png.astype(np.float64) - reference).max() <= 1  # BGR, as written by OpenCV
            for name in METRICS:
                fn = getattr(metrics, name)
                # test.py scores the network output itself; the saved file differs by RGBE rounding only
                assert float(row[name]) == pytest.approx(fn(out, label), rel=1e-5, abs=1e-6), (scene, name)
                tolerance = 0.2 if name.startswith('psnr') else 5e-3
                assert float(row[name]) == pytest.approx(fn(saved, label), abs=tolerance), (scene, name)
            assert float(row['seconds']) > 0
        summary = json.loads((run / f'metrics_sig17align_epoch_{epoch}.json').read_text())
        assert summary['epoch'] == epoch and summary['scenes'] == 2 and summary['network'] == 'AHDRNet'
        for name in METRICS:
            assert summary[name] == pytest.approx(np.mean([float(r[name]) for r in rows]), rel=1e-6)
        lines = (run / f'log_epoch_{epoch}.txt').read_text().splitlines()
        assert len(lines) == 1 and lines[0].startswith('sig17align: ')
        assert f"psnr_mu: {summary['psnr_mu']:.4f}" in lines[0]
        summaries[epoch] = summary
    assert summaries[1]['psnr_mu'] != summaries[2]['psnr_mu']

    # a second evaluation of epoch 1 appends to its log
    assert test_script.main(eval_args(tiny_dataroot, ckpt, 'release', load_iter=1)) == 0
    lines = (run / 'log_epoch_1.txt').read_text().splitlines()
    timeless = [re.sub(r'seconds_per_image: [0-9.e+-]+', '', line) for line in lines]
    assert len(lines) == 2 and timeless[0] == timeless[1] and 'psnr_l: ' in timeless[0]
    assert (run / 'opt_test.txt').is_file()


def test_each_epoch_is_loaded_once(tiny_dataroot, checkpoints):
    ckpt, _ = checkpoints
    log_path = ckpt / 'release' / 'test.log'
    before = log_path.read_text() if log_path.exists() else ''  # other tests of the module log here too
    assert test_script.main(eval_args(tiny_dataroot, ckpt, 'release', load_iter=[1, 2])) == 0
    lines = log_path.read_text()[len(before):].splitlines()
    for epoch in (1, 2):
        assert sum('loaded SelfHDR from' in ln and f'SelfHDR_model_{epoch}.pth' in ln for ln in lines) == 1


def test_missing_checkpoint_fails_with_a_clear_message(tiny_dataroot, checkpoints):
    ckpt, _ = checkpoints
    rc = test_script.main(eval_args(tiny_dataroot, ckpt, 'release', load_iter=[1, 7]))
    assert rc != 0
    log = (ckpt / 'release' / 'test.log').read_text()
    assert 'checkpoint not found' in log and 'SelfHDR_model_7.pth' in log

    rc = test_script.main(eval_args(tiny_dataroot, ckpt, 'release'))  # no --load_iter at all
    assert rc != 0
    assert 'no checkpoint' in (ckpt / 'release' / 'test.log').read_text()

    rc = test_script.main(eval_args(tiny_dataroot, ckpt, 'nothing_here', load_iter=3))
    assert rc != 0
    assert 'nothing_here' in (ckpt / 'nothing_here' / 'test.log').read_text()


def test_an_unavailable_extra_metric_is_said_before_the_run(tiny_dataroot, checkpoints, monkeypatch):
    """--extra_metrics lpips without its package or weights: exit 2 at once, saying what is missing (it failed with a
    traceback after the first scene's inference)."""
    ckpt, _ = checkpoints
    monkeypatch.setattr(metrics, 'metric_unavailable', lambda name: f'--extra_metrics {name} needs what is missing')
    monkeypatch.setattr(test_script.models, 'create_model', lambda opt: pytest.fail('ran before the check'))
    rc = test_script.main(eval_args(tiny_dataroot, ckpt, 'release', load_iter=1, extra_metrics=['lpips']))
    assert rc == 2
    assert '--extra_metrics lpips needs what is missing' in (ckpt / 'release' / 'test.log').read_text()


def test_tiled_inference(tiny_dataroot, checkpoints, expected_outputs, tmp_path, monkeypatch):
    ckpt, _ = checkpoints
    outputs, _ = expected_outputs
    path = ckpt / 'release' / 'SelfHDR_model_1.pth'
    shapes = []
    forward = AHDR.forward

    def recording_forward(self, *inputs):
        shapes.append(tuple(inputs[0].shape[-2:]))
        return forward(self, *inputs)

    monkeypatch.setattr(AHDR, 'forward', recording_forward)
    for tile, name in ((32, 'tiled'), (64, 'one_tile')):
        shapes.clear()
        rc = test_script.main(eval_args(tiny_dataroot, tmp_path, name, load_path=path, tile=tile, tile_overlap=16,
                                        save_imgs=True))
        assert rc == 0
        for scene in TEST_SCENES:
            saved = read_hdr(tmp_path / name / 'output_0' / f'{scene}.hdr')
            out = outputs[1, scene]
            if tile == 64:  # the tile covers the 48 x 64 image: the whole-image pass
                assert_rgbe_close(saved, out)
            else:  # blended 32 x 32 tiles differ from the whole image only by border effects near the seams
                assert np.isfinite(saved).all() and saved.shape == out.shape
                assert np.abs(saved - out).mean() < 0.02 * out.mean()
        if tile == 64:
            assert shapes == [SIZE] * 2
        else:  # rows start at 0, 16; columns at 0, 16, 32
            assert shapes == [(32, 32)] * 12


def test_fshdr_reads_test_align(tiny_dataroot):
    plain = data.create_dataset('sig17align', 'test', tiny_opt(tiny_dataroot, tiny_dataroot, 'x', 'selfhdr2',
                                                               is_train=False))
    fshdr = data.create_dataset('sig17align', 'test', tiny_opt(tiny_dataroot, tiny_dataroot, 'x', 'selfhdr2',
                                                               is_train=False, network='FSHDR'))
    assert plain.folders == {'ldr': 'Test', 'expo': 'Test', 'label': 'Test'}
    assert fshdr.folders == {'ldr': 'Test_align', 'expo': 'Test', 'label': 'Test'}
    warped = []
    for a, b in zip(plain, fshdr):
        scene = a['fname']
        frames = sorted((tiny_dataroot / 'Test_align' / scene).glob('*.tif'))
        assert len(frames) == 3
        for i, frame in enumerate(frames):
            ldr = torch.from_numpy(read_ldr(frame)).permute(2, 0, 1)
            assert torch.equal(b[f'input{i}'][3:], ldr)
        assert torch.equal(a['input1'], b['input1'])  # the reference frame is copied unchanged
        warped.append(not torch.equal(a['input0'], b['input0']))
        assert torch.equal(a['expo'], b['expo']) and torch.equal(a['label'], b['label'])
    assert any(warped)  # (the aligner may fall back to the unwarped frame where its flow is unreliable)


def bracket(path, names, stops, shift_px, writer):
    """Frames of one smooth synthetic radiance map at the given stops, each shifted a little (camera motion)."""
    h, w = SIZE
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    radiance = np.stack([0.02 + 0.3 * (x / w) ** 2, 0.05 + 0.2 * (y / h), 0.04 + 0.1 * np.sin(x / 5) ** 2], axis=2)
    radiance[12:30, 20:40] += 0.4  # a bright block with edges for the flow to lock on
    path.mkdir(parents=True)
    for k, (name, stop) in enumerate(zip(names, stops)):
        frame = np.roll(radiance, shift_px * (k - len(names) // 2), axis=1) * 2.0 ** stop
        writer(path / name, np.clip(frame, 0, 1) ** (1 / 2.2))
    (path / ('exposures.txt' if 'Scenes' in str(path) else 'exposure.txt')).write_text(
        ''.join(f'{s}\n' for s in stops))


@pytest.mark.parametrize('dataset, folder, n_frames, ext, chosen', [
    ('sen', 'Scenes', 5, '.tif', (1, 2, 3)),          # the middle three
    ('tursun', 'dataset', 9, '.tiff', (4, 6, 8)),     # frames 5, 7, 9 (1-based)
])
def test_sen_tursun_fshdr_read_the_three_aligned_frames(dataset, folder, n_frames, ext, chosen, tmp_path):
    names = [f'frame_{k:02d}{ext}' for k in range(n_frames)]
    writer = write_ldr8 if dataset == 'sen' else write_ldr16
    stops = list(range(-4, -4 + n_frames)) if dataset == 'tursun' else [-2, -1, 0, 1, 2]
    for scene in ('s1', 's2'):
        bracket(tmp_path / folder / scene, names, stops, 1, writer)
    reports = prepare_split(tmp_path, dataset=dataset, progress=False)
    assert [r['status'] for r in reports] == ['done', 'done']

    plain = data.create_dataset(dataset, 'test', tiny_opt(tmp_path, tmp_path, 'x', 'selfhdr2', is_train=False,
                                                          dataset_name=dataset))
    fshdr = data.create_dataset(dataset, 'test', tiny_opt(tmp_path, tmp_path, 'x', 'selfhdr2', is_train=False,
                                                          dataset_name=dataset, network='FSHDR'))
    assert fshdr.scenes == plain.scenes == ['s1', 's2']
    for a, b in zip(plain, fshdr):
        aligned = sorted((tmp_path / f'{folder}_align' / a['fname']).iterdir())
        # the tool writes exactly the three chosen frames, under their source names
        assert [p.name for p in aligned] == [names[k] for k in chosen]
        for i in range(3):
            raw = read_ldr(tmp_path / folder / a['fname'] / names[chosen[i]])
            assert torch.equal(a[f'input{i}'][3:], torch.from_numpy(raw).permute(2, 0, 1))
            warped = read_ldr(aligned[i])
            assert torch.equal(b[f'input{i}'][3:], torch.from_numpy(warped).permute(2, 0, 1))
        assert torch.equal(a['input1'], b['input1'])  # the reference is copied byte for byte
        assert not torch.equal(a['input0'], b['input0'])
        assert torch.equal(a['expo'], b['expo'])
        assert 'label' not in b


def test_tile_auto_is_the_whole_image_when_it_fits_and_tiles_when_not(tiny_dataroot, checkpoints, expected_outputs,
                                                                       tmp_path, monkeypatch):
    import util.tiling
    from util.tiling import GIB, forward_bytes
    ckpt, _ = checkpoints
    outputs, _ = expected_outputs
    path = ckpt / 'release' / 'SelfHDR_model_1.pth'
    shapes = []
    forward = AHDR.forward

    def recording_forward(self, *inputs):
        shapes.append(tuple(inputs[0].shape[-2:]))
        return forward(self, *inputs)

    monkeypatch.setattr(AHDR, 'forward', recording_forward)
    rc = test_script.main(eval_args(tiny_dataroot, tmp_path, 'auto', load_path=path, tile='auto', save_imgs=True))
    assert rc == 0 and shapes == [SIZE] * 2  # fits: the release's whole-image forward, outputs unchanged
    for scene in TEST_SCENES:
        assert_rgbe_close(read_hdr(tmp_path / 'auto' / 'output_0' / f'{scene}.hdr'), outputs[1, scene])
    # A budget that leaves room for a 32-pixel tile of the real AHDRNet only (MIN_TILE lowered for the tiny image;
    # the process's own memory counted as nothing, so that the budget does not depend on what the test run holds)
    monkeypatch.setattr(util.tiling, 'MIN_TILE', 16)
    monkeypatch.setattr(util.tiling, 'resident_memory', lambda: 0)
    per_pixel = 5701  # models/backbones.py, AHDRNet fp32
    budget = 1.05 * forward_bytes(32, 32, per_pixel) + util.tiling.TILED_OUTPUT_BYTES_PER_PIXEL * SIZE[0] * SIZE[1]
    shapes.clear()
    rc = test_script.main(eval_args(tiny_dataroot, tmp_path, 'auto_tiled', load_path=path, tile='auto',
                                    tile_overlap=8, max_memory=budget / GIB, save_imgs=True))
    assert rc == 0
    assert shapes and max(max(s) for s in shapes) <= 40 and len(shapes) > 2
    for scene in TEST_SCENES:
        saved = read_hdr(tmp_path / 'auto_tiled' / 'output_0' / f'{scene}.hdr')
        assert np.isfinite(saved).all() and np.abs(saved - outputs[1, scene]).mean() < 0.02 * outputs[1, scene].mean()


def test_tile_auto_that_cannot_fit_says_what_to_change(tiny_dataroot, checkpoints, tmp_path):
    ckpt, _ = checkpoints
    rc = test_script.main(eval_args(tiny_dataroot, tmp_path, 'nofit', load_path=ckpt / 'release' / 'SelfHDR_model_1.pth',
                                    tile='auto', max_memory=0.01))
    assert rc == 1
    assert re.search(r'64x48 image does not fit in memory.*--max_memory', (tmp_path / 'nofit' / 'test.log').read_text())


def test_raw_allocator_error_is_translated(tiny_dataroot, checkpoints, tmp_path, monkeypatch):
    ckpt, _ = checkpoints

    def failing_forward(self, *inputs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 18432000000 bytes.")

    monkeypatch.setattr(AHDR, 'forward', failing_forward)
    rc = test_script.main(eval_args(tiny_dataroot, tmp_path, 'oom', load_path=ckpt / 'release' / 'SelfHDR_model_1.pth'))
    assert rc == 1
    log = (tmp_path / 'oom' / 'test.log').read_text()
    assert 'out of memory' in log and '--tile auto' in log


@pytest.mark.parametrize('flags, message', [({'tile': 'big'}, "tile side in pixels or 'auto'"),
                                            ({'max_memory': -1}, '--max_memory')])
def test_tile_and_memory_flags_are_checked(tiny_dataroot, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        tiny_opt(tiny_dataroot, tmp_path, 'x', 'selfhdr2', is_train=False, **flags)
    assert message in capsys.readouterr().err
