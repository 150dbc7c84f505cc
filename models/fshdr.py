"""FSHDR backbone: three-stream CNN with multi-dilation (SDC) fusion blocks for multi-exposure HDR.

The network of Prabhakar et al., "Labeled from Unlabeled: Exploiting Unlabeled Data for Few-shot
Deep HDR Deghosting", CVPR 2021. Used by SelfHDR (Zhang et al., "Self-Supervised High Dynamic
Range Imaging with Multi-Exposure Images in Dynamic Scenes", ICLR 2024) as the backbone
`--network FSHDR` (official class `FSHDR`). Written from `shared/specs/fshdr.md`; the state_dict
matches the release key for key.

Speed notes (results equal the plain formulation up to float32 rounding):
* on CPU and for even H, W in NCHW, the dilation-2 SDC convolutions run as plain 3x3 convolutions on
  the 2x2 polyphase components stacked along the batch axis (oneDNN's backward pass for dilated
  convolutions is slower there; in channels_last it is not);
* activations run in place on fresh convolution outputs, which their backward never reads;
* feature maps are released at their last use (inference memory).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.polyphase import from_phases, is_channels_last, to_phases


def dilated_conv_by_phases(x, conv):
    """`conv(x)` for a 3x3, stride-1 `conv` with padding == dilation. On CPU, a dilation-2 conv on an
    even-sized x runs as a plain 3x3 conv on the 2x2 polyphase components (same sums)."""
    h, w = x.shape[-2:]
    # measured on CPU (oneDNN) only: a gain for dilation 2; none for dilation 3, whose phases need padding
    if conv.dilation[0] != 2 or x.device.type != 'cpu' or h % 2 or w % 2 or is_channels_last(x):
        return conv(x)
    y = F.conv2d(to_phases(x, 2), conv.weight, conv.bias, padding=1)  # (4N, F, H/2, W/2)
    return from_phases(y, x.shape[0], 2)  # (N, F, H, W)


class SDC(nn.Module):
    """Three parallel 3x3 convolutions (dilation 1, 2, 3) on one input, LeakyReLU(0.3), concatenated."""

    def __init__(self, nChannels=192, nFeatures=64):
        super().__init__()
        self.nChannels = nChannels
        self.nFeatures = nFeatures
        self.conv1 = nn.Conv2d(nChannels, nFeatures, kernel_size=3, stride=1, padding=1, dilation=1, bias=True)
        self.relu1 = nn.LeakyReLU(negative_slope=0.3, inplace=False)
        self.conv2 = nn.Conv2d(nChannels, nFeatures, kernel_size=3, stride=1, padding=2, dilation=2, bias=True)
        self.relu2 = nn.LeakyReLU(negative_slope=0.3, inplace=False)
        self.conv3 = nn.Conv2d(nChannels, nFeatures, kernel_size=3, stride=1, padding=3, dilation=3, bias=True)
        self.relu3 = nn.LeakyReLU(negative_slope=0.3, inplace=False)

    def forward(self, x):
        """(N, nChannels, H, W) -> (N, 3 * nFeatures, H, W)."""
        out = [F.leaky_relu(dilated_conv_by_phases(x, conv), relu.negative_slope, inplace=True)
               for conv, relu in ((self.conv1, self.relu1), (self.conv2, self.relu2), (self.conv3, self.relu3))]
        return torch.cat(out, 1)


class FSHDR(nn.Module):
    """FSHDR. forward(x1, x2, x3) takes (N, 6, H, W) tensors [HDR_i, LDR_i] for the short,
    reference and long exposures and returns the HDR estimate (N, 3, H, W) in (0, 1).
    Any N and any H, W >= 1 work.
    """

    def __init__(self, nChannel=6):
        super().__init__()
        self.nChannel = nChannel
        self.nFeat = 64  # hard-coded in the release
        nf = self.nFeat

        def conv(c_in):
            return nn.Conv2d(c_in, nf, kernel_size=3, stride=1, padding=1, bias=True)

        def lrelu():
            return nn.LeakyReLU(negative_slope=0.2, inplace=True)

        # registration order = state_dict order = seeded-init order (spec section 2)
        self.conv1, self.relu1 = conv(nChannel), lrelu()
        self.conv2, self.relu2 = conv(nChannel), lrelu()
        self.conv3, self.relu3 = conv(nChannel), lrelu()
        self.conv4, self.relu4 = conv(nf * 2), lrelu()
        self.conv5, self.relu5 = conv(nf * 2), lrelu()
        self.conv6, self.relu6 = conv(nf), lrelu()
        self.conv7, self.relu7 = conv(nf), lrelu()
        self.conv8, self.relu8 = conv(nf), lrelu()
        self.conv9, self.relu9 = conv(nf * 3), lrelu()
        self.conv10, self.relu10 = conv(nf * 3), lrelu()
        self.conv11, self.relu11 = conv(nf), lrelu()
        self.conv12, self.relu12 = conv(nf), lrelu()
        self.conv13, self.relu13 = conv(nf), lrelu()
        self.conv14, self.relu14 = conv(nf * 3), lrelu()
        self.conv15, self.relu15 = conv(nf * 3), lrelu()
        self.sdc1 = SDC(nf * 3, nf)
        self.sdc2 = SDC(nf * 6, nf)
        self.conv16 = nn.Conv2d(nf * 9, 3, kernel_size=3, stride=1, padding=1, bias=True)

    def forward(self, x1, x2, x3):
        if not (x1.dim() == 4 and x1.shape[1] == self.nChannel and x1.shape == x2.shape == x3.shape):
            raise ValueError(
                f'models/fshdr.py FSHDR: expected three (N, {self.nChannel}, H, W) tensors of one shape, '
                f'got {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(x3.shape)}')
        # the in-place 0.2-slope activations always act on a fresh conv output; `del` drops each feature map at its
        # last use, which lowers peak inference memory (autograd keeps what backward needs either way)
        a1 = self.relu1(self.conv1(x1))
        a2 = self.relu2(self.conv2(x2))
        a3 = self.relu3(self.conv3(x3))
        s1 = self.relu4(self.conv4(torch.cat((a1, a2), 1)))
        s2 = self.relu5(self.conv5(torch.cat((a2, a3), 1)))
        b1 = self.relu6(self.conv6(a1))
        b2 = self.relu7(self.conv7(a2))
        b3 = self.relu8(self.conv8(a3))
        del a1, a2, a3
        s1 = self.relu9(self.conv9(torch.cat((b1, b2, s1), 1)))
        s2 = self.relu10(self.conv10(torch.cat((b2, b3, s2), 1)))
        c1 = self.relu11(self.conv11(b1))
        c2 = self.relu12(self.conv12(b2))
        c3 = self.relu13(self.conv13(b3))
        del b1, b2, b3
        s1 = self.relu14(self.conv14(torch.cat((c1, c2, s1), 1)))
        s2 = self.relu15(self.conv15(torch.cat((c2, c3, s2), 1)))
        del c1, c3

        x = torch.cat((c2, s1, s2), 1)  # (N, 3F, H, W)
        del c2, s1, s2
        d1 = self.sdc1(x)  # (N, 3F, H, W)
        d2 = self.sdc2(torch.cat((x, d1), 1))  # (N, 6F, H, W) -> (N, 3F, H, W)
        return torch.sigmoid_(self.conv16(torch.cat((x, d1, d2), 1)))
