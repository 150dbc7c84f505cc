"""Image quality metrics for HDR reconstruction, as pure functions.

Inputs are float32 NumPy arrays ``H x W x 3`` (BGR) or ``H x W``, **linear radiance in [0, 1]**
(the networks' sigmoid range, and the range of the Kalantari labels). Every metric returns a
Python ``float``. Shapes must match exactly (``ValueError`` otherwise).

* :func:`psnr` (``data_range`` 1), :func:`psnr_l` (linear), :func:`psnr_mu` (on the mu-law ``T``).
* :func:`ssim`, :func:`ssim_l`, :func:`ssim_mu`: method.md "Evaluation protocol": images scaled by
  255 and clipped to [0, 255]; 11 x 11 Gaussian window, sigma 1.5, applied separably with
  'valid' support (the 5-pixel border is dropped); ``C1 = (0.01*255)**2``,
  ``C2 = (0.03*255)**2``; mean of the SSIM map per channel, then mean over channels.
  Computed once (the release computed the same value three times).
* :func:`pu21_encode`, :func:`pu21_psnr`, :func:`pu21_ssim`: PU21 (Mantiuk & Azimi 2021,
  'banding_glare' parameters). The relative radiance is turned into absolute luminance by
  ``peak`` (cd/m^2, default 1000: an HDR display whose white is 1.0), see :func:`pu21_encode`.
* Optional, imported lazily: :func:`cvvdp_score` (``cvvdp`` PyPI package) and :func:`lpips_score`
  (``lpips`` package plus locally cached torchvision backbone weights). Each raises
  ``ImportError``/``RuntimeError`` with a message saying what is missing.
"""
from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from util.tonemap import mu_law

logger = logging.getLogger(__name__)

__all__ = ['psnr', 'psnr_l', 'psnr_mu', 'ssim', 'ssim_l', 'ssim_mu', 'gaussian_window',
           'PU21_PARAMS', 'PU21_L_MIN', 'PU21_L_MAX', 'pu21_encode', 'pu21_psnr', 'pu21_ssim',
           'cvvdp_score', 'lpips_score', 'colour_error_deg']

SSIM_WIN = 11
SSIM_SIGMA = 1.5


def _pair(a, b, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f'{name}: shapes differ: {a.shape} vs {b.shape}')
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f'{name}: expected H x W or H x W x C arrays, got shape {a.shape}')
    for what, x in (('prediction', a), ('ground truth', b)):
        if not np.isfinite(x).all():
            raise ValueError(f'{name}: the {what} holds {int((~np.isfinite(x)).sum())} NaN/Inf values')
    return a, b


# ---------------------------------------------------------------------------------------------
# colour
# ---------------------------------------------------------------------------------------------

def colour_angles_deg(pred, gt, mask=None) -> np.ndarray:
    """The angle in degrees between the RGB vectors of ``pred`` and ``gt`` (H x W x 3, linear) at each pixel of
    ``mask`` (H x W bool; all pixels when None) where both are non-zero, as a flat array."""
    a, b = _pair(pred, gt, 'colour_error_deg')
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f'colour_error_deg: expected H x W x 3 arrays, got shape {a.shape}')
    a = a.reshape(-1, 3).astype(np.float64)
    b = b.reshape(-1, 3).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    keep = (na > 0) & (nb > 0)
    if mask is not None:
        keep &= np.asarray(mask, bool).reshape(-1)
    cos = np.clip((a[keep] * b[keep]).sum(1) / (na[keep] * nb[keep]), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def colour_error_deg(pred, gt, mask=None) -> float:
    """Mean angle in degrees between the RGB vectors of ``pred`` and ``gt`` (H x W x 3, linear), over the
    pixels of ``mask`` (H x W bool; all pixels when None) where both are non-zero. Independent of brightness,
    so it measures hue and saturation errors only; 0 for identical colours."""
    angles = colour_angles_deg(pred, gt, mask)
    return float(angles.mean()) if angles.size else float('nan')


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------

def psnr(a, b, data_range: float = 1.0) -> float:
    """``10 log10(data_range**2 / MSE)``; identical inputs give ``inf``. MSE accumulated in float64."""
    a, b = _pair(a, b, 'psnr')
    with np.errstate(over='ignore'):
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    if not math.isfinite(mse):  # e.g. radiance beyond float32 range turned inf by a tone curve
        raise ValueError(f'psnr: the mean squared error is {mse} (values beyond the float range; '
                         f'largest magnitudes {float(np.abs(a).max()):.3g} and {float(np.abs(b).max()):.3g})')
    return 10.0 * math.log10(data_range * data_range / mse)


def psnr_l(pred, gt) -> float:
    """PSNR on linear radiance in [0, 1] (data range 1)."""
    return psnr(pred, gt, 1.0)


def psnr_mu(pred, gt) -> float:
    """PSNR on the mu-law tone-mapped images ``T(pred)``, ``T(gt)`` (data range 1)."""
    _pair(pred, gt, 'psnr_mu')
    with np.errstate(invalid='ignore', over='ignore'):
        tp, tg = mu_law(pred), mu_law(gt)
    for what, t in (('prediction', tp), ('ground truth', tg)):
        if not np.isfinite(t).all():
            raise ValueError(f'psnr_mu: the mu-law of the {what} is not finite at {int((~np.isfinite(t)).sum())} '
                             'values (radiance below -1/5000 or beyond the float32 range)')
    return psnr(tp, tg, 1.0)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------

def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian (float64); its outer product is MATLAB's ``fspecial('gaussian')``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    # 'valid' filtering: filter with any border mode, then keep only the pixels whose window lies
    # entirely inside the image, so the border mode never enters the result.
    r = (len(g) - 1) // 2
    out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return out[r:x.shape[0] - r, r:x.shape[1] - r]


def _ssim_channel(x: np.ndarray, y: np.ndarray, c1: float, c2: float, g: np.ndarray) -> float:
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    mu_x2, mu_y2, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_x2 = _filter_valid(x * x, g) - mu_x2
    sigma_y2 = _filter_valid(y * y, g) - mu_y2
    sigma_xy = _filter_valid(x * y, g) - mu_xy
    ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_x2 + mu_y2 + c1) * (sigma_x2 + sigma_y2 + c2))
    return float(ssim_map.mean())


def _ssim_core(a: np.ndarray, b: np.ndarray, data_range: float, name: str) -> float:
    """Gaussian 'valid' SSIM of images already in units of ``data_range`` (no clipping here)."""
    if a.shape[0] < SSIM_WIN or a.shape[1] < SSIM_WIN:
        raise ValueError(f'{name}: images of {a.shape[0]} x {a.shape[1]} are smaller than the '
                         f'{SSIM_WIN} x {SSIM_WIN} SSIM window')
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    g = gaussian_window()
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.ndim == 2:
        return _ssim_channel(a, b, c1, c2, g)
    values = [_ssim_channel(np.ascontiguousarray(a[:, :, c]), np.ascontiguousarray(b[:, :, c]), c1, c2, g)
              for c in range(a.shape[2])]
    return float(np.mean(values))


def ssim(a, b) -> float:
    """SSIM of two [0, 1] images as method.md defines it (x255, clip to [0, 255], valid Gaussian)."""
    a, b = _pair(a, b, 'ssim')
    a = np.clip(a.astype(np.float64) * 255.0, 0.0, 255.0)
    b = np.clip(b.astype(np.float64) * 255.0, 0.0, 255.0)
    return _ssim_core(a, b, 255.0, 'ssim')


def ssim_l(pred, gt) -> float:
    """SSIM on linear radiance in [0, 1]."""
    return ssim(pred, gt)


def ssim_mu(pred, gt) -> float:
    """SSIM on the mu-law tone-mapped images."""
    _pair(pred, gt, 'ssim_mu')
    return ssim(mu_law(pred), mu_law(gt))


# ---------------------------------------------------------------------------------------------
# PU21
# ---------------------------------------------------------------------------------------------

# Mantiuk & Azimi, "PU21: A novel perceptually uniform encoding for adapting existing quality
# metrics for HDR", PCS 2021; the 'banding_glare' fit (p1..p7) and its valid luminance range.
PU21_PARAMS = (0.353487901, 0.3734658629, 8.277049286e-05, 0.9062562627, 0.09150303166,
               0.9099517204, 596.3148142)
PU21_L_MIN = 0.005   # cd/m^2
PU21_L_MAX = 10000.0  # cd/m^2
# PU21 was fitted so that 100 cd/m^2 (SDR white) encodes to about 256, like 8-bit sRGB code
# values; PU-PSNR/PU-SSIM therefore use 256 as their data range (our choice, documented).
PU21_DATA_RANGE = 256.0


def pu21_encode(x, peak: float = 1000.0) -> np.ndarray:
    """PU21 code values of linear radiance ``x`` (relative, 1.0 = display peak).

    ``Y = clip(x * peak, 0.005, 10000)`` cd/m^2, then
    ``V = max(p7 * (((p1 + p2 Y^p4) / (1 + p3 Y^p4)) ** p5 - p6), 0)``.
    ``peak`` (cd/m^2) states which absolute luminance the radiance 1.0 stands for: the SelfHDR
    images are relative, so this is a viewing assumption (default 1000 cd/m^2, an HDR display).
    Colour channels are encoded independently. Returns float64.
    """
    if peak <= 0:
        raise ValueError(f'pu21_encode: peak must be > 0 cd/m^2, got {peak}')
    p1, p2, p3, p4, p5, p6, p7 = PU21_PARAMS
    y = np.clip(np.asarray(x, dtype=np.float64) * peak, PU21_L_MIN, PU21_L_MAX)
    yp = y ** p4
    return np.maximum(p7 * (((p1 + p2 * yp) / (1.0 + p3 * yp)) ** p5 - p6), 0.0)


def pu21_psnr(pred, gt, peak: float = 1000.0) -> float:
    """PSNR of the PU21 encodings, data range 256 (PU21 of 100 cd/m^2)."""
    pred, gt = _pair(pred, gt, 'pu21_psnr')
    return psnr(pu21_encode(pred, peak), pu21_encode(gt, peak), PU21_DATA_RANGE)


def pu21_ssim(pred, gt, peak: float = 1000.0) -> float:
    """Gaussian 'valid' SSIM (as :func:`ssim`) of the PU21 encodings, data range 256, unclipped."""
    pred, gt = _pair(pred, gt, 'pu21_ssim')
    return _ssim_core(pu21_encode(pred, peak), pu21_encode(gt, peak), PU21_DATA_RANGE, 'pu21_ssim')


# ---------------------------------------------------------------------------------------------
# Optional metrics (lazy imports)
# ---------------------------------------------------------------------------------------------

# Built models of the optional metrics, reused across calls (building them is slow).
_METRIC_CACHE: dict = {}

def cvvdp_score(pred, gt, display: str = 'standard_hdr_linear', ppd: float | None = None,
                peak: float = 1000.0, device: str = 'cpu') -> float:
    """ColorVideoVDP quality in JOD (10 = identical) through the ``cvvdp`` package.

    ``display`` names a display model shipped with cvvdp. The default 'standard_hdr_linear' is a
    30-inch 4K HDR monitor (peak 1500 cd/m^2, 10 lux, seen from 2 display heights, BT.709
    linear input in absolute cd/m^2); its geometry gives about 75 pixels per degree. ``ppd``
    overrides that geometry's pixels per degree (e.g. about 31.5 for the paper's HDR-VDP
    setting, a 24-inch 1920 x 1080 display seen from 0.5 m). Our radiance is relative, so it is multiplied by ``peak``
    (cd/m^2) and converted BGR -> RGB. Everything it needs ships in the wheel: no network.
    """
    try:
        import pycvvdp  # the 'cvvdp' PyPI package installs the 'pycvvdp' module
    except ImportError as exc:
        raise ImportError('cvvdp_score needs ColorVideoVDP: pip install cvvdp') from exc
    import torch

    pred, gt = _pair(pred, gt, 'cvvdp_score')
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f'cvvdp_score: expected H x W x 3 BGR images, got shape {pred.shape}')
    key = ('cvvdp', display, ppd, pred.shape[:2] if ppd is not None else None, device)
    if key not in _METRIC_CACHE:  # building the metric loads its tables: do it once per setting
        geometry = None
        if ppd is not None:
            geometry = pycvvdp.vvdp_display_geometry((pred.shape[1], pred.shape[0]), ppd=float(ppd))
        _METRIC_CACHE[key] = pycvvdp.cvvdp(display_name=display, display_geometry=geometry, quiet=True,
                                           device=torch.device(device))
    metric = _METRIC_CACHE[key]
    to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x[:, :, ::-1], dtype=np.float32) * np.float32(peak))
    with torch.no_grad():
        q, _stats = metric.predict(to_t(pred), to_t(gt), dim_order='HWC')
    return float(q)


def _lpips_backbone_file(net: str):
    """Path where torchvision caches the backbone weights LPIPS loads, and its URL."""
    import os

    import torch
    import torchvision.models as tvm

    weights = {'alex': tvm.AlexNet_Weights.IMAGENET1K_V1, 'vgg': tvm.VGG16_Weights.IMAGENET1K_V1,
               'squeeze': tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1}
    if net not in weights:
        raise ValueError(f"lpips_score: net must be one of {sorted(weights)}, got {net!r}")
    url = weights[net].url
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(url)), url


def metric_unavailable(name: str) -> str | None:
    """Why the optional metric `name` ('pu21', 'cvvdp', 'lpips') cannot run here, or None: asked before a test run
    starts, so a missing package or weight file is said at once rather than after the first scene."""
    import importlib.util
    import os

    if name == 'cvvdp' and importlib.util.find_spec('pycvvdp') is None:
        return '--extra_metrics cvvdp needs ColorVideoVDP: pip install cvvdp'
    if name == 'lpips':
        if importlib.util.find_spec('lpips') is None:
            return '--extra_metrics lpips needs the lpips package: pip install lpips'
        path, url = _lpips_backbone_file('alex')
        if not os.path.isfile(path):
            return (f'--extra_metrics lpips needs its backbone weights at {path} (from {url}); nothing is downloaded '
                    'at run time')
    return None


def lpips_score(pred, gt, net: str = 'alex', device: str = 'cpu') -> float:
    """LPIPS distance (lower is better) between the mu-law tone-mapped images.

    Needs the ``lpips`` package and the torchvision ImageNet weights of its backbone already in
    the torch hub cache (we never download at run time). Images go in as RGB in [-1, 1].
    """
    import os

    try:
        import lpips
    except ImportError as exc:
        raise ImportError('lpips_score needs the lpips package: pip install lpips') from exc
    import torch

    path, url = _lpips_backbone_file(net)
    if not os.path.isfile(path):
        raise RuntimeError(f'lpips_score: backbone weights for {net!r} are not available locally; '
                           f'expected {path} (from {url}). Place the file there to enable LPIPS.')
    pred, gt = _pair(pred, gt, 'lpips_score')
    if pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f'lpips_score: expected H x W x 3 BGR images, got shape {pred.shape}')
    key = ('lpips', net, device, path)
    if key not in _METRIC_CACHE:
        _METRIC_CACHE[key] = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    model = _METRIC_CACHE[key]

    def to_t(x):
        rgb = np.clip(mu_law(x), 0.0, 1.0)[:, :, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        return (t * 2 - 1).to(device)

    with torch.no_grad():
        return float(model(to_t(pred), to_t(gt)).item())
