"""The package layers hold: lower layers never import higher ones (checked on the source with ast), so library
code can be used without the entry points, and a backbone file can be read on its own."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ('util', 'data', 'models', 'options', 'photo', 'tools', 'bench', 'tests', 'train', 'test')
# layer -> top-level packages/modules of this project it must not import
FORBIDDEN = {
    'util': {'models', 'data', 'options', 'photo', 'tools', 'bench', 'tests', 'train', 'test'},
    'data': {'models', 'options', 'photo', 'tools', 'bench', 'tests', 'train', 'test'},
    'models': {'data', 'options', 'photo', 'tools', 'bench', 'tests', 'train', 'test'},
    'options': {'photo', 'tools', 'bench', 'tests', 'train', 'test'},
    # the bracket pipeline: a library over util, models and data; training runs through the entry points,
    # which only tools/adapt.py calls
    'photo': {'options', 'tools', 'bench', 'tests', 'train', 'test'},
}
BACKBONES = ('ahdrnet', 'fshdr', 'hdr_transformer', 'sctnet')
# the pure layer modules: nn.Module/autograd code shared by backbones, importing no project module at all
LAYER_MODULES = ('polyphase', 'transformer_layers')
LAYER_ALLOWED = {'torch', 'timm', 'math', 'logging', 'functools', 'collections', 'typing', '__future__'}
# what a backbone file may import: the above and the pure layer modules
BACKBONE_ALLOWED = LAYER_ALLOWED | {f'models.{name}' for name in LAYER_MODULES}


def imported_modules(path):
    """Absolute module names imported anywhere in the file (function-level imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = '.'.join(path.relative_to(ROOT).with_suffix('').parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
                names += [module] if node.module else [f'{module}.{a.name}' for a in node.names]
            else:
                names.append(node.module)
    return names


def files_of(layer):
    return sorted((ROOT / layer).glob('*.py'))


@pytest.mark.parametrize('layer', sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer):
    bad = []
    for path in files_of(layer):
        for name in imported_modules(path):
            if name.split('.')[0] in FORBIDDEN[layer]:
                bad.append(f'{path.relative_to(ROOT)} imports {name}')
    assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('backbone', BACKBONES)
def test_backbone_files_import_only_torch_and_layer_modules(backbone):
    path = ROOT / 'models' / f'{backbone}.py'
    bad = [n for n in imported_modules(path)
           if n not in BACKBONE_ALLOWED and n.split('.')[0] not in BACKBONE_ALLOWED]
    assert not bad, f'{path.name} imports {bad}'


@pytest.mark.parametrize('module', LAYER_MODULES)
def test_layer_modules_import_only_torch(module):
    path = ROOT / 'models' / f'{module}.py'
    bad = [n for n in imported_modules(path) if n.split('.')[0] not in LAYER_ALLOWED]
    assert not bad, f'{path.name} imports {bad}'


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = ROOT / 'models'
    probe = pkg / '_layer_probe_tmp.py'
    probe.write_text('from . import networks\n\ndef f():\n    from options.base_options import str2bool\n')
    try:
        names = imported_modules(probe)
    finally:
        probe.unlink()
    assert 'models.networks' in names and 'options.base_options' in names


def test_the_bracket_pipeline_lives_in_photo_and_the_tools_are_thin():
    """merge_brackets and adapt are command lines over photo/: no library code of their own, no tool imports another."""
    for tool in ('merge_brackets', 'adapt'):
        path = ROOT / 'tools' / f'{tool}.py'
        names = imported_modules(path)
        assert any(n.startswith('photo.') for n in names), f'{tool}.py does not use photo/'
        assert not [n for n in names if n.startswith('tools')], f'{tool}.py imports another tool'
        defs = [n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]
        assert not set(defs) & {'merge', 'load_bracket', 'write_outputs', 'find_brackets', 'prepare_bracket'}, defs
