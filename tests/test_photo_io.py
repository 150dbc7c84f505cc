"""photo/outputs.py: half/float EXR, 16-bit linear TIFF, PNG, the comparison sheet, atomic writes."""
import cv2
import numpy as np
import pytest

from util.hdr_io import read_exr
from photo.outputs import OutputError, atomic_write, compare_sheet, write_exr, write_png8, write_tiff16


def _img(h=20, w=30, seed=0):
    return np.random.default_rng(seed).uniform(0.001, 0.999, (h, w, 3)).astype(np.float32)


@pytest.mark.parametrize('pixel_type, tol', [('float', 0.0), ('half', 2 ** -11)])
def test_exr_round_trip(tmp_path, pixel_type, tol):
    img = _img()
    write_exr(tmp_path / 'a.exr', img, pixel_type)
    back = read_exr(tmp_path / 'a.exr')
    np.testing.assert_allclose(back, img, rtol=tol, atol=0)
    if pixel_type == 'half':
        assert (tmp_path / 'a.exr').stat().st_size < 0.75 * (write_exr(tmp_path / 'f.exr', img).stat().st_size)


def test_exr_half_refuses_out_of_range(tmp_path):
    with pytest.raises(ValueError, match='half'):
        write_exr(tmp_path / 'big.exr', np.full((2, 2, 3), 1e6, np.float32), 'half')


def test_tiff16_is_linear_rgb(tmp_path):
    img = _img()
    write_tiff16(tmp_path / 'a.tif', img)
    back = cv2.imread(str(tmp_path / 'a.tif'), cv2.IMREAD_UNCHANGED)  # OpenCV gives BGR back
    assert back.dtype == np.uint16 and back.shape == img.shape
    np.testing.assert_allclose(back / 65535.0, img, atol=0.5 / 65535 + 1e-7)
    import tifffile
    with tifffile.TiffFile(tmp_path / 'a.tif') as tif:  # the file itself holds 16-bit RGB
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.bitspersample == 16
        assert page.samplesperpixel == 3


def test_png_and_bad_inputs(tmp_path):
    write_png8(tmp_path / 'a.png', _img())
    assert cv2.imread(str(tmp_path / 'a.png')).shape == (20, 30, 3)
    with pytest.raises(ValueError, match='NaN'):
        write_png8(tmp_path / 'n.png', np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match='.tif'):
        write_tiff16(tmp_path / 'a.png', _img())
    with pytest.raises(OutputError, match='does not exist'):
        write_png8(tmp_path / 'missing' / 'a.png', _img())


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / 'out.png'
    write_png8(target, _img(seed=1))
    before = target.read_bytes()

    def broken(tmp):
        with open(tmp, 'wb') as fh:
            fh.write(b'half')
        raise OSError('disk full')

    with pytest.raises(OutputError, match='out.png.*disk full'):
        atomic_write(target, broken)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out.png']  # no temporary left


def test_compare_sheet_layout():
    panels = [('short', _img(40, 60)), ('medium', _img(40, 60, 1)), ('network', _img(80, 120, 2))]
    sheet = compare_sheet(panels, gap=4)
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 60 * 3 + 2 * 4
    bar = sheet.shape[0] - 40
    assert bar > 5 and (sheet[:bar] > 200).any()  # label text drawn in the bar
    np.testing.assert_allclose(sheet[bar:, :60] / 255.0, panels[0][1], atol=0.5 / 255 + 1e-6)


def _merged_bracket():
    """A MergeResult whose network output has a magenta-tinted shadow; its frames (training encoding) merge
    classically to the right green."""
    from types import SimpleNamespace

    from photo.merge import MergeResult

    rng = np.random.default_rng(3)
    times = np.array([1.0, 4.0, 16.0])
    radiance = np.empty((48, 64, 3), np.float32)
    radiance[:, :32] = np.array([0.2, 0.5, 0.3]) * 2e-3   # a green shadow, well exposed only in the long frame
    radiance[:, 32:] = np.array([0.6, 0.5, 0.4]) * 0.2    # a bright wall
    frames = [np.clip(radiance * t * (1 + 0.02 * rng.standard_normal(radiance.shape)), 0, 1) ** (1 / 2.2)
              for t in times]
    hdr = radiance.copy()
    hdr[:, :32] *= np.array([1.15, 0.88, 1.15], np.float32)  # 7.5 degrees off: within what the guide trusts
    bracket = SimpleNamespace(times=times)
    return MergeResult(hdr=hdr, bracket=bracket, network='AHDRNet', response=None, aligned=False,
                       inputs=[f.astype(np.float32) for f in frames])


def test_preview_shadows_from_the_merge_by_default():
    from photo.errors import MergeError
    from photo.outputs import preview
    from util.tonemap import tonemap

    result = _merged_bracket()
    own = tonemap(result.hdr, 'display')
    np.testing.assert_array_equal(preview(result, shadows='network'), own)
    merged = preview(result)
    green = np.array([0.2, 0.5, 0.3])

    def angle(img):
        cos = (img @ green) / (np.linalg.norm(img, axis=2) * np.linalg.norm(green) + 1e-20)
        return float(np.median(np.degrees(np.arccos(np.clip(cos, -1, 1)))))

    assert angle(own[:, 4:28]) > 6.0 and angle(merged[:, 4:28]) < 2.0
    np.testing.assert_allclose(merged[:, 40:], own[:, 40:], atol=1e-6)
    # other operators have no shadow fit: the flag changes nothing there
    np.testing.assert_array_equal(preview(result, 'reinhard'), preview(result, 'reinhard', shadows='network'))
    with pytest.raises(MergeError, match='preview_shadows'):
        preview(result, shadows='classical')
