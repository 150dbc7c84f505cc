"""Stage 1 of SelfHDR: the structure-focused network.

Trained on unaligned frames against the colour component Y_color (`label`): a masked expansion term where Y_color
agrees with the reference, and a structure-preserving term that keeps well-exposed reference content.
"""
from . import networks
from .hdr_common import HDRBackboneModel

EXPANSION_THRESHOLD = 5 / 255


def reference_weights(ref_ldr):
    """Per channel: 2x for x < 0.5, else 2 - 2x (trust in the medium exposure)."""
    return (ref_ldr < 0.5) * (2 * ref_ldr) + (ref_ldr >= 0.5) * (2 - 2 * ref_ldr)


def expansion_mask(colour_label, ref_hdr, weights):
    """1 where the weighted mu-law colour label agrees with the reference within 5/255 (channel mean)."""
    diff = (networks.mu_tonemap(colour_label) * weights - networks.mu_tonemap(ref_hdr) * weights).abs()
    return (diff.mean(dim=1, keepdim=True) < EXPANSION_THRESHOLD).float()


class SelfHDR1Model(HDRBackboneModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ['StruExpan', 'StruPrese', 'Total']
        self.loss_StruExpan = self.loss_StruPrese = self.loss_Total = None
        if self.isTrain:
            self.criterionL1 = networks.L1MuLoss()

    def compute_losses(self):
        if self.label is None:
            raise ValueError('stage 1 needs the colour component as `label` in every training batch')
        out = self.data_out.float()
        ref_hdr, ref_ldr = self.input1[:, :3], self.input1[:, 3:]
        in_mask = reference_weights(ref_ldr)
        label_mask = expansion_mask(self.label, ref_hdr, in_mask)
        self.loss_StruExpan = self.criterionL1(out, self.label, label_mask)
        self.loss_StruPrese = 4 * self.criterionL1(out, ref_hdr, in_mask)
        self.loss_Total = self.loss_StruExpan + self.loss_StruPrese
        return self.loss_Total
