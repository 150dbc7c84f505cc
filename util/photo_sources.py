"""Colourful LDR photographs lifted to linear radiance, as extra sources for the synthetic generator.

The HDR maps we can ship (eight CC0 sky/interior panoramas) hold few saturated colours, so a network trained on
them alone learns their palette rather than colour. These photos come with scikit-image (a dependency; the files
are inside the installed package, nothing is downloaded) and are public domain or CC0:

=========== ======================================== =========================
name        what                                     licence (scikit-image docs)
=========== ======================================== =========================
astronaut   portrait, orange suit, flag              public domain (NASA)
chelsea     cat, warm fur                            CC0 (Stefan van der Walt)
coffee      cup on a red saucer                      CC0 (Rachel Michetti)
rocket      launch pad, blue sky                     public domain (SpaceX)
retina      red fundus photograph                    CC0 (Mikael Haggstrom)
=========== ======================================== =========================

Lifting (documented, not a camera model): the 8-bit sRGB values are decoded with the sRGB curve (IEC 61966-2-1)
to linear light; then highlights are expanded, because an 8-bit photo has clipped its bright end: where the
largest channel ``v`` (sRGB-encoded) exceeds ``EXPAND_START``, radiance is multiplied by
``1 + EXPAND_GAIN * ((v - EXPAND_START) / (1 - EXPAND_START)) ** 2``, a smooth boost of up to
``1 + EXPAND_GAIN`` (3 stops) at white. The generator rescales every source anyway, so only ratios matter.
"""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from util.synthetic import HDRSource

__all__ = ['PHOTOS', 'srgb_to_linear', 'lift_to_radiance', 'load_photo_sources']

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'retina')
_FILES = {'astronaut': 'astronaut.png', 'chelsea': 'chelsea.png', 'coffee': 'coffee.png', 'rocket': 'rocket.jpg',
          'retina': 'retina.jpg'}
EXPAND_START = 0.85
EXPAND_GAIN = 7.0


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 decoding of values in [0, 1]."""
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def lift_to_radiance(srgb01_bgr: np.ndarray) -> np.ndarray:
    """8-bit-style sRGB image in [0, 1] (BGR) -> linear radiance with expanded highlights (float32 BGR)."""
    lin = srgb_to_linear(srgb01_bgr)
    v = srgb01_bgr.max(axis=2, keepdims=True)
    ramp = np.clip((v - EXPAND_START) / (1.0 - EXPAND_START), 0.0, 1.0)
    return (lin * (1.0 + EXPAND_GAIN * ramp ** 2)).astype(np.float32)


def _photo_path(name: str) -> str:
    import skimage

    if name not in _FILES:
        raise ValueError(f'unknown photo source {name!r}; have {", ".join(PHOTOS)}')
    path = os.path.join(os.path.dirname(skimage.__file__), 'data', _FILES[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: scikit-image sample image missing (reinstall scikit-image)')
    return path


def load_photo_sources(names: Sequence[str] = PHOTOS) -> list[HDRSource]:
    """The named scikit-image photos as linear radiance sources (name prefixed with ``photo_``)."""
    sources = []
    for name in names:
        path = _photo_path(name)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f'{path}: cannot read the image')
        sources.append(HDRSource(f'photo_{name}', lift_to_radiance(img.astype(np.float32) / 255.0)))
    return sources
