"""The checkpoints shipped in pretrained_models/: test.sh's default exists, and every shipped model loads strictly into
the backbone its study names and merges a small bracket into finite values in (0, 1)."""
import json
import re
from pathlib import Path

import pytest
import torch

from models.base_model import load_backbone_state
from models.medium_gate import GatedNetwork, read_gate, with_gate
from models.networks import define_network

ROOT = Path(__file__).resolve().parents[1]
# Our models carry their study's results.json; the authors' checkpoints, placed beside them by users, do not.
SHIPPED = sorted(p.parent for p in (ROOT / 'pretrained_models').glob('*/SelfHDR_model_1.pth')
                 if (p.parent / 'results.json').is_file())


def test_default_of_test_sh_is_shipped():
    script = (ROOT / 'test.sh').read_text()
    name = re.search(r'^name=\$\{name:-([^}]+)\}', script, re.MULTILINE).group(1)
    net = re.search(r'^net=\$\{net:-([^}]+)\}', script, re.MULTILINE).group(1)
    folder = ROOT / 'pretrained_models' / name
    assert (folder / 'SelfHDR_model_1.pth').is_file()
    assert json.loads((folder / 'results.json').read_text())['network'] == net


@pytest.mark.parametrize('folder', SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_merges(folder):
    network = json.loads((folder / 'results.json').read_text())['network']
    net = define_network(network)
    load_backbone_state(net, str(folder / 'SelfHDR_model_1.pth'))
    net.eval()
    gen = torch.Generator().manual_seed(0)
    # three LDR frames, 6 channels each as the data sets give them: the linearised frame first, then the frame
    ldr = torch.rand(1, 3, 3, 32, 48, generator=gen).sort(dim=1).values
    frames = [torch.cat([x.clamp(min=1e-4) ** 2.2 / t, x], 1) for x, t in zip(ldr.unbind(1), (1.0, 4.0, 16.0))]
    # the backbone alone (how the release loads any checkpoint), then as our loaders do: with its medium gate if any
    for model in (net, with_gate(net, folder / 'SelfHDR_model_1.pth', 'auto')):
        with torch.no_grad():
            out = model(*frames)
        assert out.shape == (1, 3, 32, 48)
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_the_gated_shipped_model_carries_its_gate():
    folder = ROOT / 'pretrained_models' / 'fshdr_long_na_gate'
    gate = read_gate(folder / 'SelfHDR_model_1.pth')
    assert gate is not None and gate.consistency == 1.5  # the clamp chosen on the study's validation split
    assert gate.chroma == 1.2  # brightness to the band, colour within 1.2 times it (round 3, thirteenth session)
    assert gate.short_consistency == 1.5  # clipped pixels held to the aligned short frame (thirteenth session)
    assert gate.fallback == 4.0  # the medium frame itself beyond 4 sigmas (fourteenth session)
    assert gate.fusion_window == 5  # fifteenth session
    assert gate.long_consistency == 1.5  # the aligned long frame as a second witness (sixteenth session)
    # the long clamp inside the medium band (seventeenth session); the band's noise under a physical noise curve
    # (eighteenth session)
    assert gate.long_within_medium is True and gate.band_noise == 'weak_texture_modelled'
    assert gate.bracket_noise is True  # the band's noise capped by the whole bracket's (twentieth session)
    assert gate.fusion_prior == 0.5  # the fusion weighs the image's mean error (twenty-second session)
    net = define_network('FSHDR')
    load_backbone_state(net, str(folder / 'SelfHDR_model_1.pth'))
    assert isinstance(with_gate(net.eval(), folder / 'SelfHDR_model_1.pth'), GatedNetwork)
