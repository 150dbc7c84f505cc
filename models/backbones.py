"""The one table of what each backbone is and needs. Adding a backbone = its file + one row here.

Everything that depends on the backbone reads this table: the registry (`models.networks`), the options (test-time
padding, crop checks, the aligned-input flag the data sets read), `test.py`, `tools/merge_brackets.py` and
`tools/study.py`. It imports nothing, so every layer may read it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    name: str            # the release's --network value
    module: str          # where the class lives (imported lazily: one backbone's import cost is paid alone)
    cls: str
    pad_multiple: int    # test inputs are reflection-padded to a multiple of this (the release's `chop`); 0: none
    crop_multiple: int   # training crops must be a multiple of this (window size)
    aligned_input: bool  # the network takes flow-aligned frames, at test time too (FSHDR)
    # Peak memory of one inference forward per input pixel in bytes, (fp32, bf16 autocast): what --tile auto budgets
    # with (util.tiling.choose_tile). Measured by bench/infer_memory.py (bench/results/infer_memory.json); the bf16
    # figure covers channels_last too (--channels_last auto on AMX; measured within these figures: AHDRNet 2658, FSHDR
    # 4356 bytes in infer_memory_channels_last_no_phases_amx_f6_m167.json, the transformers in
    # infer_memory_channels_last_amx_f6_m167.json); a row without a measurement gets a cautious figure.
    infer_bytes_per_pixel: tuple[int, int] = (16384, 16384)


BACKBONES = {b.name: b for b in (
    Backbone('AHDRNet', 'models.ahdrnet', 'AHDR', pad_multiple=0, crop_multiple=1, aligned_input=False,
             infer_bytes_per_pixel=(5701, 3720)),
    Backbone('FSHDR', 'models.fshdr', 'FSHDR', pad_multiple=0, crop_multiple=1, aligned_input=True,
             infer_bytes_per_pixel=(10331, 5496)),
    Backbone('HDR-Transformer', 'models.hdr_transformer', 'HDRTransformer', pad_multiple=8, crop_multiple=8,
             aligned_input=False, infer_bytes_per_pixel=(6443, 6387)),
    Backbone('SCTNet', 'models.sctnet', 'SCTNet', pad_multiple=8, crop_multiple=8, aligned_input=False,
             infer_bytes_per_pixel=(9638, 6957)),
)}


class _LiveNames(Sequence):
    """The names of the table's rows (those `keep` accepts), read from `BACKBONES` at every use.

    Consumers hold this object rather than a copy of the names, so a row added at run time (a test's toy
    backbone) is seen everywhere, argparse's `choices` included. Compares equal to the tuple of the names.
    """

    def __init__(self, keep=None):
        self._keep = keep

    def _names(self):
        return tuple(name for name, row in BACKBONES.items() if self._keep is None or self._keep(row))

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self):
        return len(BACKBONES) if self._keep is None else len(self._names())

    def __contains__(self, name):
        return name in self._names()

    def __eq__(self, other):
        return self._names() == (other._names() if isinstance(other, _LiveNames) else other)

    __hash__ = None

    def __repr__(self):
        return repr(self._names())


NAMES = _LiveNames()  # the --network choices
PADDED_NAMES = _LiveNames(lambda row: row.pad_multiple > 0)  # test inputs padded (the release's `chop`)


def backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"Unknown --network '{name}'; available: {', '.join(BACKBONES)}")
    return BACKBONES[name]
