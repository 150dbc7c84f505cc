"""AHDRNet: attention-guided network for ghost-free HDR imaging (Yan et al., CVPR 2019), as SelfHDR uses it.

Attribute names and registration order are the checkpoint keys of the release; do not rename them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class make_dilation_dense(nn.Module):
    """One dense layer: a dilated 3x3 conv whose ReLU output is appended to its input."""

    def __init__(self, nChannels, growthRate, kernel_size=3):
        super().__init__()
        self.conv = nn.Conv2d(nChannels, growthRate, kernel_size=kernel_size,
                              padding=(kernel_size - 1) // 2 + 1, bias=True, dilation=2)

    def forward(self, x):
        return torch.cat((x, F.relu(self.conv(x))), 1)  # (N, C + G, H, W)


class DRDB(nn.Module):
    """Dilated residual dense block."""

    def __init__(self, nChannels, nDenselayer, growthRate):
        super().__init__()
        layers = []
        channels = nChannels
        for _ in range(nDenselayer):
            layers.append(make_dilation_dense(channels, growthRate))
            channels += growthRate
        self.dense_layers = nn.Sequential(*layers)
        self.conv_1x1 = nn.Conv2d(channels, nChannels, kernel_size=1, padding=0, bias=True)

    def forward(self, x):
        return self.conv_1x1(self.dense_layers(x)) + x


class AHDR(nn.Module):
    def __init__(self, nChannel=6, nDenselayer=5, nFeat=64, growthRate=32):
        super().__init__()
        self.nChannel = nChannel
        self.nDenselayer = nDenselayer
        self.nFeat = nFeat
        self.growthRate = growthRate

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
        self.relu = nn.LeakyReLU()

    def forward(self, x1, x2, x3):
        # The shared stem runs once on the three frames stacked along the batch axis.
        n = x1.shape[0]
        feats = self.relu(self.conv1(torch.cat((x1, x2, x3), 0)))  # (3N, F, H, W)
        f1, f2, f3 = feats[:n], feats[n:2 * n], feats[2 * n:]
        a1 = torch.sigmoid(self.att12(self.relu(self.att11(torch.cat((f1, f2), 1)))))
        a3 = torch.sigmoid(self.att32(self.relu(self.att31(torch.cat((f3, f2), 1)))))
        f0 = self.conv2(torch.cat((f1 * a1, f2, f3 * a3), 1))  # (N, F, H, W)
        r1 = self.RDB1(f0)
        r2 = self.RDB2(r1)
        r3 = self.RDB3(r2)
        g = self.GFF_3x3(self.GFF_1x1(torch.cat((r1, r2, r3), 1))) + f2
        return torch.sigmoid(self.conv3(self.conv_up(g)))
