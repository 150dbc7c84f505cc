"""photo/raw.py on DNG files the tests build themselves: linear output, white balance, exposure metadata, errors."""
import numpy as np
import pytest

from dng_maker import write_dng
from photo.raw import RawReadError, is_raw, read_raw, relative_exposure

H, W = 32, 48


def _grey_ramp():
    v = np.linspace(0.02, 0.95, W)
    return np.repeat(np.tile(v, (H, 1))[:, :, None], 3, axis=2)


def test_is_raw():
    assert is_raw('a.DNG') and is_raw('b.nef') and is_raw('c.CR3') and not is_raw('d.tif') and not is_raw('e.jpg')


def test_output_is_linear_in_the_raw_values(tmp_path):
    frame = read_raw(write_dng(tmp_path / 'ramp.dng', _grey_ramp()))
    assert frame.linear.shape == (H, W, 3) and frame.linear.dtype == np.float32
    inner = frame.linear[4:-4, 4:-4]                    # away from the demosaicing border
    x = _grey_ramp()[4:-4, 4:-4, 1].ravel()
    for c in range(3):
        y = inner[..., c].ravel()
        slope, icept = np.polyfit(x, y, 1)
        # proportional (no offset, no curve), and the white level is 1 (the camera is linear sRGB)
        assert abs(slope - 1) < 0.01 and abs(icept) < 0.005
        assert np.abs(y - (slope * x + icept)).max() < 0.005


def test_twice_the_light_gives_twice_the_value(tmp_path):
    a = read_raw(write_dng(tmp_path / 'a.dng', _grey_ramp() * 0.4)).linear[4:-4, 4:-4]
    b = read_raw(write_dng(tmp_path / 'b.dng', _grey_ramp() * 0.8)).linear[4:-4, 4:-4]
    np.testing.assert_allclose(np.median(b / a), 2.0, rtol=0.01)


def test_camera_white_balance_is_applied(tmp_path):
    # A sensor that sees the red channel half as strongly: the as-shot neutral (0.5, 1, 1) makes grey grey again.
    frame = read_raw(write_dng(tmp_path / 'wb.dng', _grey_ramp() * 0.8, neutral=(0.5, 1.0, 1.0)))
    inner = frame.linear[4:-4, 4:-4]
    assert frame.camera_wb[0] == pytest.approx(2 * frame.camera_wb[1], rel=1e-3)
    ratio = np.median(inner[..., 2] / inner[..., 1])  # R / G in BGR
    assert ratio == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize('exposure, seconds', [((1, 50), 0.02), ((1, 4), 0.25), ((2, 1), 2.0)])
def test_exposure_time_from_metadata(tmp_path, exposure, seconds):
    frame = read_raw(write_dng(tmp_path / 'e.dng', _grey_ramp(), exposure=exposure))
    assert frame.shutter_s == pytest.approx(seconds, rel=1e-6)


def test_missing_exposure_time_is_none(tmp_path):
    frames = [read_raw(write_dng(tmp_path / 'a.dng', _grey_ramp(), exposure=(1, 50))),
              read_raw(write_dng(tmp_path / 'b.dng', _grey_ramp(), exposure=None))]
    times, what = relative_exposure(frames)
    assert times[0] == pytest.approx(0.02) and times[1] is None and what == 'shutter time'


def test_iso_enters_the_exposure_when_it_differs(tmp_path):
    frames = [read_raw(write_dng(tmp_path / f'{i}.dng', _grey_ramp() * (i + 1) / 4, exposure=(1, 50), iso=iso))
              for i, iso in enumerate((100, 400))]
    if not all(f.iso > 0 for f in frames):
        pytest.skip('this LibRaw does not read ISOSpeedRatings from IFD0 of a DNG')
    times, what = relative_exposure(frames)
    assert times[1] / times[0] == pytest.approx(4.0) and 'ISO' in what


def _meta(shutter, iso=0.0, aperture=0.0):
    """A RawFrame with constructed metadata: the ISO / f-number branches run whatever LibRaw reads from a DNG."""
    from photo.raw import RawFrame
    return RawFrame(path=None, linear=np.zeros((1, 1, 3), np.float32), shutter_s=shutter, iso=iso, aperture=aperture,
                    camera_wb=(1.0, 1.0, 1.0, 1.0))


def test_iso_branch_on_constructed_metadata():
    times, what = relative_exposure([_meta(0.02, iso=100), _meta(0.02, iso=400), _meta(0.01, iso=1600)])
    assert times == pytest.approx([0.02, 0.08, 0.16]) and what == 'shutter time x ISO'
    # equal ISOs (or one frame without ISO) leave ISO out
    assert relative_exposure([_meta(0.02, iso=200), _meta(0.04, iso=200)]) == ([0.02, 0.04], 'shutter time')
    assert relative_exposure([_meta(0.02, iso=200), _meta(0.04, iso=0)])[1] == 'shutter time'


def test_f_number_branch_on_constructed_metadata():
    times, what = relative_exposure([_meta(0.02, aperture=4.0), _meta(0.02, aperture=2.0)])
    assert times == pytest.approx([0.02 / 16, 0.02 / 4]) and what == 'shutter time / f-number^2'
    times, what = relative_exposure([_meta(0.02, iso=100, aperture=4.0), _meta(0.02, iso=200, aperture=2.0)])
    assert times == pytest.approx([0.02 * 1 / 16, 0.02 * 2 / 4]) and what == 'shutter time x ISO / f-number^2'


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -100.0, 1e30])
def test_implausible_iso_or_f_number_counts_as_missing(bad):
    assert relative_exposure([_meta(0.02, iso=bad), _meta(0.04, iso=400)]) == ([0.02, 0.04], 'shutter time')
    assert relative_exposure([_meta(0.02, aperture=bad), _meta(0.04, aperture=2.0)]) == ([0.02, 0.04], 'shutter time')
    assert relative_exposure([_meta(bad), _meta(0.04)])[0][0] is None  # no usable shutter time


@pytest.mark.parametrize('content', [b'', b'not a raw file at all' * 100])
def test_unreadable_raw_names_the_file(tmp_path, content):
    bad = tmp_path / 'broken.nef'
    bad.write_bytes(content)
    with pytest.raises(RawReadError, match='broken.nef'):
        read_raw(bad)


def test_missing_raw_names_the_file(tmp_path):
    with pytest.raises(RawReadError, match='nope.dng.*does not exist'):
        read_raw(tmp_path / 'nope.dng')
