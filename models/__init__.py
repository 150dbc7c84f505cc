"""Models (training logic) and backbones (nn.Modules).

To add a model called `foo`, write `models/foo_model.py` with a class `FooModel(BaseModel)` (the name compared
case-insensitively, underscores ignored) that implements `modify_commandline_options` (optional), `__init__`,
`set_input`, `forward` and `optimize_parameters`, and lists its `loss_names`, `visual_names` and `model_names`;
`--model foo` then selects it. To add a backbone, write an nn.Module file next to the others and add one row for it
to the table in `models/backbones.py` (see ARCHITECTURE.md).
"""
import glob
import importlib
import os

from .base_model import BaseModel


def available_models():
    folder = os.path.dirname(__file__)
    return sorted(os.path.basename(p)[:-len('_model.py')] for p in glob.glob(os.path.join(folder, '*_model.py'))
                  if os.path.basename(p) != 'base_model.py')


def find_model_using_name(model_name):
    """`--model selfhdr2` -> class `SelfHDR2Model` in `models/selfhdr2_model.py`."""
    if model_name not in available_models():
        raise ValueError(f"Unknown --model '{model_name}'; available: {', '.join(available_models())}")
    module = importlib.import_module(f'models.{model_name}_model')
    target = model_name.replace('_', '').lower() + 'model'
    for name, cls in vars(module).items():
        if name.lower() == target and isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls
    raise ValueError(f"models/{model_name}_model.py has no BaseModel subclass named like '{target}'")


def get_option_setter(model_name):
    return find_model_using_name(model_name).modify_commandline_options


def create_model(opt):
    return find_model_using_name(opt.model)(opt)
