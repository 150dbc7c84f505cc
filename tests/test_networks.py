"""Backbone registry, weight initialisation, optimisers and the five learning-rate policies."""
import argparse

import pytest
import torch

from models import networks


def sched_opt(**kw):
    base = dict(lr_policy='step', niter=10, niter_decay=0, lr_decay_iters=3, lr=1e-4, optimizer='Adam',
                beta1=0.9, beta2=0.999, weight_decay=0, momentum=0, alpha=0.99)
    base.update(kw)
    return argparse.Namespace(**base)


def lrs(policy, epochs, **kw):
    opt = sched_opt(lr_policy=policy, **kw)
    optimizer = networks.get_optimizer(opt, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = networks.get_scheduler(optimizer, opt)
    values = [optimizer.param_groups[0]['lr']]
    for epoch in range(1, epochs + 1):
        if policy == 'cosine_warmup':
            scheduler.step(epoch)
        else:
            scheduler.step()
        values.append(optimizer.param_groups[0]['lr'])
    return values


def test_registry_names_and_errors():
    assert set(networks.NETWORKS) == {'AHDRNet', 'FSHDR', 'HDR-Transformer', 'SCTNet'}
    assert networks.get_network_class('AHDRNet').__name__ == 'AHDR'
    with pytest.raises(ValueError, match='available: AHDRNet'):
        networks.get_network_class('ahdr')


def test_step_policy_halves_every_lr_decay_iters():
    values = lrs('step', 7, lr_decay_iters=3)
    assert values == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 5e-5, 2.5e-5, 2.5e-5])


def test_linear_policy():
    values = lrs('linear', 6, niter=2, niter_decay=4)
    assert values == pytest.approx([1e-4, 1e-4, 1e-4, 7.5e-5, 5e-5, 2.5e-5, 0.0])


def test_cosine_policies():
    values = lrs('cosine', 10, niter=10)
    assert values[0] == pytest.approx(1e-4) and values[10] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(values, values[1:]))
    warm = lrs('cosine_warmup', 6, niter=10)
    assert warm[0] == pytest.approx(1e-5)  # warm-up starts at 1e-5 and rises over 4 epochs
    assert warm[1] > warm[0] and warm[4] > warm[6]


def test_plateau_policy_reduces_after_patience():
    opt = sched_opt(lr_policy='plateau')
    optimizer = networks.get_optimizer(opt, [torch.nn.Parameter(torch.zeros(1))])
    scheduler = networks.get_scheduler(optimizer, opt)
    for _ in range(7):
        scheduler.step(1.0)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(2e-5)


def test_unknown_policy_and_optimizer():
    with pytest.raises(ValueError):
        lrs('exp', 1)
    with pytest.raises(ValueError):
        networks.get_optimizer(sched_opt(optimizer='LBFGS'), [torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize('name', ['SGD', 'RMSprop', 'Adam'])
def test_optimizers(name):
    optimizer = networks.get_optimizer(sched_opt(optimizer=name), [torch.nn.Parameter(torch.zeros(1))])
    assert type(optimizer).__name__ == name


def test_init_types():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    before = [p.clone() for p in net.parameters()]
    networks.init_weights(net, 'default')
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    for init_type in ('normal', 'xavier', 'kaiming', 'orthogonal', 'uniform'):
        networks.init_weights(net, init_type, 0.02)
        assert torch.count_nonzero(net[0].bias) == 0
        assert not torch.equal(net[0].weight, before[0])
    networks.init_weights(net, 'uniform', 0.02)
    assert net[0].weight.abs().max() <= 0.02
    with pytest.raises(ValueError):
        networks.init_weights(net, 'zeros')


def test_unwrap_removes_wrappers():
    net = torch.nn.Conv2d(1, 1, 1)
    assert networks.unwrap(torch.nn.DataParallel(net)) is net
