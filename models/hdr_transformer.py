"""HDR-Transformer backbone: spatial-attention CNN front end + context-aware Swin transformer blocks.

Paper: Z. Liu, Y. Wang, B. Zeng, S. Liu, "Ghost-free High Dynamic Range Imaging with Context-aware
Transformer", ECCV 2022. SelfHDR (ICLR 2024) trains it as `--network HDR-Transformer`.

This is a clean-room implementation of `shared/specs/hdr_transformer.md`. Built with no arguments it has the
release's state_dict (keys, order, shapes, dtypes, persistent buffers) and, after `torch.manual_seed(0)`, the
release's seeded initial values. The window attention, Swin block, layer and trunk are shared with SCTNet
(`models/transformer_layers.py`: token permutations instead of roll + partition, chunked attention with a
hand-written backward). What is HDR-Transformer's own is here: the context-aware block (a Swin block plus the
local context extractor, whose 1x1 convolutions run as matrix products on the token layout), the CTB with its
dilated conv, the spatial attention front end.

Inputs: three (N, 6, H, W) float tensors (short, reference, long exposure; [HDR, LDR] channels); H and W must be
multiples of `window_size`. Output: (N, 3, H, W) in (0, 1) (final sigmoid).
"""
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.transformer_layers import ResidualGroup, SwinTransformerBlock, SwinTrunk, TokenLayerNorm

logger = logging.getLogger(__name__)


def global_average(y):
    """(N, H, W, C) -> (N, C), the mean over the whole image.

    A bf16 map on CPU is summed by one GEMM with a ones vector: torch.mean of a bf16 map on CPU converts it to
    float32 first and reduces at a fraction of the memory bandwidth (512x512x60: 40 ms against 1.4 ms, measured on a
    Zen 4). The GEMM accumulates in float32 and rounds the sum to bf16 once (bf16 has float32's range); the mean is
    rounded to bf16 again, as the next layer would cast it under autocast. Everything else (float32, the releases'
    path; fp16, whose sum would overflow; GPUs) takes torch.mean.
    """
    if y.dtype != torch.bfloat16 or y.device.type != 'cpu':
        return y.mean(dim=(1, 2))
    n, h, w, c = y.shape
    total = torch.bmm(y.new_ones(n, 1, h * w), y.reshape(n, h * w, c))  # (N, 1, C)
    return (total.view(n, c).float() / (h * w)).to(y.dtype)


class LocalContextExtractor(nn.Module):
    """Bottleneck convs + squeeze-excitation over the whole image (the CTB's local context branch)."""

    def __init__(self, dim, reduction=8):
        super().__init__()
        self.reduction = reduction
        self.conv = nn.Sequential(
            nn.Conv2d(dim, dim // reduction, kernel_size=1, padding=0, bias=True),
            nn.Conv2d(dim // reduction, dim // reduction, kernel_size=3, padding=1, bias=True),
            nn.Conv2d(dim // reduction, dim, kernel_size=1, padding=0, bias=True),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.Sigmoid(),
        )

    def _context(self, x):
        """x: (N, C, H, W) -> Q as (N, H, W, C) and the channel gate z (N, C); the output is Q * z."""
        conv0, conv1, conv2, act = self.conv
        # The 1x1 convs are matrix products over channels: run them on the (N, H, W, C) layout directly.
        y = F.linear(x.permute(0, 2, 3, 1), conv0.weight.flatten(1), conv0.bias)  # (N, H, W, r)
        y = conv1(y.permute(0, 3, 1, 2))  # (N, r, H, W)
        y = act(F.linear(y.permute(0, 2, 3, 1), conv2.weight.flatten(1), conv2.bias))  # (N, H, W, C)
        z = self.fc(global_average(y))  # (N, C)
        return y, z

    def forward(self, x):
        """x: (N, C, H, W) -> (N, C, H, W), returned as a channels-last strided view."""
        y, z = self._context(x)
        return (y * z[:, None, None, :]).permute(0, 3, 1, 2)  # (N, C, H, W)

    def add_to_tokens(self, x, residual):
        """residual + lce(x) on tokens: x (N, C, H, W), residual (N, H*W, C) -> (N, H*W, C), one fused pass."""
        y, z = self._context(x)
        n, h, w, c = y.shape
        return torch.addcmul(residual, y.view(n, h * w, c), z.unsqueeze(1))  # (N, L, C)


class ContextAwareTransformer(SwinTransformerBlock):
    """Swin block (optionally shifted windows) plus a local-context branch added after the MLP residual."""

    def __init__(self, dim, input_resolution, num_heads, **kwargs):
        super().__init__(dim, input_resolution, num_heads, **kwargs)
        self.lce = LocalContextExtractor(self.dim)

    def forward(self, x, x_size, plan=None):
        """x: tokens (N, H*W, C); x_size: (H, W); plan: the forward's shared WindowPlan. Returns (N, H*W, C)."""
        self.check_size(x, x_size)
        n, _, c = x.shape
        normed = self.norm1(x)  # (N, L, C)
        lce_input = normed.view(n, x_size[0], x_size[1], c).permute(0, 3, 1, 2)  # (N, C, H, W) view, unshifted
        return self.lce.add_to_tokens(lce_input, self.attention_and_mlp(x, normed, x_size, plan))


class ContextAwareTransformerBlock(ResidualGroup):
    """CTB: six context-aware blocks, a dilated 3x3 conv on the image layout, and a residual."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, **kwargs):
        super().__init__(dim, input_resolution, depth, num_heads, window_size, block_class=ContextAwareTransformer,
                         **kwargs)
        self.dilated_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=2, dilation=2, bias=True)

    def image_conv(self, image):
        return self.dilated_conv(image)


class SpatialAttentionModule(nn.Module):
    """Attention map for a non-reference frame from [frame, reference] features."""

    def __init__(self, dim):
        super().__init__()
        self.att1 = nn.Conv2d(dim * 2, dim * 2, kernel_size=3, padding=1, bias=True)
        self.att2 = nn.Conv2d(dim * 2, dim, kernel_size=3, padding=1, bias=True)
        self.relu = nn.LeakyReLU()

    def forward(self, x1, x2):
        f_cat = torch.cat((x1, x2), dim=1)  # (N, 2C, H, W)
        return torch.sigmoid(self.att2(self.relu(self.att1(f_cat))))


class HDRTransformer(SwinTrunk):
    """HDR-Transformer (ECCV 2022). forward(x1, x2, x3): short, reference, long exposures (N, 6, H, W)."""

    def __init__(self, img_size=128, patch_size=1, in_chans=6, embed_dim=60, depths=(6, 6, 6),
                 num_heads=(6, 6, 6), window_size=8, mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, norm_layer=TokenLayerNorm, ape=False, patch_norm=True,
                 use_checkpoint=False, resi_connection='1conv', **kwargs):
        super().__init__()
        if kwargs:
            logger.debug('HDRTransformer ignores keyword arguments %s (as the release does)', sorted(kwargs))
        num_out_ch = 3
        self.in_chans = in_chans

        self.conv_f1 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_f2 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_f3 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.att_module_l = SpatialAttentionModule(embed_dim)
        self.att_module_h = SpatialAttentionModule(embed_dim)
        self.conv_first = nn.Conv2d(embed_dim * 3, embed_dim, 3, 1, 1)
        self.build_trunk(ContextAwareTransformerBlock, img_size, patch_size, embed_dim, depths, num_heads,
                         window_size, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate,
                         norm_layer, ape, patch_norm, use_checkpoint, resi_connection)
        self.norm = norm_layer(self.num_features)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_last = nn.Conv2d(embed_dim, num_out_ch, 3, 1, 1)

        self.apply(self._init_weights)

    def no_weight_decay(self):
        return {'absolute_pos_embed'}

    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table'}

    def forward_features(self, x):
        """(N, C, H, W) -> (N, C, H, W) through the three CTBs."""
        x_size = (x.shape[2], x.shape[3])
        plan = self.window_plan(x_size, x.device)
        x = self.pos_drop(self.patch_embed(x))  # (N, H*W, C)
        for layer in self.layers:
            x = layer(x, x_size, plan)
        x = self.norm(x)
        return self.patch_unembed(x, x_size)  # (N, C, H, W)

    def forward(self, x1, x2, x3):
        if not (x1.dim() == 4 and x1.shape == x2.shape == x3.shape and x1.shape[1] == self.in_chans):
            raise ValueError(f'models/hdr_transformer.py: expected three (N, {self.in_chans}, H, W) inputs of one '
                             f'shape, got {tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(x3.shape)}')
        f1 = self.conv_f1(x1)
        f2 = self.conv_f2(x2)
        f3 = self.conv_f3(x3)
        # att_module_h serves the short exposure (frame 1), att_module_l the long one (frame 3)
        f1_att = f1 * self.att_module_h(f1, f2)
        f3_att = f3 * self.att_module_l(f3, f2)
        x = self.conv_first(torch.cat((f1_att, f2, f3_att), dim=1))  # (N, C, H, W)
        res = self.conv_after_body(self.forward_features(x) + x)
        return torch.sigmoid(self.conv_last(f2 + res))
