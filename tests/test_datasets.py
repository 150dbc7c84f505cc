"""Tests for data/ (registry, loaders, sig17align, sen, tursun) on tiny generated scenes.

Every LDR pixel encodes its coordinates and its origin (16-bit code = idx*32 + variant*3 + c + 1,
idx = y*W + x), and every label encodes (y, x) and which file it came from (B = y/64, G = x/64,
R = 0.5 + kind/16, exact in RGBE), so crops and folder choices can be read back from a sample.
"""
import argparse
import shutil

import numpy as np
import pytest
import torch

import data
from data import base_dataset
from data.base_dataset import DatasetError
from models.backbones import backbone
from util.hdr_io import ImageReadError, write_hdr, write_ldr8, write_ldr16

H, W = 40, 48
SCENES = ('scene_a', 'scene_b', 'scene_c')
TRAIN_STOPS = (0.0, 2.0, 4.0)
TEST_STOPS = (0.0, 3.0, 6.0)
# label kinds
K_TRAIN_ALIGN, K_TRAIN_GT, K_TEST_GT, K_STRU = 1, 2, 3, 4
# LDR variants: frame index + offset per folder
V_TRAIN, V_ALIGN = 0, 3  # Training frames 0..2, *_align frames 3..5


def ldr_image(variant, h=H, w=W):
    y, x = np.mgrid[0:h, 0:w]
    idx = (y * w + x)[:, :, None]
    code = idx * 32 + variant * 3 + np.arange(3)[None, None, :] + 1
    return (code / 2.0 ** 16).astype(np.float32)


def decode_ldr(ldr_chw, w=W):
    """(3, h, w) LDR channels -> (y, x, variant) arrays from the codes."""
    code = np.rint(ldr_chw.numpy() * 2 ** 16).astype(np.int64)[0] - 1  # channel 0 (c = 0)
    idx, rem = code // 32, code % 32
    return idx // w, idx % w, rem // 3


def label_image(kind, h=H, w=W):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([y / 64, x / 64, np.full_like(y, 0.5 + kind / 16)], axis=2).astype(np.float32)


def decode_label(lab_chw):
    lab = lab_chw.numpy()
    return np.rint(lab[0] * 64).astype(int), np.rint(lab[1] * 64).astype(int), np.rint((lab[2] - 0.5) * 16).astype(int)


def write_scene(folder, variant0, stops=None, label_kind=None, n=3, ext='.tif', bits=16, h=H, w=W,
                expo_name='exposure.txt'):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = ldr_image(variant0 + i if n == 3 else i % 8, h, w)
        path = folder / f'{i:02d}{ext}'
        (write_ldr16 if bits == 16 else write_ldr8)(path, img)
    if stops is not None:
        (folder / expo_name).write_text('\n'.join(str(s) for s in stops) + '\n')
    if label_kind is not None:
        write_hdr(folder / 'HDRImg.hdr', label_image(label_kind, h, w))


@pytest.fixture(scope='module')
def sig17_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('sig17')
    for s in SCENES:
        write_scene(root / 'Training' / s, V_TRAIN, TRAIN_STOPS, K_TRAIN_GT)
        write_scene(root / 'Training_align' / s, V_ALIGN, None, K_TRAIN_ALIGN)
        write_scene(root / 'Test' / s, V_TRAIN, TEST_STOPS, K_TEST_GT)
        write_scene(root / 'Test_align' / s, V_ALIGN)
        (root / 'stru').mkdir(exist_ok=True)
        write_hdr(root / 'stru' / f'{s}.hdr', label_image(K_STRU))
    return root


def make_opt(root, **kw):
    opt = dict(dataroot=str(root), batch_size=2, patch_size=16, iters_per_epoch=5, max_dataset_size=float('inf'),
               shuffle=True, drop_last=True, num_dataloader=0, network='AHDRNet', stage0_inference=False,
               stru_lable_path='')
    opt.update(kw)
    opt.setdefault('aligned_input', backbone(opt['network']).aligned_input)  # what the options set from the table
    return argparse.Namespace(**opt)


def copy_tree(src, tmp_path):
    dst = tmp_path / 'root'
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------------------------
# registry and loaders
# ----------------------------------------------------------------------------------------------

def test_registry_and_unknown_name(sig17_root):
    assert {'sig17align', 'sen', 'tursun'} <= set(data.available_datasets())
    assert data.find_dataset_using_name('sig17align').__name__ == 'Sig17AlignDataset'
    with pytest.raises(ValueError, match='available: .*sig17align'):
        data.create_dataset('nope', 'train', make_opt(sig17_root))
    setter = data.get_option_setter('sig17align')
    parser = argparse.ArgumentParser()
    assert setter(parser, True) is parser


def test_unknown_split(sig17_root):
    with pytest.raises(ValueError, match='unknown split'):
        data.create_dataset('sig17align', 'training', make_opt(sig17_root))


def test_dataloaders(sig17_root):
    opt = make_opt(sig17_root)
    train = data.create_dataset('sig17align', 'train', opt)
    loader = data.create_dataloader(train, opt, 'train')
    assert len(loader) == opt.iters_per_epoch
    batch = next(iter(loader))
    assert batch['input1'].shape == (2, 6, 16, 16) and batch['expo'].shape == (2, 3)
    assert batch['expo'].dtype == torch.float32 and len(batch['fname']) == 2
    val = data.create_dataset('sig17align', 'val', opt)
    vloader = data.create_dataloader(val, opt, 'val')
    assert vloader.batch_size == 1 and len(vloader) == len(SCENES)
    assert [b['fname'][0] for b in vloader] == list(SCENES)  # in order
    sampler = torch.utils.data.SequentialSampler(train)
    sloader = data.create_dataloader(train, opt, 'train', sampler=sampler)
    assert sloader.sampler is sampler and sloader.batch_size == 2 and sloader.drop_last


# ----------------------------------------------------------------------------------------------
# sig17align: train
# ----------------------------------------------------------------------------------------------

def test_train_sample_keys_shapes_values(sig17_root):
    opt = make_opt(sig17_root, stru_lable_path=str(sig17_root / 'stru'))
    ds = data.create_dataset('sig17align', 'train', opt)
    assert ds.has_label and ds.scenes == list(SCENES)
    torch.manual_seed(0)
    s = ds[0]
    assert set(s) == {'input0', 'input1', 'input2', 'label', 'other_label', 'expo', 'fname'}
    for i in range(3):
        x = s[f'input{i}']
        assert x.shape == (6, 16, 16) and x.dtype == torch.float32
        ldr = x[3:]
        assert 0 <= ldr.min() and ldr.max() <= 1
        t = 2.0 ** TRAIN_STOPS[i]
        expected = np.power(ldr.numpy(), np.float32(2.2)) / np.float32(t + 1e-8)
        np.testing.assert_allclose(x[:3].numpy(), expected, rtol=1e-6, atol=0)
        assert (decode_ldr(ldr)[2] == V_TRAIN + i).all()  # unaligned Training frames, right order
    assert s['label'].shape == (3, 16, 16) and s['label'].dtype == torch.float32
    assert (decode_label(s['label'])[2] == K_TRAIN_ALIGN).all()  # Y_color from Training_align
    assert (decode_label(s['other_label'])[2] == K_STRU).all()
    assert s['expo'].dtype == torch.float32
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 4.0, 16.0])
    assert s['fname'] == SCENES[0]


def test_train_crop_same_position_everywhere(sig17_root):
    opt = make_opt(sig17_root, stru_lable_path=str(sig17_root / 'stru'), patch_size=12)
    ds = data.create_dataset('sig17align', 'train', opt)
    torch.manual_seed(1)
    positions = set()
    for index in range(len(ds)):
        s = ds[index]
        y, x, _ = decode_ldr(s['input0'][3:])
        y0, x0 = int(y[0, 0]), int(x[0, 0])
        positions.add((y0, x0))
        assert 0 <= y0 <= H - 12 and 0 <= x0 <= W - 12
        # a contiguous window
        np.testing.assert_array_equal(y, y0 + np.arange(12)[:, None] + 0 * x)
        np.testing.assert_array_equal(x, x0 + np.arange(12)[None, :] + 0 * y)
        for key in ('input1', 'input2'):
            yy, xx, _ = decode_ldr(s[key][3:])
            assert (yy == y).all() and (xx == x).all()
        for key in ('label', 'other_label'):
            ly, lx, _ = decode_label(s[key])
            assert (ly == y).all() and (lx == x).all()
    assert len(positions) > 1  # the crop moves


def test_train_length_and_modulo_indexing(sig17_root):
    opt = make_opt(sig17_root, batch_size=3, iters_per_epoch=4)
    ds = data.create_dataset('sig17align', 'train', opt)
    assert len(ds) == 12
    assert [ds[i]['fname'] for i in range(7)] == [SCENES[i % 3] for i in range(7)]
    with pytest.raises(IndexError):
        ds[12]
    capped = data.create_dataset('sig17align', 'train', make_opt(sig17_root, max_dataset_size=2))
    assert capped.scenes == list(SCENES[:2])
    assert capped[2]['fname'] == SCENES[0]
    defaults = data.create_dataset('sig17align', 'train', argparse.Namespace(dataroot=str(sig17_root),
                                                                              batch_size=2, patch_size=8))
    assert len(defaults) == 1200 * 2


def test_train_crops_reproducible_with_torch_seed(sig17_root):
    def crops(seed):
        ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root))
        torch.manual_seed(seed)
        return [tuple(int(v[0, 0]) for v in decode_ldr(ds[i]['input1'][3:])[:2]) for i in range(6)]

    assert crops(3) == crops(3)
    assert crops(3) != crops(4)


def test_noise_aug_adds_noise_to_the_frames_of_that_share_of_crops_and_leaves_the_labels(sig17_root, monkeypatch):
    def samples(n=8, **kw):
        ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root, **kw))
        torch.manual_seed(5)
        return [ds[i] for i in range(n)]

    plain = samples(sensor_noise_aug=0.0)
    # 0 (the default): the crops are random_crop's alone, from the same stream, no draw taken for noise
    ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root))
    rng = np.random.default_rng(5)
    for i, sample in enumerate(plain):
        name = ds.scenes[i % len(ds.scenes)]
        expected = base_dataset.random_crop(list(ds.ldrs[name]) + [ds.labels[name]], ds.patch_size, rng)
        assert np.array_equal(sample['input1'][3:].permute(1, 2, 0).numpy(), expected[1])
        assert np.array_equal(sample['label'].permute(1, 2, 0).numpy(), expected[3])
    noisy_ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root, sensor_noise_aug=1.0))
    cached = [x.copy() for x in noisy_ds.ldrs[noisy_ds.scenes[0]]]
    torch.manual_seed(5)
    a, b = plain[0], noisy_ds[0]  # the first crop: same position, noisier frames, same label
    assert all(np.array_equal(x, y) for x, y in zip(cached, noisy_ds.ldrs[noisy_ds.scenes[0]]))  # cache untouched
    assert torch.equal(a['label'], b['label']) and torch.equal(a['expo'], b['expo'])
    for i in range(3):
        ldr, hdr = b[f'input{i}'][3:], b[f'input{i}'][:3]
        assert not torch.equal(a[f'input{i}'][3:], ldr) and (a[f'input{i}'][3:] - ldr).abs().mean() < 0.2
        assert ldr.min() >= 0 and ldr.max() <= 1
        assert torch.allclose(hdr, ldr ** 2.2 / (b['expo'][i] + 1e-8), rtol=1e-4, atol=1e-6)
    calls = []
    noise = base_dataset.add_sensor_noise
    monkeypatch.setattr(base_dataset, 'add_sensor_noise', lambda *args: calls.append(args[1:3]) or noise(*args))
    samples(40, sensor_noise_aug=0.5, iters_per_epoch=20)
    assert 8 < len(calls) < 32  # about half the crops
    assert all(1e-4 <= shot <= 1e-2 and 2e-4 <= read <= 1e-2 for shot, read in calls)
    with pytest.raises(SystemExit):
        from options.train_options import TrainOptions
        TrainOptions().parse(['--dataroot', str(sig17_root), '--sensor_noise_aug', '1.5'])


def test_add_sensor_noise_grows_with_shot_and_read_noise():
    rng = np.random.default_rng(0)
    frame = np.full((64, 64, 3), 0.5, np.float32)
    spread = [float(np.std(base_dataset.add_sensor_noise([frame], shot, read, np.random.default_rng(1))[0]))
              for shot, read in ((1e-4, 2e-4), (1e-3, 2e-4), (1e-3, 1e-2))]
    assert spread[0] < spread[1] < spread[2]
    out = base_dataset.add_sensor_noise([frame, np.ones_like(frame)], 1e-2, 1e-2, rng)
    assert out[0].dtype == np.float32 and 0 <= out[0].min() and out[0].max() <= 1
    assert np.array_equal(out[1], np.ones_like(frame))  # saturated stays saturated: a sensor clips after its noise


def test_supervised_label_is_ground_truth(sig17_root):
    ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root, supervised=True))
    torch.manual_seed(0)
    s = ds[1]
    assert (decode_label(s['label'])[2] == K_TRAIN_GT).all()
    assert 'other_label' not in s  # stage 1 / supervised: no structure label


def test_patch_larger_than_image(sig17_root):
    ds = data.create_dataset('sig17align', 'train', make_opt(sig17_root, patch_size=64))
    with pytest.raises(DatasetError, match='patch size 64'):
        ds[0]


# ----------------------------------------------------------------------------------------------
# sig17align: val / test / stage-0 / FSHDR
# ----------------------------------------------------------------------------------------------

def test_val_top_left_crop(sig17_root, monkeypatch):
    opt = make_opt(sig17_root)
    full = data.create_dataset('sig17align', 'val', opt)[0]
    assert full['input0'].shape == (6, H, W)  # smaller than 512: whole image
    monkeypatch.setattr(base_dataset, 'VAL_CROP', 16)
    ds = data.create_dataset('sig17align', 'val', opt)
    assert len(ds) == len(SCENES)
    s = ds[2]
    assert s['fname'] == SCENES[2] and s['input0'].shape == (6, 16, 16) and s['label'].shape == (3, 16, 16)
    y, x, v = decode_ldr(s['input1'][3:])
    assert y[0, 0] == 0 and x[0, 0] == 0 and (v == V_TRAIN + 1).all()
    ly, lx, kind = decode_label(s['label'])
    assert (ly == y).all() and (lx == x).all() and (kind == K_TEST_GT).all()
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 8.0, 64.0])


def test_test_split_full_images(sig17_root):
    ds = data.create_dataset('sig17align', 'test', make_opt(sig17_root))
    assert ds.has_label
    s = ds[0]
    assert s['input2'].shape == (6, H, W) and s['label'].shape == (3, H, W)
    assert (decode_ldr(s['input2'][3:])[2] == V_TRAIN + 2).all()
    assert (decode_label(s['label'])[2] == K_TEST_GT).all()


def test_fshdr_test_reads_test_align(sig17_root):
    ds = data.create_dataset('sig17align', 'test', make_opt(sig17_root, network='FSHDR'))
    s = ds[1]
    for i in range(3):
        assert (decode_ldr(s[f'input{i}'][3:])[2] == V_ALIGN + i).all()
    assert (decode_label(s['label'])[2] == K_TEST_GT).all()
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 8.0, 64.0])  # exposures from Test/
    # and the short and long frames as shot (Test/), for a medium gate that reads the bracket's noise
    assert s['unwarped'].shape == (2, H, W, 3)
    for k, i in enumerate((0, 2)):
        assert (decode_ldr(s['unwarped'][k].permute(2, 0, 1))[2] == V_TRAIN + i).all()
    assert 'unwarped' not in data.create_dataset('sig17align', 'test', make_opt(sig17_root))[1]  # unaligned inputs


def test_fshdr_test_without_the_frames_as_shot_still_runs(sig17_root, tmp_path, caplog):
    """Test/<s> holding only the exposures (its frames removed): the aligned frames still load, with a warning that the
    gate reads the medium frame's noise alone there."""
    import logging

    root = copy_tree(sig17_root, tmp_path)
    scene = root / 'Test' / SCENES[0]
    for frame in scene.glob('*.tif'):
        frame.unlink()
    with caplog.at_level(logging.WARNING):
        ds = data.create_dataset('sig17align', 'test', make_opt(root, network='FSHDR'))
    assert 'unwarped' not in ds[0] and 'unwarped' in ds[1]
    assert str(scene) in caplog.text and 'medium frame' in caplog.text


def test_stage0_inference_reads_training_align_without_label(sig17_root):
    ds = data.create_dataset('sig17align', 'test', make_opt(sig17_root, stage0_inference=True, network='FSHDR'))
    assert ds.has_label is False and len(ds) == len(SCENES)
    s = ds[0]
    assert 'label' not in s and 'other_label' not in s
    assert s['input0'].shape == (6, H, W)
    for i in range(3):
        assert (decode_ldr(s[f'input{i}'][3:])[2] == V_ALIGN + i).all()
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 4.0, 16.0])  # exposures from Training/


# ----------------------------------------------------------------------------------------------
# sig17align: errors
# ----------------------------------------------------------------------------------------------

def test_missing_dataroot_and_folder(sig17_root, tmp_path):
    with pytest.raises(DatasetError, match='dataroot'):
        data.create_dataset('sig17align', 'train', make_opt(tmp_path / 'nothing'))
    root = copy_tree(sig17_root, tmp_path)
    shutil.rmtree(root / 'Training_align')
    with pytest.raises(DatasetError, match='Training_align'):
        data.create_dataset('sig17align', 'train', make_opt(root))
    with pytest.raises(DatasetError, match='stru_lable_path'):
        data.create_dataset('sig17align', 'train', make_opt(sig17_root, stru_lable_path=str(tmp_path / 'none')))


def test_scene_with_wrong_frame_count(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    (root / 'Training' / 'scene_b' / '02.tif').unlink()
    with pytest.raises(DatasetError, match=r'scene_b.*expected 3 frames.*found 2'):
        data.create_dataset('sig17align', 'train', make_opt(root))


def test_wrong_bit_depth(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    path = root / 'Test' / 'scene_a' / '01.tif'
    write_ldr8(path, ldr_image(0))
    with pytest.raises(ImageReadError, match=r'01\.tif.*8-bit.*expected 16-bit'):
        data.create_dataset('sig17align', 'test', make_opt(root))


def test_unreadable_image(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    (root / 'Training' / 'scene_c' / '00.tif').write_bytes(b'not a tiff')
    with pytest.raises(ImageReadError, match=r'scene_c.00\.tif'):
        data.create_dataset('sig17align', 'train', make_opt(root))


def test_missing_label_files(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    (root / 'Test' / 'scene_a' / 'HDRImg.hdr').unlink()
    with pytest.raises(DatasetError, match=r'Test.scene_a.HDRImg\.hdr.*does not exist'):
        data.create_dataset('sig17align', 'test', make_opt(root))
    (root / 'stru' / 'scene_b.hdr').unlink()
    with pytest.raises(DatasetError, match=r'stru.scene_b\.hdr.*does not exist'):
        data.create_dataset('sig17align', 'train', make_opt(root, stru_lable_path=str(root / 'stru')))
    # Without --stru_lable_path (stage 1) the structure labels are not needed.
    assert len(data.create_dataset('sig17align', 'train', make_opt(root)).scenes) == 3
    # test.py --calc_metrics False (brackets without ground truth) does not ask for the test labels
    ds = data.create_dataset('sig17align', 'test', make_opt(root, calc_metrics=False))
    assert ds.has_label is False and len(ds) == 3 and 'label' not in ds[0]


@pytest.mark.parametrize('network, stage0, shot, aligned', [('FSHDR', False, 'Test', 'Test_align'),
                                                            ('AHDRNet', True, 'Training', 'Training_align')])
def test_a_scene_without_its_aligned_copy_is_named(sig17_root, tmp_path, caplog, network, stage0, shot, aligned):
    """A scene of Test (Training) missing from Test_align (Training_align) was silently left out of the scores (the
    structure labels): now an error naming it, or with --lenient_data a warning."""
    import logging

    root = copy_tree(sig17_root, tmp_path)
    shutil.rmtree(root / aligned / SCENES[1])
    with pytest.raises(DatasetError, match=rf'{aligned} lacks the aligned copies of {SCENES[1]} .*prepare_data\.py'):
        data.create_dataset('sig17align', 'test', make_opt(root, network=network, stage0_inference=stage0))
    with caplog.at_level(logging.WARNING):
        ds = data.create_dataset('sig17align', 'test', make_opt(root, network=network, stage0_inference=stage0,
                                                                lenient_data=True))
    assert len(ds) == len(SCENES) - 1 and f'skipped: {SCENES[1]}' in caplog.text
    # --max_dataset_size 1 takes the first scene only, which has its aligned copy: nothing is missing
    ds = data.create_dataset('sig17align', 'test', make_opt(root, network=network, stage0_inference=stage0,
                                                            max_dataset_size=1))
    assert ds.scenes == [SCENES[0]]


def test_size_mismatch(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    write_hdr(root / 'Training_align' / 'scene_a' / 'HDRImg.hdr', label_image(K_TRAIN_ALIGN, H, W - 8))
    with pytest.raises(DatasetError, match=r'Training_align.scene_a.HDRImg\.hdr.*differs'):
        data.create_dataset('sig17align', 'train', make_opt(root))
    write_ldr16(root / 'Test' / 'scene_b' / '02.tif', ldr_image(2, H - 8, W))
    with pytest.raises(DatasetError, match=r'scene_b.02\.tif.*differs'):
        data.create_dataset('sig17align', 'test', make_opt(root))


def test_bad_exposure_file(sig17_root, tmp_path):
    root = copy_tree(sig17_root, tmp_path)
    (root / 'Training' / 'scene_a' / 'exposure.txt').write_text('0\n2\n')
    with pytest.raises(DatasetError, match=r'scene_a.exposure\.txt.*3 exposure values'):
        data.create_dataset('sig17align', 'train', make_opt(root))


# ----------------------------------------------------------------------------------------------
# sen / tursun
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def sen_tursun_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('sen_tursun')
    # Sen: 5 frames (8-bit), stops -2..2 -> middle three 1..3 -> times 2**(v - v_first).
    for s in ('s1', 's2'):
        write_scene(root / 'Scenes' / s, 0, (-2, -1, 0, 1, 2), n=5, bits=8, h=24, w=32, expo_name='exposures.txt')
        write_scene(root / 'Scenes_align' / s, V_ALIGN, h=24, w=32, bits=8)
    # Tursun: 9 frames (.tiff, 16-bit), stops 0..8 -> frames 5, 7, 9 -> 2**4, 2**6, 2**8.
    write_scene(root / 'dataset' / 't1', 0, tuple(range(9)), n=9, ext='.tiff', h=24, w=32)
    write_scene(root / 'dataset_align' / 't1', V_ALIGN, ext='.tiff', h=24, w=32)
    return root


def test_sen_middle_frames_and_normalised_exposures(sen_tursun_root):
    ds = data.create_dataset('sen', 'test', make_opt(sen_tursun_root))
    assert ds.has_label is False and ds.scenes == ['s1', 's2']
    s = ds[0]
    assert set(s) == {'input0', 'input1', 'input2', 'expo', 'fname'}
    assert s['input0'].shape == (6, 24, 32) and s['input0'].dtype == torch.float32
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 2.0, 4.0])
    # 8-bit frames, variants i % 8 for i = 0..4: the middle three are 1, 2, 3 (read 8-bit: check via ordering)
    means = [float(s[f'input{i}'][3:].mean()) for i in range(3)]
    ref = [float(np.rint(ldr_image(v, 24, 32) * 255).mean() / 255) for v in (1, 2, 3)]
    np.testing.assert_allclose(means, ref, rtol=1e-6)


def test_sen_fshdr_and_train_refused(sen_tursun_root):
    ds = data.create_dataset('sen', 'test', make_opt(sen_tursun_root, network='FSHDR'))
    s = ds[1]
    ref = [float(np.rint(ldr_image(v, 24, 32) * 255).mean() / 255) for v in (V_ALIGN, V_ALIGN + 1, V_ALIGN + 2)]
    np.testing.assert_allclose([float(s[f'input{i}'][3:].mean()) for i in range(3)], ref, rtol=1e-6)
    np.testing.assert_allclose(s['expo'].numpy(), [1.0, 2.0, 4.0])
    for split in ('train', 'val'):
        with pytest.raises(DatasetError, match="only the 'test' split"):
            data.create_dataset('sen', split, make_opt(sen_tursun_root))


def test_tursun_frames_5_7_9(sen_tursun_root):
    ds = data.create_dataset('tursun', 'test', make_opt(sen_tursun_root))
    assert ds.has_label is False and len(ds) == 1
    s = ds[0]
    assert 'label' not in s and s['fname'] == 't1'
    for i, frame in enumerate((5, 7, 9)):
        assert (decode_ldr(s[f'input{i}'][3:], w=32)[2] == (frame - 1) % 8).all()
    np.testing.assert_allclose(s['expo'].numpy(), [2.0 ** 4, 2.0 ** 6, 2.0 ** 8])
    fs = data.create_dataset('tursun', 'test', make_opt(sen_tursun_root, network='FSHDR'))[0]
    for i in range(3):
        assert (decode_ldr(fs[f'input{i}'][3:], w=32)[2] == V_ALIGN + i).all()
    for k, frame in enumerate((5, 9)):  # the short and long as shot: those of the unaligned choice
        assert (decode_ldr(fs['unwarped'][k].permute(2, 0, 1), w=32)[2] == (frame - 1) % 8).all()
    with pytest.raises(DatasetError, match="only the 'test' split"):
        data.create_dataset('tursun', 'train', make_opt(sen_tursun_root))


def test_tursun_too_few_frames(sen_tursun_root, tmp_path):
    root = copy_tree(sen_tursun_root, tmp_path)
    (root / 'dataset' / 't1' / '08.tiff').unlink()
    with pytest.raises(DatasetError, match='t1'):
        data.create_dataset('tursun', 'test', make_opt(root))
