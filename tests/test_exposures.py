"""Tests of util/exposures.py: the three data sets' exposure files and frame selection."""
import numpy as np
import pytest

from util.exposures import (ExposureFileError, list_frames, parse_values, read_sen_exposures, read_sig17_exposures,
                            read_tursun_exposures, scene_frames_and_times, select_frames, sen_middle_indices)


def _write(path, text):
    path.write_text(text)
    return path


def test_sig17_stops_to_times(tmp_path):
    p = _write(tmp_path / 'exposure.txt', '0\n2.0\n\n4 \n')
    t = read_sig17_exposures(p)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t, [1.0, 4.0, 16.0])
    np.testing.assert_allclose(read_sig17_exposures(_write(tmp_path / 'e2.txt', '-1.5 0 1.5')),
                               [2 ** -1.5, 1.0, 2 ** 1.5], rtol=1e-7)


@pytest.mark.parametrize('text,match', [
    ('0\n2\n', 'expected 3 exposure values'),
    ('0\n2\n4\n6\n', 'expected 3 exposure values'),
    ('0\ntwo\n4\n', "non-numeric value 'two'"),
    ('0\n4\n2\n', 'must increase strictly'),
    ('0\n0\n2\n', 'must increase strictly'),
    ('', 'empty'),
    ('0\nnan\n2\n', 'non-finite'),
    # 2**200 overflows float32 to inf: refused at the door instead of training on it (issue 21)
    ('0 3 200', r"exposure value \(stops\) must be in \[-32, 32\], got 200.0 \(token '200'\)"),
    ('-40 0 3', r'must be in \[-32, 32\], got -40'),
    ('0 3 1e400', 'non-finite'),
])
def test_sig17_errors_name_the_file(tmp_path, text, match):
    p = _write(tmp_path / 'exposure.txt', text)
    with pytest.raises(ExposureFileError, match=match) as info:
        read_sig17_exposures(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize('text, match', [('1/250 1/60 1e7', r'must be in \[1e-09, 1e\+06\], got 10000000.0'),
                                         ('1/0 1 2', "non-numeric value '1/0'"), ('0 1 2', 'must be positive')])
def test_times_in_seconds_are_range_checked(tmp_path, text, match):
    p = _write(tmp_path / 'exposures.txt', text)
    with pytest.raises(ExposureFileError, match=match) as info:
        parse_values(p, 'seconds')
    assert str(p) in str(info.value)


def test_extreme_but_allowed_stops_stay_finite_in_float32(tmp_path):
    t = read_sig17_exposures(_write(tmp_path / 'exposure.txt', '-32 0 32'))
    assert np.isfinite(t).all() and np.isfinite(1 / t).all()


def test_missing_file(tmp_path):
    with pytest.raises(ExposureFileError, match='does not exist'):
        read_sig17_exposures(tmp_path / 'exposure.txt')


def test_sen_middle_three_normalised(tmp_path):
    assert sen_middle_indices(3) == (0, 1, 2)
    assert sen_middle_indices(5) == (1, 2, 3)
    assert sen_middle_indices(4) == (0, 1, 2)
    p = _write(tmp_path / 'exposures.txt', '-2 -1 0 1 2\n')
    np.testing.assert_array_equal(read_sen_exposures(p, n_frames=5), [1.0, 2.0, 4.0])
    with pytest.raises(ExposureFileError, match='5 exposure values for 4 frames'):
        read_sen_exposures(p, n_frames=4)
    s = _write(tmp_path / 'seconds.txt', '1/400 1/100 1/25')
    np.testing.assert_allclose(read_sen_exposures(s, unit='seconds'), [1.0, 4.0, 16.0], rtol=1e-6)
    with pytest.raises(ExposureFileError, match="non-numeric value '1/400'"):
        read_sen_exposures(s)  # fractions are only accepted as seconds


def test_tursun_frames_5_7_9(tmp_path):
    p = _write(tmp_path / 'exposure.txt', '\n'.join(str(v) for v in range(-4, 5)))  # 9 frames, 1 stop apart
    np.testing.assert_array_equal(read_tursun_exposures(p, n_frames=9), [1.0, 4.0, 16.0])  # stops 0, 2, 4
    with pytest.raises(ExposureFileError, match='at least 9'):
        read_tursun_exposures(_write(tmp_path / 'short.txt', '0 1 2 3'))


def test_parse_values_unit_check(tmp_path):
    p = _write(tmp_path / 'e.txt', '1 2 3')
    with pytest.raises(ValueError, match='unit'):
        parse_values(p, unit='ev')
    with pytest.raises(ExposureFileError, match='positive'):
        parse_values(_write(tmp_path / 'z.txt', '0 1 2'), unit='seconds')


def _scene(tmp_path, names, expo_name, expo_text):
    d = tmp_path / 'scene'
    d.mkdir()
    for n in names:
        (d / n).write_bytes(b'')
    (d / 'HDRImg.hdr').write_bytes(b'')
    (d / expo_name).write_text(expo_text)
    return d


def test_scene_frames_sig17_sorted(tmp_path):
    d = _scene(tmp_path, ['c.tif', 'a.tif', 'b.TIF'], 'exposure.txt', '0 2 4')
    frames, t = scene_frames_and_times(d, 'sig17')
    assert [f.name for f in frames] == ['a.tif', 'b.TIF', 'c.tif']
    np.testing.assert_array_equal(t, [1, 4, 16])


def test_scene_frames_counts(tmp_path):
    d = _scene(tmp_path, ['a.tif', 'b.tif'], 'exposure.txt', '0 2 4')
    with pytest.raises(ExposureFileError, match='expected 3 frames for sig17, found 2'):
        scene_frames_and_times(d, 'sig17')
    names = [f'im_{i}.tiff' for i in range(1, 10)]
    frames = [tmp_path / n for n in names]
    assert [f.name for f in select_frames(frames, 'tursun')] == ['im_5.tiff', 'im_7.tiff', 'im_9.tiff']
    assert [f.name for f in select_frames(frames[:5], 'sen')] == ['im_2.tiff', 'im_3.tiff', 'im_4.tiff']
    with pytest.raises(ValueError, match='unknown dataset'):
        list_frames(tmp_path, 'kalantari')


def test_scene_frames_sen(tmp_path):
    d = _scene(tmp_path, [f'{i}.tif' for i in range(5)], 'exposures.txt', '-4 -2 0 2 4')
    frames, t = scene_frames_and_times(d, 'sen')
    assert [f.name for f in frames] == ['1.tif', '2.tif', '3.tif']
    np.testing.assert_array_equal(t, [1, 4, 16])
