"""What the HDR-Transformer and SCTNet tests share (one preamble instead of two): the golden folder (skipped with a
reason when absent), the self-check fixture file, the deterministic parameter fill and inputs of
shared/specs/README.md section 2, random inputs, and the spec's shifted-window mask written literally.

`BACKBONES` names each transformer's class, golden folder and self-check file; tests/test_transformer_backbones.py
runs the checks both share, parametrised over it."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import GOLDEN as GOLDEN_ROOT
from selfcheck import selfcheck_fill  # noqa: F401  (re-exported to the transformer tests)

FIXTURES = Path(__file__).resolve().parent / 'fixtures'


@dataclass(frozen=True)
class TransformerCase:
    name: str              # the --network value
    module: str            # where the class lives
    cls: str
    golden: str            # folder under shared/golden
    selfcheck: str         # file under tests/fixtures
    no_grad_atol: float    # no_grad vs autograd forward (SCTNet takes the same path: exactly equal)

    def build(self, **kwargs):
        import importlib
        return getattr(importlib.import_module(self.module), self.cls)(**kwargs)


BACKBONES = {
    'HDR-Transformer': TransformerCase('HDR-Transformer', 'models.hdr_transformer', 'HDRTransformer', 'HDRTransformer',
                                       'hdr_transformer_selfcheck.json', 1e-6),
    'SCTNet': TransformerCase('SCTNet', 'models.sctnet', 'SCTNet', 'SCTNet', 'sctnet_selfcheck.json', 0.0),
}


def golden_dir(name):
    """shared/golden/<name>, or a skip that says where it was looked for."""
    path = GOLDEN_ROOT / name
    if not path.is_dir():
        pytest.skip(f'golden reference not found at {path} (it sits beside the checkout)')
    return path


def load_selfcheck(filename):
    return json.loads((FIXTURES / filename).read_text())


def selfcheck_inputs(n, h, w):
    """x_j[n, c, h, w] = 0.5 + 0.5 sin(0.11 h (c+1) + 0.07 w + 0.9 j + 0.3 n), in float64 then float32."""
    nn_, c, hh, ww = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in (n, 6, h, w)), indexing='ij')
    return [(0.5 + 0.5 * torch.sin(0.11 * hh * (c + 1) + 0.07 * ww + 0.9 * j + 0.3 * nn_)).float() for j in (1, 2, 3)]


def rand_inputs(n, h, w, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 6, h, w, generator=g, dtype=dtype) for _ in range(3)]


def literal_mask(h, w, m, s):
    """Spec (hdr_transformer.md 4.2): region labels 3*rho(i, H) + rho(j, W), partitioned into windows; -100 across
    regions, 0 within."""
    def rho(t, length):
        return 0 if t < length - m else (1 if t < length - s else 2)
    labels = torch.tensor([[3 * rho(i, h) + rho(j, w) for j in range(w)] for i in range(h)], dtype=torch.float32)
    lab = labels.view(h // m, m, w // m, m).permute(0, 2, 1, 3).reshape(-1, m * m)  # (nW, T)
    return torch.where(lab[:, :, None] == lab[:, None, :], 0.0, -100.0)


def same_to_float32(got, want, ulps=4):
    """Equal dtype, and equal up to a few float32 roundings of the tensor's scale: seeded initialisers draw through
    vectorised kernels (erfinv, Box-Muller) whose last bit differs between AVX2 and AVX-512 CPUs."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if not got.is_floating_point():
        return torch.equal(got, want)
    scale = want.double().abs().max().item()
    return (got.double() - want.double()).abs().max().item() <= ulps * torch.finfo(torch.float32).eps * scale
