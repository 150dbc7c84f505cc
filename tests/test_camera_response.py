"""photo/response.py: tables, files, applying a curve, and recovering it from a bracket."""
import numpy as np
import pytest

from photo.response import (ESTIMATE_METHODS, Response, ResponseError, check_table, encode, estimate_response,
                                  gamma_table, linearise, load_response, resolve_response, save_response, srgb_table)


def _scene(h=96, w=128, seed=0):
    """Static linear radiance spanning ~10 stops, with texture (BGR, short-exposure scale)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 2.0 ** (-10 + 10.5 * xx / (w - 1)) * (0.7 + 0.3 * np.sin(yy / 5.0) ** 2)
    img = base[..., None] * np.array([0.8, 1.0, 1.2])
    return img * np.exp(0.1 * rng.standard_normal(img.shape))


def _bracket(table, times=(1, 4, 16), bits=8):
    rad = _scene()
    q = 2 ** bits - 1
    return [np.rint(encode(np.clip(rad * t, 0, 1), table) * q) / q for t in times]


def test_tables_are_normalised():
    for f in (gamma_table(2.2), srgb_table()):
        assert f.shape == (256, 3) and f[0].tolist() == [0, 0, 0] and f[-1].tolist() == [1, 1, 1]
        assert (np.diff(f, axis=0) > 0).all()
    np.testing.assert_allclose(srgb_table()[10, 0], (10 / 255) / 12.92)
    np.testing.assert_allclose(srgb_table()[128, 1], ((128 / 255 + 0.055) / 1.055) ** 2.4)


def test_linearise_and_encode_are_inverse():
    x = np.random.default_rng(1).uniform(0, 1, (5, 7, 3))
    for table in (gamma_table(2.2), srgb_table()):
        np.testing.assert_allclose(encode(linearise(x, table), table), x, atol=1e-6)
    # piecewise-linear interpolation of the 2.2 table is close to the exact power law
    np.testing.assert_allclose(linearise(x, gamma_table(2.2)), x ** 2.2, atol=2e-3)


def test_gamma22_response_is_exact_identity():
    r = resolve_response('gamma2.2')
    x = np.random.default_rng(2).uniform(0, 1, (4, 4, 3)).astype(np.float32)
    assert r.is_training_gamma
    np.testing.assert_array_equal(r.to_training_ldr(x), x)
    np.testing.assert_array_equal(r.linear(x), x ** np.float32(2.2))


def test_other_response_reencodes_with_training_gamma():
    x = np.linspace(0, 1, 256).reshape(1, -1, 1).repeat(3, axis=2)
    r = resolve_response('srgb')
    np.testing.assert_allclose(r.to_training_ldr(x) ** 2.2, srgb_table()[:, 0][None, :, None].repeat(3, 2),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('ext', ['.npy', '.csv'])
def test_save_and_load_round_trip(tmp_path, ext):
    table = srgb_table() * np.array([1.0, 0.9, 1.1])  # saved normalised per channel
    path = save_response(tmp_path / f'cam{ext}', table)
    loaded = load_response(path)
    np.testing.assert_allclose(loaded, srgb_table(), rtol=1e-8, atol=1e-12)
    assert resolve_response(str(path)).name == str(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary left


def test_csv_written_by_hand_without_header_or_code_column(tmp_path):
    path = tmp_path / 'hand.csv'
    path.write_text('\n'.join(f'{v},{v},{v}' for v in np.linspace(0, 1, 256) ** 2))
    np.testing.assert_allclose(load_response(path)[:, 1], np.linspace(0, 1, 256) ** 2)


@pytest.mark.parametrize('content, message', [('1,2\n3,4\n', 'expected a 256 x 3'), ('a,b,c\nx,y,z\n', 'not a readable'),
                                              ('\n'.join(['1,1,1'] * 256), 'must increase')])
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / 'bad.csv'
    path.write_text(content)
    with pytest.raises(ResponseError, match=message) as err:
        load_response(path)
    assert 'bad.csv' in str(err.value)


@pytest.mark.parametrize('spec', ['gamma', 'sRGB2', 'curve.txt', 'estimate'])
def test_bad_specs(spec):
    with pytest.raises(ResponseError):
        resolve_response(spec)


def test_check_table_makes_monotone(caplog):
    f = gamma_table(2.2)
    f[100] = f[99] - 0.01
    fixed = check_table(f)
    assert (np.diff(fixed, axis=0) >= 0).all() and 'decreases after code 99' in caplog.text


@pytest.mark.parametrize('true_name', ['srgb', 'gamma2.2', 'gamma1.8'])
def test_ratio_estimate_recovers_static_curve(true_name):
    true = resolve_response(true_name).table
    est = estimate_response(_bracket(true), (1, 4, 16))
    z = np.arange(16, 251)
    err = np.abs(np.log(est[z]) - np.log(true[z]))
    assert err.mean() < 0.03 and err.max() < 0.1
    assert est[0].tolist() == [0, 0, 0] and est[-1].tolist() == [1, 1, 1] and (np.diff(est, axis=0) >= 0).all()


def test_estimate_is_order_free_and_pixels_mode_agrees():
    true = srgb_table()
    frames = _bracket(true)
    a = estimate_response(frames, (1, 4, 16))
    b = estimate_response(frames[::-1], (16, 4, 1))
    np.testing.assert_array_equal(a, b)
    c = estimate_response(frames, (1, 4, 16), data='pixels')
    z = np.arange(16, 251)
    assert np.abs(np.log(c[z]) - np.log(true[z])).mean() < 0.05


def test_histogram_estimate_ignores_a_shift_between_frames():
    true = srgb_table()
    frames = _bracket(true)
    shifted = [frames[0], np.roll(frames[1], 9, axis=0), np.roll(frames[2], -7, axis=1)]
    est = estimate_response(shifted, (1, 4, 16))
    z = np.arange(16, 251)
    assert np.abs(np.log(est[z]) - np.log(true[z])).mean() < 0.05


def test_opencv_methods_are_the_ones_tested():
    assert set(ESTIMATE_METHODS) == {'ratio', 'debevec', 'robertson'}


def test_debevec_gives_a_normalised_table():
    # No escape here: Debevec must succeed on this bracket (the NaN escape is Robertson's alone).
    est = estimate_response(_bracket(srgb_table()), (1, 4, 16), method='debevec')
    assert est.shape == (256, 3) and est[-1].tolist() == [1, 1, 1] and np.isfinite(est).all()
    assert est[0].tolist() == [0, 0, 0] and (np.diff(est, axis=0) >= 0).all()


def test_robertson_gives_a_normalised_table_or_a_clear_nan_error():
    try:
        est = estimate_response(_bracket(srgb_table()), (1, 4, 16), method='robertson')
    except ResponseError as exc:  # Robertson gives NaN on some brackets: a clear error, not a NaN curve
        assert 'robertson' in str(exc) and 'NaN' in str(exc)
        return
    assert est.shape == (256, 3) and est[-1].tolist() == [1, 1, 1] and np.isfinite(est).all()


def test_flat_bracket_is_refused():
    flat = [np.full((16, 16, 3), v) for v in (0.0, 1.0, 1.0)]
    with pytest.raises(ResponseError, match='too few unclipped'):
        estimate_response(flat, (1, 4, 16))
    with pytest.raises(ResponseError, match='unknown'):
        estimate_response(flat, (1, 4, 16), method='magic')


def test_response_dataclass_linear_matches_table():
    r = Response('srgb', srgb_table())
    x = np.full((2, 2, 3), 128 / 255)
    np.testing.assert_allclose(r.linear(x), srgb_table()[128, 0], rtol=1e-6)
