"""Tests of util/hdr_io.py: RGBE / EXR / LDR round trips, RLE, atomic writes and error messages."""
import os
import struct

import cv2
import numpy as np
import pytest

from util.hdr_io import (ImageReadError, read_exr, read_hdr, read_ldr, read_radiance, write_exr, write_hdr,
                         write_ldr8, write_ldr16, write_radiance)


def _rgbe_lsb_bound(img):
    """One RGBE mantissa step of each pixel's largest channel, for every channel (upper bound of
    OpenCV's truncating encode/decode error)."""
    m = img.max(axis=2, keepdims=True)
    _, e = np.frexp(m)
    return np.ldexp(1.0, e.astype(np.int64) - 8) * np.ones_like(img)


def _parse_flat_rgbe(path):
    """Tiny independent reader for *uncompressed* RGBE, returning RGB float64 (truncating decode)."""
    data = open(path, 'rb').read()
    head, _, body = data.partition(b'\n\n')
    dims, _, pixels = body.partition(b'\n')
    _, h, _, w = dims.split()
    arr = np.frombuffer(pixels, np.uint8).reshape(int(h), int(w), 4).astype(np.float64)
    scale = np.where(arr[..., 3:] > 0, np.ldexp(1.0, arr[..., 3:].astype(np.int64) - 136), 0.0)
    return head, arr[..., :3] * scale


def test_rgbe_round_trip_zeros_and_extremes(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 10, size=(12, 40, 3)).astype(np.float32)
    img[0, :5] = 0.0                      # black pixels must come back as exact zeros
    img[1, :5] = 1e-20                    # tiny, far inside RGBE's range (2**-128 ~ 3e-39)
    img[2, :5] = 1e20                     # huge
    img[3, :5] = [1e-30, 1e30, 5.0]       # channels far below the largest round to 0
    img[4, :5] = [1.0, 2.0, 3.0]          # exactly representable
    path = tmp_path / 'x.hdr'
    write_hdr(path, img)
    back = read_hdr(path)
    assert back.dtype == np.float32 and back.shape == img.shape
    assert np.all(back[0, :5] == 0.0)
    np.testing.assert_array_equal(back[4, :5], img[4, :5])
    np.testing.assert_array_equal(back[3, :5, [0, 2]].T, np.array([[0.0, 0.0]] * 5, np.float32))
    err = np.abs(back.astype(np.float64) - img.astype(np.float64))
    assert np.all(err <= _rgbe_lsb_bound(img.astype(np.float64)) * 1.0001)
    # the relative error of the largest channel is at most 1/128
    rel = err[1:3, :5] / img[1:3, :5]
    assert rel.max() < 1 / 128 and back[2, 0, 0] > 9.9e19


def test_hdr_file_is_rgb_and_matches_independent_decoder(tmp_path):
    img = np.zeros((3, 4, 3), np.float32)
    img[..., 0] = 0.25  # B
    img[..., 2] = 4.0   # R
    path = tmp_path / 'flat.hdr'
    # write flat (uncompressed) with OpenCV directly so our tiny parser can read it
    cv2.imwrite(str(path), img, [cv2.IMWRITE_HDR_COMPRESSION, cv2.IMWRITE_HDR_COMPRESSION_NONE])
    head, rgb = _parse_flat_rgbe(path)
    assert b'32-bit_rle_rgbe' in head
    np.testing.assert_allclose(rgb[..., 0], 4.0)   # file holds R first
    np.testing.assert_allclose(rgb[..., 2], 0.25)
    np.testing.assert_array_equal(read_hdr(path), img)


def test_read_rle_hdr(tmp_path):
    """Our writer produces new-style run-length encoded scanlines (width 8..32767), and we read them."""
    rng = np.random.default_rng(1)
    img = np.repeat(rng.uniform(0.1, 2, size=(6, 1, 3)), 64, axis=1).astype(np.float32)  # long runs
    img[:, 10:20] = rng.uniform(0.1, 2, size=(6, 10, 3))
    path = tmp_path / 'rle.hdr'
    write_hdr(path, img)
    raw = path.read_bytes()
    body = raw.partition(b'\n\n')[2].partition(b'\n')[2]
    assert body[:2] == b'\x02\x02' and struct.unpack('>H', body[2:4])[0] == 64  # RLE scanline marker
    assert len(body) < 6 * 64 * 4  # smaller than flat
    back = read_hdr(path)
    assert np.all(np.abs(back - img) <= _rgbe_lsb_bound(img))


def test_write_hdr_refuses_nan_and_clips_negative(tmp_path):
    bad = np.ones((2, 2, 3), np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        write_hdr(tmp_path / 'nan.hdr', bad)
    assert not (tmp_path / 'nan.hdr').exists()
    neg = np.ones((2, 8, 3), np.float32)
    neg[0, 0] = -1
    write_hdr(tmp_path / 'neg.hdr', neg)
    assert read_hdr(tmp_path / 'neg.hdr')[0, 0].tolist() == [0, 0, 0]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    img = np.full((4, 8, 3), 0.5, np.float32)
    write_hdr(tmp_path / 'a.hdr', img)
    write_exr(tmp_path / 'a.exr', img)
    write_ldr16(tmp_path / 'a.tif', img)
    write_ldr8(tmp_path / 'a.png', img)
    assert sorted(os.listdir(tmp_path)) == ['a.exr', 'a.hdr', 'a.png', 'a.tif']
    with pytest.raises(OSError, match='does not exist'):
        write_hdr(tmp_path / 'missing_dir' / 'b.hdr', img)


def test_exr_round_trip_and_dispatch(tmp_path):
    rng = np.random.default_rng(2)
    img = (rng.uniform(0, 1, size=(5, 7, 3)) * np.array([1e-6, 1.0, 1e6])).astype(np.float32)
    img[0, 0] = 0
    write_radiance(tmp_path / 'x.exr', img)
    np.testing.assert_array_equal(read_exr(tmp_path / 'x.exr'), img)  # float32: exact
    np.testing.assert_array_equal(read_radiance(tmp_path / 'x.exr'), img)
    write_radiance(tmp_path / 'x.hdr', img)
    assert read_radiance(tmp_path / 'x.hdr').shape == img.shape
    with pytest.raises(ValueError, match='unknown radiance extension'):
        write_radiance(tmp_path / 'x.png', img)
    with pytest.raises(ImageReadError, match='unknown radiance extension'):
        read_radiance(tmp_path / 'x.png')


def test_exr_channel_order_is_bgr(tmp_path):
    import OpenEXR
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[..., 0] = 3.0  # R
    with OpenEXR.File({'compression': OpenEXR.ZIP_COMPRESSION, 'type': OpenEXR.scanlineimage}, {'RGB': rgb}) as f:
        f.write(str(tmp_path / 'r.exr'))
    bgr = read_exr(tmp_path / 'r.exr')
    assert np.all(bgr[..., 2] == 3.0) and np.all(bgr[..., :2] == 0)


def test_ldr16_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, size=(9, 11, 3)).astype(np.float32)
    img[0, 0] = [0.0, 1.0, 65535 / 65536]
    for name in ('x.tif', 'x.png'):
        write_ldr16(tmp_path / name, img)
        raw = cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw[0, 0].tolist() == [0, 65535, 65535]
        back = read_ldr(tmp_path / name, expect_bits=16)
        assert back.dtype == np.float32
        assert np.abs(back - img).max() <= 1 / 2 ** 16
    # the release's decode: v / 2**16, so the brightest code is below 1
    assert read_ldr(tmp_path / 'x.tif')[0, 0, 1] == np.float32(65535 / 65536)


def test_ldr8_round_trip_grey_and_alpha(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.uniform(0, 1, size=(6, 5, 3)).astype(np.float32)
    write_ldr8(tmp_path / 'x.png', img)
    back = read_ldr(tmp_path / 'x.png', expect_bits=8)
    assert np.abs(back - img).max() <= 0.5 / 255 + 1e-6
    grey = (rng.uniform(0, 1, size=(6, 5)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'g.png'), grey)
    g = read_ldr(tmp_path / 'g.png')
    assert g.shape == (6, 5, 3) and np.all(g[..., 0] == g[..., 2]) and np.allclose(g[..., 1], grey / 255)
    bgra = np.dstack([(img * 255).round().astype(np.uint8), np.full((6, 5), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / 'a.png'), bgra)
    np.testing.assert_allclose(read_ldr(tmp_path / 'a.png'), bgra[..., :3] / 255, atol=1e-7)


@pytest.mark.parametrize('kind', ['missing', 'empty', 'truncated', 'text_as_tif', 'eight_bit', 'float_tif'])
def test_read_ldr_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f'{kind}.tif'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'truncated':
        write_ldr16(path, np.random.default_rng(5).uniform(size=(64, 64, 3)).astype(np.float32))
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
    elif kind == 'text_as_tif':
        path.write_text('this is not an image\n')
    elif kind == 'eight_bit':
        write_ldr8(path, np.full((4, 4, 3), 0.5, np.float32))
    elif kind == 'float_tif':
        cv2.imwrite(str(path), np.full((4, 4, 3), 0.5, np.float32))
    expected = {'missing': 'does not exist', 'empty': 'empty', 'truncated': 'not a readable image',
                'text_as_tif': 'not a readable image', 'eight_bit': '8-bit image, expected 16-bit',
                'float_tif': 'float32 is not an 8- or 16-bit'}[kind]
    with pytest.raises(ImageReadError, match=expected) as info:
        read_ldr(path, expect_bits=16)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize('kind', ['missing', 'text', 'truncated', 'nan', 'ldr_named_hdr'])
def test_read_hdr_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f'{kind}.hdr'
    if kind == 'text':
        path.write_text('hello\n')
    elif kind == 'truncated':
        write_hdr(path, np.random.default_rng(6).uniform(size=(32, 32, 3)).astype(np.float32))
        path.write_bytes(path.read_bytes()[:60])
    elif kind == 'nan':
        # RGBE cannot encode NaN; put it in an EXR and read through the dispatcher instead
        path = tmp_path / 'nan.exr'
        img = np.ones((2, 2, 3), np.float32)
        img[1, 1, 1] = np.nan
        img[0, 1, 0] = np.inf
        write_exr(path, img)
    elif kind == 'ldr_named_hdr':
        cv2.imwrite(str(tmp_path / 'tmp.png'), np.zeros((4, 4, 3), np.uint8))
        os.replace(tmp_path / 'tmp.png', path)
    expected = {'missing': 'does not exist', 'text': 'not a readable image', 'truncated': 'not a readable image',
                'nan': '1 NaN and 1 Inf', 'ldr_named_hdr': 'expected float32 radiance'}[kind]
    with pytest.raises(ImageReadError, match=expected) as info:
        read_radiance(path)
    assert str(path) in str(info.value)


def test_read_exr_errors(tmp_path):
    path = tmp_path / 'bad.exr'
    path.write_text('not exr')
    with pytest.raises(ImageReadError, match='not a readable OpenEXR'):
        read_exr(path)
    with pytest.raises(ImageReadError, match='does not exist'):
        read_exr(tmp_path / 'none.exr')
