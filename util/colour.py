"""Colour component ``Y_color`` (``specs/method.md``, "Colour component Y_color").

Kalantari's triangle weights from the medium LDR value ``x`` (per pixel and channel):

* ``x < 0.5``:  ``w_short = 0``,      ``w_mid = 2x``,     ``w_long = 1 - 2x``
* ``x >= 0.5``: ``w_short = 2x - 1``, ``w_mid = 2 - 2x``, ``w_long = 0``

``Y_color = w_short * H_short + w_mid * H_mid + w_long * H_long`` with ``H = X**2.2 / (t + 1e-8)``
computed from the *aligned* frames. Everything stays float32 (the release ran under NumPy 1, where
dividing a float32 image by a float64 scalar stayed float32).

NumPy functions take H x W x 3 arrays; the ``*_torch`` twins take (N, 3, H, W) tensors and give
the same values.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is only needed by the twins
    import torch

__all__ = [
    'GAMMA', 'EPS_T', 'ldr_to_hdr', 'triangle_weights', 'merge_linear', 'merge_colour_component',
    'ldr_to_hdr_torch', 'triangle_weights_torch', 'merge_linear_torch', 'merge_colour_component_torch',
]

GAMMA = 2.2
EPS_T = 1e-8  # the release adds it to every exposure time


def _as_f32(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in 'fiu':
        raise TypeError(f'{name}: expected a numeric array, got dtype {x.dtype}')
    return x.astype(np.float32, copy=False)


def ldr_to_hdr(x: np.ndarray, t: float) -> np.ndarray:
    """Linearise an LDR image in [0,1]: ``x**2.2 / (t + 1e-8)``, float32."""
    x = _as_f32(x, 'ldr_to_hdr x')
    return np.power(x, np.float32(GAMMA)) / np.float32(float(t) + EPS_T)


def triangle_weights(x_mid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights ``(w_short, w_mid, w_long)`` from the medium LDR value; they sum to 1."""
    x = _as_f32(x_mid, 'triangle_weights x_mid')
    low = x < 0.5
    two_x = np.float32(2.0) * x
    zero = np.zeros_like(x)
    w_short = np.where(low, zero, two_x - np.float32(1.0))
    w_mid = np.where(low, two_x, np.float32(2.0) - two_x)
    w_long = np.where(low, np.float32(1.0) - two_x, zero)
    return w_short, w_mid, w_long


def _check_same_shape(arrays: Sequence, names: Sequence[str]) -> None:
    shapes = [tuple(a.shape) for a in arrays]
    if len(set(shapes)) != 1:
        raise ValueError('shape mismatch: ' + ', '.join(f'{n}={s}' for n, s in zip(names, shapes)))


def merge_linear(h_short: np.ndarray, h_mid: np.ndarray, h_long: np.ndarray, x_mid: np.ndarray) -> np.ndarray:
    """``Y_color`` from already-linear frames and the medium LDR ``x_mid`` (weights source)."""
    arrs = [_as_f32(a, n) for a, n in zip((h_short, h_mid, h_long, x_mid), ('h_short', 'h_mid', 'h_long', 'x_mid'))]
    _check_same_shape(arrs, ('h_short', 'h_mid', 'h_long', 'x_mid'))
    w0, w1, w2 = triangle_weights(arrs[3])
    return w0 * arrs[0] + w1 * arrs[1] + w2 * arrs[2]


def _check_times(times, n_expected: int = 3) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if t.size != n_expected:
        raise ValueError(f'expected {n_expected} exposure times (short, medium, long), got {t.size}')
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f'exposure times must be finite and positive, got {t.tolist()}')
    return t


def merge_colour_component(ldr_short: np.ndarray, ldr_mid: np.ndarray, ldr_long: np.ndarray, times) -> np.ndarray:
    """``Y_color`` (H x W x 3, float32) from three aligned LDR frames in [0,1] and their exposure times."""
    t = _check_times(times)
    frames = [_as_f32(a, n) for a, n in zip((ldr_short, ldr_mid, ldr_long), ('ldr_short', 'ldr_mid', 'ldr_long'))]
    _check_same_shape(frames, ('ldr_short', 'ldr_mid', 'ldr_long'))
    h = [ldr_to_hdr(f, ti) for f, ti in zip(frames, t)]
    return merge_linear(h[0], h[1], h[2], frames[1])


# ----------------------------------------------------------------------------------------------
# torch twins, (N, 3, H, W)
# ----------------------------------------------------------------------------------------------

def _times_tensor(times, ref: 'torch.Tensor') -> 'torch.Tensor':
    """Exposure times as (N, 3, 1, 1)-broadcastable columns: accepts (3,) or (N, 3)."""
    import torch

    t = torch.as_tensor(times, dtype=torch.float64, device=ref.device)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2 or t.shape[1] != 3 or t.shape[0] not in (1, ref.shape[0]):
        raise ValueError(f'times must have shape (3,) or (N, 3) with N={ref.shape[0]}, got {tuple(t.shape)}')
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f'exposure times must be finite and positive, got {t.tolist()}')
    return t


def ldr_to_hdr_torch(x: 'torch.Tensor', t) -> 'torch.Tensor':
    """Torch twin of :func:`ldr_to_hdr`; ``t`` a float or a tensor broadcastable to ``x``."""
    import torch

    denom = torch.as_tensor(t, dtype=torch.float64, device=x.device) + EPS_T
    return x.float().pow(GAMMA) / denom.to(torch.float32)


def triangle_weights_torch(x_mid: 'torch.Tensor'):
    """Torch twin of :func:`triangle_weights`."""
    import torch

    x = x_mid.float()
    low = x < 0.5
    two_x = 2.0 * x
    zero = torch.zeros_like(x)
    w_short = torch.where(low, zero, two_x - 1.0)
    w_mid = torch.where(low, two_x, 2.0 - two_x)
    w_long = torch.where(low, 1.0 - two_x, zero)
    return w_short, w_mid, w_long


def merge_linear_torch(h_short, h_mid, h_long, x_mid):
    """Torch twin of :func:`merge_linear`."""
    _check_same_shape((h_short, h_mid, h_long, x_mid), ('h_short', 'h_mid', 'h_long', 'x_mid'))
    w0, w1, w2 = triangle_weights_torch(x_mid)
    return w0 * h_short.float() + w1 * h_mid.float() + w2 * h_long.float()


def merge_colour_component_torch(ldr_short, ldr_mid, ldr_long, times):
    """Torch twin of :func:`merge_colour_component` on (N, 3, H, W); ``times`` (3,) or (N, 3)."""
    _check_same_shape((ldr_short, ldr_mid, ldr_long), ('ldr_short', 'ldr_mid', 'ldr_long'))
    if ldr_mid.dim() != 4:
        raise ValueError(f'expected (N, 3, H, W) tensors, got shape {tuple(ldr_mid.shape)}')
    t = _times_tensor(times, ldr_mid)  # (N or 1, 3)
    h = [ldr_to_hdr_torch(f, t[:, i].view(-1, 1, 1, 1)) for i, f in enumerate((ldr_short, ldr_mid, ldr_long))]
    return merge_linear_torch(h[0], h[1], h[2], ldr_mid)
