"""AHDR backbone (models/ahdrnet.py): release state_dict and seeded init, golden and self-check outputs,
and agreement of the optimised forward/backward with a spec-literal reference (spec: shared/specs/ahdrnet.md)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.ahdrnet import AHDR, from_phases, to_phases
from conftest import GOLDEN as GOLDEN_ROOT
from selfcheck import selfcheck_fill

GOLDEN = GOLDEN_ROOT / 'AHDR'
FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'ahdrnet_selfcheck.json'
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
    """Spec section 3 written literally with the network's weights: per-frame stem, dilated convs, no in-place ops."""
    def lrelu(t):
        return F.leaky_relu(t, 0.01)

    def drdb(block, x):
        z = x
        for layer in block.dense_layers:
            y = F.conv2d(z, layer.conv.weight, layer.conv.bias, padding=2, dilation=2)
            z = torch.cat((z, F.relu(y)), 1)
        return block.conv_1x1(z) + x

    f1, f2, f3 = (lrelu(net.conv1(x)) for x in (x1, x2, x3))
    a1 = torch.sigmoid(net.att12(lrelu(net.att11(torch.cat((f1, f2), 1)))))
    a3 = torch.sigmoid(net.att32(lrelu(net.att31(torch.cat((f3, f2), 1)))))
    f0 = net.conv2(torch.cat((f1 * a1, f2, f3 * a3), 1))
    r1 = drdb(net.RDB1, f0)
    r2 = drdb(net.RDB2, r1)
    r3 = drdb(net.RDB3, r2)
    g = net.GFF_3x3(net.GFF_1x1(torch.cat((r1, r2, r3), 1)))
    return torch.sigmoid(net.conv3(net.conv_up(g + f2)))


def test_state_dict_matches_release_manifest(golden):
    manifest = json.loads((golden / 'manifest.json').read_text())
    sd = AHDR().state_dict()
    got = [[k, list(v.shape), str(v.dtype).replace('torch.', ''), 'param'] for k, v in sd.items()]
    assert got == manifest['entries']
    assert manifest['buffers'] == [] and list(AHDR().buffers()) == []
    assert sum(p.numel() for p in AHDR().parameters()) == manifest['num_parameters']


def test_parameter_counts_match_spec():
    net = AHDR()
    assert len(net.state_dict()) == SELFCHECK['num_entries']
    assert sum(p.numel() for p in net.parameters()) == SELFCHECK['num_parameters']
    assert (net.nChannel, net.nDenselayer, net.nFeat, net.growthRate) == (6, 5, 64, 32)
    assert isinstance(net.relu, nn.LeakyReLU) and net.relu.negative_slope == 0.01
    assert net.RDB2.dense_layers[3].conv.weight.shape == (32, 160, 3, 3)
    assert net.RDB1.dense_layers[0].conv.dilation == (2, 2) and net.RDB1.dense_layers[0].conv.padding == (2, 2)


def test_seeded_init_equals_release(golden):
    torch.manual_seed(0)
    sd = AHDR().state_dict()
    ref = torch.load(golden / 'state_dict.pth', weights_only=True)
    assert list(sd) == list(ref)
    for key, value in ref.items():
        assert torch.equal(sd[key], value), key


@pytest.mark.parametrize('prefix', ['', 'rect_'], ids=['square64', 'rect64x96'])
def test_golden_forward(golden, prefix):
    net = AHDR()
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
    net = selfcheck_fill(AHDR()).eval()
    with torch.no_grad():
        y = net(*selfcheck_inputs(spec['n'], spec['h'], spec['w']))
    tol = SELFCHECK['tolerance']
    assert y.shape == (spec['n'], 3, spec['h'], spec['w'])
    assert y.mean().item() == pytest.approx(spec['mean'], abs=tol)
    for index, value in spec['values']:
        assert y[tuple(index)].item() == pytest.approx(value, abs=tol), index


# even sizes take the polyphase path, odd ones the dilated convs; 1x1 is the smallest valid input
@pytest.mark.parametrize('n,h,w', [(2, 12, 16), (1, 9, 7), (1, 6, 5), (1, 1, 1)])
def test_fast_forward_and_backward_match_reference(n, h, w):
    torch.manual_seed(5)
    net = selfcheck_fill(AHDR())
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
    net = AHDR()
    net(*[torch.rand(1, 6, 8, 8) for _ in range(3)]).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inputs_are_not_modified():
    torch.manual_seed(1)
    xs = [torch.rand(2, 6, 8, 10) for _ in range(3)]
    copies = [x.clone() for x in xs]
    AHDR()(*xs)
    assert all(torch.equal(x, c) for x, c in zip(xs, copies))


def test_train_and_eval_modes_agree():
    # no BatchNorm / Dropout / DropPath: the mode must not change the output
    torch.manual_seed(2)
    net = AHDR()
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
    with pytest.raises(ValueError, match=r'models/ahdrnet\.py'):
        AHDR()(*[torch.rand(s) for s in shapes])


def test_non_default_widths_build_and_run():
    net = AHDR(nChannel=4, nDenselayer=2, nFeat=8, growthRate=4)
    assert net.RDB1.conv_1x1.weight.shape == (8, 16, 1, 1)
    y = net(*[torch.rand(1, 4, 6, 6) for _ in range(3)])
    assert y.shape == (1, 3, 6, 6)


@pytest.mark.parametrize('d', [2, 3])
def test_phase_helpers(d):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4 * d, 2 * d)
    p = to_phases(x, d)
    assert p.shape == (2 * d * d, 3, 4, 2)
    # sample 1, phase (a, b) = (d - 1, 1) holds rows d-1::d, columns 1::d
    assert torch.equal(p[(1 * d + d - 1) * d + 1], x[1, :, d - 1::d, 1::d])
    assert torch.equal(from_phases(p, 2, d), x)
    w = torch.randn(5, 3, 3, 3)
    direct = F.conv2d(x, w, padding=d, dilation=d)
    assert torch.allclose(from_phases(F.conv2d(p, w, padding=1), 2, d), direct, atol=1e-5)
