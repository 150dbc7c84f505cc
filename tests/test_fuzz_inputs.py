"""Fuzzing what users hand us (issue 21): the frame readers (TIFF, PNG, JPEG, Radiance HDR, OpenEXR, DNG RAW) on
damaged bytes, exposure files, EXIF exposure times, response tables and the options. Every outcome is a result that
holds (finite, in range) or one of the project's own errors naming the input; never a raw library exception, never
a hang (each call runs under an alarm). Small and derandomised here; `python bench/fuzz.py` runs the long profile.
Inputs the fuzzing found are kept as explicit regression tests at the end."""
import contextlib
import io
import math
import signal

import cv2
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from fuzz_inputs import FUZZ, mutations
from util.exposures import ExposureFileError, parse_values, read_sig17_exposures
from util.flags import SECONDS_RANGE, STOPS_RANGE
from util.hdr_io import ImageReadError, read_exr, read_hdr, read_ldr_bits, write_exr, write_hdr

CALL_SECONDS = 20  # far above any honest decode of these tiny files


@contextlib.contextmanager
def no_hang(what):
    def _alarm(signum, frame):
        raise TimeoutError(f'{what}: no answer within {CALL_SECONDS} s')
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CALL_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _image(h=6, w=5, seed=0):
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def _encoded(ext, dtype=np.uint8):
    scale = 65535 if dtype == np.uint16 else 255
    ok, buf = cv2.imencode(ext, (_image() * scale).astype(dtype))
    assert ok
    return buf.tobytes()


def _file_bytes(tmp_path_factory, name, write):
    path = tmp_path_factory.mktemp('seed') / name
    write(path)
    return path.read_bytes()


@pytest.fixture(scope='module')
def seeds(tmp_path_factory):
    return {
        'png8': _encoded('.png'), 'png16': _encoded('.png', np.uint16), 'tif16': _encoded('.tif', np.uint16),
        'tif8': _encoded('.tif'), 'jpg': _encoded('.jpg'),
        'hdr': _file_bytes(tmp_path_factory, 's.hdr', lambda p: write_hdr(p, _image() * 4)),
        'exr': _file_bytes(tmp_path_factory, 's.exr', lambda p: write_exr(p, _image() * 4)),
    }


def _check_ldr(path):
    with no_hang(path):
        try:
            img, bits = read_ldr_bits(path)
        except ImageReadError as exc:
            assert str(path) in str(exc)
            return
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3 and bits in (8, 16)
    assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1


def _check_radiance(reader, path):
    with no_hang(path):
        try:
            img = reader(path)
        except ImageReadError as exc:
            assert str(path) in str(exc)
            return
    assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3 and np.isfinite(img).all()


@pytest.mark.parametrize('kind', ['png8', 'png16', 'tif16', 'tif8', 'jpg'])
@FUZZ
@given(data=st.data())
def test_ldr_reader_on_damaged_files(seeds, tmp_path, kind, data):
    path = tmp_path / f'frame.{kind[:3]}'
    path.write_bytes(data.draw(mutations(seeds[kind])))
    _check_ldr(path)


@pytest.mark.parametrize('kind, reader', [('hdr', read_hdr), ('exr', read_exr)])
@FUZZ
@given(data=st.data())
def test_radiance_readers_on_damaged_files(seeds, tmp_path, kind, reader, data):
    path = tmp_path / f'label.{kind}'
    path.write_bytes(data.draw(mutations(seeds[kind])))
    _check_radiance(reader, path)


@FUZZ
@given(blob=st.binary(max_size=64))
def test_readers_on_arbitrary_bytes(tmp_path, blob):
    for ext in ('png', 'tif', 'jpg'):
        (tmp_path / f'x.{ext}').write_bytes(blob)
        _check_ldr(tmp_path / f'x.{ext}')
    (tmp_path / 'x.hdr').write_bytes(blob)
    _check_radiance(read_hdr, tmp_path / 'x.hdr')


# --------------------------------------------------------------------------------------------- exposure files
_TOKENS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10 ** 6, 10 ** 6).map(str),
                    st.sampled_from(['200', '-33', '1e400', '1/0', '1/250', 'nan', '0x10', '', '1_0', '٣']),
                    st.text(max_size=6))


@FUZZ
@given(tokens=st.lists(_TOKENS, max_size=5), unit=st.sampled_from(['stops', 'seconds']),
       raw=st.one_of(st.none(), st.binary(max_size=24)))
def test_exposure_file_parser(tmp_path, tokens, unit, raw):
    path = tmp_path / 'exposure.txt'
    if raw is None:
        path.write_text(' '.join(tokens), encoding='utf-8')
    else:
        path.write_bytes(raw)
    with no_hang(path):
        try:
            values = parse_values(path, unit)
            times = read_sig17_exposures(path) if unit == 'stops' else None
        except ExposureFileError as exc:
            assert str(path) in str(exc)
            return
    lo, hi = STOPS_RANGE if unit == 'stops' else SECONDS_RANGE
    assert np.isfinite(values).all() and values.min() >= lo and values.max() <= hi
    if times is not None:
        assert np.isfinite(times).all() and np.isfinite(1 / times).all()


# ---------------------------------------------------------------------------------------------- EXIF times
_EXIF_VALUES = st.one_of(
    st.tuples(st.integers(-2 ** 64, 2 ** 64), st.integers(-2 ** 64, 2 ** 64)),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 400, 10 ** 400),
    st.text(max_size=12), st.binary(max_size=12), st.lists(st.integers(0, 10), max_size=3),
    st.sampled_from(['1/0', '1e400', '0', '-1/250', str(10 ** 400), '1/' + '9' * 400]))


@FUZZ
@given(value=_EXIF_VALUES)
@example(value=(10 ** 400, 1))   # regression: num/den overflowed float division (OverflowError)
@example(value=str(10 ** 400))   # regression: float(Fraction(...)) OverflowError
@example(value=(1, 10 ** 30))    # regression: 1e-30 s passed, 1/t overflows float32
def test_exif_exposure_time_values(value):
    from photo.errors import MergeError
    from photo.exposures import _exif_value_to_seconds
    try:
        seconds = _exif_value_to_seconds(value, 'IMG_1.JPG')
    except MergeError as exc:
        assert 'IMG_1.JPG' in str(exc)
        return
    assert SECONDS_RANGE[0] <= seconds <= SECONDS_RANGE[1]


@pytest.fixture(scope='module')
def exif_jpeg():
    from PIL import Image
    from PIL.TiffImagePlugin import IFDRational
    image = Image.fromarray((_image() * 255).astype(np.uint8))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x829A] = IFDRational(1, 250)
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', exif=exif)
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_exif_reader_on_damaged_jpegs(exif_jpeg, tmp_path, data):
    from photo.errors import MergeError
    from photo.exposures import read_exposure_time
    path = tmp_path / 'IMG_1.JPG'
    path.write_bytes(data.draw(mutations(exif_jpeg)))
    with no_hang(path):
        try:
            seconds = read_exposure_time(path)
        except MergeError as exc:
            assert str(path) in str(exc)
            return
    assert seconds is None or SECONDS_RANGE[0] <= seconds <= SECONDS_RANGE[1]


@FUZZ
@given(values=st.lists(st.one_of(_TOKENS, st.sampled_from(['2000', '-2000', '1/3'])), min_size=1, max_size=4),
       unit=st.sampled_from(['seconds', 'stops']))
@example(values=['2000'], unit='stops')  # regression: 2.0 ** 2000 raised OverflowError
def test_exposures_flag(values, unit):
    from photo.errors import MergeError
    from photo.exposures import parse_exposures
    try:
        times = parse_exposures(values, unit)
    except MergeError as exc:
        assert '--exposures' in str(exc)
        return
    assert all(math.isfinite(t) and t > 0 and math.isfinite(1 / t) for t in times)


# ------------------------------------------------------------------------------------------ response tables
def _valid_csv():
    codes = np.arange(256)
    curve = (codes / 255.0) ** 2.2
    return 'code,B,G,R\n' + '\n'.join(f'{z},{v:.6g},{v:.6g},{v:.6g}' for z, v in zip(codes, curve)) + '\n'


@FUZZ
@given(data=st.data(), ext=st.sampled_from(['.csv', '.npy']))
def test_response_table_files(tmp_path, data, ext):
    from photo.response import ResponseError, load_response
    if ext == '.csv':
        seed = _valid_csv().encode()
    else:
        buffer = io.BytesIO()
        np.save(buffer, np.linspace(0, 1, 256 * 3).reshape(256, 3))
        seed = buffer.getvalue()
    path = tmp_path / f'camera{ext}'
    path.write_bytes(data.draw(mutations(seed)))
    with no_hang(path):
        try:
            table = load_response(path)
        except ResponseError as exc:
            assert str(path) in str(exc)
            return
    assert table.shape == (256, 3) and np.isfinite(table).all()


@pytest.mark.parametrize('array', [np.array(['a'] * 256), np.zeros(256, dtype=[('x', 'f4'), ('y', 'f4')]),
                                   np.full((256, 3), 1e308), np.zeros((0,)), np.array(5.0)],
                         ids=['strings', 'structured', 'huge', 'empty', 'scalar'])
def test_response_npy_of_the_wrong_kind_names_the_file(tmp_path, array):
    """Regressions: a .npy of strings or of a structured dtype was a raw ValueError/TypeError from NumPy."""
    from photo.response import ResponseError, load_response
    path = tmp_path / 'camera.npy'
    np.save(path, array)
    try:
        table = load_response(path)
    except ResponseError as exc:
        assert str(path) in str(exc)
    else:
        assert np.isfinite(table).all()


def test_response_npy_with_a_damaged_header_names_the_file(tmp_path):
    """Regression found by the fuzzing: NumPy's header parser raised tokenize.TokenError / SyntaxError."""
    from photo.response import ResponseError, load_response
    buffer = io.BytesIO()
    np.save(buffer, np.linspace(0, 1, 256 * 3).reshape(256, 3))
    path = tmp_path / 'camera.npy'
    path.write_bytes(buffer.getvalue().replace(b"False, 'shape': (", b'F', 1))
    with pytest.raises(ResponseError, match=str(path)):
        load_response(path)


# -------------------------------------------------------------------------------------------------- options
_NUMERIC_FLAGS = ['lr', 'beta1', 'beta2', 'weight_decay', 'init_gain', 'batch_size', 'patch_size', 'niter',
                  'iters_per_epoch', 'tile', 'tile_overlap', 'max_dataset_size', 'seed', 'lr_decay_iters']
_FLAG_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10 ** 20, 10 ** 20)
                         .map(str), st.sampled_from(['1e39', '1e-50', '0', '-0', 'inf', 'nan', '1e10', 'abc', '']))


@FUZZ
@given(flag=st.sampled_from(_NUMERIC_FLAGS), value=_FLAG_VALUES)
def test_training_options(tmp_path, capsys, flag, value):
    """Any value of a numeric flag parses into a usable number or stops with the flag's name (argparse's own
    'invalid int value' errors name it too)."""
    from options.train_options import TrainOptions
    args = ['--dataroot', str(tmp_path), '--name', 'x', '--model', 'selfhdr1', '--network', 'AHDRNet',
            '--gpu_ids', '-1', f'--{flag}', value]
    try:
        opt = TrainOptions().parse(args)
    except SystemExit as exc:
        assert exc.code == 2
        assert f'--{flag}' in capsys.readouterr().err
        return
    capsys.readouterr()
    number = getattr(opt, flag)
    assert number == float('inf') if flag == 'max_dataset_size' and number == float('inf') else math.isfinite(number)
    if flag == 'lr':
        assert 0 < number <= 1


# ------------------------------------------------------------------------------------------------------ RAW
@pytest.fixture(scope='module')
def dng_bytes(tmp_path_factory):
    from dng_maker import write_dng
    path = tmp_path_factory.mktemp('dng') / 'seed.dng'
    write_dng(path, np.full((16, 16, 3), 0.3), exposure=(1, 50), iso=100)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_raw_reader_on_damaged_dng(dng_bytes, tmp_path, data):
    from photo.raw import RawReadError, read_raw
    path = tmp_path / 'IMG_1.dng'
    path.write_bytes(data.draw(mutations(dng_bytes)))
    with no_hang(path):
        try:
            frame = read_raw(path)
        except RawReadError as exc:
            assert str(path) in str(exc)
            return
    assert frame.linear.ndim == 3 and np.isfinite(frame.linear).all()
