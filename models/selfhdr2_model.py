"""Stage 2 of SelfHDR: the reconstruction network, trained from scratch.

Supervised by the colour component (`label`, masked where it disagrees with the structure component) and by the
structure component (`other_label`, the stage-1 output on aligned frames) through a VGG19 perceptual loss. The
medium LDR gets Gaussian noise (sigma 0.5/255) in training.
"""
import torch

from util.colour import EPS_T, GAMMA
from util.flags import str2bool
from . import networks
from .hdr_common import HDRBackboneModel

COLOUR_THRESHOLD = 10 / 255  # the release's
CLIPPED_LEVEL = 0.95  # a medium-frame LDR value above this is taken as clipped


def colour_mask(colour_label, structure_label, threshold=COLOUR_THRESHOLD):
    """1 where the mu-law colour and structure components agree within `threshold` (channel mean)."""
    diff = (networks.mu_tonemap(colour_label) - networks.mu_tonemap(structure_label)).abs()
    return (diff.mean(dim=1, keepdim=True) < threshold).float()


def clipped_mask(ldr_mid, level=CLIPPED_LEVEL):
    """1 where the medium LDR frame is clipped in some channel."""
    return (ldr_mid.amax(dim=1, keepdim=True) > level).float()


class SelfHDR2Model(HDRBackboneModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument('--noise', type=str, default='gauss0.5',
                            help="training noise on the medium LDR: 'gauss<sigma*255>' or 'none'")
        parser.add_argument('--stru_loss', type=str, default='vgg', choices=('vgg', 'none'),
                            help="structure loss against the stage-1 output: 'vgg' (the method) or 'none' (ablation)")
        parser.add_argument('--colour_threshold', type=float, default=10,
                            help='L_color is kept where the mu-law colour and structure components differ by less '
                                 'than this many 1/255 (channel mean); 10 is the release, the small-budget recipe '
                                 'widens it because its structure network is weaker (README, "Study")')
        parser.add_argument('--colour_keep_clipped', type=str2bool, default=False,
                            help='also keep L_color wherever the medium frame is clipped (a channel above 0.95): '
                                 'there only the short frame knows the radiance, and the colour component carries '
                                 'it (round-3 recipe; the release: False)')
        parser.add_argument('--colour_skip_clipped', type=str2bool, default=False,
                            help='leave L_color out wherever the medium frame is clipped: there the colour component '
                                 'is the short frame alone, the noisiest of the bracket, which a model that already '
                                 'beats its labels can only copy (tools/adapt.py turns it on; the release: False)')
        parser.add_argument('--vgg_rgb', type=str2bool, default=False,
                            help='flip BGR to RGB before the VGG (the release does not: known flaw 4)')
        return parser

    def __init__(self, opt, vgg_features=None):
        super().__init__(opt)
        self.visual_names = ['data_out', 'label', 'other_label']
        self.loss_names = ['Color', 'Stru', 'Total']
        self.loss_Color = self.loss_Stru = self.loss_Total = None
        self.use_stru_loss = getattr(opt, 'stru_loss', 'vgg') == 'vgg'
        self.colour_threshold = getattr(opt, 'colour_threshold', 10) / 255
        self.colour_keep_clipped = bool(getattr(opt, 'colour_keep_clipped', False))
        self.colour_skip_clipped = bool(getattr(opt, 'colour_skip_clipped', False))
        if self.colour_keep_clipped and self.colour_skip_clipped:
            raise ValueError('--colour_keep_clipped and --colour_skip_clipped contradict each other: choose one')
        if not self.colour_threshold > 0:  # NaN too
            raise ValueError(f'--colour_threshold must be positive, got {opt.colour_threshold}')
        self.augment_noise = None
        if self.isTrain:
            self.criterionL1 = networks.L1MuLoss()
        if self.isTrain and self.use_stru_loss:
            if vgg_features is None:
                vgg_features = networks.build_vgg19_features(opt.vgg_weights, opt.vgg_path)
            self.criterionVGG = networks.VGGLoss(vgg_features, rgb=getattr(opt, 'vgg_rgb', False)).to(self.device)
        if self.isTrain:
            noise = getattr(opt, 'noise', 'gauss0.5')
            self.augment_noise = None if noise == 'none' else networks.AugmentNoise(noise, rank=getattr(opt, 'rank', 0))

    def on_epoch_start(self, epoch, iters_per_epoch):
        if self.augment_noise is not None:
            # the release's global noise counter, as if training had never stopped
            self.augment_noise.calls = (epoch - 1) * iters_per_epoch

    def network_inputs(self):
        if not (self.netSelfHDR.training and self.isTrain and self.augment_noise is not None):
            return self.input0, self.input1, self.input2
        # Noise on the medium LDR only; its linear half is recomputed from the noisy LDR.
        ldr = self.input1[:, 3:]
        noise = self.augment_noise(ldr.shape).to(ldr.device)
        noisy_ldr = (ldr + noise).clamp(0, 1)
        t_mid = self.expo[:, 1].view(-1, 1, 1, 1).to(ldr.dtype)
        # the release's linearisation, in the batch's dtype (ldr_to_hdr_torch computes in fp32/fp64)
        noisy = torch.cat([noisy_ldr ** GAMMA / (t_mid + EPS_T), noisy_ldr], dim=1)
        noisy = noisy.contiguous(memory_format=self.memory_format)
        return self.input0, noisy, self.input2

    def compute_losses(self):
        if self.label is None or self.other_label is None:
            raise ValueError('stage 2 needs `label` (colour) and `other_label` (structure, --stru_lable_path)')
        out = self.data_out.float()
        mask = colour_mask(self.label, self.other_label, self.colour_threshold)
        if self.colour_keep_clipped:
            mask = torch.maximum(mask, clipped_mask(self.input1[:, 3:6]))
        if self.colour_skip_clipped:
            mask = mask * (1.0 - clipped_mask(self.input1[:, 3:6]))
        self.loss_Color = self.criterionL1(out, self.label, mask)
        self.loss_Stru = self.criterionVGG(out, self.other_label) if self.use_stru_loss else out.new_zeros(())
        self.loss_Total = self.loss_Color + self.loss_Stru
        return self.loss_Total

