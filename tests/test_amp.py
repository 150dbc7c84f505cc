"""--amp on the CPU: bf16 autocast training steps for every backbone stay finite and close to fp32; 'auto' picks
fp32 on CPUs without native bf16; fp16 on the CPU is refused. The default ('none') is what the fidelity tests use."""
import pytest
import torch

import models
from models import base_model
from tiny_data import single_thread, tiny_opt

BACKBONES = ('AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet')


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    ldr = [torch.rand(1, 3, size, size, generator=g) for _ in range(3)]
    expo = torch.tensor([[1.0, 4.0, 16.0]])
    batch = {f'input{i}': torch.cat([x ** 2.2 / t, x], 1) for i, (x, t) in enumerate(zip(ldr, expo[0]))}
    batch['label'] = (ldr[1] ** 2.2 / 4.0).clamp(0, 1)
    batch['expo'] = expo
    return batch


def _step_loss(tiny_dataroot, tmp_path, network, amp):
    torch.manual_seed(0)
    opt = tiny_opt(tiny_dataroot, tmp_path, f'amp_{amp}', 'supervised', network=network, amp=amp)
    model = models.create_model(opt)
    model.setup(opt)
    model.train()
    model.set_input(_batch())
    model.optimize_parameters()
    return float(model.loss_Total.detach()), model


@pytest.mark.parametrize('network', BACKBONES)
def test_bf16_step_on_cpu_is_finite_and_close_to_fp32(tiny_dataroot, tmp_path, network):
    fp32, _ = _step_loss(tiny_dataroot, tmp_path, network, 'none')
    bf16, model = _step_loss(tiny_dataroot, tmp_path, network, 'bf16')
    assert model.amp_dtype == torch.bfloat16
    assert model.data_out.dtype == torch.bfloat16  # the network really ran under autocast
    assert torch.isfinite(torch.tensor(bf16)) and bf16 == pytest.approx(fp32, rel=0.02)
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.netSelfHDR.parameters())


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda: False)
    assert base_model.resolve_amp('auto', torch.device('cpu')) is None
    monkeypatch.setattr(base_model, 'cpu_has_native_bf16', lambda: True)
    assert base_model.resolve_amp('auto', torch.device('cpu')) is torch.bfloat16
    assert base_model.resolve_amp('none', torch.device('cpu')) is None


@pytest.mark.parametrize('flags, expected', [
    ('fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8', torch.bfloat16),  # Sapphire Rapids-like
    ('fpu sse2 avx2 avx512f avx512_bf16', torch.bfloat16),  # Cooper Lake / Zen 4: avx512_bf16 without AMX
    ('fpu sse2 avx2 amx_bf16', torch.bfloat16),
    ('fpu sse2 avx2 fma', None),  # Zen 2/3: AVX2 only, bf16 would be emulated
    ('fpu sse2 avx2 avx512f avx512bw', None),  # AVX-512 without bf16 (Skylake-SP)
    ('', None),
])
def test_auto_resolves_from_the_cpuinfo_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text(f'processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n'
                       f'flags\t\t: {flags}\n')
    cpu_flags = base_model.read_cpu_flags(str(cpuinfo))
    assert cpu_flags == set(flags.split())
    assert base_model.resolve_amp('auto', torch.device('cpu'), cpu_flags=cpu_flags) is expected
    # explicit choices do not depend on the flags
    assert base_model.resolve_amp('none', torch.device('cpu'), cpu_flags=cpu_flags) is None
    assert base_model.resolve_amp('bf16', torch.device('cpu'), cpu_flags=cpu_flags) is torch.bfloat16


def test_unreadable_cpuinfo_means_fp32(tmp_path):
    flags = base_model.read_cpu_flags(str(tmp_path / 'missing'))
    assert flags == set()
    assert base_model.resolve_amp('auto', torch.device('cpu'), cpu_flags=flags) is None


def test_fp16_on_cpu_is_refused(tiny_dataroot, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tiny_opt(tiny_dataroot, tmp_path, 'x', amp='fp16')
    assert '--amp fp16 is CUDA-only' in capsys.readouterr().err


AMX = {'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16'}
ZEN4 = {'avx512f', 'avx512_bf16'}


@pytest.fixture
def amx_cpu(monkeypatch):
    """/proc/cpuinfo as an AMX CPU shows it, whatever this machine is."""
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': set(AMX))


@pytest.mark.parametrize('flag, amp, device, flags, expected', [
    ('auto', torch.bfloat16, 'cpu', AMX, True),  # the measured case: AMX takes NHWC directly
    ('auto', None, 'cpu', AMX, True),  # fp32 too, 2-6 % faster there
    ('auto', None, 'cpu', ZEN4, False),  # without AMX fp32 keeps the release's layout
    ('auto', torch.bfloat16, 'cpu', ZEN4, False),  # avx512_bf16 without AMX: not measured, unchanged
    ('auto', torch.bfloat16, 'cuda', AMX, False),
    ('true', None, 'cpu', set(), True),
    (True, None, 'cpu', set(), True),
    ('False', torch.bfloat16, 'cpu', AMX, False),
])
def test_channels_last_auto_is_on_for_amx_cpus_only(flag, amp, device, flags, expected):
    assert base_model.resolve_channels_last(flag, amp, torch.device(device), cpu_flags=flags) is expected


@pytest.mark.parametrize('network', BACKBONES)
def test_channels_last_auto_reaches_the_training_model(tiny_dataroot, tmp_path, amx_cpu, network):
    _, model = _step_loss(tiny_dataroot, tmp_path, network, 'bf16')
    assert model.memory_format == torch.channels_last
    convs = [p for p in model.netSelfHDR.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert model.input0.is_contiguous(memory_format=torch.channels_last) and not model.input0.is_contiguous()
    _, model = _step_loss(tiny_dataroot, tmp_path, network, 'none')
    assert model.memory_format == torch.channels_last  # fp32 too on AMX


def test_channels_last_auto_keeps_nchw_without_amx(tiny_dataroot, tmp_path, monkeypatch):
    monkeypatch.setattr(base_model, 'read_cpu_flags', lambda path='/proc/cpuinfo': set(ZEN4))
    for amp in ('bf16', 'none'):
        _, model = _step_loss(tiny_dataroot, tmp_path, 'AHDRNet', amp)
        assert model.memory_format == torch.contiguous_format
        assert model.input0.is_contiguous()


@pytest.mark.parametrize('init_type', ['normal', 'orthogonal'])
def test_channels_last_starts_from_the_same_initial_weights(tiny_dataroot, tmp_path, amx_cpu, init_type):
    """nn.init fills tensors in memory order (orthogonal_ even needs NCHW views): the layout comes after it."""
    states = []
    for layout in ('auto', 'False'):
        torch.manual_seed(0)
        opt = tiny_opt(tiny_dataroot, tmp_path, f'init_{layout}', 'supervised', network='AHDRNet', amp='bf16',
                       init_type=init_type, channels_last=layout)
        model = models.create_model(opt)
        assert (model.memory_format == torch.channels_last) == (layout == 'auto')
        states.append({k: v.detach().clone() for k, v in model.netSelfHDR.state_dict().items()})
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize('network', BACKBONES)
def test_channels_last_changes_no_result_beyond_rounding(network):
    """The layout is a speed choice only: fp32 outputs of one network in both layouts agree to float32 rounding."""
    torch.manual_seed(0)
    net = models.networks.define_network(network).eval()
    x = [t[:, :, :32, :32] for t in (_batch()[f'input{i}'] for i in range(3))]
    with torch.inference_mode():
        plain = net(*x)
        net = net.to(memory_format=torch.channels_last)
        nhwc = net(*[t.contiguous(memory_format=torch.channels_last) for t in x])
    torch.testing.assert_close(nhwc.contiguous(), plain, rtol=1e-5, atol=1e-5)


def test_a_channels_last_run_saves_contiguous_weights(tiny_dataroot, tmp_path, amx_cpu):
    """Checkpoints stay in the bare release format whatever layout the run trained in."""
    _, model = _step_loss(tiny_dataroot, tmp_path, 'AHDRNet', 'bf16')
    assert model.netSelfHDR.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.netSelfHDR.conv2.weight.is_contiguous()
    model.save_networks(1)
    state = torch.load(model.network_path('SelfHDR', 1), weights_only=True)['state_dict']
    assert all(v.is_contiguous() for v in state.values())


@pytest.mark.parametrize('network, module', [('AHDRNet', 'models.ahdrnet'), ('FSHDR', 'models.fshdr')])
def test_polyphase_layout_is_for_nchw_only(network, module, monkeypatch):
    """In channels_last the dilated convolutions run as they are (fast there); NCHW on the CPU still splits phases."""
    import importlib
    mod = importlib.import_module(module)
    calls = []
    real = mod.to_phases
    monkeypatch.setattr(mod, 'to_phases', lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    net = models.networks.define_network(network).eval()
    x = [_batch()[f'input{i}'][:, :, :16, :16] for i in range(3)]
    with torch.inference_mode():
        net(*x)
        assert calls, 'NCHW on the CPU should use the polyphase layout'
        calls.clear()
        net = net.to(memory_format=torch.channels_last)
        net(*[t.contiguous(memory_format=torch.channels_last) for t in x])
    assert not calls
