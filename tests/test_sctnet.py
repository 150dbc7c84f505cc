"""SCTNet backbone (models/sctnet.py): release state_dict and seeded init, golden outputs, size handling, DropPath
train/eval behaviour, and agreement of the optimised forward and backward (token gathers, chunked window attention,
conv backward) with a spec-literal formulation (spec: shared/specs/sctnet.md). The preamble and the checks shared
with HDR-Transformer (self-check outputs, no_grad vs autograd) live in tests/transformer_backbones.py and
tests/test_transformer_backbones.py."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

import models.sctnet as sct
import models.transformer_layers as layers
from models.sctnet import SCTNet
from transformer_backbones import (BACKBONES, same_to_float32, golden_dir, literal_mask, load_selfcheck, rand_inputs, selfcheck_fill,
                                   selfcheck_inputs)

SELFCHECK = load_selfcheck(BACKBONES['SCTNet'].selfcheck)

# A small configuration with the release's structure: 2 GSABs of 2 blocks (plain + shifted), 4x4 windows,
# 8 channels per frame (4 channel-attention heads of 2).
TINY = dict(img_size=16, embed_dim=24, depths=(2, 2), num_heads=(2, 2), window_size=4, mlp_ratio=2.0)


@pytest.fixture(scope='module')
def golden():
    path = golden_dir(BACKBONES['SCTNet'].golden)
    return {'manifest': json.loads((path / 'manifest.json').read_text()),
            'state': torch.load(path / 'state_dict.pth', weights_only=True),
            'io': torch.load(path / 'io.pt', weights_only=False)}


@pytest.fixture(scope='module')
def golden_net(golden):
    net = SCTNet()
    net.load_state_dict(golden['state'], strict=True)
    return net.eval()


@pytest.fixture(scope='module')
def selfcheck_net():
    return selfcheck_fill(SCTNet()).eval()


# ---------------------------------------------------------------------------------------------------------------
# Spec-literal reference (sctnet.md sections 3-4 and hdr_transformer.md 4.2-4.5), independent of the fast paths.

def literal_block_forward(self, x, x_size, plan=None):
    """Swin block as the release writes it: roll, partition, unfused attention, reverse, roll back."""
    H, W = x_size
    B, L, C = x.shape
    M, s = self.window_size, self.shift_size
    shortcut = x
    u = self.norm1(x).view(B, H, W, C)
    if s:
        u = torch.roll(u, (-s, -s), (1, 2))
    win = u.view(B, H // M, M, W // M, M, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, M * M, C)
    mask = None if s == 0 else literal_mask(H, W, M, s).to(x)
    o = self.attn.forward_reference(win, mask)
    o = o.view(B, H // M, W // M, M, M, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if s:
        o = torch.roll(o, (s, s), (1, 2))
    x = shortcut + self.drop_path(o.reshape(B, L, C))
    return x + self.drop_path(self.mlp(self.norm2(x)))


def literal_forward(self, x1, x2, x3):
    """Top level as sctnet.md section 3: concatenate, reflect-pad, split, convs, features, residual, sigmoid."""
    x = torch.cat([x1, x2, x3], 1)
    h, w = x.shape[2:]
    m = self.window_size
    x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), 'reflect')
    c = self.conv1.in_channels
    e1, e2, e3 = self.conv1(x[:, :c]), self.conv2(x[:, c:2 * c]), self.conv3(x[:, 2 * c:])
    f = self.forward_features(torch.cat([e1, e2, e3], 1))
    return self.sigmoid(self.upsample(self.conv_after_body(f) + self.conv_end(e2)))


def use_literal(monkeypatch):
    """Switch models.sctnet to the spec-literal formulation for the rest of a test."""
    monkeypatch.setattr(sct.SwinTransformerBlock, 'forward', literal_block_forward)
    monkeypatch.setattr(sct.SCTNet, 'forward', literal_forward)
    monkeypatch.setattr(sct, '_conv', lambda conv, x: conv(x))


def run_train_step(net, xs):
    net.zero_grad()
    torch.manual_seed(7)  # same DropPath draws in both runs
    y = net(*xs)
    (y * torch.linspace(0, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------
# state_dict, seeded initialisation, strict loading

def test_parameter_and_buffer_counts():
    net = SCTNet()
    state = net.state_dict()
    params = dict(net.named_parameters())
    assert len(state) == SELFCHECK['num_entries']
    assert sum(p.numel() for p in params.values()) == SELFCHECK['num_parameters']
    buffers = {k: v for k, v in state.items() if k not in params}
    assert sum(v.numel() for v in buffers.values()) == SELFCHECK['num_buffer_elements']
    assert len(list(net.named_buffers())) == len(buffers) == 36  # all buffers persistent, none extra
    assert all(p.requires_grad for p in params.values())


def test_state_dict_matches_manifest(golden):
    net = SCTNet()
    params = dict(net.named_parameters())
    ours = [[k, list(v.shape), str(v.dtype).replace('torch.', ''), 'param' if k in params else 'buffer']
            for k, v in net.state_dict().items()]
    assert ours == golden['manifest']['entries']


def test_seeded_construction_reproduces_release_weights(golden):
    torch.manual_seed(0)
    state = SCTNet().state_dict()
    assert list(state) == list(golden['state'])
    for key, value in golden['state'].items():
        assert same_to_float32(state[key], value), key


def test_golden_strict_load_reports_wrong_keys(golden):
    torch.manual_seed(12345)
    net = SCTNet()
    result = net.load_state_dict(golden['state'], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(v, golden['state'][k]) for k, v in net.state_dict().items())
    broken = dict(golden['state'])
    del broken['layers.0.residual_group.blocks.1.attn_mask']
    with pytest.raises(RuntimeError, match='attn_mask'):
        SCTNet().load_state_dict(broken, strict=True)
    with pytest.raises(RuntimeError, match='module.conv1.weight'):
        SCTNet().load_state_dict({'module.' + k: v for k, v in golden['state'].items()}, strict=True)


def test_buffers_hold_the_release_mask_and_index():
    net = SCTNet()
    blocks = [blk for layer in net.layers for blk in layer.residual_group.blocks]
    want = literal_mask(128, 128, 8, 4)
    for j, blk in enumerate(blocks):
        if j % 2:
            assert blk.shift_size == 4 and torch.equal(blk.attn_mask, want)
        else:
            assert blk.shift_size == 0 and blk.attn_mask is None
        index = blk.attn.relative_position_index
        assert index.dtype == torch.int64 and index.shape == (64, 64)
        assert (index[0, 0].item(), index[0, 63].item(), index[63, 0].item(), index.sum().item()) == (112, 0, 224, 458752)
    assert (want == -100).sum().item() == 64512


# ---------------------------------------------------------------------------------------------------------------
# Outputs: golden tensors and the spec's self-check values

@pytest.mark.parametrize('prefix', ['', 'rect_'])
def test_golden_forward(golden, golden_net, prefix):
    io = golden['io']
    with torch.no_grad():
        y = golden_net(io[prefix + 'x0'], io[prefix + 'x1'], io[prefix + 'x2'])
    assert y.shape == io[prefix + 'y'].shape
    assert (y - io[prefix + 'y']).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Size handling (spec section 6)

@pytest.mark.parametrize('size, out', [((20, 13), (24, 16)), ((5, 5), (8, 8)), ((9, 9), (16, 16)), ((8, 8), (8, 8))])
def test_sizes_not_multiple_of_8_come_back_padded(selfcheck_net, size, out):
    """The release pads bottom/right to a multiple of 8 inside the network and never crops."""
    with torch.no_grad():
        y = selfcheck_net(*rand_inputs(1, *size))
    assert y.shape == (1, 3, *out)
    assert torch.isfinite(y).all() and 0 < y.min().item() and y.max().item() < 1


@pytest.mark.parametrize('size', [(4, 4), (1, 1), (4, 16), (16, 3)])
def test_too_small_inputs_fail_like_the_release(selfcheck_net, size):
    """Reflect padding must be smaller than the size: the release raises a RuntimeError here too."""
    with torch.no_grad(), pytest.raises(RuntimeError, match='reflect padding'):
        selfcheck_net(*rand_inputs(1, *size))


def test_odd_size_through_release_test_padding(selfcheck_net):
    """The release's chop path: reflect-pad by 8 - size % 8 (in [1, 8]) split over both sides, run, crop."""
    n, h, w = 2, 20, 13
    xs = rand_inputs(n, h, w)
    pad_h, pad_w = 8 - h % 8, 8 - w % 8
    pad = nn.ReflectionPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    with torch.no_grad():
        y = selfcheck_net(*(pad(x) for x in xs))
    assert y.shape == (n, 3, 24, 16)
    y = y[:, :, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
    assert y.shape == (n, 3, h, w) and y.min() > 0 and y.max() < 1


def test_batch_items_are_independent_and_inputs_untouched(selfcheck_net):
    xs = selfcheck_inputs(2, 16, 24)
    copies = [x.clone() for x in xs]
    with torch.no_grad():
        both = selfcheck_net(*xs)
        second = selfcheck_net(*(x[1:] for x in xs))
    assert torch.allclose(both[1:], second, rtol=0, atol=1e-6)
    assert all(torch.equal(x, c) for x, c in zip(xs, copies))


def test_bad_inputs_are_named(selfcheck_net):
    with pytest.raises(ValueError, match='x2'):
        selfcheck_net(torch.rand(1, 6, 16, 16), torch.rand(1, 5, 16, 16), torch.rand(1, 6, 16, 16))
    with pytest.raises(ValueError, match='x3'):
        selfcheck_net(torch.rand(1, 6, 16, 16), torch.rand(1, 6, 16, 16), torch.rand(1, 6, 16, 8))


# ---------------------------------------------------------------------------------------------------------------
# Train vs eval (DropPath)

def test_drop_path_rates_and_train_eval():
    net = SCTNet()
    blocks = [blk for layer in net.layers for blk in layer.residual_group.blocks]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    assert all(isinstance(blk.drop_path, DropPath) for blk in blocks[1:])
    rates = [blk.drop_path.drop_prob for blk in blocks[1:]]
    assert rates == pytest.approx([0.1 * b / 23 for b in range(1, 24)], abs=1e-7)
    xs = rand_inputs(2, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(*xs), net(*xs))
        net.train()
        torch.manual_seed(3)
        a = net(*xs)
        torch.manual_seed(3)
        b = net(*xs)
        c = net(*xs)
    assert torch.equal(a, b)  # stochastic depth draws from the global RNG only
    assert not torch.equal(b, c)


# ---------------------------------------------------------------------------------------------------------------
# Fast paths against the spec-literal formulation

@pytest.mark.parametrize('size, shift', [((16, 24), 4), ((8, 8), 4), ((12, 8), 2), ((16, 16), 0)])
def test_window_order_is_roll_then_partition(size, shift):
    h, w = size
    m = 4 if shift == 2 else 8
    x = torch.randn(2, h, w, 5)
    perm, inv = layers.window_order(h, w, m, shift)
    want = layers.window_partition(torch.roll(x, (-shift, -shift), (1, 2)), m).reshape(2, h * w, 5)
    got = x.reshape(2, h * w, 5).index_select(1, perm)
    assert torch.equal(got, want)
    assert torch.equal(got.index_select(1, inv), x.reshape(2, h * w, 5))


def test_shifted_window_mask_matches_spec():
    for h, w in ((128, 128), (16, 24), (8, 8)):
        assert torch.equal(layers.shifted_window_mask(h, w, 8, 4), literal_mask(h, w, 8, 4))


@pytest.mark.parametrize('chunk', [1, 3, 4, 256])
@pytest.mark.parametrize('masked', [True, False])
def test_window_attention_matches_reference(monkeypatch, chunk, masked):
    """Chunked attention with hand-written backward == the release's formulation, values and gradients."""
    monkeypatch.setattr(layers, 'CHUNK_WINDOWS', chunk)
    torch.manual_seed(0)
    attn = layers.WindowAttention(24, (4, 4), 3).double()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    n, h, w = 2, 8, 12
    mask = literal_mask(h, w, 4, 2).double() if masked else None
    x = torch.randn(n * (h // 4) * (w // 4), 16, 24, dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    results = []
    for forward in (attn.forward, attn.forward_reference):
        attn.zero_grad()
        x.grad = None
        y = forward(x, mask)
        y.backward(g)
        results.append([y.detach(), x.grad.clone()] + [p.grad.clone() for p in attn.parameters()])
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('size', [(16, 16), (12, 20), (10, 13)])
def test_network_matches_literal_formulation(monkeypatch, size):
    """Whole network (TINY config, float64, train mode with DropPath): outputs and every gradient."""
    torch.manual_seed(0)
    net = SCTNet(**TINY).double().train()
    xs = rand_inputs(2, *size, dtype=torch.float64)
    y_fast, g_fast = run_train_step(net, xs)
    use_literal(monkeypatch)
    y_lit, g_lit = run_train_step(net, xs)
    assert y_fast.shape == (2, 3, -(-size[0] // 4) * 4, -(-size[1] // 4) * 4)
    assert torch.allclose(y_fast, y_lit, rtol=0, atol=1e-12)
    for name in g_lit:
        scale = g_lit[name].abs().max().item() + 1e-30
        assert (g_fast[name] - g_lit[name]).abs().max().item() <= 1e-10 * scale, name


def test_stored_masks_and_recomputed_masks_agree():
    """At img_size the blocks use their stored buffers; any other size recomputes. Both give the same."""
    torch.manual_seed(0)
    net = SCTNet(**TINY).eval()
    xs = rand_inputs(1, 16, 16)
    with torch.no_grad():
        stored = net(*xs)
        for layer in net.layers:
            for blk in layer.residual_group.blocks:
                blk.input_resolution = (32, 32)  # no longer the runtime size: masks come from WindowPlan
        net.patches_resolution = [32, 32]
        recomputed = net(*xs)
    assert torch.equal(stored, recomputed)

