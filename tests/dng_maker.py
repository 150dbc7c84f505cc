"""Minimal hand-built DNG files for the tests (tifffile + DNG tags; no camera needed).

``write_dng(path, linear_bgr, ...)`` mosaics a linear BGR image in [0, 1] into an RGGB Bayer pattern of 12-bit
values (white level 4095, black 0), with an identity-to-sRGB colour matrix (the camera *is* linear sRGB), the
given as-shot neutral (white balance) and ``ExposureTime`` (seconds as a (num, den) pair; None to leave it out).
LibRaw refuses tiny frames, so keep them at least 32 x 48.
"""
import numpy as np
import tifffile

WHITE = 4095
XYZ_TO_SRGB = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]


def _srational(values, den=10000):
    out = []
    for v in np.ravel(values):
        out += [int(round(v * den)), den]
    return out


def mosaic(linear_bgr: np.ndarray, neutral=(1.0, 1.0, 1.0)) -> np.ndarray:
    """RGGB Bayer mosaic of 12-bit codes; channel c is scaled by the camera's neutral (as a real sensor's is)."""
    rgb = linear_bgr[:, :, ::-1] * np.asarray(neutral, dtype=np.float64)
    cfa = np.empty(rgb.shape[:2])
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return np.clip(np.rint(cfa * WHITE), 0, WHITE).astype(np.uint16)


def write_dng(path, linear_bgr: np.ndarray, exposure=(1, 50), neutral=(1.0, 1.0, 1.0), iso=None):
    cfa = mosaic(linear_bgr, neutral)
    tags = [(254, 'I', 1, 0, True),                      # NewSubfileType: main image
            (271, 's', 0, 'TestMake', True), (272, 's', 0, 'TestModel', True),
            (33421, 'H', 2, (2, 2), True),               # CFARepeatPatternDim
            (33422, 'B', 4, (0, 1, 1, 2), True),         # CFAPattern: R G / G B
            (50706, 'B', 4, (1, 4, 0, 0), True),         # DNGVersion
            (50707, 'B', 4, (1, 1, 0, 0), True),         # DNGBackwardVersion
            (50708, 's', 0, 'Test Cam', True),           # UniqueCameraModel
            (50714, 'H', 1, (0,), True),                 # BlackLevel
            (50717, 'H', 1, (WHITE,), True),             # WhiteLevel
            (50721, '2i', 9, _srational(XYZ_TO_SRGB), True),  # ColorMatrix1 (XYZ -> camera)
            (50728, '2I', 3, _srational(neutral), True),      # AsShotNeutral
            (50778, 'H', 1, (21,), True)]                # CalibrationIlluminant1: D65
    if exposure is not None:
        tags.append((33434, '2I', 1, tuple(exposure), True))  # ExposureTime
    if iso is not None:
        tags.append((34855, 'H', 1, (int(iso),), True))       # ISOSpeedRatings
    tifffile.imwrite(str(path), cfa, photometric=32803, extratags=tags, metadata=None)
    return path
