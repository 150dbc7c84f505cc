"""Supervised baseline: the same backbones trained on real ground truth with the mu-law L1 loss."""
from . import networks
from .hdr_common import HDRBackboneModel


class SupervisedModel(HDRBackboneModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        # Tells the data set to use Training/*/HDRImg.hdr (ground truth) as the label.
        parser.set_defaults(supervised=True)
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ['L1', 'Total']
        self.loss_L1 = self.loss_Total = None
        if self.isTrain:
            self.criterionL1 = networks.L1MuLoss()

    def compute_losses(self):
        if self.label is None:
            raise ValueError('the supervised model needs ground truth as `label`')
        self.loss_L1 = self.criterionL1(self.data_out.float(), self.label)
        self.loss_Total = self.loss_L1
        return self.loss_Total
