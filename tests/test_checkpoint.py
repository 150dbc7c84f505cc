"""Release-format checkpoints: save then load is bit-exact; foreign, truncated or mismatched files fail clearly."""
from collections import OrderedDict

import pytest
import torch

from models.ahdrnet import AHDR
from models.base_model import CheckpointError, atomic_torch_save, load_backbone_state


def small_inputs():
    torch.manual_seed(3)
    return [torch.rand(1, 6, 16, 16) for _ in range(3)]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = AHDR().eval()
    path = tmp_path / 'SelfHDR_model_3.pth'
    atomic_torch_save({'state_dict': net.state_dict()}, path)
    return net, path


def test_save_then_load_is_bit_identical(saved):
    net, path = saved
    torch.manual_seed(1)
    other = AHDR().eval()
    load_backbone_state(other, path)
    x = small_inputs()
    with torch.no_grad():
        assert torch.equal(net(*x), other(*x))
    content = torch.load(path, weights_only=True)
    assert list(content) == ['state_dict'] and not any(k.startswith('module.') for k in content['state_dict'])


def test_loads_module_prefixed_and_bare_state_dicts(saved, tmp_path):
    net, _ = saved
    prefixed = OrderedDict(('module.' + k, v) for k, v in net.state_dict().items())
    path = tmp_path / 'dp.pth'
    torch.save({'state_dict': prefixed}, path)
    other = AHDR()
    load_backbone_state(other, path)
    assert torch.equal(other.conv1.weight, net.conv1.weight)


def test_missing_unexpected_and_misshaped_keys_are_named(saved, tmp_path):
    net, _ = saved
    state = net.state_dict()
    state.pop('conv3.bias')
    state['extra.weight'] = torch.zeros(1)
    state['conv1.weight'] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / 'bad.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone_state(AHDR(), path)
    message = str(err.value)
    assert 'conv3.bias' in message and 'extra.weight' in message and 'conv1.weight (64, 3, 3, 3)' in message
    assert 'bad.pth' in message


def test_truncated_missing_and_foreign_files(saved, tmp_path):
    _, path = saved
    truncated = tmp_path / 'cut.pth'
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='cannot read checkpoint .*cut.pth'):
        load_backbone_state(AHDR(), truncated)
    with pytest.raises(CheckpointError, match='not found'):
        load_backbone_state(AHDR(), tmp_path / 'nope.pth')
    foreign = tmp_path / 'opt.pth'
    torch.save({'name': 'SelfHDR_optimizer_Adam', 'epoch': 1, 'state_dict': {'state': {}, 'param_groups': []}},
               foreign)
    with pytest.raises(CheckpointError, match='not a model checkpoint'):
        load_backbone_state(AHDR(), foreign)


def test_unreadable_checkpoints_say_what_they_are_in_a_line(saved, tmp_path):
    """A photo passed as the checkpoint, or a checkpoint holding pickled objects: one line saying what is wrong,
    not torch's page suggesting to load the file unsafely."""
    import argparse

    photo = tmp_path / 'photo.jpg'
    photo.write_bytes(b'\xff\xd8\xff\xe0' + bytes(200))
    with pytest.raises(CheckpointError) as err:
        load_backbone_state(AHDR(), photo)
    assert str(err.value) == (f'{photo} is not a PyTorch checkpoint (torch.save writes a zip archive; this file is '
                              'not one)')
    pickled = tmp_path / 'with_options.pth'
    torch.save({'state_dict': AHDR().state_dict(), 'opt': argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(CheckpointError) as err:
        load_backbone_state(AHDR(), pickled)
    message = str(err.value)
    assert 'with_options.pth holds Python objects besides tensors' in message
    assert 'weights_only' not in message and '\n' not in message
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty.pth is empty'):
        load_backbone_state(AHDR(), empty)


def test_checkpoint_read_error_does_not_raise_itself(tmp_path):
    """The message for a file that cannot even be opened (permissions, removed meanwhile) is still a message."""
    from models.base_model import checkpoint_read_error
    gone = tmp_path / 'gone.pth'
    assert checkpoint_read_error(gone, OSError('x')).startswith(f'cannot read checkpoint {gone}: ')


def test_atomic_save_leaves_old_file_when_writing_fails(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()

    def broken(obj, f, *a, **k):
        open(f, 'wb').write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(OSError):
        atomic_torch_save({'state_dict': {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]
