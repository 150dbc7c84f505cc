"""The deterministic parameter fill of shared/specs/README.md section 2, shared by the backbones' self-check tests."""
import math

import torch


def selfcheck_fill(net):
    """Deterministic parameter fill of shared/specs/README.md section 2."""
    with torch.no_grad():
        for k, (name, p) in enumerate(net.named_parameters()):
            v = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + k), dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(v / math.sqrt(p.numel() / p.shape[0]))
            elif name.endswith(('norm.weight', 'norm1.weight', 'norm2.weight', 'body.weight')):
                p.copy_(1 + 0.1 * v)
            else:
                p.copy_(0.1 * v)
    return net
