"""--compile: the flag wraps the backbone in torch.compile after loading, a compiled model trains and tests like the
plain one, its checkpoints keep the bare release keys and load strictly, and every way compiling can fail (no C++
compiler, torch.compile raising, an error at the first call) leaves the run going uncompiled with a warning.

A real inductor compile takes minutes on a loaded CPU, so torch.compile runs here with backend='eager' (dynamo traces
the network, no code is generated) or is replaced by a stand-in."""
import logging

import pytest
import torch

import models
import train
from models import base_model, networks
from models.base_model import CompiledOrEager, load_backbone_state
from tiny_data import load_state, single_thread, tiny_ahdr, tiny_opt, train_args, use_tiny_backbone


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def tiny(monkeypatch):
    use_tiny_backbone(monkeypatch)


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with dynamo's eager backend; counts the wraps."""
    real = torch.compile
    calls = []

    def compile_eager(model, **kwargs):
        calls.append(model)
        return real(model, backend='eager', **kwargs)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, 'compile', compile_eager)
    yield calls
    torch._dynamo.reset()


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    ldr = [torch.rand(1, 3, size, size, generator=g) for _ in range(3)]
    expo = torch.tensor([[1.0, 4.0, 16.0]])
    batch = {f'input{i}': torch.cat([x ** 2.2 / t, x], 1) for i, (x, t) in enumerate(zip(ldr, expo[0]))}
    batch['label'] = (ldr[1] ** 2.2 / 4.0).clamp(0, 1)
    batch['expo'] = expo
    return batch


def _model(tiny_dataroot, tmp_path, name, **flags):
    torch.manual_seed(0)
    opt = tiny_opt(tiny_dataroot, tmp_path, name, 'supervised', **flags)
    model = models.create_model(opt)
    model.setup(opt)
    return model


def _step(model):
    model.train()
    model.set_input(_batch())
    model.optimize_parameters()
    return float(model.loss_Total.detach())


def test_flag_parses(tiny_dataroot, tmp_path):
    assert tiny_opt(tiny_dataroot, tmp_path, 'a').compile is False
    assert tiny_opt(tiny_dataroot, tmp_path, 'b', compile=True).compile is True
    from options.train_options import TrainOptions
    bare = TrainOptions().parse(train_args(tiny_dataroot, tmp_path, 'c') + ['--compile'])
    assert bare.compile is True
    auto = TrainOptions().parse(train_args(tiny_dataroot, tmp_path, 'd') + ['--compile', 'AUTO'])
    assert auto.compile == 'auto'


@pytest.mark.parametrize('flag, is_train, channels_last, expected', [
    ('auto', True, False, True),  # training repays the warm-up
    ('auto', True, True, False),  # bf16 channels_last on AMX: eager is as fast
    ('auto', False, False, False),  # testing: one pass
    (True, False, True, True),  # an explicit choice is kept
    ('False', True, False, False),
])
def test_compile_auto_resolves_by_stage_and_layout(flag, is_train, channels_last, expected):
    from models.base_model import resolve_compile
    assert resolve_compile(flag, is_train, channels_last) is expected


@pytest.mark.parametrize('cpu_flags, compiled', [({'avx2', 'fma'}, True), ({'avx512_bf16', 'amx_bf16'}, False)])
def test_compile_auto_follows_the_cpu_in_a_training_model(tiny, tiny_dataroot, tmp_path, eager_compile, monkeypatch,
                                                          cpu_flags, compiled):
    """Compiled where the run keeps NCHW; eager where --channels_last auto picks NHWC (a CPU with AMX)."""
    from models import base_model
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': set(cpu_flags))
    model = _model(tiny_dataroot, tmp_path, 'auto', compile='auto')
    assert isinstance(model.netSelfHDR, CompiledOrEager) is compiled and len(eager_compile) == int(compiled)
    assert (model.memory_format == torch.channels_last) is not compiled


def test_default_is_uncompiled(tiny, tiny_dataroot, tmp_path, eager_compile):
    model = _model(tiny_dataroot, tmp_path, 'plain')
    assert not isinstance(model.netSelfHDR, CompiledOrEager) and not eager_compile


def test_compiled_step_matches_plain_and_saves_bare_keys(tiny, tiny_dataroot, tmp_path, eager_compile, caplog):
    plain = _model(tiny_dataroot, tmp_path, 'plain')
    plain_loss = _step(plain)
    compiled = _model(tiny_dataroot, tmp_path, 'compiled', compile=True)
    assert isinstance(compiled.netSelfHDR, CompiledOrEager) and len(eager_compile) == 1
    with caplog.at_level(logging.WARNING, logger='models.base_model'):
        compiled_loss = _step(compiled)
    assert compiled.netSelfHDR.is_compiled, caplog.text  # no fallback happened
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # dynamo really traced the network
    assert compiled_loss == pytest.approx(plain_loss, rel=1e-5)
    for a, b in zip(networks.unwrap(plain.netSelfHDR).parameters(), networks.unwrap(compiled.netSelfHDR).parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # test-time forward (padding/tiling path, inference mode) through the compiled network
    compiled.eval()
    compiled.set_input(_batch(seed=1))
    compiled.test()
    assert compiled.data_out.shape == (1, 3, 32, 32) and torch.isfinite(compiled.data_out).all()

    compiled.save_networks(1)
    state = load_state(compiled.network_path('SelfHDR', 1))
    assert list(state) == list(tiny_ahdr().state_dict())  # bare release keys, release order
    assert not any('_orig_mod' in k or k.startswith('module.') for k in state)
    fresh = tiny_ahdr()
    load_backbone_state(fresh, compiled.network_path('SelfHDR', 1))  # strict
    torch.testing.assert_close(fresh.state_dict(), networks.unwrap(compiled.netSelfHDR).state_dict())

    # and a compiled model resumes from it: weights are loaded before wrapping
    resumed = _model(tiny_dataroot, tmp_path, 'compiled', compile=True, load_iter=1)
    torch.testing.assert_close(networks.unwrap(resumed.netSelfHDR).state_dict(), fresh.state_dict())


def test_error_at_first_call_falls_back_uncompiled(tiny, tiny_dataroot, tmp_path, monkeypatch, caplog):
    plain_loss = _step(_model(tiny_dataroot, tmp_path, 'plain'))

    def failing_compile(model, **kwargs):
        def compiled(*inputs):
            raise RuntimeError('InductorError: C++ compile error\n(the rest of the log)')
        return compiled

    monkeypatch.setattr(torch, 'compile', failing_compile)
    model = _model(tiny_dataroot, tmp_path, 'fails', compile=True)
    assert isinstance(model.netSelfHDR, CompiledOrEager) and model.netSelfHDR.is_compiled
    with caplog.at_level(logging.WARNING, logger='models.base_model'):
        loss = _step(model)
    assert not model.netSelfHDR.is_compiled
    assert 'compiling netSelfHDR failed (RuntimeError: InductorError: C++ compile error); continuing uncompiled' \
        in caplog.text
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='models.base_model'):
        _step(model)  # warned once; later calls go straight to the plain network
    assert 'compiling' not in caplog.text


def test_torch_compile_raising_leaves_the_network_plain(tiny, tiny_dataroot, tmp_path, monkeypatch, caplog):
    def raising_compile(model, **kwargs):
        raise RuntimeError('Python 3.99 is not supported by dynamo')

    monkeypatch.setattr(torch, 'compile', raising_compile)
    with caplog.at_level(logging.WARNING, logger='models.base_model'):
        model = _model(tiny_dataroot, tmp_path, 'raises', compile=True)
    assert not isinstance(model.netSelfHDR, CompiledOrEager)
    assert 'torch.compile(netSelfHDR) failed (RuntimeError: Python 3.99' in caplog.text
    assert torch.isfinite(torch.tensor(_step(model)))


def test_no_cpp_compiler_leaves_the_network_plain(tiny, tiny_dataroot, tmp_path, monkeypatch, caplog, eager_compile):
    monkeypatch.delenv('CXX', raising=False)
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    assert not base_model.has_cpp_compiler()
    with caplog.at_level(logging.WARNING, logger='models.base_model'):
        model = _model(tiny_dataroot, tmp_path, 'nocxx', compile=True)
    assert not isinstance(model.netSelfHDR, CompiledOrEager) and not eager_compile
    assert 'no C++ compiler found' in caplog.text


def test_train_py_with_compile_writes_release_checkpoints(tiny, tiny_dataroot, tmp_path, eager_compile):
    rc = train.main(train_args(tiny_dataroot, tmp_path, 'train_compiled', 'supervised', niter=1, compile=True))
    assert rc == 0 and len(eager_compile) == 1
    state = load_state(tmp_path / 'train_compiled' / 'SelfHDR_model_1.pth')
    assert list(state) == list(tiny_ahdr().state_dict())
    load_backbone_state(tiny_ahdr(), tmp_path / 'train_compiled' / 'SelfHDR_model_1.pth')
