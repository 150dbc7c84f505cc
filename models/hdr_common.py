"""What the SelfHDR models share: one backbone (`netSelfHDR`), its optimizer, batches and the test forward."""
import torch

from . import networks
from .base_model import BaseModel, NonFiniteLossError


class HDRBackboneModel(BaseModel):
    """Builds the chosen backbone exactly as the release does (seeded constructor, no re-initialisation by default)
    and trains it with the losses a subclass defines in `compute_losses()`."""

    def __init__(self, opt):
        super().__init__(opt)
        self.model_names = ['SelfHDR']
        self.visual_names = ['data_out', 'label']
        self.data_out = None
        self.label = None
        self.other_label = None
        self.fname = None
        net = networks.define_network(opt.network)
        net = net.to(memory_format=self.memory_format)
        net = networks.init_net(net, opt.init_type, opt.init_gain, self.gpu_ids)
        if getattr(opt, 'distributed', False):
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        self.netSelfHDR = net
        if self.isTrain:
            self.optimizer_names = [opt.optimizer]
            optimizer = networks.get_optimizer(opt, self.netSelfHDR.parameters())
            setattr(self, 'optimizer_' + opt.optimizer, optimizer)
            self.optimizers = [optimizer]

    @property
    def optimizer(self):
        return self.optimizers[0]

    def set_input(self, input):
        self.input0 = self.to_device(input['input0'])
        self.input1 = self.to_device(input['input1'])
        self.input2 = self.to_device(input['input2'])
        self.expo = input['expo'].to(self.device)
        self.label = self.to_device(input['label']) if 'label' in input else None
        self.other_label = self.to_device(input['other_label']) if 'other_label' in input else None
        self.fname = input.get('fname')

    def network_inputs(self):
        return self.input0, self.input1, self.input2

    def forward(self):
        inputs = self.network_inputs()
        if self.netSelfHDR.training:
            with self.autocast():
                self.data_out = self.netSelfHDR(*inputs)
        else:
            self.data_out = self.run_network(self.netSelfHDR, *inputs)

    def compute_losses(self):
        """Set every `loss_<name>` and return the total to back-propagate."""
        raise NotImplementedError

    def optimize_parameters(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.forward()
        total = self.compute_losses()
        if not torch.isfinite(total.detach()).all():
            values = ', '.join(f'{n}={float(getattr(self, "loss_" + n).detach()):.4g}' for n in self.loss_names)
            raise NonFiniteLossError(f'non-finite loss ({values})')
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
