"""Polyphase split and merge: a dilation-d 3x3 convolution as a plain 3x3 convolution on the d x d
components (faster on CPUs, whose dilated kernels are slow in NCHW). Pure torch; shared by AHDRNet and FSHDR."""
import torch


def is_channels_last(x):
    """x is a 4-D tensor laid out channels_last (NHWC) and not also plain contiguous. The polyphase layout pays only
    for NCHW tensors: in NHWC, oneDNN's dilated convolutions are fast (measured on an AMX Xeon, bf16: FSHDR's training
    step 1.22 s with phases, 0.65 s without), and the phases' reshapes would copy between the two layouts."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def to_phases(x, d=2):
    """Split (N, C, H, W), H and W multiples of d, into its d x d polyphase components:
    (d*d*N, C, H/d, W/d).

    Sample n's component (a, b) (rows a::d, columns b::d) lands at batch index (n*d + a)*d + b. A
    3x3 convolution with dilation d and padding d on x equals a 3x3 convolution with padding 1 on
    each component.
    """
    n, c, h, w = x.shape
    x = x.view(n, c, h // d, d, w // d, d)  # (N, C, H/d, a, W/d, b)
    x = x.permute(0, 3, 5, 1, 2, 4)  # (N, a, b, C, H/d, W/d)
    return x.reshape(d * d * n, c, h // d, w // d)  # (d*d*N, C, H/d, W/d), copies once


def from_phases(x, n, d=2):
    """Inverse of `to_phases`: (d*d*N, C, H/d, W/d) -> (N, C, H, W)."""
    _, c, hd, wd = x.shape
    x = x.view(n, d, d, c, hd, wd)  # (N, a, b, C, H/d, W/d)
    x = x.permute(0, 3, 4, 1, 5, 2)  # (N, C, H/d, a, W/d, b)
    return x.reshape(n, c, d * hd, d * wd)  # (N, C, H, W), copies once
