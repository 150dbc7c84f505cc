"""models/backbones.py is the one place a backbone's needs are decided; everything else reads it."""
import pytest

from models import backbones, networks
from options.base_options import NETWORK_CHOICES


def test_registry_and_choices_come_from_the_table():
    assert NETWORK_CHOICES == backbones.NAMES == ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')
    assert networks.NETWORKS == {b.name: (b.module, b.cls) for b in backbones.BACKBONES.values()}
    assert set(networks.PADDED_NETWORKS) == {'HDR-Transformer', 'SCTNet'}
    for name in backbones.NAMES:
        assert networks.get_network_class(name).__name__ == backbones.backbone(name).cls
    with pytest.raises(ValueError, match='Unknown --network'):
        backbones.backbone('UNet')


@pytest.mark.parametrize('name', backbones.NAMES)
def test_options_take_padding_and_aligned_input_from_the_table(opt_factory, name, tmp_path):
    opt = opt_factory(dataroot=tmp_path, name='x', model='selfhdr1', network=name, checkpoints_dir=tmp_path,
                      patch_size=64, is_train=False)
    row = backbones.backbone(name)
    assert opt.chop == (row.pad_multiple > 0)
    assert opt.aligned_input == row.aligned_input
