"""FSHDR backbone (models/fshdr.py): release state_dict and seeded init, golden and self-check outputs,
and agreement of the optimised forward/backward with a spec-literal reference (spec: shared/specs/fshdr.md)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.fshdr import SDC, FSHDR, dilated_conv_by_phases
from conftest import GOLDEN as GOLDEN_ROOT
from selfcheck import selfcheck_fill

GOLDEN = GOLDEN_ROOT / 'FSHDR'
FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'fshdr_selfcheck.json'
SELFCHECK = json.loads(FIXTURE.read_text())


@pytest.fixture(scope='module')
def golden():
    if not GOLDEN.is_dir():
        pytest.skip(f'golden reference not found at {GOLDEN} (it sits beside the checkout)')
    return GOLDEN


def selfcheck_inputs(n, h, w):
    """x_j[n, c, h, w] = 0.5 + 0.5 sin(0.11 h (c+1) + 0.07 w + 0.9 j + 0.3 n), in float64 then float32."""
    idx = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in (n, 6, h, w)), indexing='ij')
    nn_, c, hh, ww = idx
    return [(0.5 + 0.5 * torch.sin(0.11 * hh * (c + 1) + 0.07 * ww + 0.9 * j + 0.3 * nn_)).float() for j in (1, 2, 3)]


def reference_forward(net, x1, x2, x3):
    """Spec section 3 written literally with the network's weights: dilated convs, no in-place ops."""
    def L(k, x):
        return F.leaky_relu(getattr(net, f'conv{k}')(x), 0.2)

    def sdc(block, x):
        return torch.cat([F.leaky_relu(F.conv2d(x, c.weight, c.bias, padding=d, dilation=d), 0.3)
                          for d, c in ((1, block.conv1), (2, block.conv2), (3, block.conv3))], 1)

    a1, a2, a3 = L(1, x1), L(2, x2), L(3, x3)
    s1, s2 = L(4, torch.cat((a1, a2), 1)), L(5, torch.cat((a2, a3), 1))
    b1, b2, b3 = L(6, a1), L(7, a2), L(8, a3)
    s1, s2 = L(9, torch.cat((b1, b2, s1), 1)), L(10, torch.cat((b2, b3, s2), 1))
    c1, c2, c3 = L(11, b1), L(12, b2), L(13, b3)
    s1, s2 = L(14, torch.cat((c1, c2, s1), 1)), L(15, torch.cat((c2, c3, s2), 1))
    x = torch.cat((c2, s1, s2), 1)
    d1 = sdc(net.sdc1, x)
    d2 = sdc(net.sdc2, torch.cat((x, d1), 1))
    return torch.sigmoid(net.conv16(torch.cat((x, d1, d2), 1)))


def test_state_dict_matches_release_manifest(golden):
    manifest = json.loads((golden / 'manifest.json').read_text())
    sd = FSHDR().state_dict()
    got = [[k, list(v.shape), str(v.dtype).replace('torch.', ''), 'param'] for k, v in sd.items()]
    assert got == manifest['entries']
    assert manifest['buffers'] == [] and list(FSHDR().buffers()) == []
    assert sum(p.numel() for p in FSHDR().parameters()) == manifest['num_parameters']


def test_parameter_counts_match_spec():
    net = FSHDR()
    assert len(net.state_dict()) == SELFCHECK['num_entries']
    assert sum(p.numel() for p in net.parameters()) == SELFCHECK['num_parameters']
    assert (net.nChannel, net.nFeat) == (6, 64)
    assert (net.sdc1.nChannels, net.sdc1.nFeatures, net.sdc2.nChannels) == (192, 64, 384)
    assert net.conv16.weight.shape == (3, 576, 3, 3)
    for k in range(1, 16):
        relu = getattr(net, f'relu{k}')
        assert isinstance(relu, nn.LeakyReLU) and relu.negative_slope == 0.2 and relu.inplace
    for d in (1, 2, 3):
        conv, relu = getattr(net.sdc2, f'conv{d}'), getattr(net.sdc2, f'relu{d}')
        assert conv.dilation == (d, d) and conv.padding == (d, d)
        assert relu.negative_slope == 0.3 and not relu.inplace


def test_seeded_init_equals_release(golden):
    torch.manual_seed(0)
    sd = FSHDR().state_dict()
    ref = torch.load(golden / 'state_dict.pth', weights_only=True)
    assert list(sd) == list(ref)
    for key, value in ref.items():
        assert torch.equal(sd[key], value), key


@pytest.mark.parametrize('prefix', ['', 'rect_'], ids=['square64', 'rect64x96'])
def test_golden_forward(golden, prefix):
    net = FSHDR()
    net.load_state_dict(torch.load(golden / 'state_dict.pth', weights_only=True), strict=True)
    net.eval()
    io = torch.load(golden / 'io.pt', weights_only=True)
    with torch.no_grad():
        y = net(io[prefix + 'x0'], io[prefix + 'x1'], io[prefix + 'x2'])
    assert y.shape == io[prefix + 'y'].shape and y.dtype == torch.float32
    assert (y - io[prefix + 'y']).abs().max().item() <= 1e-5


@pytest.mark.parametrize('case', sorted(SELFCHECK['cases']))
def test_selfcheck_values(case):
    spec = SELFCHECK['cases'][case]
    net = selfcheck_fill(FSHDR()).eval()
    with torch.no_grad():
        y = net(*selfcheck_inputs(spec['n'], spec['h'], spec['w']))
    tol = SELFCHECK['tolerance']
    assert y.shape == (spec['n'], 3, spec['h'], spec['w'])
    assert y.mean().item() == pytest.approx(spec['mean'], abs=tol)
    for index, value in spec['values']:
        assert y[tuple(index)].item() == pytest.approx(value, abs=tol), index


# even sizes take the polyphase path for the dilation-2 convs, odd ones the dilated convs; 1x1 is the smallest
@pytest.mark.parametrize('n,h,w', [(2, 12, 6), (1, 9, 7), (1, 4, 5), (1, 1, 1)])
def test_fast_forward_and_backward_match_reference(n, h, w):
    torch.manual_seed(5)
    net = selfcheck_fill(FSHDR())
    xs = [torch.rand(n, 6, h, w, requires_grad=True) for _ in range(3)]
    weight = torch.randn(n, 3, h, w)

    y = net(*xs)
    assert y.shape == (n, 3, h, w) and bool(((y > 0) & (y < 1)).all())
    grads = torch.autograd.grad((y * weight).sum(), [*net.parameters(), *xs])
    y_ref = reference_forward(net, *xs)
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [*net.parameters(), *xs])

    assert (y - y_ref).abs().max().item() < 1e-6
    names = [name for name, _ in net.named_parameters()] + ['x1', 'x2', 'x3']
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item() + 1e-9), name


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    net = FSHDR()
    net(*[torch.rand(1, 6, 8, 8) for _ in range(3)]).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inputs_are_not_modified():
    torch.manual_seed(1)
    xs = [torch.rand(2, 6, 8, 10) for _ in range(3)]
    copies = [x.clone() for x in xs]
    FSHDR()(*xs)
    assert all(torch.equal(x, c) for x, c in zip(xs, copies))


def test_train_and_eval_modes_agree():
    # no BatchNorm / Dropout / DropPath: the mode must not change the output
    torch.manual_seed(2)
    net = FSHDR()
    xs = [torch.rand(1, 6, 8, 8) for _ in range(3)]
    with torch.no_grad():
        y_train = net.train()(*xs)
        y_eval = net.eval()(*xs)
    assert torch.equal(y_train, y_eval)


@pytest.mark.parametrize('shapes', [
    [(1, 6, 8, 8), (1, 6, 8, 8), (1, 6, 8, 10)],
    [(1, 3, 8, 8)] * 3,
    [(6, 8, 8)] * 3,
], ids=['mismatched', 'channels', 'not4d'])
def test_bad_inputs_raise(shapes):
    with pytest.raises(ValueError, match=r'models/fshdr\.py'):
        FSHDR()(*[torch.rand(s) for s in shapes])


def test_non_default_input_channels():
    net = FSHDR(nChannel=4)
    assert net.conv2.weight.shape == (64, 4, 3, 3)
    assert net(*[torch.rand(1, 4, 5, 5) for _ in range(3)]).shape == (1, 3, 5, 5)


@pytest.mark.parametrize('h,w', [(6, 4), (7, 5), (2, 1)])
def test_sdc_matches_dilated_convs(h, w):
    torch.manual_seed(4)
    block = SDC(8, 4)
    x = torch.randn(2, 8, h, w)
    with torch.no_grad():
        y = block(x)
        ref = torch.cat([relu(conv(x)) for conv, relu in ((block.conv1, block.relu1), (block.conv2, block.relu2),
                                                           (block.conv3, block.relu3))], 1)
        assert y.shape == (2, 12, h, w)
        assert (y - ref).abs().max().item() < 1e-5
        assert torch.equal(dilated_conv_by_phases(x, block.conv1), block.conv1(x))
