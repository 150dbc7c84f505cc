"""Backbone registry, weight initialisation, optimisers and learning-rate schedules; re-exports the losses."""
import importlib
import logging
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch.nn import init
from torch.optim import lr_scheduler

from . import backbones
from .losses import AugmentNoise, L1MuLoss, VGGLoss, build_vgg19_features, mu_tonemap  # noqa: F401

logger = logging.getLogger(__name__)


class _ModuleView(Mapping):
    """--network name -> (module, class), read from the backbone table at every use (no copy of its names)."""

    def __getitem__(self, name):
        row = backbones.BACKBONES[name]
        return row.module, row.cls

    def __iter__(self):
        return iter(backbones.NAMES)

    def __len__(self):
        return len(backbones.NAMES)


# Live views of the backbone table (models/backbones.py), for callers that want a container.
NETWORKS = _ModuleView()
PADDED_NETWORKS = backbones.PADDED_NAMES


def get_network_class(name):
    row = backbones.backbone(name)  # ValueError naming the available backbones
    return getattr(importlib.import_module(row.module), row.cls)


def define_network(name, **kwargs):
    """Build a backbone by its release name with the release's defaults (no constructor arguments)."""
    return get_network_class(name)(**kwargs)


def init_weights(net, init_type='normal', init_gain=0.02):
    """Re-initialise conv/linear weights; 'default' keeps the constructors' initialisation (the release's setting)."""
    if init_type == 'default':
        return net

    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, 'weight') and m.weight is not None and ('Conv' in classname or 'Linear' in classname):
            if init_type == 'normal':
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == 'xavier':
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == 'kaiming':
                init.kaiming_normal_(m.weight.data, a=0, mode='fan_in')
            elif init_type == 'orthogonal':
                init.orthogonal_(m.weight.data, gain=init_gain)
            elif init_type == 'uniform':
                init.uniform_(m.weight.data, -init_gain, init_gain)
            else:
                raise ValueError(f"init_type '{init_type}' is not implemented")
            if getattr(m, 'bias', None) is not None:
                init.constant_(m.bias.data, 0.0)
        elif 'BatchNorm2d' in classname:
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    net.apply(init_func)
    return net


def init_net(net, init_type='default', init_gain=0.02, gpu_ids=()):
    """Initialise, move to the first GPU in `gpu_ids` and wrap in DataParallel when several are given."""
    init_weights(net, init_type, init_gain)
    if gpu_ids:
        net = net.to(torch.device('cuda', gpu_ids[0]))
        if len(gpu_ids) > 1:
            net = nn.DataParallel(net, gpu_ids)
    return net


def unwrap(net):
    """The bare backbone inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif hasattr(net, '_orig_mod'):
            net = net._orig_mod
        else:
            return net


def without_ddp(net):
    """`net` without its DistributedDataParallel layer (a compiled DDP gives its bare module), for forwards that
    one rank makes alone; other wrappers are kept."""
    if isinstance(net, nn.parallel.DistributedDataParallel):
        return net.module
    inner = getattr(net, '_orig_mod', None)
    if isinstance(inner, nn.parallel.DistributedDataParallel):
        return inner.module
    return net


def get_optimizer(opt, params):
    if opt.optimizer == 'Adam':
        return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, opt.beta2), weight_decay=opt.weight_decay)
    if opt.optimizer == 'SGD':
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.optimizer == 'RMSprop':
        return torch.optim.RMSprop(params, lr=opt.lr, alpha=opt.alpha, momentum=opt.momentum,
                                   weight_decay=opt.weight_decay)
    raise ValueError(f"Unknown --optimizer '{opt.optimizer}' (Adam, SGD, RMSprop)")


def get_scheduler(optimizer, opt):
    """The release's five policies, each stepped once per epoch."""
    if opt.lr_policy == 'linear':
        def lambda_rule(epoch):
            return 1.0 - max(0, epoch - opt.niter) / float(max(1, opt.niter_decay))
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda_rule)
    if opt.lr_policy == 'step':
        return lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=0.5)
    if opt.lr_policy == 'plateau':
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode='min', factor=0.2, threshold=0.01, patience=5)
    if opt.lr_policy == 'cosine':
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.niter, eta_min=1e-5)
    if opt.lr_policy == 'cosine_warmup':
        from timm.scheduler.cosine_lr import CosineLRScheduler
        return CosineLRScheduler(optimizer, t_initial=opt.niter, lr_min=1e-5, warmup_t=4, warmup_lr_init=1e-5)
    raise ValueError(f"learning-rate policy '{opt.lr_policy}' is not implemented")
