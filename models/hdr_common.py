"""What the SelfHDR models share: one backbone (`netSelfHDR`), its optimizer, batches and the test forward."""
import functools
import inspect

import torch

from . import networks
from .base_model import BaseModel, NonFiniteLossError


def ddp_buffer_options():
    """No buffer broadcast at every forward: the transformers' buffers (masks, position indices) are constants,
    36.6/48.8 MB per step for HDR-Transformer/SCTNet, and the broadcast would also start in a forward that one rank
    makes alone. Buffers are still made equal at construction. torch >= 2.14 names it forward_sync_buffers."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {'forward_sync_buffers': False} if 'forward_sync_buffers' in params else {'broadcast_buffers': False}


def _restride(shape, stride, grad):
    if grad.stride() == stride:
        return grad
    if all(g == s for g, s, n in zip(grad.stride(), stride, shape) if n > 1):
        return grad.as_strided(shape, stride)  # the same memory order: only size-1 dimensions' strides differ
    return torch.empty_strided(shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def keep_grad_layout(net):
    """Hand DDP gradients with their parameters' strides. Under autocast, the gradients of 1x1 convolution weights
    (SCTNet's channel attention) come back with other strides on their size-1 dimensions; DDP then copies them into
    its buckets at every step and warns "Grad strides do not match bucket view strides". Restrided as views here."""
    for param in net.parameters():
        if param.requires_grad and 1 in param.shape:
            param.register_hook(functools.partial(_restride, tuple(param.shape), param.stride()))


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
        # the layout after the initialisation: nn.init fills tensors in memory order (orthogonal_ needs NCHW views)
        net = networks.init_net(net, opt.init_type, opt.init_gain, self.gpu_ids)
        net = net.to(memory_format=self.memory_format)
        if getattr(opt, 'distributed', False):
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            keep_grad_layout(net)
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids, **ddp_buffer_options())
        self.netSelfHDR = net
        if self.isTrain:
            self.optimizer_names = [opt.optimizer]
            optimizer = networks.get_optimizer(opt, self.netSelfHDR.parameters())
            setattr(self, 'optimizer_' + opt.optimizer, optimizer)
            self.optimizers = [optimizer]

    @property
    def optimizer(self):
        return self.optimizers[0]

    def load_networks(self, epoch, from_run=False):
        """As BaseModel's; when testing, the backbone is followed by the checkpoint's medium gate if it has one
        (--medium_gate auto; models/medium_gate.py). Training loads and trains the backbone alone."""
        from .medium_gate import GatedNetwork, with_gate

        if isinstance(self.netSelfHDR, GatedNetwork):  # test.py loads each --load_iter epoch in turn: the last one's
            self.netSelfHDR = self.netSelfHDR.backbone  # gate goes (its backbone keeps its compile wrapper)
        super().load_networks(epoch, from_run)
        if not self.isTrain:
            path = self.opt.load_path or self.network_path('SelfHDR', epoch)
            self.netSelfHDR = with_gate(self.netSelfHDR, path, getattr(self.opt, 'medium_gate', 'auto'),
                                        network=getattr(self.opt, 'network', None))

    def compile_networks(self):
        """--compile: the backbone only, also behind a medium gate (the gate's noise map is NumPy, which would
        break the graph, and the gate is small)."""
        from .base_model import CompiledOrEager, compile_network
        from .medium_gate import GatedNetwork

        if isinstance(self.netSelfHDR, GatedNetwork):
            if not isinstance(self.netSelfHDR.backbone, CompiledOrEager):
                self.netSelfHDR.backbone = compile_network(self.netSelfHDR.backbone, 'netSelfHDR')
            return
        super().compile_networks()

    def set_input(self, input):
        self.input0 = self.to_device(input['input0'])
        self.input1 = self.to_device(input['input1'])
        self.input2 = self.to_device(input['input2'])
        self.expo = input['expo'].to(self.device)
        self.label = self.to_device(input['label']) if 'label' in input else None
        self.other_label = self.to_device(input['other_label']) if 'other_label' in input else None
        self.fname = input.get('fname')
        self.unwarped = input.get('unwarped')  # (N, 2, H, W, 3) short and long as shot, where the inputs are aligned

    def output_problem(self):
        """The network must give a finite output on the last training batch (clean medium frame, eval mode, no
        gradient, no random draw, so a resumed run replays exactly); else what is wrong, naming the batch's scenes."""
        if getattr(self, 'input0', None) is None:
            return None
        net = networks.unwrap(self.netSelfHDR)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), self.autocast():
                out = net(self.input0, self.input1, self.input2)
        finally:
            net.train(was_training)
        if torch.isfinite(out).all():
            return None
        largest = max((float(p.detach().abs().max()) for p in net.parameters()), default=0.0)
        return (f'the weights are finite (largest {largest:.3g}) but give a NaN/Inf output on the last batch '
                f'(scenes {self.batch_scenes()}): training diverged (a learning rate too high?)')

    def batch_scenes(self):
        """The scene names of the current batch, as one string."""
        names = self.fname if isinstance(self.fname, (list, tuple)) else [self.fname]
        return ', '.join(dict.fromkeys(str(n) for n in names)) if self.fname is not None else '(unnamed)'

    def diagnose_non_finite(self):
        """Which of the batch's tensors or the network's weights hold NaN/Inf, or else that the output overflowed."""
        bad_inputs = [name for name in ('input0', 'input1', 'input2', 'label', 'other_label')
                      if getattr(self, name, None) is not None and not torch.isfinite(getattr(self, name)).all()]
        net = networks.unwrap(self.netSelfHDR)
        bad_weights = [name for name, p in net.named_parameters() if not torch.isfinite(p.detach()).all()]
        parts = []
        if bad_inputs:
            parts.append(f'non-finite inputs: {", ".join(bad_inputs)}')
        if bad_weights:
            parts.append(f'non-finite weights: {", ".join(bad_weights[:4])}'
                         + (f' ... ({len(bad_weights)} in all)' if len(bad_weights) > 4 else ''))
        if parts:
            return '; '.join(parts)
        out = self.data_out
        if out is not None and not torch.isfinite(out.detach()).all():
            largest = max(float(p.detach().abs().max()) for p in net.parameters())
            return (f'inputs and weights are finite, the network output is not (largest weight {largest:.3g}: '
                    'a learning rate too high for this run?)')
        return 'inputs, weights and output are finite: the loss itself overflowed (labels too large?)'

    def network_inputs(self):
        return self.input0, self.input1, self.input2

    def forward(self):
        inputs = self.network_inputs()
        if self.netSelfHDR.training:
            with self.autocast():
                self.data_out = self.netSelfHDR(*inputs)
        else:
            # Evaluation runs on rank 0 alone (train.validate): not through DDP, whose forward may start collectives.
            from .medium_gate import bracket_noise

            net = networks.without_ddp(self.netSelfHDR)
            with bracket_noise(net, self.unwarped_frames(net)):
                self.data_out = self.run_network(net, *inputs)

    def unwarped_frames(self, net):
        """The bracket's short and long frames as shot (H x W x 3 arrays) for a medium gate that reads their noise, for
        a batch of one: those the data set gave beside aligned inputs, or the inputs themselves for a backbone that
        takes unaligned frames; else None (the gate reads the medium frame alone)."""
        from .backbones import backbone
        from .medium_gate import reads_bracket_noise

        if not reads_bracket_noise(net) or len(self.input1) != 1:
            return None
        frames = getattr(self, 'unwarped', None)
        if frames is not None:
            return [f.numpy() for f in frames[0]]
        if backbone(self.opt.network).aligned_input:
            return None
        return [x[0, 3:6].float().permute(1, 2, 0).cpu().numpy() for x in (self.input0, self.input2)]

    def compute_losses(self):
        """Set every `loss_<name>` and return the total to back-propagate."""
        raise NotImplementedError

    def optimize_parameters(self):
        self.optimizer.zero_grad(set_to_none=True)
        self.forward()
        total = self.compute_losses()
        # The backward is queued before the loss is read back (the step's one host sync), so that a GPU is not left
        # idle while the host launches it; a non-finite loss still stops the step before the optimizer moves.
        self.scaler.scale(total).backward()
        if not torch.isfinite(total.detach()).all():
            values = ', '.join(f'{n}={float(getattr(self, "loss_" + n).detach()):.4g}' for n in self.loss_names)
            raise NonFiniteLossError(f'non-finite loss ({values}) on the batch of scenes {self.batch_scenes()}; '
                                     f'{self.diagnose_non_finite()}')
        self.scaler.step(self.optimizer)
        self.scaler.update()
