"""SCTNet against the release: state_dict manifest, seeded initialisation, golden outputs, size behaviour."""
import json

import pytest
import torch

from models.sctnet import SCTNet


@pytest.fixture(scope='module')
def golden():
    from conftest import GOLDEN
    if not GOLDEN.is_dir():
        pytest.skip(f'golden reference not found at {GOLDEN} (it sits beside the checkout in CI)')
    folder = GOLDEN / 'SCTNet'
    return {'manifest': json.loads((folder / 'manifest.json').read_text()),
            'state': torch.load(folder / 'state_dict.pth', weights_only=True),
            'io': torch.load(folder / 'io.pt', weights_only=False)}


def manifest_entries(manifest):
    return [(key, list(shape), dtype) for key, shape, dtype, _kind in manifest['entries']]


def test_state_dict_matches_manifest(golden):
    state = SCTNet().state_dict()
    ours = [(k, list(v.shape), str(v.dtype).replace('torch.', '')) for k, v in state.items()]
    assert ours == manifest_entries(golden['manifest'])


def test_seeded_construction_reproduces_release_weights(golden):
    torch.manual_seed(0)
    state = SCTNet().state_dict()
    assert list(state) == list(golden['state'])
    for key, value in golden['state'].items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


@pytest.mark.parametrize('prefix', ['', 'rect_'])
def test_golden_forward(golden, prefix):
    net = SCTNet().eval()
    net.load_state_dict(golden['state'], strict=True)
    io = golden['io']
    with torch.no_grad():
        y = net(io[prefix + 'x0'], io[prefix + 'x1'], io[prefix + 'x2'])
    assert y.shape == io[prefix + 'y'].shape
    assert (y - io[prefix + 'y']).abs().max().item() < 1e-5


def test_sizes_not_multiple_of_8_come_back_padded():
    """The release pads bottom/right to a multiple of 8 inside the network and never crops (sctnet.md)."""
    torch.manual_seed(0)
    net = SCTNet().eval()
    x = [torch.rand(1, 6, 20, 13) for _ in range(3)]
    with torch.no_grad():
        y = net(*x)
    assert y.shape == (1, 3, 24, 16)
    assert 0 < y.min().item() and y.max().item() < 1


def test_droppath_makes_training_mode_random():
    torch.manual_seed(0)
    net = SCTNet()
    x = [torch.rand(2, 6, 16, 16) for _ in range(3)]
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(*x), net(*x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(*x), net(*x))
