"""The medium gate (models/medium_gate.py): what it may change, how it is stored and loaded, and its training tool."""
import math

import numpy as np
import pytest
import torch

from models.base_model import CheckpointError, load_backbone_state
from models.medium_gate import (GATE_KEY, GATE_VERSION, GatedNetwork, GateError, MediumGate, extra_bytes_per_pixel,
                                gated_checkpoint, medium_noise_band, medium_noise_map, medium_noise_map_and_band,
                                noise_bands, noise_maps, noise_maps_and_bands, read_gate, short_bands, short_floor,
                                short_witness_band, with_gate)
from util.tonemap import inverse_mu_law_torch, mu_law_torch
from tiny_data import tiny_ahdr


def _trained_looking_gate(seed=0):
    """A gate with random (not initial) weights, so that g varies over the image."""
    torch.manual_seed(seed)
    gate = MediumGate()
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_(0, 0.3)
    return gate.eval()


def _medium_input(ldr, t=4.0):
    """A backbone input (N, 6, H, W) = [radiance, LDR] of an LDR frame (N, 3, H, W)."""
    return torch.cat([ldr ** 2.2 / t, ldr], 1)


def test_gate_blends_towards_the_medium_frame_and_never_touches_its_clipped_pixels():
    gen = torch.Generator().manual_seed(1)
    ldr = torch.rand(2, 3, 24, 32, generator=gen)
    ldr[:, :, :8, :] = 0.99  # a clipped band
    ldr[0, 1, 10:12, 5:9] = 0.97  # clipped in one channel only
    x_mid = _medium_input(ldr)
    y = torch.rand(2, 3, 24, 32, generator=gen)
    gate = _trained_looking_gate()
    with torch.no_grad():
        out, g = gate(y, x_mid, noise_maps(x_mid))
    clipped = (ldr.amax(1, keepdim=True) >= 0.95).expand_as(y)
    assert torch.equal(out[clipped], y[clipped])
    lo, hi = torch.minimum(y, x_mid[:, :3]), torch.maximum(y, x_mid[:, :3])
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()  # a convex blend: nothing invented
    assert g.std() > 0.01 and not torch.equal(out[~clipped], y[~clipped])  # and it does act elsewhere


def test_noise_map_grows_with_the_frame_noise_and_stays_finite():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0.05, 0.9, 96, dtype=np.float32)[None, :, None], (64, 1, 3))
    noisy = np.clip(ramp + rng.normal(0, 0.02, ramp.shape).astype(np.float32), 0, 1)
    maps = [medium_noise_map(x, x ** 2.2 / 4.0) for x in (ramp, noisy)]
    assert maps[1].mean() > maps[0].mean() + 0.5  # log10: more than 3x the noise
    # flat, saturated, a small tile, and tiles under the estimator's 3 pixels
    for flat in (np.zeros((20, 20, 3), np.float32), np.ones((20, 20, 3), np.float32), ramp[:5, :5], ramp[:2, :2],
                 ramp[:1, :7]):
        assert np.isfinite(medium_noise_map(flat, flat ** 2.2)).all()


def _textured_frame(noise=0.0, seed=3):
    """A smooth, textured medium frame (1, 3, 48, 64) with a clipped patch and a black one."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=gen), size=(48, 64), mode='bilinear',
                                           align_corners=False)
    ldr = (0.1 + 0.8 * base + noise * torch.randn(1, 3, 48, 64, generator=gen)).clamp(0, 1)
    ldr[:, :, :6, :10] = 0.99
    ldr[:, 1, 40:, 50:] = 0.0
    return ldr


def test_noise_band_grows_with_the_noise_and_is_open_where_the_frame_is_clipped_or_black():
    bands = []
    for noise in (0.0, 0.02):
        ldr = _textured_frame(noise)[0].permute(1, 2, 0).numpy()
        band = medium_noise_band(ldr, ldr ** 2.2 / 4.0)
        assert band.shape == ldr.shape and band.dtype == np.float32
        assert np.isinf(band[:6, :10]).all() and np.isinf(band[40:, 50:]).all()
        bands.append(np.median(band[np.isfinite(band)]))
    assert bands[1] > 5 * bands[0]


def test_noise_band_edge_cases_and_batches():
    # a perfectly flat frame reads no noise at all: the band keeps 8-bit rounding's, not 0
    flat = np.full((32, 40, 3), 0.4, np.float32)
    band = medium_noise_band(flat, flat ** 2.2 / 4.0)
    assert np.isfinite(band).all() and (band > 0).all()
    # a radiance of 1 or more (a medium frame exposed shorter than the unit) is beyond mu-law's range: no band
    band = medium_noise_band(flat, flat ** 2.2 / 0.1)
    assert np.isinf(band).all()
    # a batch: each image gets its own estimate, the map and band from one estimate match the separate ones
    x_mid = torch.cat([_medium_input(_textured_frame(0.0)), _medium_input(_textured_frame(0.03, seed=7))])
    maps, bands = noise_maps_and_bands(x_mid)
    assert maps.shape == (2, 1, 48, 64) and bands.shape == (2, 3, 48, 64)
    assert torch.equal(maps, noise_maps(x_mid)) and torch.equal(bands, noise_bands(x_mid))
    for i in range(2):
        ldr, hdr = x_mid[i, 3:].permute(1, 2, 0).numpy(), x_mid[i, :3].permute(1, 2, 0).numpy()
        assert np.array_equal(bands[i].permute(1, 2, 0).numpy(), medium_noise_map_and_band(ldr, hdr)[1])
    finite = torch.isfinite(bands)
    assert bands[1][finite[1]].median() > 5 * bands[0][finite[0]].median()


def test_consistency_holds_the_output_within_the_noise_band_of_the_medium_frame():
    ldr = _textured_frame(0.0)
    x_mid = _medium_input(ldr)
    y = 0.5 * x_mid[:, :3]  # a backbone that darkens everything by a stop
    plain, held = MediumGate(), MediumGate(consistency=1.5)
    held.load_state_dict(plain.state_dict())
    band = noise_bands(x_mid)
    with torch.no_grad():
        out_plain = plain(y, x_mid, noise_maps(x_mid))[0]
        out = held(y, x_mid, noise_maps(x_mid), band)[0]
    mu_mid = mu_law_torch(x_mid[:, :3].clamp(0, 1))
    trusted = torch.isfinite(band)
    assert trusted.float().mean() > 0.8
    assert ((mu_law_torch(out) - mu_mid).abs()[trusted] <= 1.5 * band[trusted] + 1e-5).all()
    assert (mu_law_torch(out_plain) - mu_mid).abs()[trusted].mean() > 0.05  # without the clamp it stays dark
    assert torch.equal(out[~trusted], out_plain[~trusted])  # clipped and black pixels are the gate's alone
    # an output already inside the band is left as it is
    with torch.no_grad():
        inside = held(x_mid[:, :3], x_mid, noise_maps(x_mid), band)[0]
        inside_plain = plain(x_mid[:, :3], x_mid, noise_maps(x_mid))[0]
    assert torch.equal(inside, inside_plain)
    with pytest.raises(ValueError, match='noise band'):
        held(y, x_mid, noise_maps(x_mid))
    with pytest.raises(ValueError, match='noise band'):
        held(y, x_mid, noise_maps(x_mid), band[:, :1])  # a (N, 1, H, W) map would broadcast silently


def test_chroma_factor_holds_brightness_to_the_band_and_leaves_colour_more_room():
    ldr = _textured_frame(0.02)
    x_mid = _medium_input(ldr)
    band = noise_bands(x_mid)
    trusted = torch.isfinite(band).all(dim=1, keepdim=True).expand_as(band)
    mu_mid = mu_law_torch(x_mid[:, :3].clamp(0, 1))
    gen = torch.Generator().manual_seed(3)
    # a backbone whose colour wanders (a different error per channel) around a darkened brightness
    y = (0.8 * x_mid[:, :3] * (1 + 0.3 * torch.randn(x_mid[:, :3].shape, generator=gen))).clamp(0, 1)
    per_channel, two_step = MediumGate(consistency=1.5), MediumGate(consistency=1.5, chroma=1.2)
    two_step.load_state_dict(per_channel.state_dict())
    with torch.no_grad():
        out_c = per_channel.hold_to_band(y, mu_mid, band)
        out_2 = two_step.hold_to_band(y, mu_mid, band)
        mid_equal = MediumGate(consistency=1.5, chroma=1.0).hold_to_band(y, mu_mid, band)
    d_c, d_2 = mu_law_torch(out_c) - mu_mid, mu_law_torch(out_2) - mu_mid
    reach = 1.5 * band
    assert (d_c.abs()[trusted] <= reach[trusted] + 1e-5).all()
    assert (d_2.abs()[trusted] <= 1.2 * reach[trusted] + 1e-5).all()  # each channel within chroma x the band
    assert (d_2.abs()[trusted] > reach[trusted] + 1e-5).any()  # and some use the extra room
    # the two-step clamp moves the channels together: less colour change than the per-channel clamp makes
    spread = lambda d: (d - d.mean(dim=1, keepdim=True)).abs()[trusted].mean()  # noqa: E731
    move = lambda out: mu_law_torch(out) - mu_law_torch(y)  # noqa: E731
    assert spread(move(out_2)) < spread(move(out_c))
    assert not torch.equal(mid_equal, out_c)  # chroma 1 is not the per-channel clamp: the brightness moves first
    assert torch.equal(out_2[~trusted], y[~trusted])  # no band, no change
    inside = x_mid[:, :3]
    assert torch.equal(two_step.hold_to_band(inside, mu_mid, band), inside)


def test_fallback_hands_the_witness_back_where_the_output_strays_far_beyond_its_noise():
    ldr = _textured_frame(0.02)
    x_mid = _medium_input(ldr)
    band = noise_bands(x_mid)
    trusted = torch.isfinite(band).all(dim=1, keepdim=True)
    mu_mid = mu_law_torch(x_mid[:, :3].clamp(0, 1))
    # an output that is the frame plus k sigmas of the band, k growing from 0 to 6 across the image
    steps = torch.linspace(0, 6, 64).view(1, 1, 1, 64)
    sigma = torch.where(torch.isfinite(band), band, torch.zeros_like(band))
    from util.tonemap import inverse_mu_law_torch
    y = inverse_mu_law_torch((mu_mid + steps * sigma).clamp(0, 1))
    plain, falling = MediumGate(consistency=1.5, chroma=1.2), MediumGate(consistency=1.5, chroma=1.2, fallback=4.0)
    with torch.no_grad():
        out_p, out_f = plain.hold_to_band(y, mu_mid, band), falling.hold_to_band(y, mu_mid, band, fallback=True)
        assert torch.equal(falling.hold_to_band(y, mu_mid, band), out_p)  # off unless asked for (the short clamp)
    dist = ((mu_law_torch(out_f) - mu_mid) / band.clamp_min(1e-12)).abs()
    near = (steps <= 1.4).expand_as(trusted) & trusted
    far = (steps >= 4.05).expand_as(trusted) & trusted
    between = ((steps > 1.6) & (steps < 3.9)).expand_as(trusted) & trusted
    assert torch.equal(out_f[near.expand_as(y)], out_p[near.expand_as(y)])  # within the clamp: nothing changes
    assert (dist.amax(1, keepdim=True)[far] < 1e-3).all()  # far beyond: the witness itself
    # between: strictly inside the plain clamp's result, moving towards the witness as the output strays further
    d_p = ((mu_law_torch(out_p) - mu_mid) / band.clamp_min(1e-12)).abs().amax(1, keepdim=True)
    assert (dist.amax(1, keepdim=True)[between] < d_p[between] - 1e-3).all()
    assert torch.equal(out_f[~trusted.expand_as(y)], y[~trusted.expand_as(y)])  # no band, no change
    # a fallback not beyond the clamp is no fallback
    same = MediumGate(consistency=1.5, chroma=1.2, fallback=1.5)
    assert torch.equal(same.hold_to_band(y, mu_mid, band, fallback=True), out_p)


def test_fallback_moves_by_the_root_mean_square_distance_and_only_in_the_medium_frames_clamp():
    from util.tonemap import inverse_mu_law_torch
    # one pixel, per-channel clamp: channels 1, 3 and 5 sigmas off -> d = sqrt((1 + 9 + 25) / 3) = 3.416 sigmas
    gate = MediumGate(consistency=1.5, fallback=4.0)
    mu_ref = torch.full((1, 3, 1, 1), 0.5)
    band = torch.full((1, 3, 1, 1), 0.01)
    out = inverse_mu_law_torch(mu_ref + torch.tensor([1.0, 3.0, 5.0]).view(1, 3, 1, 1) * 0.01)
    held = gate.hold_to_band(out, mu_ref, band)  # the clamp alone: 1, 1.5, 1.5 sigmas
    fell = gate.hold_to_band(out, mu_ref, band, fallback=True)
    r = (math.sqrt(35 / 3) - 1.5) / (4.0 - 1.5)
    expected = (mu_law_torch(held) - mu_ref) * (1 - r)
    assert torch.allclose(mu_law_torch(fell) - mu_ref, expected, atol=1e-5)
    # the gated forward applies it to the medium frame's clamp, not to the short frame's
    ldr = _textured_frame(0.02)
    x_mid = _medium_input(ldr)
    y = (0.4 * x_mid[:, :3]).clamp(0, 1)  # far below the frame: beyond 4 sigmas almost everywhere
    base = _trained_looking_gate()
    with_fb = MediumGate(consistency=1.5, chroma=1.2, fallback=4.0)
    without = MediumGate(consistency=1.5, chroma=1.2)
    for g in (with_fb, without):
        g.load_state_dict(base.state_dict())
    with torch.no_grad():
        a = with_fb(y, x_mid, noise_maps(x_mid), noise_bands(x_mid))[0]
        b = without(y, x_mid, noise_maps(x_mid), noise_bands(x_mid))[0]
    trusted = torch.isfinite(noise_bands(x_mid))
    err = lambda out: (mu_law_torch(out) - mu_law_torch(x_mid[:, :3].clamp(0, 1))).abs()[trusted].mean()  # noqa: E731
    assert err(a) < 0.5 * err(b)
    short, mid = _bracket_with_a_clipped_sky(2)
    xs, xm = _medium_input(short, 1.0), _medium_input(mid, 4.0)
    y = (0.3 * xm[:, :3]).clamp(0, 1)
    sb = short_bands(xs, xm)
    assert torch.isfinite(sb).any()
    results = []
    for fb in (0.0, 4.0):
        g = MediumGate(consistency=1.5, short_consistency=1.5, fallback=fb)
        g.load_state_dict(base.state_dict())
        with torch.no_grad():
            results.append(g(y, xm, noise_maps(xm), noise_bands(xm), xs, sb)[0])
    witnessed = torch.isfinite(sb)
    assert torch.equal(results[0][witnessed], results[1][witnessed])  # the short frame's clamp has no fallback


def test_fallback_is_stored_and_read_with_the_gate(tmp_path):
    gate = _trained_looking_gate()
    gate.consistency, gate.fallback = 1.5, 3.0
    path = tmp_path / 'fallback.pth'
    checkpoint = gated_checkpoint(tiny_ahdr().state_dict(), gate)
    assert checkpoint[GATE_KEY]['version'] == GATE_VERSION
    torch.save(checkpoint, path)
    assert read_gate(path).fallback == 3.0
    del checkpoint[GATE_KEY]['consistency_fallback']  # gates stored before the entry: no fallback
    torch.save(checkpoint, path)
    assert read_gate(path).fallback == 0.0
    for bad in (-1.0, float('nan'), True):
        torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], consistency_fallback=bad)}), path)
        with pytest.raises(GateError, match='consistency_fallback'):
            read_gate(path)


def _finely_textured_frame(seed, noise=0.002, size=(48, 64)):
    """A nearly noise-free medium frame (1, 3, H, W) with fine grey texture everywhere (foliage, gravel)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    texture = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 1.0)[..., None]
    ramp = np.linspace(0.2, 0.8, w, dtype=np.float32)[None, :, None]
    ldr = np.clip(ramp + 0.2 * texture + rng.normal(0, noise, (h, w, 3)), 0.01, 0.98).astype(np.float32)
    return torch.from_numpy(ldr).permute(2, 0, 1)[None]


def test_band_noise_chooses_the_medium_bands_estimator_and_is_stored_with_the_gate(tmp_path, capsys):
    """'weak_texture' narrows the medium frame's band on a clean, textured frame (the robust estimate reads the texture
    as noise), leaves the CNN's noise map as it was trained, and is what the gated network applies; gates stored
    before the entry read 'robust', an unknown estimator is refused, and set_gate_clamp sets it."""
    from tools import set_gate_clamp

    x_mid = _medium_input(_finely_textured_frame(9))
    robust_map, robust_band = noise_maps_and_bands(x_mid)
    weak_map, weak_band = noise_maps_and_bands(x_mid, 'weak_texture')
    assert torch.equal(robust_map, weak_map) and torch.equal(weak_band, noise_bands(x_mid, 'weak_texture'))
    finite = torch.isfinite(robust_band) & torch.isfinite(weak_band)
    assert weak_band[finite].median() < 0.6 * robust_band[finite].median()
    net, gate = tiny_ahdr().eval(), _trained_looking_gate()
    gate.consistency, gate.band_noise = 1.5, 'weak_texture'
    path = tmp_path / 'weak.pth'
    checkpoint = gated_checkpoint(net.state_dict(), gate)
    assert checkpoint[GATE_KEY]['band_noise'] == 'weak_texture'
    torch.save(checkpoint, path)
    assert read_gate(path).band_noise == 'weak_texture'
    xs = [_medium_input(_finely_textured_frame(seed), t) for seed, t in ((4, 1.0), (9, 4.0), (6, 16.0))]
    with torch.no_grad():
        out = with_gate(net, path, 'auto')(*xs)
        y = net(*xs)
        assert torch.allclose(out, gate(y, xs[1], noise_maps(xs[1]), weak_band)[0])
        assert not torch.allclose(out, gate(y, xs[1], noise_maps(xs[1]), robust_band)[0])
    assert extra_bytes_per_pixel(with_gate(net, path, 'auto')) == 672  # the estimate's patches, for --tile auto
    del checkpoint[GATE_KEY]['band_noise']  # a gate stored before the entry: the estimate it was chosen with
    torch.save(checkpoint, path)
    assert read_gate(path).band_noise == 'robust'
    assert extra_bytes_per_pixel(with_gate(net, path, 'auto')) == 512 and extra_bytes_per_pixel(net) == 0
    torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], band_noise='median')}), path)
    with pytest.raises(GateError, match="band_noise 'median'"):
        read_gate(path)
    with pytest.raises(ValueError, match='band_noise'):
        MediumGate(band_noise='median')
    torch.save(checkpoint, path)
    out_path = tmp_path / 'set.pth'
    assert set_gate_clamp.main([str(path), '--band_noise', 'weak_texture', '--out', str(out_path)]) == 0
    assert read_gate(out_path).band_noise == 'weak_texture' and read_gate(out_path).consistency == 1.5
    assert 'band_noise weak_texture' in capsys.readouterr().out
    # a file that is not a checkpoint: one line naming it (torch's weights_only page before)
    not_a_checkpoint = tmp_path / 'image.hdr'
    not_a_checkpoint.write_bytes(b'#?RADIANCE\n' + bytes(64))
    assert set_gate_clamp.main([str(not_a_checkpoint), '--band_noise', 'weak_texture', '--out', str(out_path)]) == 1
    err = capsys.readouterr().err
    assert f'{not_a_checkpoint} is not a PyTorch checkpoint' in err and 'weights_only' not in err
    assert torch.load(out_path, weights_only=True)[GATE_KEY]['version'] == GATE_VERSION


def test_fusion_keeps_a_deviation_within_noise_and_shrinks_a_bias_towards_the_frame():
    """fuse: a deviation within the frame's noise stays exactly; one many sigmas off moves back by sigma^2 / E[d^2],
    E over the window (a bias confined to a stripe is judged by its neighbourhood, not pixel by pixel); nothing moves
    where the band is open or a value is not finite, and a NaN does not spread; the gated forward fuses, then clamps."""
    gate = MediumGate(consistency=1.5, fusion_window=5)
    gen = torch.Generator().manual_seed(0)
    mu_ref = 0.3 + 0.4 * torch.rand(1, 3, 32, 32, generator=gen)
    band = torch.full_like(mu_ref, 0.01)
    band[:, :, :, :4] = float('inf')  # an open strip: untouched
    within = mu_ref + 0.005 * torch.randn(1, 3, 32, 32, generator=gen).clamp(-1, 1)  # under the noise everywhere
    out = inverse_mu_law_torch(within)
    assert torch.equal(gate.fuse(out, mu_ref, band), out)
    biased = mu_ref + 0.08  # 8 sigmas off everywhere: E[d^2] = 64 sigma^2
    fused = mu_law_torch(gate.fuse(inverse_mu_law_torch(biased), mu_ref, band))
    assert torch.allclose(((fused - mu_ref) / 0.08)[..., 6:-6], torch.tensor(1 / 64), atol=1e-3)
    assert torch.equal(fused[..., :4], mu_law_torch(inverse_mu_law_torch(biased))[..., :4])
    stripe = mu_ref.clone()
    stripe[:, :, :, 16] += 0.08  # one column off: its 5x5 window holds it once in 5 columns
    fused = mu_law_torch(gate.fuse(inverse_mu_law_torch(stripe), mu_ref, band))
    assert torch.allclose(((fused - mu_ref) / 0.08)[:, :, 4:-4, 16], torch.tensor(5 / 64), atol=2e-3)
    poisoned = biased.clone()
    poisoned[0, 0, 16, 16] = float('nan')
    fused = gate.fuse(inverse_mu_law_torch(poisoned), mu_ref, band)
    assert torch.isnan(fused).sum() == 1 and torch.isnan(fused[0, 0, 16, 16])
    with pytest.raises(ValueError, match='fusion_window'):
        MediumGate(fusion_window=4)
    # in the gated network: fused, then clamped
    y = torch.rand(1, 3, 48, 64, generator=gen)
    x_mid = _medium_input(_finely_textured_frame(3))
    noise, band = noise_maps_and_bands(x_mid)
    trained = _trained_looking_gate()
    fused_gate = MediumGate(consistency=1.5, fusion_window=5)
    fused_gate.load_state_dict(trained.state_dict())
    plain_gate = MediumGate(consistency=1.5)
    plain_gate.load_state_dict(trained.state_dict())
    with torch.no_grad():
        out = fused_gate(y, x_mid, noise, band)[0]
        unfused = trained(y, x_mid, noise)[0]  # the blend alone
        expected = plain_gate.hold_to_band(fused_gate.fuse(unfused, mu_law_torch(x_mid[:, :3].clamp(0, 1)), band),
                                           mu_law_torch(x_mid[:, :3].clamp(0, 1)), band, fallback=True)
        assert torch.allclose(out, expected)
        assert not torch.allclose(out, plain_gate(y, x_mid, noise, band)[0])


def _check_entry_stored_read_and_set(tmp_path, capsys, name, settings, absent, bads, new, refused,
                                     absent_version=None):
    """Gate entry `name`: stored with the gate (`settings` set on it) and read back; read as `absent` from a gate
    stored before the entry existed (with `absent_version` as its version, where given); a bad stored value is a
    GateError naming it; tools/set_gate_clamp sets `new` and refuses `refused` (exit code 2). Returns the set file."""
    from tools import set_gate_clamp

    gate = _trained_looking_gate()
    for key, value in settings.items():
        setattr(gate, key, value)
    path = tmp_path / f'{name}.pth'
    checkpoint = gated_checkpoint(tiny_ahdr().state_dict(), gate)
    torch.save(checkpoint, path)
    assert getattr(read_gate(path), name) == settings[name] and checkpoint[GATE_KEY]['version'] == GATE_VERSION
    del checkpoint[GATE_KEY][name]  # a gate stored before the entry
    torch.save(checkpoint if absent_version is None
               else dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], version=absent_version)}), path)
    assert getattr(read_gate(path), name) == absent
    for bad in bads:
        torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], **{name: bad})}), path)
        with pytest.raises(GateError, match=name):
            read_gate(path)
    torch.save(checkpoint, path)
    out = tmp_path / 'set.pth'
    assert set_gate_clamp.main([str(path), f'--{name}', new, '--out', str(out)]) == 0
    assert getattr(read_gate(out), name) == float(new) and f'{name} {new}' in capsys.readouterr().out
    assert set_gate_clamp.main([str(path), f'--{name}', refused, '--out', str(out)]) == 2
    return out


def test_fusion_window_is_stored_read_and_set(tmp_path, capsys):
    # before the entry: no fusion
    _check_entry_stored_read_and_set(tmp_path, capsys, 'fusion_window', {'consistency': 1.5, 'fusion_window': 5},
                                     absent=0, bads=(4, -1, 2.5, True), new='7', refused='6')


def test_fusion_prior_weighs_the_images_mean_error_into_each_pixels_share():
    """fusion_prior p: the share kept is 1 / (1 + (1 - p) r + p mean(r)), r the local excess E[d^2] / sigma^2 - 1
    (at least 0), its mean per image and channel over the pixels with a band. A patch whose deviation is within noise
    keeps it whole alone (p = 0) but not in an image where the output is far off elsewhere; p = 0 is the weight as
    before, exactly; an image that is within noise everywhere is untouched; images of a batch do not share the mean."""
    gen = torch.Generator().manual_seed(1)
    mu_ref = 0.3 + 0.4 * torch.rand(1, 3, 32, 32, generator=gen)
    band = torch.full_like(mu_ref, 0.01)
    band[:, :, :, :4] = float('inf')  # open: neither moved nor counted in the mean
    d = torch.full_like(mu_ref, 0.08)  # 8 sigmas: r = 63 ...
    d[:, :, 8:24, 12:28] = 0.005  # ... but within noise in a 16 x 16 patch: r = 0 at its centre
    out = inverse_mu_law_torch(mu_ref + d)
    local, prior = MediumGate(consistency=1.5, fusion_window=5), MediumGate(consistency=1.5, fusion_window=5,
                                                                           fusion_prior=0.5)
    kept_alone = mu_law_torch(local.fuse(out, mu_ref, band)) - mu_ref
    kept_prior = mu_law_torch(prior.fuse(out, mu_ref, band)) - mu_ref
    assert torch.allclose(kept_alone[..., 14:18, 18:22], d[..., 14:18, 18:22], atol=1e-6)  # kept whole
    noise = band.square()
    spread = torch.nn.functional.avg_pool2d(torch.where(torch.isfinite(band), d, 0.0).square(), 5, stride=1,
                                            padding=2, count_include_pad=False)
    excess = ((spread / noise - 1).clamp_min(0))[..., 4:]
    mean_excess = excess.mean(dim=(2, 3), keepdim=True)
    expected = d[..., 4:] / (1 + 0.5 * excess + 0.5 * mean_excess)
    assert torch.allclose(kept_prior[..., 4:], expected, atol=1e-5)
    assert (kept_prior[..., 14:18, 18:22] < 0.5 * d[..., 14:18, 18:22]).all()  # the patch now shrinks too
    assert torch.equal(prior.fuse(out, mu_ref, band)[..., :4], out[..., :4])
    zero = MediumGate(consistency=1.5, fusion_window=5, fusion_prior=0.0)
    assert torch.equal(zero.fuse(out, mu_ref, band), local.fuse(out, mu_ref, band))
    within = inverse_mu_law_torch(mu_ref + 0.005)
    assert torch.equal(prior.fuse(within, mu_ref, band), within)
    poisoned = out.clone()
    poisoned[0, 1, 16, 16] = float('nan')  # under a finite band: stays NaN, moves nothing else, and is not counted
    fused = prior.fuse(poisoned, mu_ref, band)
    assert torch.isnan(fused).sum() == 1 and torch.isnan(fused[0, 1, 16, 16])
    assert torch.equal(fused[:, ::2], prior.fuse(out, mu_ref, band)[:, ::2])  # the other channels' means unchanged
    shut = torch.full_like(band, float('inf'))  # no band anywhere: nothing moves and the empty mean is no NaN
    assert torch.equal(prior.fuse(out, mu_ref, shut), out)
    both = prior.fuse(torch.cat([out, within]), torch.cat([mu_ref, mu_ref]), torch.cat([band, band]))
    assert torch.equal(both[1:], within) and torch.allclose(both[:1], prior.fuse(out, mu_ref, band))
    for bad in (-0.1, 1.5, float('nan'), True):
        with pytest.raises(ValueError, match='fusion_prior'):
            MediumGate(fusion_prior=bad)


def test_fusion_prior_is_stored_read_and_set(tmp_path, capsys):
    # before the entry (version 10): the local estimate alone
    assert GATE_VERSION == 11
    out = _check_entry_stored_read_and_set(
        tmp_path, capsys, 'fusion_prior', {'consistency': 1.5, 'fusion_window': 5, 'fusion_prior': 0.5}, absent=0.0,
        bads=(1.5, -1, float('nan'), 'half'), new='0.25', refused='2', absent_version=10)
    assert torch.load(out, weights_only=True)[GATE_KEY]['version'] == GATE_VERSION


def test_consistency_is_stored_with_the_gate_and_applied_by_the_gated_network(tmp_path):
    net, gate = tiny_ahdr().eval(), _trained_looking_gate()
    gate.consistency = 2.0
    path = tmp_path / 'held.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), path)
    assert read_gate(path).consistency == 2.0
    gated = with_gate(net, path, 'auto')
    xs = [_medium_input(_textured_frame(0.01, seed), t) for seed, t in ((4, 1.0), (5, 4.0), (6, 16.0))]
    with torch.no_grad():
        expected = gate(net(*xs), xs[1], noise_maps(xs[1]), noise_bands(xs[1]))[0]
        unheld = MediumGate()
        unheld.load_state_dict(gate.state_dict())
        assert torch.allclose(gated(*xs), expected)
        assert not torch.allclose(expected, unheld(net(*xs), xs[1], noise_maps(xs[1]))[0])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint[GATE_KEY]['consistency_chroma'] == 0.0
    checkpoint[GATE_KEY]['consistency_chroma'] = 1.2
    torch.save(checkpoint, path)
    assert read_gate(path).chroma == 1.2
    del checkpoint[GATE_KEY]['consistency_chroma']  # gates stored before the entry: the per-channel clamp
    torch.save(checkpoint, path)
    assert read_gate(path).chroma == 0.0
    for key in ('consistency', 'consistency_chroma'):
        for bad in (-1.0, float('nan'), True, '1.5'):
            spoilt = dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], **{key: bad})})
            torch.save(spoilt, path)
            with pytest.raises(GateError, match=key):
                read_gate(path)


def test_gated_checkpoint_still_loads_as_a_plain_backbone(tmp_path):
    net, gate = tiny_ahdr().eval(), _trained_looking_gate()
    path = tmp_path / 'gated.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate, iters=7), path)
    # the release's loader reads 'state_dict' and nothing else: ours too
    plain = tiny_ahdr()
    load_backbone_state(plain, str(path))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    assert torch.load(path, weights_only=True)[GATE_KEY]['iters'] == 7

    gated = with_gate(plain.eval(), path, 'auto')
    assert isinstance(gated, GatedNetwork) and not gated.training
    assert with_gate(plain, path, 'off') is plain
    gen = torch.Generator().manual_seed(2)
    ldr = torch.rand(1, 3, 3, 16, 24, generator=gen).sort(dim=1).values
    xs = [_medium_input(x, t) for x, t in zip(ldr.unbind(1), (1.0, 4.0, 16.0))]
    with torch.no_grad():
        expected = gate(plain(*xs), xs[1], noise_maps(xs[1]))[0]
        assert torch.allclose(gated(*xs), expected)


def test_checkpoint_without_a_gate(tmp_path):
    net = tiny_ahdr().eval()
    path = tmp_path / 'plain.pth'
    torch.save({'state_dict': net.state_dict()}, path)
    assert read_gate(path) is None
    assert with_gate(net, path, 'auto') is net
    with pytest.raises(GateError, match='has no medium gate'):
        with_gate(net, path, 'on')
    with pytest.raises(GateError, match='choose one of'):
        with_gate(net, path, 'sometimes')


@pytest.mark.parametrize('spoil, message', [
    (lambda entry: entry.update(version=99), 'not a medium gate of version 1 or 2 or 3'),
    (lambda entry: entry['state_dict'].pop('body.0.weight'), 'does not load'),
    (lambda entry: entry['state_dict']['body.0.bias'].fill_(float('nan')), 'NaN/Inf'),
])
def test_a_broken_gate_entry_is_a_checkpoint_error_naming_the_file(tmp_path, spoil, message):
    checkpoint = gated_checkpoint(tiny_ahdr().state_dict(), MediumGate())
    spoil(checkpoint[GATE_KEY])
    path = tmp_path / 'broken.pth'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=message) as info:
        with_gate(tiny_ahdr(), path, 'auto')
    assert str(path) in str(info.value)


def test_train_gate_tool_writes_a_gated_checkpoint_that_test_py_applies(tiny_dataroot, tmp_path, monkeypatch, capfd):
    import test as test_script
    from tiny_data import eval_args, use_tiny_backbone
    from tools import train_gate

    use_tiny_backbone(monkeypatch)
    source = tmp_path / 'stage2.pth'
    torch.manual_seed(0)
    torch.save({'state_dict': tiny_ahdr().state_dict()}, source)
    out = tmp_path / 'gated' / 'SelfHDR_model_1.pth'
    argv = ['--dataroot', str(tiny_dataroot), '--network', 'AHDRNet', '--checkpoint', str(source), '--out', str(out),
            '--iters', '12', '--batch_size', '2', '--crop', '32', '--amp', 'none']
    assert train_gate.main(argv) == 0
    gate = read_gate(out)
    assert gate is not None and torch.load(out, weights_only=True)[GATE_KEY]['scenes'] == 3
    assert gate.consistency == 1.5  # the default clamp, chosen on the study's validation split
    assert gate.chroma == 1.2 and gate.short_consistency == 0.0  # AHDRNet sees the short frame unaligned: no witness
    assert gate.fallback == 4.0 and gate.band_noise == 'weak_texture_modelled' and gate.fusion_window == 5
    assert gate.fusion_prior == 0.5  # the default weight of the image's mean error (twenty-second session)
    assert train_gate.main(argv + ['--consistency_fallback', 'nan']) == 2
    assert train_gate.main(argv + ['--fusion_window', '4']) == 2
    assert train_gate.main(argv + ['--fusion_prior', '1.5']) == 2
    with pytest.raises(SystemExit) as refused:  # argparse's own refusal of an unknown estimator
        train_gate.main(argv + ['--band_noise', 'median'])
    assert refused.value.code == 2
    assert train_gate.main(argv + ['--short_consistency', '1.5']) == 2  # refused for an unaligned-input backbone
    assert train_gate.main(argv + ['--short_consistency', 'lots']) == 2
    assert train_gate.main(argv + ['--noisy_copies', '1', '--out', str(tmp_path / 'noisy.pth')]) == 0
    assert torch.load(tmp_path / 'noisy.pth', weights_only=True)[GATE_KEY]['noisy_copies'] == 1
    assert train_gate.main(argv + ['--consistency', '-1']) == 2
    assert not torch.equal(gate.body[-1].bias, torch.tensor([-2.0]))  # it trained
    # --out over its own input is refused; a crop larger than the images is a clear error
    assert train_gate.main(argv[:6] + ['--out', str(source)]) == 2
    assert train_gate.main(argv[:-6] + ['--crop', '999']) == 1
    for flag in ('--max_scenes', '--threads', '--seed'):  # --max_scenes -1 silently dropped a scene
        assert train_gate.main(argv + [flag, '-1']) == 2

    def run_test_py(load_path, **flags):
        return test_script.main(eval_args(tiny_dataroot, tmp_path / 'results', 'gated', load_path=str(load_path),
                                          **flags))

    capfd.readouterr()
    assert run_test_py(out) == 0
    assert 'medium gate: on' in capfd.readouterr().err  # test.py logs to stderr
    assert run_test_py(out, medium_gate='off') == 0
    assert 'medium gate: on' not in capfd.readouterr().err
    assert run_test_py(source, medium_gate='on') == 1  # a checkpoint without a gate: a clear error, not a crash


def test_an_adapted_checkpoint_keeps_the_gate_it_was_shipped_with(tmp_path):
    from photo.adapt import write_checkpoint

    gated, plain, tuned = tmp_path / 'gated.pth', tmp_path / 'plain.pth', tmp_path / 'tuned.pth'
    gate = _trained_looking_gate()
    torch.save(gated_checkpoint(tiny_ahdr().state_dict(), gate), gated)
    torch.save({'state_dict': tiny_ahdr().state_dict()}, plain)
    torch.manual_seed(3)
    torch.save({'state_dict': tiny_ahdr().state_dict()}, tuned)  # the fine-tuned backbone (other weights)
    write_checkpoint(tuned, tmp_path / 'out.pth', gate_from=gated)
    written = torch.load(tmp_path / 'out.pth', weights_only=True)
    tuned_state = torch.load(tuned, weights_only=True)['state_dict']
    assert all(torch.equal(written['state_dict'][k], v) for k, v in tuned_state.items())
    assert all(torch.equal(a, b) for a, b in zip(read_gate(tmp_path / 'out.pth').state_dict().values(),
                                                 gate.state_dict().values()))
    write_checkpoint(tuned, tmp_path / 'out2.pth', gate_from=plain)
    assert read_gate(tmp_path / 'out2.pth') is None


def test_compile_keeps_to_the_backbone_across_reloads_of_gated_and_plain_checkpoints(tiny_dataroot, tmp_path,
                                                                                      monkeypatch):
    """test.py sets a model up (load, then --compile) and loads each --load_iter epoch again: the backbone stays
    compiled whichever checkpoints come in turn, and the gate (NumPy inside) is never compiled."""
    import models
    from models import base_model
    from models.base_model import CompiledOrEager
    from tiny_data import tiny_opt, use_tiny_backbone

    use_tiny_backbone(monkeypatch)
    monkeypatch.setattr(base_model, 'has_cpp_compiler', lambda: True)
    monkeypatch.setattr(torch, 'compile', lambda module, **kwargs: module)  # wraps; nothing is traced
    gated, plain = tmp_path / 'gated.pth', tmp_path / 'plain.pth'
    torch.save(gated_checkpoint(tiny_ahdr().state_dict(), _trained_looking_gate()), gated)
    torch.save({'state_dict': tiny_ahdr().state_dict()}, plain)
    opt = tiny_opt(tiny_dataroot, tmp_path, 'c', 'selfhdr2', is_train=False, load_path=str(gated), compile=True)
    model = models.create_model(opt)
    model.setup(opt)
    for path in (gated, plain, gated, gated):
        model.opt.load_path = str(path)
        model.load_networks(0)
        net = model.netSelfHDR
        if path == gated:
            assert isinstance(net, GatedNetwork) and isinstance(net.backbone, CompiledOrEager)
        else:
            assert isinstance(net, CompiledOrEager) and not isinstance(net._orig_mod, GatedNetwork)


def test_set_gate_clamp_changes_only_the_clamp(tmp_path, capsys):
    from tools import set_gate_clamp

    net, gate = tiny_ahdr().eval(), _trained_looking_gate()
    gate.consistency = 1.5
    source, out = tmp_path / 'gated.pth', tmp_path / 'reclamped.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), source)
    assert set_gate_clamp.main([str(source), '--consistency_chroma', '1.2', '--why', 'a test', '--out', str(out)]) == 0
    before, after = torch.load(source, weights_only=True), torch.load(out, weights_only=True)
    assert after[GATE_KEY]['consistency'] == 1.5 and after[GATE_KEY]['consistency_chroma'] == 1.2
    assert after[GATE_KEY]['clamp_chosen_on'] == 'a test'
    assert after['state_dict'].keys() == before['state_dict'].keys()
    assert after[GATE_KEY]['state_dict'].keys() == before[GATE_KEY]['state_dict'].keys()
    assert all(torch.equal(before['state_dict'][k], v) for k, v in after['state_dict'].items())
    assert all(torch.equal(before[GATE_KEY]['state_dict'][k], v) for k, v in after[GATE_KEY]['state_dict'].items())
    # over its own input (atomically)
    assert set_gate_clamp.main([str(out), '--consistency', '2', '--out', str(out)]) == 0
    assert read_gate(out).consistency == 2.0 and read_gate(out).chroma == 1.2
    assert read_gate(out).chroma == 1.2
    plain = tmp_path / 'plain.pth'
    torch.save({'state_dict': net.state_dict()}, plain)
    assert set_gate_clamp.main([str(plain), '--consistency', '1', '--out', str(tmp_path / 'x.pth')]) == 1
    assert 'no medium gate' in capsys.readouterr().err and not (tmp_path / 'x.pth').exists()
    assert set_gate_clamp.main([str(source), '--consistency_chroma', '-1', '--out', str(out)]) == 2


def _bracket_with_a_clipped_sky(seed=0, size=(48, 64)):
    """(short, medium) LDR frames (1, 3, H, W) of one radiance, 2 stops apart, with mild noise: the medium frame's
    top half is clipped, its bottom half well exposed; a 'moving object' in the short frame's top-left corner
    (dark where the medium frame is clipped) does not agree with the medium frame."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    radiance = torch.full((1, 3, h, w), 0.05)
    radiance[:, :, : h // 2] = 0.5 + 0.3 * torch.rand(1, 3, h // 2, w, generator=gen)  # bright: clipped at t = 4
    radiance[:, :, h // 2:] *= 1 + 0.5 * torch.rand(1, 3, h - h // 2, w, generator=gen)
    frames = []
    for t in (1.0, 4.0):
        x = (radiance * t).clamp(0, 1) ** (1 / 2.2) + 0.004 * torch.randn(1, 3, h, w, generator=gen)
        frames.append((x * 255).round().clamp(0, 255) / 255)
    frames[0][:, :, :8, :8] = 0.1  # the object: dark in the short frame, under the medium frame's clipped sky
    return frames


def test_short_witness_band_is_finite_only_where_the_short_frame_sees_what_the_medium_frame_clips():
    short, mid = _bracket_with_a_clipped_sky()
    x_short, x_mid = _medium_input(short, 1.0), _medium_input(mid, 4.0)
    band = short_bands(x_short, x_mid)
    assert band.shape == (1, 3, 48, 64)
    witnessed = torch.isfinite(band).all(dim=1)[0]
    clipped = (mid[0].amax(dim=0) >= 0.95)
    assert witnessed[24:].sum() == 0  # the medium frame is well exposed there: its own band holds those pixels
    assert witnessed[:8, :8].sum() == 0  # the short frame disagrees (the object moved): no witness
    assert witnessed[8:24].float().mean() > 0.9 and (witnessed <= clipped).all()
    # frames in the wrong order (the "short" one longer) witness nothing
    hwc = [x[0, part].permute(1, 2, 0).numpy() for x in (x_mid, x_short) for part in (slice(3, 6), slice(0, 3))]
    assert not np.isfinite(short_witness_band(*hwc)).any()


def test_short_consistency_holds_the_clipped_pixels_to_the_short_frame_and_nothing_else():
    short, mid = _bracket_with_a_clipped_sky(1)
    x_short, x_mid = _medium_input(short, 1.0), _medium_input(mid, 4.0)
    y = torch.full_like(mid, 0.1)  # a backbone that darkens the sky (and gets the ground wrong too)
    plain = _trained_looking_gate()
    held = MediumGate(short_consistency=1.5)
    held.load_state_dict(plain.state_dict())
    band = short_bands(x_short, x_mid)
    with torch.no_grad():
        out_plain = plain(y, x_mid, noise_maps(x_mid))[0]
        out = held(y, x_mid, noise_maps(x_mid), None, x_short, band)[0]
    witnessed = torch.isfinite(band)
    mu_short = mu_law_torch(x_short[:, :3].clamp(0, 1))
    assert ((mu_law_torch(out) - mu_short).abs()[witnessed] <= 1.5 * band[witnessed] + 1e-5).all()
    assert (mu_law_torch(out_plain) - mu_short).abs()[witnessed].mean() > 0.1  # without it the sky stays dark
    assert torch.equal(out[~witnessed], out_plain[~witnessed])
    with pytest.raises(ValueError, match='short frame'):
        held(y, x_mid, noise_maps(x_mid))


def test_short_consistency_is_stored_and_applied_by_the_gated_network(tmp_path, capsys, caplog):
    from models.networks import define_network
    from tools import set_gate_clamp

    torch.manual_seed(0)
    net, gate = define_network('FSHDR').eval(), _trained_looking_gate()  # FSHDR: aligned inputs
    source, path = tmp_path / 'gated.pth', tmp_path / 'short.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), source)
    assert torch.load(source, weights_only=True)[GATE_KEY]['short_consistency'] == 0.0
    # only for a backbone that takes aligned frames, only when the tool is told which, and only the right one
    assert set_gate_clamp.main([str(source), '--short_consistency', '1.5', '--out', str(path)]) == 2
    assert set_gate_clamp.main([str(source), '--short_consistency', '1.5', '--network', 'AHDRNet',
                                '--out', str(path)]) == 2
    assert 'unaligned' in capsys.readouterr().err and not path.exists()
    ahdr = tmp_path / 'ahdr.pth'
    torch.save(gated_checkpoint(tiny_ahdr().state_dict(), gate), ahdr)
    assert set_gate_clamp.main([str(ahdr), '--short_consistency', '1.5', '--network', 'FSHDR',
                                '--out', str(path)]) == 1
    assert 'does not match FSHDR' in capsys.readouterr().err and not path.exists()
    assert set_gate_clamp.main([str(source), '--out', str(path)]) == 2  # nothing to set
    assert set_gate_clamp.main([str(source), '--short_consistency', '1.5', '--network', 'FSHDR',
                                '--out', str(path)]) == 0
    entry = torch.load(path, weights_only=True)[GATE_KEY]
    assert entry['network'] == 'FSHDR'
    assert entry['version'] == GATE_VERSION  # older code refuses it instead of ignoring it
    loaded = read_gate(path)
    assert loaded.short_consistency == 1.5
    short, mid = _bracket_with_a_clipped_sky(2)
    xs = [_medium_input(short, 1.0), _medium_input(mid, 4.0), _medium_input(mid.clone(), 16.0)]
    with torch.no_grad():
        unheld = gate(net(*xs), xs[1], noise_maps(xs[1]))[0]
        expected = loaded.hold_to_band(unheld, mu_law_torch(xs[0][:, :3].clamp(0, 1)), short_bands(xs[0], xs[1]),
                                       1.5)
        assert not torch.allclose(expected, unheld)  # the clamp acts on this bracket
        assert torch.allclose(with_gate(net, path, 'auto')(*xs), expected)
        # named as an unaligned-input backbone, the short frame's clamp is switched off, with a warning
        with caplog.at_level('WARNING', logger='models.medium_gate'):
            assert torch.allclose(with_gate(net, path, 'auto', network='AHDRNet')(*xs), unheld)
        assert 'unaligned frames' in caplog.text
    checkpoint = torch.load(path, weights_only=True)
    for bad in (-1.0, float('nan'), True):
        torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], short_consistency=bad)}), path)
        with pytest.raises(GateError, match='short_consistency'):
            read_gate(path)


def test_short_witness_ignores_the_alignment_fallback_and_works_in_a_fully_clipped_tile():
    from util.align import equalise_exposure

    short, mid = _bracket_with_a_clipped_sky(3)
    ldr_s, ldr_m = short[0].permute(1, 2, 0).numpy().copy(), mid[0].permute(1, 2, 0).numpy()
    # where util.align rejects a warp it writes the medium frame brought to the short exposure: not a witness
    ldr_s[8:16] = equalise_exposure(ldr_m[8:16], 4.0, 1.0)
    band = short_witness_band(ldr_s, ldr_s ** 2.2 / 1.0, ldr_m, ldr_m ** 2.2 / 4.0)
    witnessed = np.isfinite(band).all(axis=2)
    assert not witnessed[8:16].any() and witnessed[16:24].mean() > 0.9
    # a tile wholly inside the clipped sky still knows its exposures (H is made from the clipped codes too)
    sky_s, sky_m = ldr_s[16:24], ldr_m[16:24]
    assert (sky_m.max(axis=2) >= 0.95).all()
    band = short_witness_band(sky_s, sky_s ** 2.2 / 1.0, sky_m, sky_m ** 2.2 / 4.0)
    assert np.isfinite(band).all(axis=2).mean() > 0.9


def test_a_nan_in_a_witness_frame_stays_out_of_the_pixels_it_does_not_witness():
    gate = MediumGate(consistency=1.5, chroma=1.2)
    out = torch.full((1, 3, 4, 4), 0.3)
    mu_ref = torch.full_like(out, 0.5)
    mu_ref[..., 0, 0] = float('nan')
    band = torch.full_like(out, float('inf'))
    band[..., 1, 1] = 0.01
    held = gate.hold_to_band(out, mu_ref, band)
    assert torch.isfinite(held).all()
    assert torch.equal(held[..., 0, 0], out[..., 0, 0]) and not torch.equal(held[..., 1, 1], out[..., 1, 1])


def test_short_floor_lifts_only_channels_clipped_in_both_frames():
    from util.align import equalise_exposure

    mid = torch.full((1, 3, 2, 2), 0.99)
    mid[0, 1] = 0.5  # green well exposed in the medium frame: not the floor's business
    short = torch.full((1, 3, 2, 2), 0.97)  # red and blue clipped in the short frame too
    short[..., 1, 1] = torch.from_numpy(equalise_exposure(mid[0, :, 1, 1].numpy(), 4.0, 1.0))  # a fallback pixel
    x_short, x_mid = _medium_input(short, 1.0), _medium_input(mid, 4.0)
    out = torch.full((1, 3, 2, 2), 0.2)  # a backbone that darkens the highlight
    lifted = short_floor(out, x_short, x_mid)
    reading = 0.97 ** 2.2
    assert torch.allclose(lifted[0, [0, 2], 0, 0], torch.full((2,), reading))  # at least what the short frame read
    assert lifted[0, 1, 0, 0] == 0.2  # a channel the medium frame exposes well stays
    assert torch.equal(lifted[..., 1, 1], out[..., 1, 1])  # the fallback never reaches the clip: no floor
    assert torch.equal(short_floor(torch.full_like(out, 0.95), x_short, x_mid), torch.full_like(out, 0.95))


def _bracket_with_a_shadow(seed=0, t_mid=4.0, t_long=16.0):
    """(mid, long) LDR frames (1, 3, 48, 64) of a static scene with a dark lower half (the medium frame noisy there,
    the long frame well exposed), except a moving patch in the shadow where the long frame shows something else, and
    the long frame clipped in the bright upper half."""
    gen = torch.Generator().manual_seed(seed)
    radiance = torch.full((1, 3, 48, 64), 0.2) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    radiance[..., 24:, :] *= 0.02  # the shadow
    mid = ((radiance * t_mid) ** (1 / 2.2) + 0.01 * torch.randn(radiance.shape, generator=gen)).clamp(0, 1)
    long = ((radiance * t_long) ** (1 / 2.2) + 0.003 * torch.randn(radiance.shape, generator=gen)).clamp(0, 1)
    long[..., 36:44, 8:20] = 0.6  # the object moved: the long frame disagrees
    return mid, long


def test_long_witness_band_is_finite_only_where_the_long_frame_agrees_and_is_well_exposed():
    from models.medium_gate import long_bands, long_witness_band
    from util.align import equalise_exposure

    mid, long = _bracket_with_a_shadow()
    x_mid, x_long = _medium_input(mid, 4.0), _medium_input(long, 16.0)
    maps = [medium_noise_map_and_band(*[x_mid[0, part].permute(1, 2, 0).numpy() for part in
                                        (slice(3, 6), slice(0, 3))], 'weak_texture', with_sigma=True)]
    band = long_bands(x_long, x_mid, maps)
    witnessed = torch.isfinite(band).all(dim=1)[0]
    assert (long[0].amax(dim=0)[:24] >= 0.95).all() and not witnessed[:24].any()  # clipped in the long frame
    assert not witnessed[36:44, 8:20].any()  # moved: no witness
    assert witnessed[24:36].float().mean() > 0.9 and witnessed[44:].float().mean() > 0.9
    hwc = lambda x: [x[0, part].permute(1, 2, 0).numpy() for part in (slice(3, 6), slice(0, 3))]  # noqa: E731
    # frames in the wrong order (the "long" one shorter) witness nothing
    assert not np.isfinite(long_witness_band(*hwc(x_mid), *hwc(x_long), maps[0][2], maps[0][1])).any()
    # where util.align rejected the warp it wrote the medium frame brought to the long exposure: not a witness
    ldr_l, ldr_m = hwc(x_long)[0].copy(), hwc(x_mid)[0]
    ldr_l[24:32] = equalise_exposure(ldr_m[24:32], 4.0, 16.0)
    no_mid_band = np.full_like(maps[0][1], np.inf)  # the ratio's condition met everywhere: the echo rule alone
    band = long_witness_band(ldr_l, ldr_l ** 2.2 / 16.0, *hwc(x_mid), maps[0][2], no_mid_band)
    assert not np.isfinite(band[24:32]).any() and np.isfinite(band[44:]).all(axis=2).mean() > 0.9
    # a medium frame as clean as the long one: the long frame is no better a witness (its warp costs detail)
    clean_mid = maps[0][1] / 10
    assert not np.isfinite(long_witness_band(*hwc(x_long), *hwc(x_mid), maps[0][2], clean_mid)[44:]).any()


def test_long_consistency_holds_the_witnessed_pixels_to_the_long_frame_and_nothing_else():
    from models.medium_gate import long_bands

    mid, long = _bracket_with_a_shadow(1)
    x_mid, x_long = _medium_input(mid, 4.0), _medium_input(long, 16.0)
    y = (mid ** 2.2 / 4.0).clone()
    y[:, 0] *= 1.5  # a backbone with a red cast in the shadow (and everywhere)
    plain = _trained_looking_gate()
    held = MediumGate(long_consistency=1.5, chroma=1.2)
    held.load_state_dict(plain.state_dict())
    maps = medium_noise_map_and_band(mid[0].permute(1, 2, 0).numpy(), x_mid[0, :3].permute(1, 2, 0).numpy(),
                                     with_sigma=True)
    band = long_bands(x_long, x_mid, [maps])
    with torch.no_grad():
        out_plain = plain(y, x_mid, noise_maps(x_mid))[0]
        out = held(y, x_mid, noise_maps(x_mid), None, None, None, x_long, band)[0]
    witnessed = torch.isfinite(band)
    mu_long = mu_law_torch(x_long[:, :3].clamp(0, 1))
    assert ((mu_law_torch(out) - mu_long).abs()[witnessed] <= 1.5 * 1.2 * band[witnessed] + 1e-5).all()
    assert ((mu_law_torch(out_plain) - mu_long).abs()[witnessed] > 1.5 * 1.2 * band[witnessed]).float().mean() > 0.5
    assert torch.equal(out[~witnessed], out_plain[~witnessed])
    with pytest.raises(ValueError, match='long frame'):
        held(y, x_mid, noise_maps(x_mid))


def test_long_consistency_is_stored_set_trained_and_applied_by_the_gated_network(tmp_path, capsys, caplog):
    from models.medium_gate import long_bands
    from models.networks import define_network
    from tools import set_gate_clamp
    from tools.train_gate import witness_consistency_of

    torch.manual_seed(0)
    net, gate = define_network('FSHDR').eval(), _trained_looking_gate()
    source, path = tmp_path / 'gated.pth', tmp_path / 'long.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), source)
    assert torch.load(source, weights_only=True)[GATE_KEY]['long_consistency'] == 0.0
    entry = torch.load(source, weights_only=True)[GATE_KEY]
    del entry['long_consistency']  # an entry from before the setting reads as off
    torch.save({'state_dict': net.state_dict(), GATE_KEY: dict(entry, version=5)}, path)
    assert read_gate(path).long_consistency == 0.0
    assert set_gate_clamp.main([str(source), '--long_consistency', '1.5', '--out', str(path)]) == 2
    assert set_gate_clamp.main([str(source), '--long_consistency', '1.5', '--network', 'AHDRNet',
                                '--out', str(path)]) == 2
    assert 'unaligned' in capsys.readouterr().err
    assert set_gate_clamp.main([str(source), '--long_consistency', '1.5', '--network', 'FSHDR',
                                '--out', str(path)]) == 0
    entry = torch.load(path, weights_only=True)[GATE_KEY]
    assert entry['version'] == GATE_VERSION and entry['long_consistency'] == 1.5
    loaded = read_gate(path)
    mid, long = _bracket_with_a_shadow(2)
    xs = [_medium_input(mid.clone(), 1.0), _medium_input(mid, 4.0), _medium_input(long, 16.0)]
    with torch.no_grad():
        unheld = gate(net(*xs), xs[1], noise_maps(xs[1]))[0]
        maps = medium_noise_map_and_band(*[xs[1][0, part].permute(1, 2, 0).numpy()
                                           for part in (slice(3, 6), slice(0, 3))], with_sigma=True)
        expected = loaded.hold_to_band(unheld, mu_law_torch(xs[2][:, :3].clamp(0, 1)),
                                       long_bands(xs[2], xs[1], [maps]), 1.5)
        assert not torch.allclose(expected, unheld)  # the clamp acts on this bracket
        assert torch.allclose(with_gate(net, path, 'auto')(*xs), expected)
        with caplog.at_level('WARNING', logger='models.medium_gate'):  # an unaligned-input backbone: off
            assert torch.allclose(with_gate(net, path, 'auto', network='AHDRNet')(*xs), unheld)
        assert 'long_consistency' in caplog.text
    checkpoint = torch.load(path, weights_only=True)
    torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], long_consistency=-1.0)}), path)
    with pytest.raises(GateError, match='long_consistency'):
        read_gate(path)
    # train_gate's default: the chosen value for aligned-input backbones, off for the others
    assert witness_consistency_of('auto', 'FSHDR', 1.5, 'long') == 1.5
    assert witness_consistency_of('auto', 'AHDRNet', 1.5, 'long') == 0.0
    with pytest.raises(ValueError, match='--long_consistency'):
        witness_consistency_of('2', 'AHDRNet', 1.5, 'long')


def test_a_nan_in_a_frame_opens_its_band_instead_of_narrowing_it():
    rng = np.random.default_rng(3)
    ldr = np.clip(0.3 + 0.05 * rng.standard_normal((128, 128, 3)), 0, 1).astype(np.float32)
    clean_band = medium_noise_band(ldr, ldr ** 2.2 / 4.0)
    spoilt = ldr.copy()
    spoilt[49, 49] = np.nan  # on a block boundary of the estimator: its NaN reaches a whole brightness level
    band = medium_noise_band(spoilt, spoilt ** 2.2 / 4.0)
    both = np.isfinite(band) & np.isfinite(clean_band)
    assert not np.isfinite(band[49, 49]).any()
    assert (band[both] >= 0.5 * clean_band[both]).all()  # no band collapsed to the quantisation floor


def test_long_bands_are_per_image_and_the_shipped_combination_runs_batched():
    from models.medium_gate import long_bands

    brackets = [_bracket_with_a_shadow(seed) for seed in (4, 5)]
    x_mid = torch.cat([_medium_input(mid, 4.0) for mid, _ in brackets])
    x_long = torch.cat([_medium_input(long, 16.0) for _, long in brackets])
    maps = [medium_noise_map_and_band(*[x_mid[i, part].permute(1, 2, 0).numpy() for part in
                                        (slice(3, 6), slice(0, 3))], 'weak_texture', with_sigma=True) for i in (0, 1)]
    batch = long_bands(x_long, x_mid, maps)
    for i in (0, 1):
        assert torch.equal(batch[i:i + 1], long_bands(x_long[i:i + 1], x_mid[i:i + 1], maps[i:i + 1]))

    class Scaled(torch.nn.Module):  # a backbone that gets the shadow's colour wrong
        def forward(self, x1, x2, x3):
            return (x2[:, :3] * torch.tensor([1.4, 1.0, 0.8]).view(1, 3, 1, 1)).clamp(0, 1)

    gate = MediumGate(consistency=1.5, chroma=1.2, fallback=4.0, band_noise='weak_texture', fusion_window=5,
                      long_consistency=1.5)
    gate.load_state_dict(_trained_looking_gate().state_dict())
    net = GatedNetwork(Scaled(), gate.eval())
    with torch.no_grad():
        out = net(x_mid, x_mid, x_long)
        alone = [net(x_mid[i:i + 1], x_mid[i:i + 1], x_long[i:i + 1]) for i in (0, 1)]
        gate.long_within_medium = False  # as a version 6 gate runs
        free = net(x_mid, x_mid, x_long)
        gate.long_consistency = 0.0
        without = net(x_mid, x_mid, x_long)
    assert torch.allclose(out, torch.cat(alone)) and torch.isfinite(out).all()
    witnessed = torch.isfinite(batch)
    mu_long, mu_mid = mu_law_torch(x_long[:, :3]), mu_law_torch(x_mid[:, :3])
    # version 6: the long clamp has the last word where the long frame witnesses
    assert ((mu_law_torch(free) - mu_long).abs() <= 1.5 * 1.2 * batch + 1e-5)[witnessed].all()
    # version 7: the long frame moves the output within the medium band, never out of it
    band_mid = torch.stack([torch.from_numpy(m[1]).permute(2, 0, 1) for m in maps])
    held = torch.isfinite(band_mid)
    assert ((mu_law_torch(free) - mu_mid).abs() > 1.5 * 1.2 * band_mid + 1e-5)[held].any()  # the case arises here
    assert ((mu_law_torch(out) - mu_mid).abs() <= 1.5 * 1.2 * band_mid + 1e-5)[held].all()
    assert not torch.equal(out, without) and not torch.equal(out, free)


def test_long_within_medium_is_stored_read_and_set_and_a_version_6_gate_runs_without_it(tmp_path, capsys):
    from models.networks import define_network
    from tools import set_gate_clamp

    net = define_network('FSHDR').eval()
    gate = MediumGate(consistency=1.5, long_consistency=1.5)
    source, path = tmp_path / 'gated.pth', tmp_path / 'set.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), source)
    entry = torch.load(source, weights_only=True)[GATE_KEY]
    assert entry['long_within_medium'] is True and read_gate(source).long_within_medium
    del entry['long_within_medium']  # a gate made before the setting: the long clamp as it ran then
    torch.save({'state_dict': net.state_dict(), GATE_KEY: dict(entry, version=6)}, path)
    assert read_gate(path).long_within_medium is False
    assert set_gate_clamp.main([str(path), '--long_within_medium', 'on', '--out', str(path)]) == 0
    assert 'within the medium band: on' in capsys.readouterr().out
    stored = torch.load(path, weights_only=True)[GATE_KEY]
    assert stored['long_within_medium'] is True and stored['version'] == GATE_VERSION
    assert set_gate_clamp.main([str(path), '--long_within_medium', 'off', '--out', str(path)]) == 0
    assert read_gate(path).long_within_medium is False
    checkpoint = torch.load(path, weights_only=True)
    torch.save(dict(checkpoint, **{GATE_KEY: dict(checkpoint[GATE_KEY], long_within_medium=1)}), path)
    with pytest.raises(GateError, match='long_within_medium'):
        read_gate(path)


def test_level_capped_keeps_a_falling_noise_curve_and_cuts_a_band_that_reads_texture():
    from models.medium_gate import level_capped

    falling = np.array([3.0, 2.0, 1.5, 1.2, 1.0, 1.0, 0.9, 0.8], np.float32)  # read then shot noise: unchanged
    assert np.array_equal(level_capped(falling), falling)
    textured = np.array([0.3, 0.2, 1.07, 0.18, 1.15, 2.55, 0.68, 0.68], np.float32)  # a clean scene's estimate
    assert np.allclose(level_capped(textured), [0.3, 0.2, 0.3, 0.18, 0.27, 0.27, 0.27, 0.27])
    assert np.allclose(level_capped(textured, growth=2.0)[2], 0.4)
    opened = level_capped(np.array([0.2, np.nan, 1.0], np.float32))
    assert np.isnan(opened[1]) and np.isclose(opened[2], 0.3)  # a NaN band opens, the others keep their caps


def _physical_noise(level, read=2e-4, shot=2e-5, floor=0.25 / 255):
    """LDR sigma of a gamma-2.2 frame at ``level``: 8-bit rounding, read and shot noise in the linear radiance."""
    x = level ** 2.2
    slope = level / (2.2 * x)  # dv / dx
    return np.sqrt(floor ** 2 + slope ** 2 * (read ** 2 + shot * x)).astype(np.float32)


def test_the_noise_envelope_follows_a_physical_curve_and_stays_under_every_estimate():
    from models.medium_gate import noise_model_envelope
    from util.label_denoise import band_centres

    true = _physical_noise(band_centres())
    assert (np.diff(true) < 0).all()  # falling with the level: read noise dominates the shadows
    assert np.allclose(noise_model_envelope(true), true, rtol=1e-3)  # a curve of the family comes back whole
    # a clean scene's estimate (round 3, eighteenth session, validation scene 001: codes), texture at 0.15-0.53
    read = np.array([0.97, 0.97, 0.97, 0.96, 1.23, 1.50, 0.25, 0.25], np.float32) / 255
    envelope = noise_model_envelope(read)
    assert (envelope <= read * (1 + 1e-5)).all() and (np.diff(envelope) <= 1e-9).all()
    assert np.allclose(envelope[0], read[0], rtol=1e-3)  # the shadows may be as noisy as they read
    assert (envelope[2:6] * 255 < 0.35).all()  # the mid-tones cannot be: the bright bands bound the curve
    holes = noise_model_envelope(np.array([np.nan, 0.3, 0.0, 0.25, 0.2, 0.2, 0.2, 0.2], np.float32))
    assert np.isnan(holes[0]) and holes[2] == 0.0 and np.isfinite(holes[1:]).all()
    assert noise_model_envelope(np.array([np.nan] * 6 + [0.2, 0.2], np.float32)) is None  # 2 bounds, 3 unknowns
    # a study frame with nothing at the darkest level: its band is a flat copy of the next one, which no read noise
    # gives; bounding the curve with it would cut the band above it (validation: 3.30 codes read, 2.74 left)
    filled = np.array([3.30, 3.30, 1.91, 1.59, 1.46, 1.42, 1.34, 1.34], np.float32) / 255
    known = np.array([False] + [True] * 7)
    assert noise_model_envelope(filled)[1] < 0.9 * filled[1]
    assert np.isclose(noise_model_envelope(filled, known)[1], filled[1], rtol=0.02)
    assert noise_model_envelope(filled, np.zeros(8, bool)) is None  # nothing known: no curve


def test_model_capped_is_at_least_as_tight_as_level_capped_and_keeps_physical_noise():
    from models.medium_gate import level_capped, model_capped
    from util.label_denoise import band_centres

    rng = np.random.default_rng(3)
    for _ in range(50):
        bands = (rng.uniform(0.1, 5.0, 8) / 255).astype(np.float32)
        assert (model_capped(bands) <= level_capped(bands) * (1 + 1e-5)).all()
    for read, shot in ((2e-4, 2e-5), (2e-3, 6e-3), (1e-5, 1e-6)):  # the study's noise, high ISO, nearly clean
        true = _physical_noise(band_centres(), read, shot)
        wobbly = true * rng.uniform(0.9, 1.1, 8).astype(np.float32)  # an estimate's scatter
        assert (model_capped(wobbly) >= 0.8 * true).all()
    read = np.array([0.3, 0.2, 1.07, 0.18, 1.15, 2.55, 0.68, 0.68], np.float32) / 255  # texture at 0.15, 0.38-0.9
    assert (model_capped(read)[4:] < level_capped(read)[4:]).all()
    # no curve (a mostly clipped frame: no band known): version 8's cap, as it was
    assert np.array_equal(model_capped(read, np.zeros(8, bool)), level_capped(read))
    # a band of flat blocks (0, or far under 8-bit rounding) bounds nothing: the others are not pinned to it
    for flat in (0.0, 1e-7):
        spoilt = read.copy()
        spoilt[2] = flat
        capped = model_capped(spoilt)
        assert capped[2] == np.float32(flat) and (capped[[0, 1, 3]] == spoilt[[0, 1, 3]]).all()
        assert (capped[4:] > 0.1 / 255).all()


def test_the_capped_band_is_narrower_only_where_a_brighter_level_reads_texture():
    from models.medium_gate import _ldr_sigma

    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:128, 0:192].astype(np.float32)
    level = 0.1 + 0.5 * xx / 191  # dark to mid-grey, left to right
    # fine texture in the brighter part, as a frame's estimate cannot tell from noise: 5 times the noise below it
    texture = np.where(xx > 110, 0.01 * rng.standard_normal((128, 192)), 0.0)
    ldr = np.clip(level + texture + 0.002 * rng.standard_normal((128, 192)), 0, 1)[..., None].repeat(3, axis=2)
    ldr = np.rint(ldr * 255) / 255
    plain, capped = _ldr_sigma(ldr, 'weak_texture')[..., 0], _ldr_sigma(ldr, 'weak_texture_capped')[..., 0]
    assert (capped <= plain + 1e-9).all()
    assert np.allclose(capped[:, :60], plain[:, :60])  # the flat, dark part: as it was
    assert capped[:, 150:].mean() < plain[:, 150:].mean()  # where the texture was read as noise: narrower
    modelled = _ldr_sigma(ldr, 'weak_texture_modelled')[..., 0]
    assert (modelled <= capped * (1 + 1e-5)).all() and modelled[:, 150:].mean() < plain[:, 150:].mean()


def _bracket_frame(level_lo, level_hi, noise, texture, seed, size=(96, 128)):
    """A frame (H x W x 3) with a left-to-right ramp of levels, ``texture`` (grey, as fine as the pixels: gravel,
    foliage, which a single frame cannot tell from noise) and Gaussian ``noise``."""
    rng = np.random.default_rng(seed)
    h, w = size
    fine = rng.standard_normal((h, w, 1)).astype(np.float32)
    ramp = np.linspace(level_lo, level_hi, w, dtype=np.float32)[None, :, None]
    return np.clip(ramp + texture * fine + rng.normal(0, noise, (h, w, 3)), 0.0, 1.0).astype(np.float32)


def test_bracket_noise_bounds_take_the_least_estimate_over_the_frames_with_a_margin():
    """The camera's noise curve is the same in every frame: a frame whose texture reads as noise is bounded by another
    frame's flat estimate at the same level (times the margin), a band no frame knows stays unbounded."""
    from models.medium_gate import BRACKET_NOISE_MARGIN, bracket_noise_bounds
    from util.label_denoise import _band, weak_texture_noise_by_level

    noise = 0.002
    textured = _bracket_frame(0.25, 0.55, noise, 0.01, seed=1)  # bands 2-4 (levels 0.2..0.6), texture 5x the noise
    flat = _bracket_frame(0.25, 0.55, noise, 0.0, seed=2)
    own, known = weak_texture_noise_by_level(textured, with_known=True)
    bounds = bracket_noise_bounds([textured, flat])
    levels = np.unique(_band(np.linspace(0.27, 0.53, 50)))
    assert known[levels].all() and (own[levels] > 2.5 * noise).all()  # the textured frame alone reads texture
    flat_own = weak_texture_noise_by_level(flat)
    assert np.allclose(bounds[levels], BRACKET_NOISE_MARGIN * flat_own[levels])  # the flat frame's, with the margin
    assert (bounds[levels] > 0.8 * noise).all() and (bounds[levels] < 1.4 * noise).all()  # near the true noise
    assert np.isinf(bounds[0]) and np.isinf(bounds[-1])  # black and near-white: in no frame
    assert np.array_equal(bracket_noise_bounds([textured]), np.where(known, BRACKET_NOISE_MARGIN * own, np.inf))
    tiny = np.zeros((4, 4, 3), np.float32)  # a frame under the patch size bounds nothing
    assert np.isinf(bracket_noise_bounds([tiny])).all()


def test_noise_sample_keeps_small_frames_and_separates_the_crops_of_large_ones():
    from models.medium_gate import noise_sample

    small = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)
    assert noise_sample(small, max_pixels=64 * 80) is small
    big = np.random.default_rng(1).random((300, 500, 3)).astype(np.float32)
    mosaic = noise_sample(big, max_pixels=130 * 130, crop=64)
    assert mosaic.shape == (129, 129, 3)  # 2 x 2 crops of 64 with one NaN row and column between
    assert np.isnan(mosaic[64]).all() and np.isnan(mosaic[:, 64]).all()
    assert np.array_equal(mosaic[:64, :64], big[:64, :64]) and np.array_equal(mosaic[65:, 65:], big[-64:, -64:])


def test_bracket_noise_narrows_the_band_of_a_flagged_gate_only_within_the_block(tmp_path, capsys):
    """A gate with bracket_noise takes the bracket's unwarped frames in ``bracket_noise`` and its band narrows where
    the medium frame's texture read as noise; outside the block, or for a gate without the flag, nothing changes.
    The flag is stored with the gate (version 10), read as off from older gates, and set by set_gate_clamp."""
    from models.medium_gate import bracket_noise, medium_maps, reads_bracket_noise
    from tools import set_gate_clamp

    noise = 0.002
    frames = [_bracket_frame(0.25, 0.55, noise, t, seed=s) for s, t in ((3, 0.0), (4, 0.01), (5, 0.0))]
    xs = [_medium_input(torch.from_numpy(f).permute(2, 0, 1)[None], t) for f, t in zip(frames, (1.0, 4.0, 16.0))]
    net = tiny_ahdr().eval()
    gate = _trained_looking_gate()
    gate.consistency, gate.band_noise, gate.bracket_noise = 1.5, 'weak_texture_modelled', True
    path = tmp_path / 'bracket.pth'
    torch.save(gated_checkpoint(net.state_dict(), gate), path)
    entry = torch.load(path, weights_only=True)[GATE_KEY]
    assert entry['bracket_noise'] is True and entry['version'] == GATE_VERSION
    gated = with_gate(net, path, 'auto')
    assert reads_bracket_noise(gated) and not reads_bracket_noise(net)
    own = medium_maps(xs[1], 'weak_texture_modelled')[0][1]
    with torch.no_grad():
        plain = gated(*xs)
        with bracket_noise(gated, frames):
            bounds = gated.bracket_bounds
            bounded = gated(*xs)
        assert gated.bracket_bounds is None and torch.equal(gated(*xs), plain)  # restored after the block
    narrowed = medium_maps(xs[1], 'weak_texture_modelled', bounds)[0][1]
    finite = np.isfinite(own)
    assert (narrowed[finite] <= own[finite] + 1e-9).all() and np.median(narrowed[finite]) < 0.6 * np.median(own[finite])
    assert not torch.equal(bounded, plain)
    # the same gate without the flag: the block changes nothing, and no estimate is made
    entry['bracket_noise'] = False
    torch.save({'state_dict': net.state_dict(), GATE_KEY: entry}, path)
    unflagged = with_gate(net, path, 'auto')
    with torch.no_grad(), bracket_noise(unflagged, frames):
        assert unflagged.bracket_bounds is None and torch.equal(unflagged(*xs), plain)
    del entry['bracket_noise']  # a gate made before the setting (version 9): the medium frame alone
    torch.save({'state_dict': net.state_dict(), GATE_KEY: dict(entry, version=9)}, path)
    assert read_gate(path).bracket_noise is False
    assert set_gate_clamp.main([str(path), '--bracket_noise', 'on', '--out', str(path)]) == 0
    assert 'bracket_noise on' in capsys.readouterr().out and read_gate(path).bracket_noise is True
    torch.save({'state_dict': net.state_dict(), GATE_KEY: dict(entry, bracket_noise='yes')}, path)
    with pytest.raises(GateError, match='bracket_noise'):
        read_gate(path)
