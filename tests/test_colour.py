"""Tests of util/colour.py: triangle weights, linearisation, Y_color (NumPy and torch twins, golden)."""

import numpy as np
import pytest
import torch

from util.colour import (ldr_to_hdr, ldr_to_hdr_torch, merge_colour_component, merge_colour_component_torch,
                         merge_linear, merge_linear_torch, triangle_weights, triangle_weights_torch)

from conftest import GOLDEN  # noqa: E402


def _nhwc(t):
    return t[0].permute(1, 2, 0).numpy()


def test_triangle_weights_hand_values():
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)
    w0, w1, w2 = triangle_weights(x)
    np.testing.assert_array_equal(w0, [0, 0, 0, 0.5, 1])
    np.testing.assert_array_equal(w1, [0, 0.5, 1, 0.5, 0])
    np.testing.assert_array_equal(w2, [1, 0.5, 0, 0, 0])
    assert w0.dtype == np.float32
    r = np.random.default_rng(0).uniform(size=1000).astype(np.float32)
    np.testing.assert_allclose(sum(triangle_weights(r)), 1.0, atol=1e-6)


def test_ldr_to_hdr_float32_and_value():
    x = np.array([0.5, 1.0], np.float32)
    h = ldr_to_hdr(x, np.float64(4.0))
    assert h.dtype == np.float32  # NumPy 2 must not promote to float64 (release flaw 10)
    np.testing.assert_allclose(h, [0.5 ** 2.2 / 4, 0.25], rtol=1e-6)
    ht = ldr_to_hdr_torch(torch.from_numpy(x), 4.0)
    assert ht.dtype == torch.float32
    np.testing.assert_allclose(ht.numpy(), h, rtol=1e-6)


def test_merge_hand_values():
    # one pixel per regime; times 1, 4, 16
    s = np.array([[[0.2, 0.2, 0.2]]], np.float32)
    m = np.array([[[0.25, 0.5, 0.75]]], np.float32)
    lo = np.array([[[0.9, 0.9, 0.9]]], np.float32)
    y = merge_colour_component(s, m, lo, [1, 4, 16])
    hs, hm, hl = 0.2 ** 2.2, m[0, 0] ** 2.2 / 4, 0.9 ** 2.2 / 16
    expected = [0.5 * hm[0] + 0.5 * hl, hm[1], 0.5 * hs + 0.5 * hm[2]]
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6)


def test_numpy_torch_twins_equal():
    g = torch.Generator().manual_seed(0)
    ls = [torch.rand(2, 3, 8, 9, generator=g) for _ in range(3)]
    times = torch.tensor([[1.0, 4.0, 16.0], [1.0, 8.0, 64.0]])
    yt = merge_colour_component_torch(*ls, times)
    for n in range(2):
        yn = merge_colour_component(*[t[n].permute(1, 2, 0).numpy() for t in ls], times[n].numpy())
        np.testing.assert_allclose(yt[n].permute(1, 2, 0).numpy(), yn, rtol=1e-6, atol=1e-7)
    for a, b in zip(triangle_weights_torch(ls[1]), triangle_weights(ls[1].numpy())):
        np.testing.assert_array_equal(a.numpy(), b)
    # (3,) times broadcast over the batch
    y3 = merge_colour_component_torch(*ls, [1.0, 4.0, 16.0])
    torch.testing.assert_close(y3[0], yt[0])


def test_inputs_not_mutated_and_errors():
    rng = np.random.default_rng(1)
    frames = [rng.uniform(size=(4, 5, 3)).astype(np.float32) for _ in range(3)]
    copies = [f.copy() for f in frames]
    merge_colour_component(*frames, [1, 4, 16])
    for f, c in zip(frames, copies):
        np.testing.assert_array_equal(f, c)
    with pytest.raises(ValueError, match='3 exposure times'):
        merge_colour_component(*frames, [1, 4])
    with pytest.raises(ValueError, match='positive'):
        merge_colour_component(*frames, [0, 4, 16])
    with pytest.raises(ValueError, match='shape mismatch'):
        merge_colour_component(frames[0], frames[1][:2], frames[2], [1, 4, 16])
    with pytest.raises(ValueError, match=r'\(3,\) or \(N, 3\)'):
        merge_colour_component_torch(*[torch.rand(2, 3, 4, 4) for _ in range(3)], torch.ones(3, 3))


def test_golden_syn_hdr():
    path = GOLDEN / 'losses.pt'
    if not path.is_file():
        pytest.skip(f'golden reference not found at {path}')
    g = torch.load(path, weights_only=True)['syn_hdr']
    # the golden linear inputs are l**2.2 / t with t = 1, 4, 16
    for i, t in enumerate((1.0, 4.0, 16.0)):
        torch.testing.assert_close(g[f'in{i}'], g[f'l{i}'] ** 2.2 / t)
    for w, key in zip(triangle_weights_torch(g['l1']), ('w0', 'w1', 'w2')):
        torch.testing.assert_close(w, g[key], rtol=0, atol=0)
    torch.testing.assert_close(merge_linear_torch(g['in0'], g['in1'], g['in2'], g['l1']), g['out'], rtol=0, atol=0)
    out_np = merge_linear(_nhwc(g['in0']), _nhwc(g['in1']), _nhwc(g['in2']), _nhwc(g['l1']))
    np.testing.assert_allclose(out_np, _nhwc(g['out']), rtol=0, atol=1e-7)
    # from the LDR frames (adds the release's 1e-8 to t: invisible in float32 at these times)
    y = merge_colour_component(_nhwc(g['l0']), _nhwc(g['l1']), _nhwc(g['l2']), [1, 4, 16])
    np.testing.assert_allclose(y, _nhwc(g['out']), rtol=1e-6, atol=1e-7)
    assert abs(float(g['out'].mean()) - 0.116296) < 1e-6
