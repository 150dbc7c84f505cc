"""HDR-Transformer backbone (models/hdr_transformer.py): release state_dict and seeded init, golden outputs, size
handling, DropPath train/eval behaviour, and agreement of the optimised forward and backward (token permutations,
chunked channel-major attention) with a spec-literal reference (spec: shared/specs/hdr_transformer.md). The preamble
and the checks shared with SCTNet (self-check outputs, no_grad vs autograd) live in tests/transformer_backbones.py
and tests/test_transformer_backbones.py."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

import models.transformer_layers as layers
from models.hdr_transformer import HDRTransformer
from transformer_backbones import BACKBONES, same_to_float32, golden_dir, literal_mask, load_selfcheck, selfcheck_fill, selfcheck_inputs

SELFCHECK = load_selfcheck(BACKBONES['HDR-Transformer'].selfcheck)

# A small configuration with the release's structure: 2 CTBs of 2 blocks (plain + shifted), 4x4 windows.
TINY = dict(img_size=16, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4, mlp_ratio=2.0)


@pytest.fixture(scope='module')
def golden():
    return golden_dir(BACKBONES['HDR-Transformer'].golden)


@pytest.fixture(scope='module')
def golden_net(golden):
    net = HDRTransformer()
    net.load_state_dict(torch.load(golden / 'state_dict.pth'), strict=True)
    return net.eval()


@pytest.fixture(scope='module')
def selfcheck_net():
    return selfcheck_fill(HDRTransformer()).eval()


# ---------------------------------------------------------------------------------------------------------------
# Spec-literal reference (hdr_transformer.md sections 3-4), written independently of the module's fast paths.

def reference_block(blk, x, x_size):
    h, w = x_size
    n, length, c = x.shape
    m, s = blk.window_size, blk.shift_size
    attn = blk.attn
    heads, t = attn.num_heads, m * m
    u = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias).view(n, h, w, c)
    lce_in = u.permute(0, 3, 1, 2)
    us = torch.roll(u, (-s, -s), (1, 2)) if s else u
    win = us.view(n, h // m, m, w // m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, t, c)
    qkv = F.linear(win, attn.qkv.weight, attn.qkv.bias).reshape(-1, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    a = (qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(t, t, heads)
    a = a + bias.permute(2, 0, 1)
    if s:
        mask = literal_mask(h, w, m, s)
        a = (a.view(n, -1, heads, t, t) + mask[None, :, None]).view(-1, heads, t, t)
    o = (a.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(-1, t, c)
    o = F.linear(o, attn.proj.weight, attn.proj.bias)
    o = o.view(n, h // m, w // m, m, m, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    if s:
        o = torch.roll(o, (s, s), (1, 2))
    x = x + o.reshape(n, length, c)
    y = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias)
    x = x + F.linear(F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    conv, fc = blk.lce.conv, blk.lce.fc
    q = F.conv2d(lce_in, conv[0].weight, conv[0].bias)
    q = F.conv2d(q, conv[1].weight, conv[1].bias, padding=1)
    q = F.leaky_relu(F.conv2d(q, conv[2].weight, conv[2].bias), 0.2)
    z = torch.sigmoid(F.linear(F.relu(F.linear(q.mean((2, 3)), fc[0].weight)), fc[2].weight))
    return (q * z[:, :, None, None]).flatten(2).transpose(1, 2) + x


def reference_forward(net, x1, x2, x3):
    def att(module, a, b):
        y = F.leaky_relu(module.att1(torch.cat((a, b), 1)), 0.01)
        return torch.sigmoid(module.att2(y))
    f1, f2, f3 = net.conv_f1(x1), net.conv_f2(x2), net.conv_f3(x3)
    x = net.conv_first(torch.cat((f1 * att(net.att_module_h, f1, f2), f2, f3 * att(net.att_module_l, f3, f2)), 1))
    n, c, h, w = x.shape
    z = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), net.patch_embed.norm.weight, net.patch_embed.norm.bias)
    for layer in net.layers:
        y = z
        for blk in layer.residual_group.blocks:
            y = reference_block(blk, y, (h, w))
        y = layer.dilated_conv(y.transpose(1, 2).reshape(n, c, h, w))
        z = y.flatten(2).transpose(1, 2) + z
    z = F.layer_norm(z, (c,), net.norm.weight, net.norm.bias)
    deep = z.transpose(1, 2).reshape(n, c, h, w)
    return torch.sigmoid(net.conv_last(f2 + net.conv_after_body(deep + x)))


# ---------------------------------------------------------------------------------------------------------------
# Release structure

def test_state_dict_matches_manifest(golden):
    manifest = json.loads((golden / 'manifest.json').read_text())
    sd = HDRTransformer().state_dict()
    got = [[k, list(v.shape), str(v.dtype).replace('torch.', '')] for k, v in sd.items()]
    want = [[k, shape, dtype] for k, shape, dtype, _ in manifest['entries']]
    assert got == want
    net = HDRTransformer()
    param_names = {k for k, _ in net.named_parameters()}
    assert [k for k in sd if k not in param_names] == manifest['buffers']
    assert [k for k, *_, kind in manifest['entries'] if kind == 'buffer'] == manifest['buffers']


def test_counts_and_buffers_without_golden():
    net = HDRTransformer()
    sd = net.state_dict()
    meta = SELFCHECK
    assert len(sd) == meta['num_entries']
    assert sum(p.numel() for p in net.parameters()) == meta['num_parameters']
    assert sum(b.numel() for b in net.buffers()) == meta['num_buffer_elements']
    blocks = [blk for layer in net.layers for blk in layer.residual_group.blocks]
    assert [blk.shift_size for blk in blocks] == [0, 4, 0, 4, 0, 4] * 3
    for blk in blocks:
        if blk.shift_size:
            assert blk.attn_mask.shape == (256, 64, 64) and blk.attn_mask.dtype == torch.float32
            assert list(sd).index(f'{_name(net, blk)}.attn_mask') == list(sd).index(f'{_name(net, blk)}.norm1.weight') - 1
        else:
            assert blk.attn_mask is None and f'{_name(net, blk)}.attn_mask' not in sd
        assert blk.attn.relative_position_index.dtype == torch.int64
    assert net.layers[0].patch_embed.norm is None and net.patch_embed.norm is not None


def _name(net, module):
    return next(name for name, m in net.named_modules() if m is module)


def test_seeded_init_matches_release(golden):
    want = torch.load(golden / 'state_dict.pth')
    torch.manual_seed(0)
    got = HDRTransformer().state_dict()
    assert list(got) == list(want)
    mismatched = [k for k in want if not same_to_float32(got[k], want[k])]
    assert mismatched == []


def test_relative_position_index_and_stored_mask():
    blk = HDRTransformer().layers[1].residual_group.blocks[3]
    index = blk.attn.relative_position_index
    assert (index[0, 0].item(), index[0, 63].item(), index[63, 0].item()) == (112, 0, 224)
    assert index.sum().item() == 458752
    mask = blk.attn_mask
    assert (mask == -100.0).sum().item() == 64512 and (mask == 0).sum().item() == 984064
    assert torch.equal(mask, literal_mask(128, 128, 8, 4))
    assert torch.equal(layers.shifted_window_mask(24, 32, 8, 4), literal_mask(24, 32, 8, 4))
    # only windows on the last window-row or window-column carry -100s
    flagged = layers.windows_with_mask(mask).view(16, 16)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[-1, :] = True
    expected[:, -1] = True
    assert torch.equal(flagged, expected)


def test_window_order_is_roll_then_partition():
    h, w, m = 16, 24, 8
    for shift in (0, 4):
        order, inverse = layers.window_order(h, w, m, shift, 'cpu')
        grid = torch.arange(h * w).view(1, h, w, 1)
        rolled = torch.roll(grid, (-shift, -shift), (1, 2)) if shift else grid
        expected = rolled.view(1, h // m, m, w // m, m).permute(0, 1, 3, 2, 4).reshape(-1)
        assert torch.equal(order, expected)
        assert torch.equal(order[inverse], torch.arange(h * w))


def test_constructor_options():
    with pytest.raises(ValueError, match='ape'):
        HDRTransformer(ape=True)
    with pytest.raises(ValueError, match='resi_connection'):
        HDRTransformer(**TINY, resi_connection='3conv')
    net = HDRTransformer(**TINY, unused_option=3)  # the release accepts and ignores extra keywords
    assert net.num_layers == 2 and net.patches_resolution == [16, 16] and net.num_features == 12
    assert net.no_weight_decay_keywords() == {'relative_position_bias_table'}


# ---------------------------------------------------------------------------------------------------------------
# Outputs

@pytest.mark.parametrize('prefix', ['', 'rect_'])
def test_golden_forward(golden_net, golden, prefix):
    io = torch.load(golden / 'io.pt')
    with torch.no_grad():
        y = golden_net(io[prefix + 'x0'], io[prefix + 'x1'], io[prefix + 'x2'])
    want = io[prefix + 'y']
    assert y.shape == want.shape
    assert (y - want).abs().max().item() <= 1e-5


def test_golden_strict_load_reports_wrong_keys(golden):
    sd = torch.load(golden / 'state_dict.pth')
    net = HDRTransformer()
    assert not net.load_state_dict(sd, strict=True).missing_keys
    del sd['layers.0.residual_group.blocks.1.attn_mask']
    with pytest.raises(RuntimeError, match='attn_mask'):
        net.load_state_dict(sd, strict=True)


# ---------------------------------------------------------------------------------------------------------------
# Size handling (spec section 6)

@pytest.mark.parametrize('size', [(60, 60), (63, 65), (5, 5), (12, 16)])
def test_sizes_not_multiple_of_window_fail(selfcheck_net, size):
    xs = [torch.rand(1, 6, *size) for _ in range(3)]
    with torch.no_grad(), pytest.raises(RuntimeError, match='multiple of the window size'):
        selfcheck_net(*xs)


def test_odd_size_through_release_test_padding(selfcheck_net):
    """The release's chop path: reflect-pad by 8 - size % 8 (in [1, 8]) per side split, run, crop."""
    n, h, w = 2, 20, 13
    xs = [torch.rand(n, 6, h, w, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    pad_h, pad_w = 8 - h % 8, 8 - w % 8
    pad = nn.ReflectionPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    with torch.no_grad():
        y = selfcheck_net(*(pad(x) for x in xs))
    assert y.shape == (n, 3, 24, 16)
    y = y[:, :, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
    assert y.shape == (n, 3, h, w)
    assert torch.isfinite(y).all() and y.min() > 0 and y.max() < 1


def test_batch_items_are_independent(selfcheck_net):
    xs = selfcheck_inputs(2, 16, 24)
    with torch.no_grad():
        both = selfcheck_net(*xs)
        second = selfcheck_net(*(x[1:] for x in xs))
    assert torch.allclose(both[1:], second, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Train vs eval (DropPath)

def test_drop_path_rates_and_train_eval():
    net = HDRTransformer()
    blocks = [blk for layer in net.layers for blk in layer.residual_group.blocks]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    rates = [blk.drop_path.drop_prob for blk in blocks[1:]]
    assert rates == pytest.approx([0.1 * b / 17 for b in range(1, 18)], abs=1e-7)
    assert all(isinstance(blk.drop_path, DropPath) for blk in blocks[1:])

    tiny = HDRTransformer(**TINY, drop_path_rate=0.5)
    xs = [torch.rand(4, 6, 8, 8, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    tiny.eval()
    with torch.no_grad():
        eval_a, eval_b = tiny(*xs), tiny(*xs)
        tiny.train()
        torch.manual_seed(1)
        train_a = tiny(*xs)
        torch.manual_seed(1)
        train_b = tiny(*xs)
        torch.manual_seed(2)
        train_c = tiny(*xs)
    assert torch.equal(eval_a, eval_b)
    assert torch.equal(train_a, train_b)  # DropPath draws only from the global RNG
    assert not torch.allclose(train_a, train_c) and not torch.allclose(train_a, eval_a)


def test_fused_drop_path_matches_timm():
    """The block's fused residual draws and scales exactly as timm's DropPath (same RNG stream)."""
    dp = DropPath(0.3).train()
    shortcut, branch = torch.randn(6, 5, 4), torch.randn(6, 5, 4)
    torch.manual_seed(3)
    want = shortcut + dp(branch)
    torch.manual_seed(3)
    got = layers.add_residual(shortcut, branch, dp)
    assert torch.allclose(got, want, rtol=0, atol=1e-6)
    dp.eval()
    assert torch.equal(layers.add_residual(shortcut, branch, dp), shortcut + branch)


# ---------------------------------------------------------------------------------------------------------------
# Optimised forward/backward against the spec-literal reference

@pytest.mark.parametrize('chunk', [1, 3, 512])
@pytest.mark.parametrize('size', [(16, 16), (8, 12)])  # (16, 16): stored masks; (8, 12): recomputed masks
def test_tiny_network_matches_reference(monkeypatch, chunk, size):
    monkeypatch.setattr(layers, 'CHUNK_WINDOWS', chunk)  # chunks of 1 window, spanning images, or everything
    torch.manual_seed(0)
    net = selfcheck_fill(HDRTransformer(**TINY)).eval()
    xs = [torch.rand(3, 6, *size, generator=torch.Generator().manual_seed(j)) for j in range(3)]
    weights = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(9))

    y = net(*xs)
    (y * weights).sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    net.zero_grad()
    y_ref = reference_forward(net, *xs)
    (y_ref * weights).sum().backward()

    assert (y - y_ref).abs().max().item() <= 1e-5
    for k, p in net.named_parameters():
        scale = p.grad.abs().max().item() + 1e-12
        assert (grads[k] - p.grad).abs().max().item() <= 1e-4 * scale, k


def test_attention_dropout_uses_reference_path():
    net = HDRTransformer(**TINY, attn_drop_rate=0.5).train()
    xs = [torch.rand(1, 6, 8, 8) for _ in range(3)]
    torch.manual_seed(0)
    a = net(*xs)
    torch.manual_seed(1)
    b = net(*xs)
    assert not torch.allclose(a, b)  # attention dropout is active in training
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(*xs), net(*xs))


@pytest.mark.parametrize('chunk', [1, 512])
def test_window_attention_function_gradcheck(monkeypatch, chunk):
    monkeypatch.setattr(layers, 'CHUNK_WINDOWS', chunk)
    g = torch.Generator().manual_seed(0)
    heads, dim, tokens, num_windows, batch = 2, 4, 4, 2, 2
    qkv_t = torch.randn(3 * dim, batch * num_windows * tokens, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(heads, tokens, tokens, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(num_windows, tokens, tokens, dtype=torch.float64)
    mask[1, :2, 2:] = -3.0  # moderate values keep the softmax gradient informative
    mask[1, 2:, :2] = -3.0
    flags = layers.windows_with_mask(mask)

    def fn(q, b):
        return layers.WindowAttentionFunction.apply(q, b, mask, flags, num_windows, heads, 0.7)

    assert torch.autograd.gradcheck(fn, (qkv_t, bias), eps=1e-6, atol=1e-6)



def test_global_average_in_bf16_matches_the_float32_mean():
    """The bf16 CPU path sums with a GEMM: it must give the mean (to bf16 rounding) in the map's dtype; float32
    keeps torch.mean's bits, and fp16 (whose GEMM sum would overflow) takes torch.mean too."""
    from models.hdr_transformer import global_average
    torch.manual_seed(0)
    y = torch.rand(2, 40, 56, 12) * 3.0 + 1.0  # positive: the sum of 2240 pixels is far above fp16's 65504
    assert torch.equal(global_average(y), y.mean(dim=(1, 2)))
    ref = y.bfloat16().float().mean(dim=(1, 2))
    got = global_average(y.bfloat16())
    assert got.dtype == torch.bfloat16 and got.shape == (2, 12)
    assert ((got.float() - ref).abs() / ref).max() < 2 ** -7  # two bf16 roundings (sum, mean)
    half = global_average(y.half())
    assert torch.isfinite(half).all() and torch.allclose(half.float(), ref, rtol=1e-2)


def test_patch_embed_tokens_are_contiguous():
    """A channels-first image gives strided tokens as a view; every residual add after it inherited that layout."""
    embed = layers.PatchEmbed(embed_dim=6, norm_layer=None)
    tokens = embed(torch.randn(1, 6, 8, 8))
    assert tokens.shape == (1, 64, 6) and tokens.is_contiguous()
