"""models/transformer_layers.py, the layers HDR-Transformer and SCTNet share: window geometry and the plan, and that
the attention chunk size changes no value (the networks' own tests compare the layers with the spec-literal
formulations)."""
import pytest
import torch

import models.transformer_layers as layers


def test_window_reverse_inverts_partition():
    x = torch.randn(2, 16, 24, 5)
    windows = layers.window_partition(x, 8)
    assert windows.shape == (2 * 2 * 3, 8, 8, 5)
    assert torch.equal(layers.window_reverse(windows, 8, 16, 24), x)


@pytest.mark.parametrize('size', [(12, 16), (16, 4), (0, 8)])
def test_sizes_that_windows_do_not_tile_are_refused(size):
    with pytest.raises(RuntimeError, match='multiple of the window size 8'):
        layers.WindowPlan(*size, 8, 4)


def test_plan_serves_its_size_only():
    plan = layers.WindowPlan(16, 24, 8, 4, with_mask=False)
    assert plan.mask is None and set(plan.orders) == {0, 4}
    assert plan.serves((16, 24), 8, 4) and plan.serves((16, 24), 8, 0)
    assert not plan.serves((24, 16), 8, 4) and not plan.serves((16, 24), 4, 0)
    assert torch.equal(layers.WindowPlan(16, 24, 8, 4).mask, layers.shifted_window_mask(16, 24, 8, 4))


def test_permute_tokens_backward_is_the_inverse_gather():
    order, inverse = layers.window_order(8, 8, 4, 2)
    x = torch.randn(2, 64, 3, requires_grad=True)
    g = torch.randn(2, 64, 3)
    layers.PermuteTokens.apply(x, order, inverse).backward(g)
    assert torch.equal(x.grad, g.index_select(1, inverse))


def test_attention_values_do_not_depend_on_the_chunk_size(monkeypatch):
    torch.manual_seed(0)
    attn = layers.WindowAttention(12, (4, 4), 2)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    mask = layers.shifted_window_mask(8, 12, 4, 2)  # 6 windows per image
    x = torch.randn(3 * 6, 16, 12, requires_grad=True)
    g = torch.randn(x.shape)
    results = []
    for chunk in (1, 4, 6, 7, 256):  # parts of an image, whole images, everything
        monkeypatch.setattr(layers, 'CHUNK_WINDOWS', chunk)
        attn.zero_grad()
        x.grad = None
        y = attn(x, mask)
        y.backward(g)
        results.append([y.detach(), x.grad.clone(), attn.qkv.weight.grad.clone(),
                        attn.relative_position_bias_table.grad.clone()])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0][:3], other[:3]))
        # the bias gradient is a sum over windows, taken per chunk: only its rounding may move
        assert torch.allclose(results[0][3], other[3], rtol=1e-5, atol=1e-7)
