"""util/tiling.py: the release's test-time padding (`chop`) and tiled inference."""

import logging

import pytest
import torch
import torch.nn.functional as F

from util.tiling import _tile_layout, chop_padding, padded_forward, tiled_forward
from conftest import GOLDEN


def _bracket(h, w, seed=0):
    """Three (1, 6, h, w) inputs built as in training: cat([l**2.2 / t, l]) with t = 1, 4, 16."""
    g = torch.Generator().manual_seed(seed)
    ls = [torch.rand(1, 3, h, w, generator=g) for _ in range(3)]
    return [torch.cat([l ** 2.2 / t, l], 1) for l, t in zip(ls, (1.0, 4.0, 16.0))]


# ------------------------------------------------------------------------------------------ chop padding

@pytest.mark.parametrize('size, release, clean', [
    (64, (4, 4), (0, 0)),   # multiple of 8: the release still pads a full 8 (known flaw 2)
    (8, (4, 4), (0, 0)),
    (60, (2, 2), (2, 2)),
    (63, (0, 1), (0, 1)),
    (61, (1, 2), (1, 2)),   # odd pad: the larger half goes after
    (1000, (4, 4), (0, 0)),
    (1500, (2, 2), (2, 2)),  # Kalantari 1000x1500 goes through the network as 1008x1504
])
def test_chop_padding(size, release, clean):
    assert chop_padding(size) == release
    assert chop_padding(size, mode='release') == release
    assert chop_padding(size, mode='clean') == clean
    assert (size + sum(chop_padding(size))) % 8 == 0


def test_chop_padding_bad_mode():
    with pytest.raises(ValueError, match='not .release. or .clean.'):
        chop_padding(64, mode='zero')


def test_padded_forward_pads_reflect_and_crops():
    seen = []

    def fn(*xs):
        seen.append([tuple(x.shape) for x in xs])
        return xs[1][:, :3] * 3 + xs[0][:, 3:]

    xs = _bracket(20, 30)
    out = padded_forward(fn, xs)
    # 20 -> pad 4 = (2, 2); 30 -> pad 2 = (1, 1)
    assert seen == [[(1, 6, 24, 32)] * 3]
    torch.testing.assert_close(out, xs[1][:, :3] * 3 + xs[0][:, 3:], rtol=0, atol=0)
    # what fn receives is the reflection-padded input, and the crop takes the matching window back
    padded = F.pad(xs[2], (1, 1, 2, 2), mode='reflect')
    received = []
    padded_forward(lambda *x: received.append(x[2]) or x[2], xs)
    assert torch.equal(received[0], padded)


def test_padded_forward_clean_mode_skips_padding_on_multiples_of_8():
    shapes = []
    xs = _bracket(16, 24)
    padded_forward(lambda *x: shapes.append(x[0].shape) or x[0][:, :3], xs, mode='clean')
    padded_forward(lambda *x: shapes.append(x[0].shape) or x[0][:, :3], xs, mode='release')
    assert shapes == [torch.Size([1, 6, 16, 24]), torch.Size([1, 6, 24, 32])]


@pytest.mark.parametrize('size', [1, 2, 3])
def test_padded_forward_too_small_raises(size):
    # Reflection padding needs pad < side; release padding of a 3-pixel side is (2, 3).
    xs = _bracket(size, 16)
    with pytest.raises(ValueError, match='too small'):
        padded_forward(lambda *x: x[0], xs)


def test_padded_forward_smallest_valid_size():
    xs = _bracket(4, 5)  # pads (2, 2) and (1, 2): both smaller than the side
    out = padded_forward(lambda *x: x[0][:, :3], xs)
    torch.testing.assert_close(out, xs[0][:, :3], rtol=0, atol=0)


@pytest.mark.parametrize('backbone, network', [('HDRTransformer', 'HDR-Transformer'), ('SCTNet', 'SCTNet')])
def test_padded_forward_reproduces_release_test_pipeline(backbone, network):
    folder = GOLDEN / backbone
    if not folder.is_dir():
        pytest.skip(f'golden reference not found at {folder}')
    from models.networks import define_network
    # Both backbones exist: an ImportError or AttributeError here is a failure, never a skip.
    torch.manual_seed(0)
    net = define_network(network)
    net.load_state_dict(torch.load(folder / 'state_dict.pth', map_location='cpu', weights_only=True), strict=True)
    net.eval()
    io = torch.load(folder / 'io.pt', map_location='cpu', weights_only=True)
    with torch.inference_mode():
        out = padded_forward(net, [io['x0'], io['x1'], io['x2']], multiple=8, mode='release')
    torch.testing.assert_close(out, io['y_official_test_pipeline'], rtol=0, atol=1e-5)
    # the padding was applied: the unpadded forward (golden 'y') differs by up to ~0.16
    assert (out - io['y']).abs().max() > 0.1


# ------------------------------------------------------------------------------------------ tiles

def _seed0_ahdr():
    from models.ahdrnet import AHDR
    torch.manual_seed(0)
    return AHDR().eval()


def test_tile_covering_image_is_identical():
    net = _seed0_ahdr()
    xs = _bracket(24, 40, seed=3)
    with torch.inference_mode():
        ref = net(*xs)
        for tile in (40, 64):  # tile >= both sides: one pass, identical
            assert torch.equal(tiled_forward(net, xs, tile, 8), ref)
        assert torch.equal(tiled_forward(net, xs, 0), ref)  # tile 0 = off


def test_tiles_on_ahdr_within_tolerance():
    # Measured (seed-0 AHDR, this 48x64 input, tile 32): overlap 8 max 3.6e-3 / mean 2.0e-4;
    # overlap 16 max 2.1e-3 / mean 1.2e-4 (96x128 with tile 64: overlap 16 max 2.3e-3, 32 max 1.3e-3).
    # Differences come from the receptive field (~37 px radius) crossing tile borders. Bounds have ~3x margin.
    net = _seed0_ahdr()
    xs = _bracket(48, 64, seed=0)
    with torch.inference_mode():
        ref = net(*xs)
        diffs = {}
        for overlap in (8, 16):
            out = tiled_forward(net, xs, 32, overlap)
            assert out.shape == ref.shape and torch.isfinite(out).all()
            diffs[overlap] = (out - ref).abs()
    assert diffs[8].max() < 1e-2 and diffs[8].mean() < 6e-4
    assert diffs[16].max() < 6e-3 and diffs[16].mean() < 4e-4
    assert diffs[16].mean() < diffs[8].mean()  # more overlap, smaller seams
    assert diffs[8].max() > 0  # tiles really ran (not one whole-image pass)


@pytest.mark.parametrize('h, w, tile, overlap', [(48, 64, 32, 8), (50, 70, 16, 5), (33, 17, 16, 0),
                                                 (40, 40, 12, 10), (9, 100, 16, 4)])
def test_per_pixel_function_reproduced_by_tiling(h, w, tile, overlap):
    # A per-pixel function has no receptive field: any deviation would come from the blending weights.
    xs = _bracket(h, w, seed=1)
    fn = lambda *x: x[0][:, :3] * 2  # noqa: E731
    out = tiled_forward(fn, xs, tile, overlap)
    torch.testing.assert_close(out, fn(*xs), rtol=1e-6, atol=1e-7)


def test_blend_is_linear_ramp_in_overlap():
    # Two tiles along a 24-pixel row (starts 0 and 8, overlap 8): tile k outputs the constant k + 1.
    calls = []

    def fn(x):
        calls.append(x.shape[-1])
        return torch.full_like(x, float(len(calls)))

    out = tiled_forward(fn, [torch.zeros(1, 1, 1, 24)], tile=16, overlap=8)[0, 0, 0]
    assert calls == [16, 16]
    ramp = torch.arange(1, 9, dtype=torch.float32) / 9  # weight of the second tile over columns 8..15
    expected = torch.cat([torch.ones(8), 1 + ramp, torch.full((8,), 2.0)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('overlap', [-1, 32, 40])
def test_invalid_overlap_raises(overlap):
    xs = _bracket(48, 64)
    with pytest.raises(ValueError, match='tile_overlap'):
        tiled_forward(lambda *x: x[0], xs, 32, overlap)


@pytest.mark.parametrize('size, tile, overlap', [(1000, 512, 32), (1500, 512, 32), (1500, 384, 32), (24, 16, 8),
                                                 (64, 32, 8), (17, 16, 0), (100, 16, 4), (513, 512, 32)])
def test_tile_layout_covers_with_overlap_and_least_work(size, tile, overlap):
    length, starts = _tile_layout(size, tile, overlap)
    assert length <= tile and starts[0] == 0 and starts[-1] + length == size  # inside the image, to both ends
    assert all(b - a <= length - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap
    # the fewest tiles of at most `tile` pixels that can keep that overlap, each as short as it can be
    assert len(starts) == -(-(size - overlap) // (tile - overlap))
    assert (length - 1) * len(starts) < size + (len(starts) - 1) * overlap


def test_tile_layout_of_full_resolution_frame():
    # 1000x1500 at --tile 512: 3x4 tiles of 355x399 (1.7 Mpx of work), not 3x4 of 512x512 (3.1 Mpx)
    assert _tile_layout(1000, 512, 32) == (355, [0, 322, 645])
    assert _tile_layout(1500, 512, 32) == (399, [0, 367, 734, 1101])
    assert _tile_layout(300, 512, 32) == (300, [0])


# ------------------------------------------------------------------------------------------ --tile auto, memory

def test_choose_tile_whole_image_when_it_fits():
    from util.tiling import choose_tile, forward_bytes
    budget = forward_bytes(1000, 1500, 6000)
    assert choose_tile(1000, 1500, 6000, budget) == 0  # the release's whole-image forward, no seams
    assert choose_tile(1000, 1500, 6000, budget - 1) > 0


@pytest.mark.parametrize('budget_gb, multiple', [(1.6, 0), (3.0, 0), (1.5, 8), (64.0, 0)])
def test_choose_tile_largest_that_fits(budget_gb, multiple):
    from util.tiling import GIB, MAX_AUTO_TILE, TILED_OUTPUT_BYTES_PER_PIXEL, choose_tile, forward_bytes
    height, width, bpp = 4000, 6000, 6000  # a 24 MP photo, AHDRNet-like bytes per pixel
    budget = budget_gb * GIB
    left = budget - TILED_OUTPUT_BYTES_PER_PIXEL * height * width  # the whole image's output buffers come first
    tile = choose_tile(height, width, bpp, budget, multiple=multiple)
    assert 0 < tile <= MAX_AUTO_TILE
    assert forward_bytes(tile, tile, bpp, multiple) <= left
    if tile < MAX_AUTO_TILE:  # the next size up would not have fitted
        assert forward_bytes(tile + 16, tile + 16, bpp, multiple) > left


def test_choose_tile_on_a_cpu_tiles_large_images_that_fit():
    # a whole 1000x1500 forward leaves the caches and runs slower than 768-pixel tiles on a CPU (util/tiling.py)
    from util.tiling import CPU_SPEED_TILE, GIB, TILED_OUTPUT_BYTES_PER_PIXEL, choose_tile, forward_bytes
    huge = 64 * GIB
    assert choose_tile(1000, 1500, 6000, huge, speed_tile=CPU_SPEED_TILE) == CPU_SPEED_TILE
    assert choose_tile(1000, 1500, 6000, huge) == 0  # without the rule (a GPU): the whole image
    assert choose_tile(768, 768, 6000, huge, speed_tile=CPU_SPEED_TILE) == 0  # small enough: whole, no seams
    assert choose_tile(100, 2000, 6000, huge, speed_tile=CPU_SPEED_TILE) == 0  # by area: a thin strip stays whole
    # the speed tile shrinks when its forward and the whole output's buffers do not fit the budget
    bpp = 60
    budget = forward_bytes(1000, 1500, bpp)  # the whole image just fits
    tile = choose_tile(1000, 1500, bpp, budget, speed_tile=CPU_SPEED_TILE)
    assert 0 < tile < CPU_SPEED_TILE
    assert forward_bytes(tile, tile, bpp) <= budget - TILED_OUTPUT_BYTES_PER_PIXEL * 1000 * 1500
    # a budget where the whole image fits but no tile plus those buffers does: whole, not an error
    assert choose_tile(1000, 1500, 1, forward_bytes(1000, 1500, 1), speed_tile=CPU_SPEED_TILE) == 0


@pytest.mark.parametrize('device, expected', [('cpu', 768), (torch.device('cpu'), 768), ('cuda', 0), ('cuda:0', 0),
                                              (torch.device('cuda', 1), 0)])
def test_auto_tile_tiles_large_images_on_cpu_only(device, expected):
    from util.tiling import CPU_SPEED_TILE, auto_tile
    assert CPU_SPEED_TILE == 768
    # --max_memory given: no CUDA query, so this runs without a GPU
    assert auto_tile(1000, 1500, 6000, max_memory=64, device=device, log=False) == expected
    assert auto_tile(200, 300, 6000, max_memory=64, device=device, log=False) == 0


def test_auto_tile_says_why_it_tiles_an_image_that_fits(caplog):
    from util.tiling import auto_tile
    with caplog.at_level(logging.INFO, logger='util.tiling'):
        auto_tile(1000, 1500, 6000, max_memory=64, device='cpu')
    assert 'tiles of at most 768 pixels (faster than the whole image on a CPU)' in caplog.text


def test_choose_tile_says_what_to_change_when_nothing_fits():
    from util.tiling import GIB, MemoryBudgetError, choose_tile
    with pytest.raises(MemoryBudgetError, match='6000x4000.*--max_memory.*downscale'):
        choose_tile(4000, 6000, 6000, 0.01 * GIB)


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path):
    from util.tiling import available_memory
    meminfo = tmp_path / 'meminfo'
    meminfo.write_text('MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n')
    cgroup = tmp_path / 'cgroup'
    cgroup.mkdir()
    assert available_memory(str(meminfo), str(cgroup)) == 20000000 * 1024  # no cgroup files: MemAvailable
    (cgroup / 'memory.max').write_text('max\n')
    (cgroup / 'memory.current').write_text('1000\n')
    assert available_memory(str(meminfo), str(cgroup)) == 20000000 * 1024  # 'max': no limit
    (cgroup / 'memory.max').write_text(f'{8 << 30}\n')
    (cgroup / 'memory.current').write_text(f'{2 << 30}\n')
    assert available_memory(str(meminfo), str(cgroup)) == 6 << 30  # a container's limit wins
    assert available_memory(str(tmp_path / 'none'), str(tmp_path / 'none')) is None


def test_raw_allocator_errors_are_recognised():
    from util.tiling import is_out_of_memory
    raw = RuntimeError('[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can\'t allocate memory: '
                       'you tried to allocate 18432000000 bytes. Error code 12 (Cannot allocate memory)')
    assert is_out_of_memory(raw) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    assert not is_out_of_memory(RuntimeError('shape mismatch')) and not is_out_of_memory(ValueError('x'))


def test_bf16_tiles_are_blended_in_fp32():
    net = _seed0_ahdr()
    xs = _bracket(48, 64, seed=0)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        whole = net(*xs)
        tiled = tiled_forward(net, xs, 32, 16)
    assert whole.dtype == torch.bfloat16 and tiled.dtype == torch.float32
    # bf16's own rounding (8 bits) plus the seams measured in fp32 above
    assert (tiled - whole.float()).abs().max() < 3e-2
