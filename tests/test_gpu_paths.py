"""The GPU-only paths of training, checked on the CPU with stand-ins (issue 22): a resume whose checkpoint was mapped
onto another device, DistributedDataParallel of every backbone through validation (2 gloo processes), DataParallel
with bf16 refused, no host syncs in the transformers' forward, per-rank training noise, the GradScaler in the
checkpoint, --gpu_ids against the device count, and the cuDNN flags of --deterministic."""
import random
import socket
import warnings

import numpy as np
import pytest
import torch

import models.base_model as base_model
from models import create_model
from tiny_data import single_thread, tiny_opt, use_tiny_backbone


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _to_meta(obj):
    if torch.is_tensor(obj):
        return obj.to('meta')
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------- 1. resume on a GPU
def test_resume_with_a_gpu_device_restores_rng_states_on_the_cpu(tiny, tiny_dataroot, tmp_path, monkeypatch):
    """A model on a GPU used to load its optimizer file with map_location=<the GPU>, which put the RNG states there;
    torch.set_rng_state takes CPU byte tensors only. The 'meta' device stands in for the GPU: whatever torch.load is
    asked to map anywhere but the CPU lands there (and would fail to restore)."""
    opt = tiny_opt(tiny_dataroot, tmp_path, 'rng', 'selfhdr1', load_optimizers=True)
    model = create_model(opt)
    model.setup(opt)
    for param in model.netSelfHDR.parameters():
        param.grad = torch.ones_like(param)
    model.optimizer.step()  # some Adam state to load back
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    (tmp_path / 'rng').mkdir()
    model.save_optimizers(1)
    expected = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())

    real_load = torch.load

    def load_mapped(path, map_location=None, **kwargs):
        obj = real_load(path, map_location='cpu', **kwargs)
        on_cpu = map_location is None or torch.device(map_location).type == 'cpu'
        return obj if on_cpu else _to_meta(obj)

    monkeypatch.setattr(base_model.torch, 'load', load_mapped)
    resumed = create_model(opt)
    resumed.device = torch.device('cuda', 0)  # what a GPU run has; nothing below launches CUDA work
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    manifest = resumed.load_optimizers(1)
    resumed.restore_training_state(manifest)
    assert torch.equal(torch.get_rng_state(), expected[0])
    assert random.getstate() == expected[1]
    assert np.array_equal(np.random.get_state()[1], expected[2])
    state = resumed.optimizer.state_dict()['state']
    assert len(state) == len(list(resumed.netSelfHDR.parameters()))
    assert all(not v.is_meta for s in state.values() for v in s.values() if torch.is_tensor(v))
