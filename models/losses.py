"""SelfHDR's losses and training-noise augmentation, reproducing the release's values.

Masked L1 terms take the mean over *all* elements (masked zeros included), as the release trains; they are not
normalised by the mask sum (method.md, known flaw 3, kept on purpose).
"""
import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from util.tonemap import MU, mu_law_torch  # noqa: F401  (MU re-exported)

logger = logging.getLogger(__name__)



# mu-law T(x) = log(1 + 5000 x) / log(5001), the tone map of every loss and of PSNR-mu (one definition, in util)
mu_tonemap = mu_law_torch


def masked_l1(pred, target, mask=None):
    """Element-wise |pred*m - target*m| (the release multiplies before subtracting); no reduction."""
    if mask is not None:
        pred = pred * mask
        target = target * mask
    return (pred - target).abs()


class L1MuLoss(nn.Module):
    """weight * mean |T(pred)*m - T(label)*m| over all elements."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def forward(self, pred, label, mask=None):
        return self.weight * masked_l1(mu_tonemap(pred), mu_tonemap(label), mask).mean()


# Indices of relu3_2, relu4_2 and relu5_2 in torchvision's vgg19().features, with the release's weights.
VGG_LAYERS = {13: 1.0, 22: 1.0, 31: 2.0}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_WEIGHTS_FILE = 'vgg19-dcbb9e9d.pth'


class VGGNotAvailableError(RuntimeError):
    pass


def build_vgg19_features(weights='imagenet', path=''):
    """torchvision VGG19 `features`, from ImageNet weights (cache or `path`) or random weights.

    weights: 'imagenet' (error when no weights file is found), 'auto' (random with a warning when none is found),
    'random'. Nothing is downloaded: this machine class has no network.
    """
    features = _vgg19_features()
    if weights == 'random':
        logger.warning('VGG19 structure loss uses RANDOM weights (--vgg_weights random)')
        return features
    candidates = [path] if path else []
    candidates.append(os.path.join(torch.hub.get_dir(), 'checkpoints', VGG19_WEIGHTS_FILE))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            _load_vgg19_features(features, candidate)
            logger.info('VGG19 ImageNet weights loaded from %s', candidate)
            return features
    if path:
        raise VGGNotAvailableError(f'--vgg_path {path}: file not found')
    message = ('VGG19 ImageNet weights not found (looked in %s). Get them on a machine with internet with '
               '`python -c "import torchvision; torchvision.models.vgg19(weights=\'IMAGENET1K_V1\')"` and copy '
               '%s into that folder, or pass --vgg_path FILE; --vgg_weights auto/random trains with random VGG '
               'weights (for demos only).' % (os.path.dirname(candidates[-1]), VGG19_WEIGHTS_FILE))
    if weights == 'auto':
        logger.warning('!!! %s Falling back to RANDOM VGG19 weights (--vgg_weights auto). !!!', message)
        return features
    raise VGGNotAvailableError(message)


def _vgg19_features():
    """torchvision's VGG19 `features` with torchvision's initialisation scheme, without building the
    120M-parameter classifier (its random init dominates start-up time). The random values differ from
    vgg19(weights=None) for the same seed; ImageNet weights load identically."""
    from torchvision.models import vgg

    features = vgg.make_layers(vgg.cfgs['E'], batch_norm=False)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            nn.init.constant_(module.bias, 0)
    return features


def _load_vgg19_features(features, path):
    """Load the `features.*` entries of a torchvision VGG19 state dict (the classifier is not needed)."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:
        raise VGGNotAvailableError(f'cannot read VGG19 weights {path}: {exc}') from exc
    own = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
    try:
        features.load_state_dict(own, strict=True)
    except RuntimeError as exc:
        raise VGGNotAvailableError(f'{path} is not a torchvision VGG19 state dict: {exc}') from exc


class VGGLoss(nn.Module):
    """Perceptual loss on mu-law images: (L1(relu3_2) + L1(relu4_2) + 2 L1(relu5_2)) / 4, frozen VGG19.

    The release feeds BGR images to the RGB-trained VGG (method.md, known flaw 4); `rgb=True` flips them first.
    """

    def __init__(self, features, weight=1.0, rgb=False):
        super().__init__()
        last = max(VGG_LAYERS)
        self.features = nn.Sequential(*list(features.children())[:last + 1]).eval()
        for param in self.features.parameters():
            param.requires_grad_(False)
        self.weight = weight
        self.rgb = rgb
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        # The feature extractor stays in eval mode whatever the wrapper does.
        super().train(mode)
        self.features.eval()
        return self

    def _taps(self, x):
        if self.rgb:
            x = x.flip(1)
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG_LAYERS:
                taps.append(x)
        return taps

    def forward(self, pred, label):
        pred_taps = self._taps(mu_tonemap(pred))
        with torch.no_grad():
            label_taps = self._taps(mu_tonemap(label))
        total = 0.0
        for (index, layer_weight), p, t in zip(VGG_LAYERS.items(), pred_taps, label_taps):
            total = total + layer_weight * F.l1_loss(p, t)
        return self.weight * total / 4


class AugmentNoise:
    """The release's stage-2 training noise: 'gauss<sigma*255>' (e.g. 'gauss0.5').

    Each call draws from a fresh CPU generator seeded with a call counter (1, 2, 3, ...), independent of
    torch.manual_seed. The release keeps that counter module-global; we keep it per instance (one instance per
    model, so a training run sees the same sequence) and let checkpoints/tests set it. Under DDP every rank would
    draw the same noise for its different crops; rank r > 0 seeds with (counter + r * 0x9E3779B1) mod 2**32 (the CPU
    generator keeps 32 bits of a seed; the odd stride keeps the ranks' seeds apart for billions of steps). Rank 0
    and a single process keep the release's sequence.
    """

    RANK_STRIDE = 0x9E3779B1

    def __init__(self, style='gauss0.5', rank=0):
        if not style.startswith('gauss'):
            raise ValueError(f"AugmentNoise style '{style}' is not supported (only 'gauss<sigma>')")
        self.std = float(style[len('gauss'):]) / 255.0
        self.calls = 0
        self.rank = rank

    def __call__(self, shape):
        self.calls += 1
        generator = torch.Generator('cpu').manual_seed((self.calls + self.rank * self.RANK_STRIDE) % 2 ** 32)
        return torch.normal(0.0, self.std, size=tuple(shape), generator=generator)
