"""Data sets and data loaders.

``--dataset_name foo`` selects the class in ``data/foo_dataset.py`` whose lower-cased name is
``foodataset`` (e.g. ``sig17align`` -> ``Sig17AlignDataset``) and that subclasses
:class:`data.base_dataset.BaseDataset`.

To add a data set ``foo``: write ``data/foo_dataset.py`` with ``class FooDataset(BaseDataset)``
whose ``__init__(self, opt, split, dataset_name)`` calls ``super().__init__``, sets
``self.scenes`` and ``self.has_label``, and calls ``self.cache_scenes(...)`` with the three LDR
paths, the exposure times and the optional label paths of each scene; the base class reads,
caches, crops and builds the samples. Optional flags go in its static
``modify_commandline_options(parser, is_train)``.
"""
from __future__ import annotations

import glob
import importlib
import os

import torch

from data.base_dataset import BaseDataset

__all__ = ['available_datasets', 'find_dataset_using_name', 'get_option_setter', 'create_dataset',
           'create_dataloader']


def available_datasets() -> list[str]:
    folder = os.path.dirname(os.path.abspath(__file__))
    return sorted(os.path.basename(p)[:-len('_dataset.py')] for p in glob.glob(os.path.join(folder, '*_dataset.py'))
                  if os.path.basename(p) != 'base_dataset.py')


def find_dataset_using_name(dataset_name: str):
    """``'sig17align'`` -> class ``Sig17AlignDataset`` from ``data/sig17align_dataset.py``."""
    names = available_datasets()
    if dataset_name not in names:
        raise ValueError(f"Unknown --dataset_name '{dataset_name}'; available: {', '.join(names)}")
    module = importlib.import_module(f'data.{dataset_name}_dataset')
    target = dataset_name.replace('_', '').lower() + 'dataset'
    for name, cls in vars(module).items():
        if name.lower() == target and isinstance(cls, type) and issubclass(cls, BaseDataset):
            return cls
    raise ValueError(f"data/{dataset_name}_dataset.py has no BaseDataset subclass named like '{target}'")


def get_option_setter(dataset_name: str):
    """The data set class's static ``modify_commandline_options(parser, is_train)``."""
    return find_dataset_using_name(dataset_name).modify_commandline_options


def create_dataset(dataset_name: str, split: str, opt) -> BaseDataset:
    """Instantiate ``dataset_name`` for ``split`` ('train', 'val' or 'test')."""
    return find_dataset_using_name(dataset_name)(opt, split, dataset_name)


def create_dataloader(dataset, opt, split: str, sampler=None) -> torch.utils.data.DataLoader:
    """Training: ``opt.batch_size``, ``opt.shuffle``, ``opt.drop_last``; val/test: batch 1, in order.

    ``opt.num_dataloader`` worker processes (persistent when > 0). With a ``sampler`` (DDP) the
    sampler decides the order, so no ``shuffle`` argument is passed.
    """
    workers = int(getattr(opt, 'num_dataloader', 0))
    kwargs = {'num_workers': workers, 'persistent_workers': workers > 0}
    if split == 'train':
        kwargs.update(batch_size=int(opt.batch_size), drop_last=bool(opt.drop_last))
        if sampler is None:
            kwargs['shuffle'] = bool(opt.shuffle)
    else:
        kwargs.update(batch_size=1, drop_last=False)
        if sampler is None:
            kwargs['shuffle'] = False
    if sampler is not None:
        kwargs['sampler'] = sampler
    return torch.utils.data.DataLoader(dataset, **kwargs)
