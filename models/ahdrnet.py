"""AHDRNet: attention-guided deghosting network for multi-exposure HDR imaging.

Yan et al., "Attention-guided Network for Ghost-free High Dynamic Range Imaging", CVPR 2019.
Used by SelfHDR (Zhang et al., "Self-Supervised High Dynamic Range Imaging with Multi-Exposure
Images in Dynamic Scenes", ICLR 2024) as the backbone `--network AHDRNet` (official class `AHDR`).
Written from `shared/specs/ahdrnet.md`; the state_dict matches the release key for key.

Speed notes (results equal the plain formulation up to float32 rounding):
* the shared `conv1` runs once on the three frames stacked along the batch axis;
* the dilation-2 convolutions of the three DRDBs (about half of all FLOPs) run as plain 3x3
  convolutions on the four 2x2 polyphase components stacked along the batch axis, because oneDNN's
  backward pass for dilated convolutions is markedly slower on CPU. `GFF_1x1` is pointwise, so the
  whole RDB1..GFF_1x1 stretch stays in that layout. Odd H or W, non-CPU devices and channels_last tensors (whose
  dilated kernels are fast) use the dilated convolutions directly (zero rows added to make sizes even would stop
  being zero after the first layer);
* activations run in place on fresh convolution outputs, which their backward never reads.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.polyphase import from_phases, is_channels_last, to_phases


class make_dilation_dense(nn.Module):
    """Dense layer of a DRDB (the release's class name): x -> [x, relu(conv_d2(x))]."""

    def __init__(self, nChannels=64, growthRate=32, kernel_size=3):
        super().__init__()
        # (k - 1) / 2 + 1 = 2 keeps the spatial size for dilation 2
        self.conv = nn.Conv2d(nChannels, growthRate, kernel_size=kernel_size,
                              padding=(kernel_size - 1) // 2 + 1, bias=True, dilation=2)

    def forward(self, x, phased=False):
        """`phased=True`: x is in the `to_phases` layout, where the dilated conv is a plain one."""
        if phased:
            y = F.conv2d(x, self.conv.weight, self.conv.bias, padding=(self.conv.kernel_size[0] - 1) // 2)
        else:
            y = self.conv(x)
        return torch.cat((x, F.relu(y, inplace=True)), 1)


class DRDB(nn.Module):
    """Dilated residual dense block: dense dilated layers, 1x1 fusion, local residual."""

    def __init__(self, nChannels=64, nDenselayer=5, growthRate=32):
        super().__init__()
        self.dense_layers = nn.Sequential(
            *[make_dilation_dense(nChannels + i * growthRate, growthRate) for i in range(nDenselayer)])
        self.conv_1x1 = nn.Conv2d(nChannels + nDenselayer * growthRate, nChannels, kernel_size=1,
                                  padding=0, bias=True)

    def forward(self, x, phased=False):
        """x: (N, C, H, W), or its `to_phases` layout when `phased`; the output has x's layout."""
        z = x
        for layer in self.dense_layers:
            z = layer(z, phased=phased)
        return self.conv_1x1(z).add_(x)


class AHDR(nn.Module):
    """AHDRNet. forward(x1, x2, x3) takes (N, 6, H, W) tensors [HDR_i, LDR_i] for the short,
    reference and long exposures and returns the HDR estimate (N, 3, H, W) in (0, 1).
    Any N and any H, W >= 1 work.
    """

    def __init__(self, nChannel=6, nDenselayer=5, nFeat=64, growthRate=32):
        super().__init__()
        self.nChannel = nChannel
        self.nDenselayer = nDenselayer
        self.nFeat = nFeat
        self.growthRate = growthRate

        # registration order = state_dict order = seeded-init order (spec section 2)
        self.conv1 = nn.Conv2d(nChannel, nFeat, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(nFeat * 3, nFeat, kernel_size=3, padding=1, bias=True)
        self.att11 = nn.Conv2d(nFeat * 2, nFeat * 2, kernel_size=3, padding=1, bias=True)
        self.att12 = nn.Conv2d(nFeat * 2, nFeat, kernel_size=3, padding=1, bias=True)
        self.att31 = nn.Conv2d(nFeat * 2, nFeat * 2, kernel_size=3, padding=1, bias=True)
        self.att32 = nn.Conv2d(nFeat * 2, nFeat, kernel_size=3, padding=1, bias=True)
        self.RDB1 = DRDB(nFeat, nDenselayer, growthRate)
        self.RDB2 = DRDB(nFeat, nDenselayer, growthRate)
        self.RDB3 = DRDB(nFeat, nDenselayer, growthRate)
        self.GFF_1x1 = nn.Conv2d(nFeat * 3, nFeat, kernel_size=1, padding=0, bias=True)
        self.GFF_3x3 = nn.Conv2d(nFeat, nFeat, kernel_size=3, padding=1, bias=True)
        self.conv_up = nn.Conv2d(nFeat, nFeat, kernel_size=3, padding=1, bias=True)
        self.conv3 = nn.Conv2d(nFeat, 3, kernel_size=3, padding=1, bias=True)
        self.relu = nn.LeakyReLU()  # slope 0.01; forward applies the same slope in place

    def _lrelu_(self, x):
        return F.leaky_relu(x, self.relu.negative_slope, inplace=True)

    def forward(self, x1, x2, x3):
        if not (x1.dim() == 4 and x1.shape[1] == self.nChannel and x1.shape == x2.shape == x3.shape):
            raise ValueError(
                f'models/ahdrnet.py AHDR: expected three (N, {self.nChannel}, H, W) tensors of one shape, '
                f'got {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(x3.shape)}')
        n, _, h, w = x1.shape

        # shared shallow features, one conv call for the three frames
        feats = self._lrelu_(self.conv1(torch.cat((x1, x2, x3), 0)))  # (3N, F, H, W)
        f1, f2, f3 = feats.split(n)  # (N, F, H, W) each, contiguous views

        # attention maps for the non-reference frames, computed against the reference f2
        a1 = torch.sigmoid_(self.att12(self._lrelu_(self.att11(torch.cat((f1, f2), 1)))))
        a3 = torch.sigmoid_(self.att32(self._lrelu_(self.att31(torch.cat((f3, f2), 1)))))
        f0 = self.conv2(torch.cat((f1 * a1, f2, f3 * a3), 1))  # (N, F, H, W), no activation

        # the polyphase layout was only measured on CPU (oneDNN), where it pays for NCHW tensors only; other devices
        # and channels_last runs keep the dilated convs
        phased = x1.device.type == 'cpu' and h % 2 == 0 and w % 2 == 0 and not is_channels_last(f0)
        z = to_phases(f0) if phased else f0
        r1 = self.RDB1(z, phased=phased)
        r2 = self.RDB2(r1, phased=phased)
        r3 = self.RDB3(r2, phased=phased)
        g = self.GFF_1x1(torch.cat((r1, r2, r3), 1))  # pointwise, so valid in either layout
        if phased:
            g = from_phases(g, n)  # (N, F, H, W)

        # global residual with the un-attended reference feature
        d = self.GFF_3x3(g).add_(f2)
        return torch.sigmoid_(self.conv3(self.conv_up(d)))
