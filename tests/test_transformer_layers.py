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


# ------------------------------------------------------------------ bf16 autocast (issue 24: bf16 for every backbone)

def _count_ops(fn):
    """Run fn() under the profiler; return (result, Counter of op names, activation-sized _to_copy calls)."""
    import collections
    import math
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        result = fn()
    events = list(prof.events())
    names = collections.Counter(e.name for e in events)
    # weights and biases are cast by autocast on every call; count only casts of attention-sized tensors
    big = [e for e in events if e.name == 'aten::_to_copy' and e.input_shapes and e.input_shapes[0]
           and math.prod(e.input_shapes[0]) >= 16 * 16 * 16]
    return result, names, big


def _bf16_case(seed=0):
    """A WindowAttention of 2 heads on 4x4 windows, 3 images of 8x12 (6 windows, 5 of them masked)."""
    torch.manual_seed(seed)
    attn = layers.WindowAttention(12, (4, 4), 2)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    mask = layers.shifted_window_mask(8, 12, 4, 2)  # (6, 16, 16)
    flags = layers.masked_windows(8, 12, 4, 2)
    x = torch.randn(3 * 6, 16, 12)
    return attn, mask, flags, x


def _relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize('with_mask', [False, True])
def test_bf16_inference_on_cpu_takes_the_chunked_function_in_bf16(with_mask):
    """CPU keeps WindowAttentionFunction under bf16 autocast (measured faster than SDPA's CPU kernel): its products
    run in bf16 and no attention-sized tensor makes a float32 round trip."""
    attn, mask, flags, x = _bf16_case()
    mask, flags = (mask, flags) if with_mask else (None, None)
    with torch.no_grad():
        ref = attn(x, mask, flags)

    def run():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            assert not attn.sdpa_applies(x)
            return attn(x, mask, flags)
    y, names, big = _count_ops(run)
    assert names['aten::scaled_dot_product_attention'] == 0
    assert names['aten::bmm'] == 2 and names['aten::_softmax'] == 1  # one chunk: q k^T and P v
    assert big == [], [(e.input_shapes, e.cpu_parent.name if e.cpu_parent else None) for e in big]
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 = 0.2 %); q, k, v, the logits and the projections are
    # rounded to it: allowed 1.5 %
    assert _relative_error(y, ref) < 0.015


@pytest.mark.parametrize('with_mask', [False, True])
def test_bf16_sdpa_path_agrees_with_fp32(with_mask, monkeypatch):
    """The SDPA path (what SDPA_DEVICES enables on CUDA), checked on CPU: the fused kernel, no float32 fallback."""
    monkeypatch.setattr(layers, 'SDPA_DEVICES', ('cpu',))
    attn, mask, flags, x = _bf16_case()
    mask, flags = (mask, flags) if with_mask else (None, None)
    with torch.no_grad():
        ref = attn(x, mask, flags)
    assert not attn.sdpa_applies(x)  # fp32: the chunked function, the releases' bits

    def run():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            return attn(x, mask, flags)
    y, names, big = _count_ops(run)
    assert names['aten::scaled_dot_product_attention'] == (2 if with_mask else 1)  # masked windows once more
    assert names['aten::_scaled_dot_product_attention_math'] == 0  # the fused kernel, not the fp32 fallback
    assert names['aten::bmm'] == 0 and names['aten::_softmax'] == 0  # WindowAttentionFunction not used
    assert big == []  # no attention-sized float32 round trip
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    # the kernel accumulates in float32: measured 0.4 %, allowed 1.5 %
    assert _relative_error(y, ref) < 0.015


@pytest.mark.parametrize('devices', [(), ('cpu',)])
def test_bf16_masked_windows_get_the_mask(devices, monkeypatch):
    """The -100 mask must reach the masked windows on both bf16 paths: without it their outputs are far from
    fp32's."""
    monkeypatch.setattr(layers, 'SDPA_DEVICES', devices)
    attn, mask, flags, x = _bf16_case(1)
    with torch.no_grad():
        ref = attn(x, mask, flags)
        unmasked = attn(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert attn.sdpa_applies(x) == bool(devices)
            y = attn(x, mask, flags)
            y_tensor_flags = attn(x, mask)  # flags derived from the mask
    assert _relative_error(unmasked, ref) > 0.1
    assert _relative_error(y, ref) < 0.015
    assert torch.equal(y, y_tensor_flags)


def test_bf16_training_keeps_the_chunked_function_without_float32_round_trips():
    """On CPU a gradient keeps WindowAttentionFunction (SDPA with a learnable bias falls back to float32 math):
    the bias is cast once per call, not the logits per chunk, and its gradient is accumulated in float32."""
    attn, mask, flags, x = _bf16_case(2)
    x.requires_grad_(True)
    g = torch.randn(x.shape)
    y_ref = attn(x, mask, flags)
    y_ref.backward(g)
    ref_grads = [x.grad.clone(), attn.qkv.weight.grad.clone(), attn.relative_position_bias_table.grad.clone()]
    x.grad = None
    attn.zero_grad()

    def run():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not attn.sdpa_applies(x)
            y = attn(x, mask, flags)
        y.backward(g.to(y.dtype))
        return y
    y, names, big = _count_ops(run)
    assert names['aten::scaled_dot_product_attention'] == 0
    assert big == [], [(e.input_shapes, e.cpu_parent.name if e.cpu_parent else None) for e in big]
    grads = [x.grad, attn.qkv.weight.grad, attn.relative_position_bias_table.grad]
    assert attn.relative_position_bias_table.grad.dtype == torch.float32
    assert _relative_error(y, y_ref) < 0.015
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        assert _relative_error(got, want) < 0.03  # bf16 products in the backward: measured < 1 %


def test_bf16_sdpa_with_gradients_where_enabled(monkeypatch):
    """The SDPA path with autograd's own backward (what SDPA_DEVICES enables on CUDA), checked on CPU."""
    monkeypatch.setattr(layers, 'SDPA_DEVICES', ('cpu',))
    attn, mask, flags, x = _bf16_case(3)
    x.requires_grad_(True)
    g = torch.randn(x.shape)
    attn(x, mask, flags).backward(g)
    ref_grads = [x.grad.clone(), attn.qkv.weight.grad.clone(), attn.relative_position_bias_table.grad.clone()]
    x.grad = None
    attn.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert attn.sdpa_applies(x)
        y = attn(x, mask, flags)
    y.backward(g.to(y.dtype))
    for got, want in zip([x.grad, attn.qkv.weight.grad, attn.relative_position_bias_table.grad], ref_grads):
        assert torch.isfinite(got).all()
        assert _relative_error(got, want) < 0.03


def test_only_bf16_autocast_on_sdpa_devices_takes_sdpa(monkeypatch):
    attn, mask, flags, x = _bf16_case()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert not attn.sdpa_applies(x)  # the CPU is not among the default SDPA_DEVICES
    monkeypatch.setattr(layers, 'SDPA_DEVICES', ('cpu',))
    with torch.no_grad():
        assert not attn.sdpa_applies(x)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):
            assert not attn.sdpa_applies(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert attn.sdpa_applies(x)


def test_token_layer_norm_is_nn_layer_norm_in_float32_and_bf16_on_cpu_goes_through_float32():
    torch.manual_seed(0)
    norm = layers.TokenLayerNorm(60)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    reference = torch.nn.LayerNorm(60)
    reference.load_state_dict(norm.state_dict())  # same keys: checkpoints load either way
    x = torch.randn(2, 100, 60) * 3 + 1
    assert torch.equal(norm(x), reference(x))  # float32: the same kernel, the same bits
    x16 = x.bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = norm(x16)
    assert out.dtype == torch.bfloat16
    exact = reference(x16.detach().float())
    # the float32 result rounded once to bf16: within bf16's half-ulp of the exact normalisation
    assert torch.allclose(out.float(), exact, rtol=2 ** -8, atol=1e-6)
    assert torch.equal(out, exact.bfloat16())
    assert out.grad_fn.name() == 'Float32LayerNormFunctionBackward'  # the float32 form, not torch's bf16 kernel
    grad = torch.randn_like(out)
    out.backward(grad)
    x32 = x16.detach().float().requires_grad_()
    reference(x32).backward(grad.float())
    assert x16.grad.dtype == torch.bfloat16
    assert torch.allclose(x16.grad.float(), x32.grad, rtol=2 ** -7, atol=1e-2)
    assert norm.weight.grad.dtype == torch.float32


def test_bf16_layer_norm_saves_its_bf16_input_not_a_float32_copy():
    norm = layers.TokenLayerNorm(60)
    x = torch.randn(2, 256, 60).bfloat16().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            norm(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert big and all(t.dtype == torch.bfloat16 for t in big)  # training holds no more than the bf16 kernel would


@pytest.mark.parametrize('name', ['HDR-Transformer', 'SCTNet'])
def test_every_token_norm_of_the_transformers_takes_the_float32_form(name):
    from models.networks import define_network
    net = define_network(name)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is layers.TokenLayerNorm for m in norms)


@pytest.mark.parametrize('shape', [(2, 100, 60), (7, 60), (3, 4, 5, 60)])
def test_token_linear_is_nn_linear(shape):
    torch.manual_seed(0)
    linear = layers.TokenLinear(60, 180)
    reference = torch.nn.Linear(60, 180)
    reference.load_state_dict(linear.state_dict())  # same keys: checkpoints load either way
    x = torch.randn(*shape)
    out = linear(x)
    assert out.shape == (*shape[:-1], 180)
    assert torch.allclose(out, reference(x), rtol=1e-5, atol=1e-5)
    strided = torch.randn(*shape[:-1], 120)[..., ::2]  # not contiguous: F.linear
    assert torch.allclose(linear(strided), reference(strided), rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_()
    linear(xg).square().sum().backward()
    xr = x.clone().requires_grad_()
    reference(xr).square().sum().backward()
    assert torch.allclose(xg.grad, xr.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(linear.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
    assert linear(torch.randn(*shape[:-2], 0, 60)).shape == (*shape[:-2], 0, 180)  # no tokens: F.linear's answer


@pytest.mark.parametrize('name', ['HDR-Transformer', 'SCTNet'])
def test_the_transformers_mlps_use_token_linear(name):
    from models.networks import define_network
    net = define_network(name)
    mlps = [m for m in net.modules() if isinstance(m, layers.Mlp)]
    assert mlps and all(type(m.fc1) is layers.TokenLinear and type(m.fc2) is layers.TokenLinear for m in mlps)
