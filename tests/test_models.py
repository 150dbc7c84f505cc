"""End to end per model (selfhdr1, selfhdr2, supervised) on tiny batches of the tiny data set.

set_input -> optimize_parameters -> finite losses whose names resolve -> save -> load into a fresh model -> the same
test output; a short fit lowers the loss; stage 2's training noise; the supervised label; a NaN loss stops before
the optimizer step.
"""
import numpy as np
import pytest
import torch

import data
from models import create_model
from models.base_model import NonFiniteLossError
from models.losses import AugmentNoise
from tiny_data import TRAIN_SCENES, make_stand_in_structure_labels, single_thread, tiny_opt, use_tiny_backbone
from util.hdr_io import read_hdr

MODELS = ('selfhdr1', 'selfhdr2', 'supervised')


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    use_tiny_backbone(monkeypatch)
    with single_thread():
        yield


@pytest.fixture(scope='module')
def stru_dir(tiny_dataroot, tmp_path_factory):
    return make_stand_in_structure_labels(tiny_dataroot, tmp_path_factory.mktemp('stru'))


def make_opt(model, root, ckpt, stru_dir, **flags):
    if model == 'selfhdr2':
        flags.setdefault('stru_lable_path', stru_dir)
    return tiny_opt(root, ckpt, f'{model}_run', model, **flags)


def train_batch(opt, batch_size=2, seed=0):
    """One fixed training batch (random crops drawn under a fixed seed)."""
    torch.manual_seed(seed)
    dataset = data.create_dataset('sig17align', 'train', opt)
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)))


def eval_batch(opt):
    dataset = data.create_dataset('sig17align', 'test', opt)
    return next(iter(torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)))


def build(opt, seed=0):
    torch.manual_seed(seed)
    model = create_model(opt)
    model.setup(opt)
    return model


def weights(model):
    return {k: v.detach().clone() for k, v in model.netSelfHDR.state_dict().items()}


@pytest.mark.parametrize('model_name', MODELS)
def test_step_save_load_test(model_name, tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt(model_name, tiny_dataroot, tmp_path, stru_dir)
    model = build(opt)
    batch = train_batch(opt)
    before = weights(model)
    model.set_input(batch)
    model.optimize_parameters()

    losses = model.get_current_losses()
    assert list(losses) == model.loss_names and 'Total' in losses
    assert all(np.isfinite(v) and v > 0 for v in losses.values()), losses
    parts = sum(v for k, v in losses.items() if k != 'Total')
    assert losses['Total'] == pytest.approx(parts, rel=1e-6)
    visuals = model.get_current_visuals()
    assert set(visuals) <= set(model.visual_names) and visuals['data_out'].shape == (2, 3, 32, 32)
    after = weights(model)
    assert any(not torch.equal(before[k], after[k]) for k in before), 'the optimizer step changed nothing'

    model.save_networks(1)
    path = tmp_path / opt.name / 'SelfHDR_model_1.pth'
    content = torch.load(path, weights_only=True)
    assert list(content) == ['state_dict']
    assert list(content['state_dict']) == list(after)
    assert all(torch.equal(content['state_dict'][k], after[k]) for k in after)

    fresh = build(tiny_opt(tiny_dataroot, tmp_path, opt.name, model_name, is_train=False, load_iter=1), seed=5)
    assert fresh.optimizers == [] and not hasattr(fresh, 'criterionL1')
    fresh.eval()
    model.eval()
    sample = eval_batch(opt)
    fresh.set_input(sample)
    fresh.test()
    model.set_input(sample)
    model.test()
    assert fresh.data_out.shape == (1, 3, 48, 64)
    assert torch.equal(fresh.data_out, model.data_out)
    assert not fresh.data_out.requires_grad and torch.isfinite(fresh.data_out).all()


@pytest.mark.parametrize('model_name', MODELS)
def test_short_fit_lowers_loss(model_name, tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt(model_name, tiny_dataroot, tmp_path, stru_dir, lr=2e-3)
    model = build(opt)
    batch = train_batch(opt)
    totals = []
    for _ in range(20):
        model.set_input(batch)
        model.optimize_parameters()
        totals.append(model.get_current_losses()['Total'])
    assert np.isfinite(totals).all()
    assert np.mean(totals[-3:]) < 0.8 * totals[0], totals


def test_listed_names_resolve_at_setup(tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt('selfhdr1', tiny_dataroot, tmp_path, stru_dir)
    torch.manual_seed(0)
    model = create_model(opt)
    model.loss_names = model.loss_names + ['StruExpn']  # a typo
    with pytest.raises(AttributeError, match='StruExpn'):
        model.setup(opt)


def test_stage2_noise_on_medium_ldr_in_training_only(tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt('selfhdr2', tiny_dataroot, tmp_path, stru_dir)
    model = build(opt)
    seen = []
    model.netSelfHDR.register_forward_pre_hook(lambda module, args: seen.append([a.detach().clone() for a in args]))
    batch = train_batch(opt)
    assert model.augment_noise.calls == 0
    for step in (1, 2):
        model.set_input(batch)
        model.optimize_parameters()
        assert model.augment_noise.calls == step

    reference = AugmentNoise('gauss0.5')
    t_mid = batch['expo'][:, 1].view(-1, 1, 1, 1)
    for step, (in0, in1, in2) in enumerate(seen, start=1):
        assert torch.equal(in0, batch['input0']) and torch.equal(in2, batch['input2'])
        reference.calls = step - 1  # the release's generator is seeded with the call count
        noisy_ldr = (batch['input1'][:, 3:] + reference(batch['input1'][:, 3:].shape)).clamp(0, 1)
        torch.testing.assert_close(in1[:, 3:], noisy_ldr, rtol=0, atol=1e-7)
        torch.testing.assert_close(in1[:, :3], noisy_ldr ** 2.2 / (t_mid + 1e-8), rtol=1e-5, atol=1e-7)
        assert not torch.equal(in1, batch['input1'])
    assert not torch.equal(seen[0][1], seen[1][1])  # a new draw each step

    seen.clear()
    model.eval()
    model.set_input(batch)
    model.test()
    assert model.augment_noise.calls == 2  # evaluation draws no noise
    assert all(torch.equal(a, batch[f'input{i}']) for i, a in enumerate(seen[0]))


def test_stage2_without_noise(tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt('selfhdr2', tiny_dataroot, tmp_path, stru_dir, noise='none')
    model = build(opt)
    assert model.augment_noise is None
    batch = train_batch(opt)
    model.set_input(batch)
    assert all(torch.equal(a, batch[f'input{i}']) for i, a in enumerate(model.network_inputs()))


def test_stage2_colour_threshold_sets_the_mask(tiny_dataroot, stru_dir, tmp_path):
    from models import networks
    from models.selfhdr2_model import colour_mask
    # the stand-in structure labels are Y_color at half brightness on the left: ~21/255 apart in mu-law there
    losses = {}
    for threshold in (10, 30):
        opt = make_opt('selfhdr2', tiny_dataroot, tmp_path / str(threshold), stru_dir, noise='none',
                       stru_loss='none', colour_threshold=threshold)
        model = build(opt)
        model.set_input(train_batch(opt))
        model.forward()
        model.compute_losses()
        mask = colour_mask(model.label, model.other_label, threshold / 255)
        assert 0 < mask.mean() < 1 if threshold == 10 else mask.mean() == 1
        expected = networks.L1MuLoss()(model.data_out.float(), model.label, mask)
        assert model.loss_Color.item() == pytest.approx(expected.item(), rel=1e-6)
        losses[threshold] = model.loss_Color.item()
    assert losses[30] > losses[10]  # the wider mask adds the darkened half's (non-zero) errors


def _stage2_with_a_clipped_band(dataroot, stru_dir, out_dir, labels_agree=False, **flags):
    """A stage-2 model after compute_losses on a batch whose medium frame is clipped in its first 4 columns (the
    structure label set equal to the colour label there when ``labels_agree``)."""
    opt = make_opt('selfhdr2', dataroot, out_dir, stru_dir, noise='none', stru_loss='none', colour_threshold=10,
                   **flags)
    model = build(opt)
    batch = train_batch(opt)
    batch['input1'][:, 3:6, :, :4] = 1.0
    if labels_agree:
        batch['other_label'][..., :4] = batch['label'][..., :4]
    model.set_input(batch)
    model.forward()
    model.compute_losses()
    return model


def test_stage2_keeps_the_colour_loss_where_the_medium_frame_is_clipped(tiny_dataroot, stru_dir, tmp_path):
    from models import networks
    from models.selfhdr2_model import clipped_mask, colour_mask
    losses = {}
    for keep in (False, True):
        # a clipped band in the medium frame, where the labels disagree
        model = _stage2_with_a_clipped_band(tiny_dataroot, stru_dir, tmp_path / str(keep), colour_keep_clipped=keep)
        mask = colour_mask(model.label, model.other_label, 10 / 255)
        clipped = clipped_mask(model.input1[:, 3:6])
        assert clipped[..., :4].eq(1).all() and clipped.mean() < 1
        if keep:
            mask = torch.maximum(mask, clipped)
        expected = networks.L1MuLoss()(model.data_out.float(), model.label, mask)
        assert model.loss_Color.item() == pytest.approx(expected.item(), rel=1e-6)
        losses[keep] = model.loss_Color.item()
    assert losses[True] > losses[False]


def test_stage2_can_leave_the_colour_loss_out_where_the_medium_frame_is_clipped(tiny_dataroot, stru_dir, tmp_path):
    from models import networks
    from models.selfhdr2_model import clipped_mask, colour_mask
    losses = {}
    for skip in (False, True):
        # a clipped band in the medium frame, where the labels agree
        model = _stage2_with_a_clipped_band(tiny_dataroot, stru_dir, tmp_path / str(skip), labels_agree=True,
                                            colour_skip_clipped=skip)
        mask = colour_mask(model.label, model.other_label, 10 / 255)
        assert mask[..., :4].eq(1).all()
        if skip:
            mask = mask * (1 - clipped_mask(model.input1[:, 3:6]))
            assert mask[..., :4].eq(0).all() and mask.sum() > 0
        expected = networks.L1MuLoss()(model.data_out.float(), model.label, mask)
        assert model.loss_Color.item() == pytest.approx(expected.item(), rel=1e-6)
        losses[skip] = model.loss_Color.item()
    assert losses[True] != losses[False]
    with pytest.raises(ValueError, match='contradict'):
        build(make_opt('selfhdr2', tiny_dataroot, tmp_path / 'both', stru_dir, colour_keep_clipped=True,
                       colour_skip_clipped=True))


@pytest.mark.parametrize('threshold', [0, -5, float('nan')])
def test_stage2_rejects_a_meaningless_colour_threshold(threshold, tiny_dataroot, stru_dir, tmp_path, capsys):
    # refused when the flags are parsed (util.flags' check at the door), or at the latest by the model
    with pytest.raises((ValueError, SystemExit)) as info:
        build(make_opt('selfhdr2', tiny_dataroot, tmp_path, stru_dir, colour_threshold=threshold))
    assert 'colour_threshold' in str(info.value) + capsys.readouterr().err


def test_supervised_label_is_ground_truth(tiny_dataroot, stru_dir, tmp_path):
    """`--model supervised` sets opt.supervised, so the data set takes Training/*/HDRImg.hdr; stage 1 Y_color."""
    sup = make_opt('supervised', tiny_dataroot, tmp_path, stru_dir)
    selfsup = make_opt('selfhdr1', tiny_dataroot, tmp_path, stru_dir)
    assert sup.supervised is True and not getattr(selfsup, 'supervised', False)
    sup_set = data.create_dataset('sig17align', 'train', sup)
    self_set = data.create_dataset('sig17align', 'train', selfsup)
    for scene in TRAIN_SCENES:
        truth = read_hdr(tiny_dataroot / 'Training' / scene / 'HDRImg.hdr')
        colour = read_hdr(tiny_dataroot / 'Training_align' / scene / 'HDRImg.hdr')
        np.testing.assert_array_equal(sup_set.labels[scene], truth)
        np.testing.assert_array_equal(self_set.labels[scene], colour)
        assert not np.array_equal(truth, colour)

    model = build(sup)
    torch.manual_seed(3)
    sample = sup_set[0]  # scene 001, a random crop: the label must be that crop of the ground truth
    truth = torch.from_numpy(read_hdr(tiny_dataroot / 'Training' / '001' / 'HDRImg.hdr')).permute(2, 0, 1)
    batch = torch.utils.data.default_collate([sample])
    model.set_input(batch)
    label = model.label[0]
    hits = [(y, x) for y in range(truth.shape[1] - 31) for x in range(truth.shape[2] - 31)
            if torch.equal(truth[:, y:y + 32, x:x + 32], label)]
    assert len(hits) == 1


@pytest.mark.parametrize('model_name', MODELS)
def test_nan_loss_stops_before_the_step(model_name, tiny_dataroot, stru_dir, tmp_path):
    opt = make_opt(model_name, tiny_dataroot, tmp_path, stru_dir)
    model = build(opt)
    batch = train_batch(opt)
    batch['label'] = batch['label'].clone()
    batch['label'][0, 1, 5, 7] = float('nan')  # a corrupt label pixel
    before = weights(model)
    model.set_input(batch)
    with pytest.raises(NonFiniteLossError, match='non-finite loss'):
        model.optimize_parameters()
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
    assert model.optimizer.state_dict()['state'] == {}  # Adam never stepped
