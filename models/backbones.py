"""The one table of what each backbone is and needs. Adding a backbone = its file + one row here.

Everything that depends on the backbone reads this table: the registry (`models.networks`), the options (test-time
padding, crop checks, the aligned-input flag the data sets read), `test.py`, `tools/merge_brackets.py` and
`tools/study.py`. It imports nothing, so every layer may read it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    name: str            # the release's --network value
    module: str          # where the class lives (imported lazily: one backbone's import cost is paid alone)
    cls: str
    pad_multiple: int    # test inputs are reflection-padded to a multiple of this (the release's `chop`); 0: none
    crop_multiple: int   # training crops must be a multiple of this (window size)
    aligned_input: bool  # the network takes flow-aligned frames, at test time too (FSHDR)


BACKBONES = {b.name: b for b in (
    Backbone('AHDRNet', 'models.ahdrnet', 'AHDR', pad_multiple=0, crop_multiple=1, aligned_input=False),
    Backbone('FSHDR', 'models.fshdr', 'FSHDR', pad_multiple=0, crop_multiple=1, aligned_input=True),
    Backbone('HDR-Transformer', 'models.hdr_transformer', 'HDRTransformer', pad_multiple=8, crop_multiple=8,
             aligned_input=False),
    Backbone('SCTNet', 'models.sctnet', 'SCTNet', pad_multiple=8, crop_multiple=8, aligned_input=False),
)}
NAMES = tuple(BACKBONES)


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"Unknown --network '{name}'; available: {', '.join(BACKBONES)}")
    return BACKBONES[name]
