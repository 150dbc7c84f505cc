"""tools/merge_brackets.py: users' own brackets (JPEG with EXIF, 16-bit TIFF with --exposures) -> .hdr/.exr/.png."""
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, TiffImagePlugin

from models.ahdrnet import AHDR
from tools.merge_brackets import (MergeError, _exif_value_to_seconds, load_bracket, main, merge,
                                  read_exposure_time)
from util import metrics
from util.hdr_io import read_exr, read_hdr, read_ldr, write_ldr16

H, W = 48, 64
EXIF_TIMES = ((1, 100), (1, 25), (4, 25))  # 0.01, 0.04, 0.16 s: relative 1, 4, 16 as in the training data


def _radiance(seed=0):
    """Smooth BGR radiance (short-exposure scale) from 0.004 to ~1, with a coloured patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 0.004 * (250.0 ** (xx / (W - 1)))  # log ramp across the width
    img = np.stack([base * 0.8, base, base * 1.1 * (0.6 + 0.4 * yy / (H - 1))], axis=2)
    img[10:22, 12:30] *= np.array([0.3, 1.0, 1.6], np.float32)
    img *= 1 + 0.02 * rng.standard_normal(img.shape).astype(np.float32)
    return np.clip(img, 1e-4, None).astype(np.float32)


def _ldr(radiance, t):
    return np.clip((radiance * t) ** (1 / 2.2), 0, 1).astype(np.float32)


def _save_jpeg(path, ldr_bgr, exposure=None, iso=None, f_number=None):
    rgb = np.clip(np.rint(ldr_bgr[:, :, ::-1] * 255), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    if exposure is not None:
        exif.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(*exposure)  # Exif sub-IFD, as cameras write
    if iso is not None:
        exif.get_ifd(0x8769)[0x8827] = iso
    if f_number is not None:
        exif.get_ifd(0x8769)[0x829D] = TiffImagePlugin.IFDRational(*f_number)
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


@pytest.fixture(scope='module')
def bracket(tmp_path_factory):
    """JPEGs with EXIF, 16-bit TIFFs without, and an AHDR(seed 0) release-format checkpoint."""
    folder = tmp_path_factory.mktemp('bracket')
    rad = _radiance()
    jpgs, tifs = [], []
    for name, (num, den) in zip(('short', 'medium', 'long'), EXIF_TIMES):
        ldr = _ldr(rad, 100.0 * num / den)  # 100 x seconds = 1, 4, 16
        jpgs.append(folder / f'{name}.jpg')
        _save_jpeg(jpgs[-1], ldr, (num, den))
        tifs.append(folder / f'{name}.tif')
        write_ldr16(tifs[-1], ldr)
    torch.manual_seed(0)
    ckpt = folder / 'SelfHDR_model_1.pth'
    torch.save({'state_dict': AHDR().state_dict()}, ckpt)
    return {'dir': folder, 'jpg': jpgs, 'tif': tifs, 'ckpt': ckpt}


@pytest.fixture(scope='module')
def jpeg_result(bracket):
    """The bracket merged with the training encoding (gamma 2.2: frames pass unchanged), not the auto default."""
    return merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2')


def _run(capsys, args):
    # The CLI's default --amp auto is bf16 on a CPU with AMX; these tests compare with the library's fp32 merge, so
    # they pin fp32 unless they test precision themselves (the default itself: tests/test_precision_defaults.py)
    args = [str(a) for a in args]
    if '--amp' not in args:
        args += ['--amp', 'none']
    rc = main(args)
    return rc, capsys.readouterr()


# ------------------------------------------------------------------------------------------ EXIF

def test_exif_exposure_times_read_back(bracket):
    times = [read_exposure_time(p) for p in bracket['jpg']]
    assert times == pytest.approx([n / d for n, d in EXIF_TIMES], rel=1e-12)


def test_exif_in_tiff_ifd0(tmp_path):
    # Some TIFF writers put ExposureTime in IFD0 rather than in the Exif sub-IFD.
    path = tmp_path / 'frame.tif'
    tags = Image.Exif()
    tags[0x829A] = TiffImagePlugin.IFDRational(1, 60)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path, tiffinfo=tags)
    assert read_exposure_time(path) == pytest.approx(1 / 60, rel=1e-12)


@pytest.mark.parametrize('times, isos, f_numbers, expected, what', [
    # shutter times 1/400, 1/100, 1/25 at one ISO: the times alone
    (((1, 400), (1, 100), (1, 25)), (100, 100, 100), None, (1, 4, 16), 'exif'),
    # the long frame at twice the ISO (a camera's auto-ISO bracket): 2x more exposure, as the RAW path counts it
    (((1, 400), (1, 100), (1, 50)), (100, 100, 200), None, (1, 4, 16), 'exif (shutter time x ISO)'),
    # one shutter time, three ISO speeds
    (((1, 100), (1, 100), (1, 100)), (100, 400, 1600), None, (1, 4, 16), 'exif (shutter time x ISO)'),
    # an aperture bracket: f/8, f/4, f/2 at 1/100 s
    (((1, 100), (1, 100), (1, 100)), None, ((8, 1), (4, 1), (2, 1)), (1, 4, 16), 'exif (shutter time / f-number^2)'),
    # ISOSpeedRatings with two values per frame (some cameras): the first is the frame's
    (((1, 100), (1, 100), (1, 100)), ((100, 100), (400, 400), (1600, 1600)), None, (1, 4, 16),
     'exif (shutter time x ISO)'),
])
def test_exif_iso_and_aperture_enter_the_exposure(tmp_path, times, isos, f_numbers, expected, what):
    """A JPEG bracket's exposure is time x ISO / f-number^2 where the frames differ in them, as for RAW frames."""
    rad = _radiance()
    paths = []
    for k, t in enumerate(times):
        paths.append(tmp_path / f'f{k}.jpg')
        _save_jpeg(paths[-1], _ldr(rad, expected[k]), t, iso=isos[k] if isos else None,
                   f_number=f_numbers[k] if f_numbers else None)
    frames = load_bracket(paths)
    assert frames.times == pytest.approx(expected, rel=1e-9)
    assert frames.times_source == what


@pytest.mark.parametrize('orientation', range(1, 9))
def test_upright_turns_a_frame_as_a_viewer_shows_it(orientation):
    """Each EXIF Orientation turned as Pillow's exif_transpose (what viewers do) turns it."""
    import io

    from PIL import ImageOps

    from photo.frames import upright
    img = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    pil.save(buffer, format='PNG', exif=exif)
    buffer.seek(0)
    assert np.array_equal(upright(img, orientation), np.asarray(ImageOps.exif_transpose(Image.open(buffer))))


def test_frames_with_different_orientations_are_turned_alike(tmp_path, caplog):
    """A tilt sensor that changed its mind within a tripod bracket: the pixels line up as stored, so every frame is
    turned by the most common orientation, with a warning naming each frame's."""
    rad = _radiance()
    paths = []
    for k, (t, orientation) in enumerate(zip(EXIF_TIMES, (6, 6, 1))):
        paths.append(tmp_path / f'p{k}.jpg')
        rgb = np.clip(np.rint(_ldr(rad, 100.0 * t[0] / t[1])[:, :, ::-1] * 255), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(*t)
        exif[0x0112] = orientation
        Image.fromarray(rgb).save(paths[-1], quality=95, exif=exif)
    with caplog.at_level(logging.WARNING, logger='photo.frames'):
        frames = load_bracket(paths)
    assert all(f.shape[:2] == (W, H) for f in frames.frames)
    assert 'different EXIF orientations (p0.jpg: 6, p1.jpg: 6, p2.jpg: 1); all are turned by 6' in caplog.text


def test_sixteen_bit_frames_of_eight_bit_values_are_sixteen_bit(bracket, tmp_path):
    """The bit depth is the file's, not a guess from the values: 16-bit TIFFs converted from 8-bit codes (v * 257)
    are a 16-bit bracket, and mixed with 8-bit JPEGs they are refused as such."""
    tifs = []
    for k, f in enumerate(bracket['jpg']):
        tifs.append(tmp_path / f'{k}.tif')
        codes = read_ldr(f)
        write_ldr16(tifs[-1], codes * 257 * 255 / 65536)
    frames = load_bracket(tifs, exposures=['1/100', '1/25', '4/25'])
    assert frames.bits == 16
    with pytest.raises(MergeError, match=r'16-bit: .*0\.tif'):
        load_bracket([tifs[0], bracket['jpg'][1], bracket['jpg'][2]], exposures=['1/100', '1/25', '4/25'])


def test_a_portrait_bracket_is_merged_upright(tmp_path, caplog):
    """JPEGs shot in portrait carry landscape pixels and Orientation 6: the bracket is read (and merged) upright."""
    rad = _radiance()
    paths = []
    for k, t in enumerate(EXIF_TIMES):
        paths.append(tmp_path / f'p{k}.jpg')
        rgb = np.clip(np.rint(_ldr(rad, 100.0 * t[0] / t[1])[:, :, ::-1] * 255), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(*t)
        exif[0x0112] = 6  # the camera turned a quarter clockwise
        Image.fromarray(rgb).save(paths[-1], quality=95, exif=exif)
    with caplog.at_level(logging.INFO, logger='photo.frames'):
        frames = load_bracket(paths)
    assert all(f.shape[:2] == (W, H) for f in frames.frames)
    expected = np.rot90(read_ldr(paths[1]), -1)
    np.testing.assert_array_equal(frames.frames[1], expected)
    assert 'EXIF orientation 6' in caplog.text


def test_a_grey_bracket_gives_a_grey_hdr(bracket, tmp_path, caplog):
    """Grey JPEGs (read as three equal channels) have no colour to keep: the merged HDR is neutral, not the
    network's own tint."""
    rad = _radiance().mean(axis=2, keepdims=True)
    paths = []
    for k, (num, den) in enumerate(EXIF_TIMES):
        paths.append(tmp_path / f'g{k}.jpg')
        grey = np.clip(np.rint(_ldr(rad, 100.0 * num / den)[:, :, 0] * 255), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x829A] = TiffImagePlugin.IFDRational(num, den)
        Image.fromarray(grey, mode='L').save(paths[-1], quality=95, exif=exif)
    with caplog.at_level(logging.INFO, logger='photo.merge'):
        result = merge(paths, 'AHDRNet', bracket['ckpt'], response='gamma2.2')
    hdr = result.hdr
    assert np.array_equal(hdr[..., 0], hdr[..., 1]) and np.array_equal(hdr[..., 1], hdr[..., 2])
    assert 'grey frames' in caplog.text
    colour = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2')  # a colour bracket keeps its hue
    assert not np.array_equal(colour.hdr[..., 0], colour.hdr[..., 2])


@pytest.mark.parametrize('batch', [False, True])
def test_an_unwritable_output_folder_is_refused_before_the_merge(bracket, tmp_path, capsys, monkeypatch, batch):
    """A read-only output folder is an error naming it before the network runs (it failed after the merge, naming
    a temporary file)."""
    import errno
    import tempfile

    import tools.merge_brackets as cli

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system')
    monkeypatch.setattr(tempfile, 'NamedTemporaryFile', read_only)
    monkeypatch.setattr(cli, 'merge', lambda *a, **k: pytest.fail('merged into a folder it cannot write'))
    monkeypatch.setattr(cli, 'run_batch', lambda *a, **k: pytest.fail('merged into a folder it cannot write'))
    monkeypatch.setattr(cli, 'load_network', lambda *a, **k: pytest.fail('loaded the network first'))
    out = tmp_path / 'out'
    if batch:
        _one_bracket_batch(tmp_path / 'in', bracket['jpg'])
        args = _batch_args(bracket, tmp_path / 'in')
    else:
        args = _args(bracket, bracket['jpg'])
    rc, cap = _run(capsys, args + ['--output_dir', out])
    assert rc == 2 and f'{out}: the output folder cannot be written to (Read-only file system)' in cap.err


def test_a_file_as_output_folder_is_refused_before_the_merge(bracket, tmp_path, capsys, monkeypatch):
    import tools.merge_brackets as cli

    monkeypatch.setattr(cli, 'merge', lambda *a, **k: pytest.fail('merged into a folder it cannot write'))
    not_a_folder = tmp_path / 'notes.txt'
    not_a_folder.write_text('x')
    rc, cap = _run(capsys, _args(bracket, bracket['jpg']) + ['--output_dir', not_a_folder / 'out'])
    assert rc == 2 and 'the output folder cannot be written to' in cap.err and 'notes.txt' in cap.err


def test_no_exif_gives_none(tmp_path):
    path = tmp_path / 'plain.jpg'
    cv2.imwrite(str(path), np.full((8, 8, 3), 100, np.uint8))
    assert read_exposure_time(path) is None


@pytest.mark.parametrize('value, seconds', [(TiffImagePlugin.IFDRational(1, 250), 0.004), ((1, 8), 0.125),
                                            (2, 2.0), ('1/50', 0.02), (b'1/4\x00', 0.25)])
def test_exif_value_forms(value, seconds):
    assert _exif_value_to_seconds(value, Path('x.jpg')) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize('value', [(1, 0), 0, -0.5, 'fast'])
def test_exif_invalid_value_names_file(value):
    with pytest.raises(MergeError, match='x.jpg'):
        _exif_value_to_seconds(value, Path('x.jpg'))


# ------------------------------------------------------------------------------------------ merging

def test_main_jpeg_writes_consistent_outputs(bracket, jpeg_result, tmp_path, capsys):
    out_dir = tmp_path / 'out'
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', out_dir, '--name', 'scene', '--response', 'gamma2.2',
                            '--amp', 'none'])  # the library's fp32 default, compared bit for bit below
    assert rc == 0, cap.err
    exr = read_exr(out_dir / 'scene.exr')
    hdr = read_hdr(out_dir / 'scene.hdr')
    png = cv2.imread(str(out_dir / 'scene.png'), cv2.IMREAD_UNCHANGED)
    assert exr.shape == hdr.shape == (H, W, 3) and png.shape == (H, W, 3) and png.dtype == np.uint8
    assert np.isfinite(exr).all() and exr.min() > 0 and exr.max() < 1  # sigmoid output
    np.testing.assert_array_equal(exr, jpeg_result.hdr)  # float32 EXR is lossless
    # RGBE keeps an 8-bit mantissa per pixel's largest channel and truncates downwards
    step = exr.max(axis=2, keepdims=True) / 128
    assert np.all(hdr <= exr + 1e-7) and np.all(exr - hdr <= step)
    assert png.std() > 5  # the preview is not blank
    from photo.outputs import preview
    from util.tonemap import to_uint8
    np.testing.assert_array_equal(png, to_uint8(preview(jpeg_result)))  # shadows coloured by the merge by default


def test_preview_shadows_network_leaves_the_radiance_alone(bracket, jpeg_result, tmp_path, capsys):
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', tmp_path, '--name', 'n', '--response', 'gamma2.2', '--formats', 'exr',
                            'png', '--preview_shadows', 'network'])
    assert rc == 0, cap.err
    np.testing.assert_array_equal(read_exr(tmp_path / 'n.exr'), jpeg_result.hdr)
    from util.tonemap import to_uint8, tonemap
    png = cv2.imread(str(tmp_path / 'n.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, to_uint8(tonemap(np.maximum(jpeg_result.hdr, 0), 'display')))


def test_default_name_and_folder(bracket, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--tonemap', 'mu', '--tile', '64', '-q'])
    assert rc == 0, cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['medium_hdr.exr', 'medium_hdr.hdr', 'medium_hdr.png']


def test_merge_equals_direct_network_call(bracket, jpeg_result):
    # Times normalised by the shortest (1, 4, 16), H = X**2.2 / (t + 1e-8), input cat([H, X]) in BGR.
    assert jpeg_result.bracket.times_source == 'exif'
    np.testing.assert_allclose(jpeg_result.bracket.times, [1, 4, 16], rtol=1e-12)
    xs = []
    for path, t in zip(bracket['jpg'], (1.0, 4.0, 16.0)):
        x = torch.from_numpy(read_ldr(path)).permute(2, 0, 1)[None]
        xs.append(torch.cat([x ** 2.2 / (t + 1e-8), x], 1))
    torch.manual_seed(0)
    with torch.inference_mode():
        ref = AHDR().eval()(*xs)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(jpeg_result.hdr, ref, rtol=0, atol=2e-6)


def test_shuffled_inputs_are_sorted(bracket, jpeg_result, caplog):
    short, medium, long_ = bracket['jpg']
    with caplog.at_level(logging.WARNING):
        res = merge([long_, short, medium], 'AHDRNet', bracket['ckpt'], response='gamma2.2')
    assert res.bracket.order == [1, 2, 0] and res.bracket.reordered
    assert res.bracket.paths == [short, medium, long_]
    np.testing.assert_array_equal(res.hdr, jpeg_result.hdr)
    assert 'sorted by exposure time' in caplog.text and 'long.jpg' in caplog.text


def test_strict_order_refuses_shuffled(bracket, tmp_path, capsys):
    short, medium, long_ = bracket['jpg']
    rc, cap = _run(capsys, ['--inputs', medium, short, long_, '--network', 'AHDRNet', '--checkpoint',
                            bracket['ckpt'], '--output_dir', tmp_path, '--strict_order'])
    assert rc == 2 and '--strict_order' in cap.err and 'short.jpg' in cap.err
    assert not any(tmp_path.iterdir())


def test_tiff16_with_exposures_seconds_and_stops(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, ['--inputs', *bracket['tif'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--exposures', '1/100', '0.04', '4/25', '--output_dir', tmp_path, '--name', 'tif'])
    assert rc == 0, cap.err
    hdr_seconds = read_exr(tmp_path / 'tif.exr')
    res = merge(bracket['tif'], 'AHDRNet', bracket['ckpt'], exposures=['0', '2', '4'], exposures_in='stops')
    assert res.bracket.times_source == 'stops'
    np.testing.assert_array_equal(res.bracket.times, [1.0, 4.0, 16.0])
    np.testing.assert_allclose(res.hdr, hdr_seconds, rtol=0, atol=1e-5)
    # --exposures overrides EXIF: the TIFFs have none, and the JPEGs' EXIF would give the same times.
    assert all(read_exposure_time(p) is None for p in bracket['tif'])


def test_other_gamma_is_reencoded_with_the_training_gamma(bracket, jpeg_result):
    res = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.0')
    x = read_ldr(bracket['jpg'][1])
    # the network sees X' = (X ** 2.0) ** (1 / 2.2): the camera's linear radiance in the training encoding
    np.testing.assert_allclose(res.inputs[1], x.astype(np.float64) ** (2.0 / 2.2), atol=2e-3)
    assert np.abs(res.hdr - jpeg_result.hdr).max() > 1e-4


def test_gamma22_response_passes_frames_unchanged(bracket, jpeg_result):
    for x, path in zip(jpeg_result.inputs, bracket['jpg']):
        np.testing.assert_array_equal(x, read_ldr(path))


def test_estimate_and_save_response_then_reuse(bracket, tmp_path, capsys):
    saved = tmp_path / 'camera.csv'
    rc, cap = _run(capsys, _args(bracket, bracket['tif'], '--exposures', '1/100', '1/25', '4/25', '--response',
                                 'estimate', '--save_response', saved, '--output_dir', tmp_path, '--name', 'est'))
    assert rc == 0, cap.err
    table = np.loadtxt(saved, delimiter=',', skiprows=1)
    assert table.shape == (256, 4) and table[-1, 1:].tolist() == [1, 1, 1] and (np.diff(table[:, 1:], axis=0) >= 0).all()
    rc, cap = _run(capsys, _args(bracket, bracket['tif'], '--exposures', '1/100', '1/25', '4/25', '--response',
                                 saved, '--output_dir', tmp_path, '--name', 'reuse'))
    assert rc == 0, cap.err
    np.testing.assert_allclose(read_exr(tmp_path / 'reuse.exr'), read_exr(tmp_path / 'est.exr'), atol=1e-5)


def test_default_response_estimates_a_filmic_jpeg_bracket(bracket, tmp_path, capsys, caplog):
    """JPEGs through an S-shaped camera curve, correct EXIF times: the default (auto) estimates the curve, so the
    linearised frames keep the true 2-stop ratios, where gamma 2.2 misreads them. The log says which curve and why."""
    from photo.response import encode, normalise_table

    x = np.linspace(0, 1, 200001)
    y = (x * 4) ** 1.6 / ((x * 4) ** 1.6 + 0.35)
    lin = np.interp(np.arange(256) / 255, (y / y[-1]) ** (1 / 2.2), x)
    filmic = normalise_table(np.repeat(lin[:, None], 3, axis=1))
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float64)
    rad = (2.0 ** (-9 + 9.5 * xx / 127) * (0.7 + 0.3 * np.sin(yy / 5.0) ** 2))[..., None] * np.array([0.8, 1.0, 1.2])
    rad = rad * np.exp(0.1 * rng.standard_normal(rad.shape))
    paths = []
    for name, (num, den) in zip(('short', 'medium', 'long'), EXIF_TIMES):
        paths.append(tmp_path / f'{name}.jpg')
        _save_jpeg(paths[-1], encode(np.clip(rad * 100.0 * num / den, 0, 1), filmic).astype(np.float32), (num, den))

    def stops_between(res, a, b):  # brightness ratio of two linearised frames where both are well exposed
        la, lb = (res.inputs[k].astype(np.float64) ** 2.2 for k in (a, b))
        ok = (la > 0.01) & (lb < 0.6)
        return np.log2(np.median(lb[ok] / la[ok]))

    with caplog.at_level(logging.INFO):
        auto = merge(paths, 'AHDRNet', bracket['ckpt'], prealign=False)
    assert auto.response.name == 'estimate'
    assert 'camera response: estimate (auto: estimated from this 8-bit bracket' in caplog.text
    fixed = merge(paths, 'AHDRNet', bracket['ckpt'], prealign=False, response='gamma2.2', trust_exposures=True)
    for a, b in ((0, 1), (1, 2)):
        assert abs(stops_between(auto, a, b) - 2) < 0.15
        assert abs(stops_between(fixed, a, b) - 2) > 0.3
    rc, cap = _run(capsys, _args(bracket, paths, '--output_dir', tmp_path, '--name', 'auto'))
    assert rc == 0 and 'response estimate' in cap.out, cap.err


@pytest.mark.parametrize('flags, message', [(['--response', 'gammaX'], '--response'),
                                            (['--response', 'missing.npy'], 'missing.npy'),
                                            (['--response', 'srgb', '--gamma', '2'], 'not both')])
def test_error_bad_response(bracket, tmp_path, capsys, flags, message):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], *flags, '--output_dir', tmp_path))
    assert rc == 2 and message in cap.err
    assert not list(tmp_path.glob('*.exr'))


def test_align_runs(bracket):
    res = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], align=True)
    assert res.aligned and res.hdr.shape == (H, W, 3) and np.isfinite(res.hdr).all()


# ------------------------------------------------------------------------------------------ clear errors

def _args(bracket, inputs, *extra):
    return ['--inputs', *inputs, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'], *extra]


def _batch_args(bracket, src, *extra):
    return ['--input_dir', src, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'], *extra]


def _one_bracket_batch(root, files):
    """A batch folder `root` holding one bracket, sub-folder 'a', with copies of `files`; returns that sub-folder."""
    import shutil

    folder = root / 'a'
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


def test_error_missing_file(bracket, tmp_path, capsys):
    missing = tmp_path / 'nope.jpg'
    rc, cap = _run(capsys, _args(bracket, [bracket['jpg'][0], missing, bracket['jpg'][2]], '--output_dir', tmp_path))
    assert rc == 2 and 'nope.jpg' in cap.err and 'does not exist' in cap.err


def test_error_unreadable_file(bracket, tmp_path, capsys):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'this is not a JPEG')
    rc, cap = _run(capsys, _args(bracket, [bracket['jpg'][0], bracket['jpg'][1], bad], '--output_dir', tmp_path))
    assert rc == 2 and 'broken.jpg' in cap.err


def test_error_sizes_differ(bracket, tmp_path, capsys):
    small = tmp_path / 'small.jpg'
    _save_jpeg(small, _ldr(_radiance()[:40], 16.0), EXIF_TIMES[2])
    rc, cap = _run(capsys, _args(bracket, [*bracket['jpg'][:2], small], '--output_dir', tmp_path))
    assert rc == 2 and 'small.jpg is 64x40' in cap.err and 'medium.jpg is 64x48' in cap.err


@pytest.mark.parametrize('n', [1, 2])
def test_error_fewer_than_three_inputs(bracket, tmp_path, capsys, n):
    inputs = bracket['jpg'][:n]
    rc, cap = _run(capsys, _args(bracket, inputs, '--output_dir', tmp_path))
    assert rc == 2 and 'at least 3 frames' in cap.err and f'got {n}' in cap.err and 'short.jpg' in cap.err


def test_error_no_exif_and_no_exposures(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['tif'], '--output_dir', tmp_path))
    assert rc == 2 and 'no EXIF ExposureTime' in cap.err and '--exposures' in cap.err
    assert all(str(p) in cap.err for p in bracket['tif'])


def test_error_wrong_number_of_exposures(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['tif'], '--exposures', '1', '2', '--output_dir', tmp_path))
    assert rc == 2 and 'expected 3 values, one per input, got 2' in cap.err


def test_error_equal_exposures(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['tif'], '--exposures', '1/100', '1/25', '0.04',
                                 '--output_dir', tmp_path))
    assert rc == 2 and 'same exposure' in cap.err and 'medium.tif' in cap.err and 'long.tif' in cap.err


def test_error_mixed_bit_depths(bracket, tmp_path):
    """8-bit JPEGs with a 16-bit TIFF: one response cannot linearise both, so the bracket is refused, naming each."""
    with pytest.raises(MergeError, match=r'all 8-bit .* or all 16-bit; 8-bit: .*short\.jpg.*medium\.jpg; '
                                         r'16-bit: .*long\.tif'):
        load_bracket([bracket['jpg'][0], bracket['jpg'][1], bracket['tif'][2]], exposures=['1/100', '1/25', '4/25'])


def test_reference_by_bare_file_name(bracket):
    """--reference medium.jpg picks the input of that name, given with a folder on the command line."""
    frames = load_bracket(bracket['jpg'], reference='medium.jpg')
    assert frames.paths[1] == bracket['jpg'][1]


def test_name_with_an_output_extension_is_not_doubled(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--output_dir', tmp_path, '--name', 'garden.png', '-q'))
    assert rc == 0, cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['garden.exr', 'garden.hdr', 'garden.png']


def test_batch_warns_about_images_it_does_not_merge(bracket, tmp_path, capsys, caplog):
    """Image files directly in the batch folder and sub-folders without images are said to be skipped."""
    import shutil

    src = tmp_path / 'in'
    _one_bracket_batch(src, bracket['jpg'])
    (src / 'notes').mkdir()
    shutil.copy(bracket['jpg'][0], src / 'stray.jpg')
    with caplog.at_level(logging.WARNING):
        rc, cap = _run(capsys, _batch_args(bracket, src, '--output_dir', tmp_path / 'out', '-q'))
    assert rc == 0, cap.err
    assert 'stray.jpg); not merged' in caplog.text and f'{src / "notes"}: no image files' in caplog.text


def test_error_equal_exif_exposures(bracket, tmp_path):
    twin = tmp_path / 'twin.jpg'
    _save_jpeg(twin, _ldr(_radiance(), 4.0), EXIF_TIMES[1])
    with pytest.raises(MergeError, match='twin.jpg'):
        load_bracket([bracket['jpg'][0], bracket['jpg'][1], twin])


@pytest.mark.parametrize('state', ['other_width', 'foreign_keys'])
def test_error_checkpoint_does_not_match(bracket, tmp_path, capsys, state):
    ckpt = tmp_path / f'{state}.pth'
    sd = AHDR(nFeat=16).state_dict() if state == 'other_width' else {'encoder.weight': torch.zeros(3)}
    torch.save({'state_dict': sd}, ckpt)
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', ckpt,
                            '--output_dir', tmp_path])
    assert rc == 2 and f'{state}.pth' in cap.err and 'does not match AHDR' in cap.err
    assert not list(tmp_path.glob('*.hdr'))


def test_error_missing_checkpoint(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint',
                            tmp_path / 'absent.pth', '--output_dir', tmp_path])
    assert rc == 2 and 'absent.pth' in cap.err


def test_error_bad_tile_overlap(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--tile', '32', '--tile_overlap', '32'))
    assert rc == 2 and '--tile_overlap' in cap.err


def test_bad_flag_returns_2_not_exit(capsys):
    assert main(['--inputs', 'a.jpg', '--network', 'NoSuchNet', '--checkpoint', 'c.pth']) == 2
    assert 'NoSuchNet' in capsys.readouterr().err


def test_error_same_file_three_times(bracket, tmp_path, capsys):
    f = bracket['jpg'][1]
    rc, out = _run(capsys, ['--inputs', f, f, f, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', tmp_path])
    assert rc == 2 and 'are the same image' in out.err


def test_error_exposures_contradict_frames(bracket, tmp_path, capsys):
    args = ['--inputs', *bracket['tif'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
            '--exposures', '1', '64', '4096', '--output_dir', tmp_path]  # 6 stops apart, the frames are 2
    rc, out = _run(capsys, args)
    assert rc == 2 and 'exposure times contradict the images' in out.err
    rc, _ = _run(capsys, args + ['--trust_exposures'])
    assert rc == 0


# ------------------------------------------------------------------------------------------ RAW

@pytest.fixture(scope='module')
def dngs(bracket):
    from dng_maker import write_dng

    rad = _radiance()
    paths = []
    for name, (num, den) in zip(('short', 'medium', 'long'), EXIF_TIMES):
        paths.append(write_dng(bracket['dir'] / f'{name}.dng', np.clip(rad * 100.0 * num / den, 0, 1),
                               exposure=(num, den)))
    return paths


def test_raw_bracket_is_linear_with_metadata_times(bracket, dngs, tmp_path, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        res = merge(dngs, 'AHDRNet', bracket['ckpt'], response='srgb')
    assert res.bracket.kind == 'raw' and res.bracket.times_source.startswith('raw metadata')
    np.testing.assert_allclose(res.bracket.times, [1, 4, 16], rtol=1e-6)
    assert '--response srgb ignored' in caplog.text  # RAW skips the response curve
    # the network sees the linear RAW values re-encoded with the training gamma: X'**2.2 / t is the radiance
    rad = _radiance()
    for x, t in zip(res.inputs, (1, 4, 16)):
        lin = x[4:-4, 4:-4].astype(np.float64) ** 2.2
        ok = lin < 0.9
        np.testing.assert_allclose(np.median(lin[ok] / np.clip(rad[4:-4, 4:-4] * t, 0, 1)[ok]), 1.0, rtol=0.03)
    rc, cap = _run(capsys, _args(bracket, dngs, '--output_dir', tmp_path, '--name', 'raw'))
    assert rc == 0, cap.err
    assert read_exr(tmp_path / 'raw.exr').shape == (H, W, 3)


def test_error_raw_without_exposure_metadata(bracket, dngs, tmp_path, capsys):
    from dng_maker import write_dng

    bare = write_dng(tmp_path / 'bare.dng', np.clip(_radiance() * 16, 0, 1), exposure=None)
    rc, cap = _run(capsys, _args(bracket, [dngs[0], dngs[1], bare], '--output_dir', tmp_path))
    assert rc == 2 and 'bare.dng' in cap.err and 'no exposure time in the RAW metadata' in cap.err
    rc, cap = _run(capsys, _args(bracket, [dngs[0], dngs[1], bare], '--exposures', '1', '4', '16',
                                 '--exposures_in', 'seconds', '--output_dir', tmp_path, '--name', 'given'))
    assert rc == 0, cap.err


def test_error_unreadable_raw(bracket, dngs, tmp_path, capsys):
    bad = tmp_path / 'broken.cr2'
    bad.write_bytes(b'\x00' * 4096)
    rc, cap = _run(capsys, _args(bracket, [dngs[0], dngs[1], bad], '--output_dir', tmp_path))
    assert rc == 2 and 'broken.cr2' in cap.err and 'LibRaw' in cap.err
    assert not list(tmp_path.glob('*.hdr'))


def test_error_raw_mixed_with_jpeg(bracket, dngs, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, [dngs[0], dngs[1], bracket['jpg'][2]], '--output_dir', tmp_path))
    assert rc == 2 and 'all RAW or all' in cap.err and 'long.jpg' in cap.err


# ------------------------------------------------------------------------------------------ pre-alignment

@pytest.fixture(scope='module')
def handheld(tmp_path_factory):
    """A 96 x 128 textured bracket whose short and long frames are rotated and shifted (camera shake)."""
    import test_prealign as pa

    folder = tmp_path_factory.mktemp('handheld')
    rad = pa._texture()
    truth = [pa._shake(1.0, 3.0, -2.0), np.eye(3), pa._shake(-0.8, -2.5, 1.5)]
    paths = []
    for name, hom, (num, den) in zip(('short', 'medium', 'long'), truth, EXIF_TIMES):
        lin = pa._frame(rad, hom, 100.0 * num / den)
        paths.append(folder / f'{name}.jpg')
        _save_jpeg(paths[-1], lin ** (1 / 2.2), (num, den))
    return paths


def test_prealign_moves_shaken_frames_onto_the_medium(bracket, handheld, caplog):
    with caplog.at_level(logging.INFO):
        res = merge(handheld, 'AHDRNet', bracket['ckpt'], response='gamma2.2')
    assert 'pre-aligned' in caplog.text and 'short.jpg' in caplog.text and 'long.jpg' in caplog.text
    med = read_ldr(handheld[1]).astype(np.float64) ** 2.2
    def misfit(x, gain):
        lin = x.astype(np.float64) ** 2.2 * gain
        ok = (med > 0.02) & (med < 0.8) & (lin < 0.8)
        return np.median(np.abs(lin - med)[ok])
    raw_short = read_ldr(handheld[0])
    assert misfit(res.inputs[0], 4) < 0.5 * misfit(raw_short, 4)
    np.testing.assert_array_equal(res.inputs[1], read_ldr(handheld[1]))  # the reference is untouched
    off = merge(handheld, 'AHDRNet', bracket['ckpt'], prealign=False, response='gamma2.2')
    np.testing.assert_array_equal(off.inputs[0], raw_short)


def test_a_gate_that_reads_the_bracket_noise_gets_the_frames_as_shot(bracket, handheld, tmp_path, monkeypatch):
    """Pre-alignment warps the short and long frames, and a warp smooths away the noise the estimate reads: the gate's
    bound comes from the frames as read, and only for a gate that takes it."""
    import models.medium_gate as medium_gate

    seen = []
    real = medium_gate.bracket_noise_bounds
    monkeypatch.setattr(medium_gate, 'bracket_noise_bounds', lambda frames: seen.append(frames) or real(frames))
    state = torch.load(bracket['ckpt'], weights_only=True)['state_dict']
    for flag in (True, False):
        gate = medium_gate.MediumGate(consistency=1.5, band_noise='weak_texture_modelled', bracket_noise=flag)
        path = tmp_path / f'bracket_noise_{flag}.pth'
        torch.save(medium_gate.gated_checkpoint(state, gate), path)
        res = merge(handheld, 'AHDRNet', path, response='gamma2.2')
        assert np.isfinite(res.hdr).all()
    assert len(seen) == 1 and len(seen[0]) == 2  # the flagged gate only; the short and long frames
    for got, path in zip(seen[0], (handheld[0], handheld[2])):
        np.testing.assert_array_equal(got, read_ldr(path))
    assert not np.array_equal(seen[0][0], res.inputs[0])  # what the network saw was pre-aligned


def test_frame_that_cannot_be_aligned_is_a_warning(bracket, handheld, tmp_path, capsys, caplog):
    flat = tmp_path / 'flat.jpg'
    _save_jpeg(flat, np.full((96, 128, 3), 0.9, np.float32), EXIF_TIMES[2])
    with caplog.at_level(logging.WARNING):
        rc, cap = _run(capsys, _args(bracket, [handheld[0], handheld[1], flat], '--output_dir', tmp_path,
                                     '--trust_exposures'))
    assert rc == 0, cap.err
    assert 'flat.jpg could not be pre-aligned' in caplog.text


# ------------------------------------------------------------------------------------------ more frames, batches

@pytest.fixture(scope='module')
def five(tmp_path_factory):
    """Five JPEGs one stop apart (0.01 .. 0.16 s); the middle one is 0.04 s."""
    folder = tmp_path_factory.mktemp('five')
    rad = _radiance()
    paths = []
    for k, (num, den) in enumerate(((1, 100), (1, 50), (1, 25), (2, 25), (4, 25))):
        paths.append(folder / f'f{k}.jpg')
        _save_jpeg(paths[-1], _ldr(rad, 100.0 * num / den), (num, den))
    return paths


def test_more_than_three_frames_picks_extremes_and_middle(bracket, five, tmp_path, capsys):
    res = merge(five[::-1], 'AHDRNet', bracket['ckpt'])
    assert res.bracket.paths == [five[0], five[2], five[4]] and res.bracket.unused == [five[1], five[3]]
    np.testing.assert_allclose(res.bracket.times, [1, 4, 16])
    rc, cap = _run(capsys, _args(bracket, five, '--output_dir', tmp_path, '--name', 'five'))
    assert rc == 0, cap.err
    assert 'short f0.jpg, medium f2.jpg, long f4.jpg' in cap.out and 'not used: f1.jpg, f3.jpg' in cap.out


def test_reference_flag_chooses_the_medium(bracket, five, tmp_path, capsys):
    res = merge(five, 'AHDRNet', bracket['ckpt'], reference=five[1])
    assert res.bracket.paths == [five[0], five[1], five[4]]
    np.testing.assert_allclose(res.bracket.times, [1, 2, 16])
    for bad, why in ((five[0], 'shortest'), (five[4], 'longest'), (tmp_path / 'other.jpg', 'not one of the inputs')):
        rc, cap = _run(capsys, _args(bracket, five, '--reference', bad, '--output_dir', tmp_path))
        assert rc == 2 and why in cap.err and Path(bad).name in cap.err


def _write_batch(root, bracket):
    """good_jpg (EXIF), good_tif (exposure.txt in stops), two_frames, sizes_differ, bad_raw, an empty folder."""
    import shutil

    from dng_maker import write_dng

    for name, files in (('good_jpg', bracket['jpg']), ('good_tif', bracket['tif'])):
        (root / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / name / f.name)
    (root / 'good_tif' / 'exposure.txt').write_text('4\n2\n0\n')  # sorted names: long, medium, short
    (root / 'bad_stops').mkdir()  # 2**200 would overflow float32: the error must name this file
    for f in bracket['tif']:
        shutil.copy(f, root / 'bad_stops' / f.name)
    (root / 'bad_stops' / 'exposure.txt').write_text('0\n3\n200\n')
    (root / 'two_frames').mkdir()
    for f in bracket['jpg'][:2]:
        shutil.copy(f, root / 'two_frames' / f.name)
    (root / 'sizes_differ').mkdir()
    for f in bracket['jpg'][:2]:
        shutil.copy(f, root / 'sizes_differ' / f.name)
    _save_jpeg(root / 'sizes_differ' / 'small.jpg', _ldr(_radiance()[:40], 16.0), EXIF_TIMES[2])
    (root / 'bad_raw').mkdir()
    for k, t in enumerate(((1, 100), (1, 25))):
        write_dng(root / 'bad_raw' / f'{k}.dng', np.clip(_radiance() * 100 * t[0] / t[1], 0, 1), exposure=t)
    (root / 'bad_raw' / '2.dng').write_bytes(b'garbage' * 100)
    (root / 'empty').mkdir()


@pytest.mark.parametrize('stops, expected', [
    ('2\n0\n', 'exposure.txt: expected 3 values, one per input, got 2 (one per frame, in file-name order: '
                'long.jpg, medium.jpg, short.jpg)'),
    ('0\n2\n4\n', 'check {file}, or pass --trust_exposures'),  # the reverse of the truth: long.jpg is brightest
])
def test_batch_exposure_file_errors_name_the_file(bracket, tmp_path, capsys, stops, expected):
    """An exposure.txt that does not fit its bracket is named in the error (they named --exposures, a flag the
    user never gave)."""
    src = tmp_path / 'in'
    (_one_bracket_batch(src, bracket['jpg']) / 'exposure.txt').write_text(stops)
    rc, cap = _run(capsys, _batch_args(bracket, src, '--output_dir', tmp_path / 'out', '-q'))
    assert rc == 2 and expected.format(file=src / 'a' / 'exposure.txt') in cap.err
    assert '--exposures' not in cap.err.replace('--exposures_in', '')


def test_batch_bracket_without_exif_points_to_its_exposure_file(bracket, tmp_path, capsys):
    """--exposures is not allowed with --input_dir: a batch bracket without EXIF times is told to use its folder's
    exposure.txt."""
    src = tmp_path / 'in'
    _one_bracket_batch(src, bracket['tif'])
    rc, cap = _run(capsys, _batch_args(bracket, src, '--output_dir', tmp_path / 'out', '-q'))
    assert rc == 2 and f'no EXIF ExposureTime; write them to {src / "a" / "exposure.txt"}' in cap.err


def test_batch_skips_failing_brackets_and_reports_them(bracket, tmp_path, capsys):
    src, out = tmp_path / 'in', tmp_path / 'out'
    _write_batch(src, bracket)
    rc, cap = _run(capsys, ['--input_dir', src, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', out])
    assert rc == 2
    written = sorted(p.name for p in out.iterdir())
    assert written == ['good_jpg.exr', 'good_jpg.hdr', 'good_jpg.png', 'good_tif.exr', 'good_tif.hdr', 'good_tif.png',
                       'index.html', 'index_files']
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temporaries left
    # the summary table: one row per bracket with something in it, the failures naming the file
    lines = {ln.split()[0]: ln for ln in cap.out.splitlines() if ln.split() and ln.split()[0] in
             ('good_jpg', 'good_tif', 'two_frames', 'sizes_differ', 'bad_raw', 'bad_stops', 'empty')}
    assert set(lines) == {'good_jpg', 'good_tif', 'two_frames', 'sizes_differ', 'bad_raw', 'bad_stops'}
    assert ' ok ' in lines['good_jpg'] and ' ok ' in lines['good_tif']
    assert 'FAILED' in lines['two_frames'] and 'at least 3 frames' in lines['two_frames']
    assert 'FAILED' in lines['sizes_differ'] and 'small.jpg is 64x40' in lines['sizes_differ']
    assert 'FAILED' in lines['bad_raw'] and '2.dng' in lines['bad_raw']
    assert 'FAILED' in lines['bad_stops'] and str(Path('bad_stops') / 'exposure.txt') in lines['bad_stops']
    assert '200' in lines['bad_stops'] and '--exposures' not in lines['bad_stops']
    assert '2 of 6 brackets merged, 4 failed' in cap.out
    assert 'two_frames' in cap.err and 'bad_raw' in cap.err
    # the batch's outputs equal single runs on the same brackets
    single = merge(bracket['tif'], 'AHDRNet', bracket['ckpt'], exposures=['0', '2', '4'], exposures_in='stops')
    np.testing.assert_array_equal(read_exr(out / 'good_tif.exr'), single.hdr)


def test_batch_contact_sheet_shows_every_bracket_and_every_image_exists(bracket, tmp_path, capsys):
    """index.html: one row per bracket (preview linked to the PNG, classical merge, three inputs, the log line with
    the response and why), failures with their error; every <img> src is a relative path to a real JPEG."""
    import re
    from html.parser import HTMLParser

    src, out = tmp_path / 'in', tmp_path / 'out'
    _write_batch(src, bracket)
    rc, cap = _run(capsys, ['--input_dir', src, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', out])
    assert rc == 2 and f'contact sheet: {out / "index.html"}' in cap.out
    page = (out / 'index.html').read_text(encoding='utf-8')

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.links = [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == 'img':
                self.imgs.append(a['src'])
            elif tag == 'a':
                self.links.append(a['href'])

    parser = Collect()
    parser.feed(page)
    assert len(parser.imgs) == 2 * 5  # two merged brackets: preview, classical merge, short, medium, long
    for s in parser.imgs + parser.links:
        assert not s.startswith(('/', 'file:')) and (out / s).is_file(), s
    for s in parser.imgs:
        img = cv2.imread(str(out / s))
        assert img is not None and max(img.shape[:2]) <= 480
    assert sorted(parser.links) == ['good_jpg.png', 'good_tif.png']
    assert 'FAILED' in page and 'at least 3 frames' in page and '2.dng' in page
    assert re.search(r'good_jpg.*response (estimate|srgb) \(auto: ', page)
    assert '2 of 6 brackets merged' in page


def _chromium() -> str | None:
    import shutil

    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Injected into a copy of the page beside it (so relative links resolve the same way): once the page has loaded,
# list every <img> the browser could not decode or did not lay out, as JSON in a <pre> that --dump-dom prints.
_IMAGE_PROBE = """<script>
window.addEventListener('load', () => {
  const rows = [...document.images].map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight,
                                               shown: i.getBoundingClientRect().width}));
  const pre = document.createElement('pre');
  pre.id = 'image-probe';
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
</script>"""


def test_batch_contact_sheet_renders_in_headless_chromium(bracket, tmp_path, capsys):
    """The contact sheet as a browser shows it: Chromium (Debian's package, installed by .ci/run) loads index.html
    from disk and every image decodes to its file's size and takes room on the page."""
    import json
    import re
    import shutil
    import subprocess

    browser = _chromium()
    if browser is None:
        pytest.skip('chromium is not installed (.ci/run installs it: apt-get install chromium)')
    src, out = tmp_path / 'in', tmp_path / 'out'
    good = src / 'scene #1, 50% off'  # characters that mean something in a URL: the links must be quoted
    good.mkdir(parents=True)
    (src / 'two_frames').mkdir()
    for f in bracket['jpg']:
        shutil.copy(f, good / f.name)
    for f in bracket['jpg'][:2]:
        shutil.copy(f, src / 'two_frames' / f.name)
    rc, _ = _run(capsys, ['--input_dir', src, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                          '--output_dir', out, '-q'])
    assert rc == 2  # the two-frame bracket fails; its row must not break the page
    page = (out / 'index.html').read_text(encoding='utf-8')
    probe = out / 'probe.html'
    probe.write_text(page.replace('</body>', _IMAGE_PROBE + '</body>'), encoding='utf-8')
    # its own session (all its helper processes go with it on a timeout) and its own profile folder; headless
    # Chromium sometimes lingers after printing the page, so what it printed before a timeout counts
    import os
    import signal

    proc = subprocess.Popen([browser, '--headless', '--no-sandbox', '--disable-gpu', '--allow-file-access-from-files',
                             f'--user-data-dir={tmp_path / "chromium_profile"}', '--virtual-time-budget=10000',
                             '--window-size=1400,1000', '--dump-dom', probe.as_uri()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', stdout, re.S)
    assert found, f'chromium did not render the page (exit {proc.returncode}): {stderr[-2000:]}'
    import html as html_lib

    rows = json.loads(html_lib.unescape(found.group(1)))
    assert len(rows) == 5  # one merged bracket: preview, classical merge, short, medium, long
    from urllib.parse import unquote
    for row in rows:
        img = cv2.imread(str(out / unquote(row['src'])))
        assert (row['h'], row['w']) == img.shape[:2], row  # decoded by the browser, at the file's size
        assert row['shown'] > 0, row


def test_batch_all_good_exits_0(bracket, tmp_path, capsys):
    src = tmp_path / 'in'
    _one_bracket_batch(src, bracket['jpg'])
    rc, cap = _run(capsys, _batch_args(bracket, src, '--output_dir', tmp_path / 'out', '-q'))
    assert rc == 0, cap.err
    assert '1 of 1 brackets merged' in cap.out


@pytest.mark.parametrize('layout', ['empty', 'loose_files', 'missing'])
def test_batch_folder_with_nothing_usable(bracket, tmp_path, capsys, layout):
    import shutil

    src = tmp_path / 'in'
    if layout != 'missing':
        (src / 'notes').mkdir(parents=True)
        (src / 'notes' / 'readme.txt').write_text('no images here')
    if layout == 'loose_files':
        for f in bracket['jpg']:
            shutil.copy(f, src / f.name)
    rc, cap = _run(capsys, ['--input_dir', src, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', tmp_path / 'out'])
    assert rc == 2 and str(src) in cap.err
    assert ('own sub-folder' in cap.err) == (layout == 'loose_files')


def test_batch_refuses_single_bracket_flags(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, ['--input_dir', tmp_path, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--name', 'x'])
    assert rc == 2 and '--name' in cap.err


# ------------------------------------------------------------------------------------------ output formats

def test_all_formats_half_exr_and_compare(bracket, jpeg_result, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--output_dir', tmp_path, '--name', 's', '--formats', 'hdr',
                                 'exr', 'tiff', 'png', '--exr_type', 'half', '--compare', '--response', 'gamma2.2'))
    assert rc == 0, cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['s.exr', 's.hdr', 's.png', 's.tif', 's_compare.png']
    exr = read_exr(tmp_path / 's.exr')
    np.testing.assert_allclose(exr, jpeg_result.hdr, rtol=2 ** -11)  # half precision
    tif = cv2.imread(str(tmp_path / 's.tif'), cv2.IMREAD_UNCHANGED)
    assert tif.dtype == np.uint16
    np.testing.assert_allclose(tif / 65535.0, jpeg_result.hdr, atol=0.5 / 65535 + 1e-7)  # linear, no gamma
    sheet = cv2.imread(str(tmp_path / 's_compare.png'))
    assert sheet.shape[0] > H and sheet.shape[1] >= 5 * W  # five panels side by side, under a label bar
    # the fourth panel is the classical merge, tone-mapped like the preview
    from util.tonemap import tonemap
    bar = sheet.shape[0] - H
    x0 = 3 * (W + 6)
    classical = tonemap(np.maximum(jpeg_result.classical, 0), 'display')
    np.testing.assert_allclose(sheet[bar:, x0:x0 + W] / 255.0, classical, atol=1 / 255 + 1e-6)


def test_formats_subset(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--output_dir', tmp_path, '--name', 'only',
                                 '--formats', 'tiff'))
    assert rc == 0, cap.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['only.tif']
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--formats', 'jpg'))
    assert rc == 2 and 'jpg' in cap.err


# ------------------------------------------------------------------------------------------ mixed precision

def test_amp_bf16_merge_is_close_to_fp32(bracket, jpeg_result):
    """--amp bf16 runs the network under CPU autocast (emulated here: correct, not fast); the output stays fp32."""
    result = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], amp='bf16')
    assert result.hdr.dtype == np.float32 and np.isfinite(result.hdr).all()
    assert not np.array_equal(result.hdr, jpeg_result.hdr)  # autocast really ran
    assert metrics.psnr_mu(result.hdr, jpeg_result.hdr) > 35


def test_amp_fp16_on_cpu_is_a_clear_error(bracket, capsys):
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--amp', 'fp16'])
    assert rc == 2 and '--amp fp16 is not supported on the CPU' in cap.err


# ------------------------------------------------------------------------------------------ precision and memory

def test_defaults_are_amp_auto_and_tile_auto(bracket):
    from tools.merge_brackets import build_parser
    args = build_parser().parse_args(['--inputs', 'a', 'b', 'c', '--network', 'AHDRNet', '--checkpoint', 'x'])
    assert args.amp == 'auto' and args.tile == 'auto' and args.max_memory == 0


def test_tile_auto_is_the_whole_image_when_it_fits(bracket, jpeg_result):
    result = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2', tile='auto')
    np.testing.assert_array_equal(result.hdr, jpeg_result.hdr)


def test_tile_auto_tiles_within_the_budget_and_seams_stay_small(bracket, jpeg_result, monkeypatch, caplog):
    """A budget with room for 32-pixel tiles only (MIN_TILE lowered for the 48 x 64 bracket; the process's own
    memory counted as nothing): tiles run, and the result differs from the whole image only near the seams."""
    import util.tiling
    monkeypatch.setattr(util.tiling, 'MIN_TILE', 16)
    monkeypatch.setattr(util.tiling, 'resident_memory', lambda: 0)
    budget = 1.05 * util.tiling.forward_bytes(32, 32, 5701) + util.tiling.TILED_OUTPUT_BYTES_PER_PIXEL * H * W
    with caplog.at_level(logging.INFO, logger='util.tiling'):
        result = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2', tile='auto', tile_overlap=8,
                       max_memory=budget / util.tiling.GIB)
    assert 'tiles of at most 32 pixels' in caplog.text
    diff = np.abs(result.hdr - jpeg_result.hdr)
    assert diff.max() > 0  # tiles really ran
    assert diff.max() < 1e-2 and diff.mean() < 1e-3  # test_tiling's AHDR seams at overlap 8, with margin


def test_a_bracket_that_cannot_fit_says_what_to_change(bracket, tmp_path, capsys):
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--output_dir', tmp_path, '--max_memory', '0.01'))
    assert rc == 2
    assert 'medium.jpg' in cap.err and 'does not fit in memory' in cap.err and '--max_memory' in cap.err
    assert 'Traceback' not in cap.err


def test_raw_allocator_error_becomes_advice(bracket, tmp_path, capsys, monkeypatch):
    def failing_forward(self, *inputs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you "
                           'tried to allocate 18432000000 bytes. Error code 12 (Cannot allocate memory)')

    monkeypatch.setattr(AHDR, 'forward', failing_forward)
    rc, cap = _run(capsys, _args(bracket, bracket['jpg'], '--output_dir', tmp_path, '--tile', '0'))
    assert rc == 2
    assert 'out of memory' in cap.err and '--tile auto' in cap.err and 'DefaultCPUAllocator' not in cap.err


def test_amp_auto_follows_the_cpu(bracket, jpeg_result, monkeypatch):
    from models import base_model
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda flags=None: False)
    fp32 = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2', amp='auto')
    np.testing.assert_array_equal(fp32.hdr, jpeg_result.hdr)  # no native bf16: the fp32 path, bit for bit
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda flags=None: True)
    bf16 = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2', amp='auto')
    assert bf16.hdr.dtype == np.float32 and not np.array_equal(bf16.hdr, jpeg_result.hdr)
    assert metrics.psnr_mu(bf16.hdr, jpeg_result.hdr) > 35


@pytest.mark.parametrize('size', [(1, 1), (15, 64), (48, 3)])
def test_frames_too_small_to_merge_name_the_file(tmp_path, capsys, size):
    """Issue 21: 1x1-pixel frames were a raw OpenCV assertion from resize (pre-alignment); now a MergeError naming
    the first such file, exit code 2, before any network runs."""
    paths = []
    for i, v in enumerate((40, 120, 220)):
        paths.append(tmp_path / f'f{i}.png')
        cv2.imwrite(str(paths[-1]), np.full((*size, 3), v, np.uint8))
    with pytest.raises(MergeError, match=rf'{paths[0]}: frame size {size[1]}x{size[0]} pixels.*at least 16x16'):
        load_bracket(paths, exposures=['1/100', '1/25', '1/6'])
    rc, out = _run(capsys, ['--inputs', *paths, '--exposures', '1/100', '1/25', '1/6', '--network', 'AHDRNet',
                            '--checkpoint', tmp_path / 'unused.pth', '--output_dir', tmp_path / 'out'])
    assert rc == 2 and str(paths[0]) in out.err and 'at least 16x16' in out.err and 'Traceback' not in out.err


@pytest.mark.parametrize('flag, value', [('--gamma', 'nan'), ('--gamma', '0'), ('--preview_exposure', '1e39'),
                                         ('--max_memory', '-1'), ('--tile_overlap', '-5'), ('--tile', '-64'),
                                         ('--preview_exposure', 'inf')])
def test_numeric_flags_out_of_range_name_the_flag(bracket, capsys, flag, value):
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', bracket['ckpt'].parent / 'never', flag, value])
    assert rc == 2 and flag in cap.err and 'Traceback' not in cap.err
    assert not (bracket['ckpt'].parent / 'never').exists()  # refused before anything was read or written


def test_align_auto_follows_the_network(bracket, tmp_path, caplog):
    """--align auto (default): FSHDR, trained and tested on aligned frames, gets them; AHDRNet does not."""
    from models.fshdr import FSHDR
    from tools.merge_brackets import build_parser

    torch.manual_seed(0)
    ckpt = tmp_path / 'fshdr.pth'
    torch.save({'state_dict': FSHDR().state_dict()}, ckpt)
    assert merge(bracket['jpg'], 'FSHDR', ckpt).aligned
    assert not merge(bracket['jpg'], 'AHDRNet', bracket['ckpt']).aligned
    with caplog.at_level(logging.WARNING):
        assert not merge(bracket['jpg'], 'FSHDR', ckpt, align='off').aligned
    assert 'trained on aligned frames' in caplog.text
    parse = build_parser().parse_args
    common = ['--inputs', 'a', 'b', 'c', '--network', 'FSHDR', '--checkpoint', 'x']
    assert [parse(common + flag).align for flag in ([], ['--align'], ['--align', 'off'])] == ['auto', 'on', 'off']


def test_exposure_check_survives_motion_and_large_clipped_skies():
    """3-stop brackets with half the medium frame clipped, camera shake and moving objects: the check compares
    brightness distributions, so it neither refuses the true times (pixel-by-pixel ratios read 0.5 stops here)
    nor accepts times 3 stops off."""
    from photo.exposures import check_exposures_match_frames, measured_exposure_ratio
    from photo.response import resolve_response
    from util.synthetic import SynthConfig, list_hdr_files, load_sources, scene_rng, synthesize_scene

    root = Path(__file__).resolve().parents[1]
    sources = load_sources([f for f in list_hdr_files(root / 'datasets' / 'hdri') if f.stem == 'courtyard'])
    cfg = SynthConfig(size=(128, 192), stop_choices=(3.0,), normalisation='clipped', clipped_fraction=(0.5, 0.6),
                      max_translation=0.05, n_objects=(2, 3), object_motion=(0.1, 0.2), noise=False)
    gamma = resolve_response('gamma2.2')
    paths = ['short', 'medium', 'long']
    pair_stops, judged = [], 0
    for i in range(6):
        frames = synthesize_scene(sources, scene_rng(1, 'Test', i), cfg).ldrs
        a, b = frames[1], frames[2]
        ok = (a > 0.1) & (a < 0.9) & (b > 0.1) & (b < 0.9)
        pair_stops.append(float(np.log2(np.median(b[ok] ** 2.2 / a[ok] ** 2.2))))
        check_exposures_match_frames(paths, frames, np.array([1.0, 8.0, 64.0]), gamma)
        for x, y in zip(frames, frames[1:]):
            ratio = measured_exposure_ratio(x, y, gamma)
            if ratio is not None:
                judged += 1
                assert abs(np.log2(ratio) - 3.0) < 0.5
        with pytest.raises(MergeError, match='contradict'):
            check_exposures_match_frames(paths, frames, np.array([1.0, 64.0, 512.0]), gamma)
    assert min(pair_stops) < 1.5 and judged >= 8  # the old pixel-pair measure would have refused these brackets


def _fake_merge_with_a_tinted_shadow(calls):
    """A stand-in for photo.merge.merge whose result has a shadow the network tinted and the classical merge has
    right (tests/test_photo_io.py), so that the two kinds of preview differ."""
    from types import SimpleNamespace

    from test_photo_io import _merged_bracket

    def fake(inputs, *args, **kwargs):
        result = _merged_bracket()
        result.hdr[:8, :] = 1e-7  # a black band: the local contrast lifts the shadow above black, so its colour shows
        for frame in result.inputs:
            frame[:8, :] = 0.0
        paths = [Path(p) for p in inputs] if not isinstance(inputs, (str, Path)) else sorted(Path(inputs).iterdir())
        result.bracket = SimpleNamespace(times=result.bracket.times, paths=paths[:3], unused=[], kind='ldr',
                                         frames=result.inputs)
        result.response = SimpleNamespace(name='gamma2.2', why='')
        calls.append(result)
        return result
    return fake


@pytest.mark.parametrize('batch', [False, True])
def test_preview_shadows_flag_reaches_the_preview(bracket, tmp_path, capsys, monkeypatch, batch):
    from photo.outputs import preview
    from util.tonemap import to_uint8

    calls = []
    monkeypatch.setattr('tools.merge_brackets.merge', _fake_merge_with_a_tinted_shadow(calls))
    monkeypatch.setattr('photo.batch.merge', _fake_merge_with_a_tinted_shadow(calls))
    if batch:
        src = tmp_path / 'in' / 'scene'
        src.mkdir(parents=True)
        for f in bracket['jpg']:
            shutil.copy(f, src / Path(f).name)
    for shadows in ('merge', 'network'):
        out = tmp_path / shadows
        where = ['--input_dir', tmp_path / 'in'] if batch else ['--inputs', *bracket['jpg'], '--name', 'scene']
        rc, cap = _run(capsys, [*where, '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'], '--output_dir', out,
                                '--formats', 'png', '--preview_shadows', shadows])
        assert rc == 0, cap.err
        result = calls[-1]
        png = cv2.imread(str(out / 'scene.png'), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, to_uint8(preview(result, shadows=shadows)))
        # one preview made, shared by the .png and (in a batch) the contact sheet's thumbnail
        assert list(result.previews) == [('display', 0.0, shadows)]
    ours, theirs = (cv2.imread(str(tmp_path / s / 'scene.png')) for s in ('merge', 'network'))
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() > 10  # the tinted shadow is gone in one of them


def test_medium_gate_flag(bracket, jpeg_result, tmp_path, capsys):
    """A gated checkpoint merges through its gate by default; --medium_gate off gives the plain backbone's radiance;
    --medium_gate on with a checkpoint that has none is a clear error."""
    from models.medium_gate import MediumGate, gated_checkpoint

    torch.manual_seed(1)
    gate = MediumGate()
    gated = tmp_path / 'gated.pth'
    torch.save(gated_checkpoint(torch.load(bracket['ckpt'], weights_only=True)['state_dict'], gate), gated)
    outputs = {}
    for flag in ('auto', 'off'):
        rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', gated,
                                '--output_dir', tmp_path, '--name', flag, '--response', 'gamma2.2', '--formats', 'exr',
                                '--medium_gate', flag])
        assert rc == 0, cap.err
        outputs[flag] = read_exr(tmp_path / f'{flag}.exr')
    np.testing.assert_array_equal(outputs['off'], jpeg_result.hdr)
    assert np.abs(outputs['auto'] - outputs['off']).max() > 1e-3
    rc, cap = _run(capsys, ['--inputs', *bracket['jpg'], '--network', 'AHDRNet', '--checkpoint', bracket['ckpt'],
                            '--output_dir', tmp_path, '--medium_gate', 'on'])
    assert rc != 0 and 'has no medium gate' in cap.err


def test_channels_last_follows_auto_and_can_be_switched_off(bracket, monkeypatch):
    """bf16 on an AMX CPU merges in channels_last (faster there); 'false' keeps the default layout; same result."""
    from models import base_model
    from photo.merge import load_network
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': {'avx512_bf16', 'amx_bf16'})
    results = {}
    for flag in ('auto', 'false'):
        net = load_network('AHDRNet', bracket['ckpt'], 'cpu')
        results[flag] = merge(bracket['jpg'], 'AHDRNet', bracket['ckpt'], response='gamma2.2', amp='bf16', net=net,
                              channels_last=flag).hdr
        assert net.conv2.weight.is_contiguous(memory_format=torch.channels_last) == (flag == 'auto')
    assert metrics.psnr_mu(results['auto'], results['false']) > 45
