"""SCTNet: alignment-free HDR deghosting with a semantics consistent transformer.

Network of Tel et al., "Alignment-free HDR Deghosting with Semantics Consistent
Transformer" (ICCV 2023), as used by SelfHDR (``--network SCTNet``). Three
exposures (N, 6, H, W) each go through their own 3x3 conv; the 60-channel stack
goes through four spatial window-attention groups (GSAB, Swin blocks), each
followed by two cross-frame channel-attention blocks (SCAB: reference frame vs.
frame 1 and vs. frame 3) and a token MLP. Output: sigmoid, (N, 3, H', W') with
H', W' rounded up to multiples of 8 (internal reflect padding, never cropped).

The Swin blocks, window attention and trunk are shared with HDR-Transformer
(``models/transformer_layers.py``); what is SCTNet's own is here.
Attribute names are checkpoint keys of the release; do not rename them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.transformer_layers import (Mlp, ResidualGroup, SwinTransformerBlock, SwinTrunk, TokenLayerNorm,
                                       layer_norm)

__all__ = ['SCTNet']


class _Conv2dFn(torch.autograd.Function):
    """conv2d (stride 1) whose backward runs on NCHW-contiguous copies.

    The forward is the plain conv on the given layout (the tokens-to-image views are channels-last,
    as in the release, which fixes the forward's rounding). oneDNN's channels-last weight gradient
    is ~3x slower on this CPU class than the contiguous one. The input gradient is handed back in
    the input's layout, so token gradients upstream stay contiguous (no copies in later kernels).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out.contiguous(), x.contiguous(), weight, [weight.shape[0]] if ctx.has_bias else None,
            [1, 1], [p, p], [1, 1], False, [0, 0], 1, need)
        if gx is not None and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            gx = gx.contiguous(memory_format=torch.channels_last)
        return gx, gw, gb, None


def _conv(conv, x):
    """Apply a stride-1, same-padding nn.Conv2d through ``_Conv2dFn`` when gradients are recorded."""
    if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        # under autocast the plain conv (its dtype casts included) is used; the layout trick is an fp32 speed-up
        return conv(x)
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != 'zeros':
        raise ValueError(f'sctnet.py: _conv handles plain stride-1 convolutions only, got {conv}')
    return _Conv2dFn.apply(x, conv.weight, conv.bias, conv.padding[0])


class GSAB(ResidualGroup):
    """Global spatial attention block: six Swin blocks, a 3x3 conv and a residual."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, **kwargs):
        super().__init__(dim, input_resolution, depth, num_heads, window_size, block_class=SwinTransformerBlock,
                         **kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def image_conv(self, image):
        return _conv(self.conv, image)


class WithBias_LayerNorm(nn.Module):
    """LayerNorm over the last axis written as (x - mean) / sqrt(var + eps) * w + b (release's rounding)."""

    def __init__(self, normalized_shape):
        super().__init__()
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        normalized_shape = torch.Size(normalized_shape)
        if len(normalized_shape) != 1:
            raise ValueError(f'sctnet.py: WithBias_LayerNorm needs a 1-D shape, got {tuple(normalized_shape)}')
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.normalized_shape = normalized_shape

    def forward(self, x):
        if x.dtype != self.weight.dtype and torch.is_autocast_enabled(x.device.type):
            # bf16 autocast: the written-out form promotes the bf16 tokens to float32 at `* self.weight` and hands
            # the next 1x1 convs float32 images to cast back (a round trip per norm, forward and backward). The
            # fused kernel keeps its statistics in float32 and returns bf16 (on a CPU through float32: faster, see
            # transformer_layers.layer_norm). Same formula, eps 1e-5.
            return layer_norm(x, self.normalized_shape, self.weight, self.bias, 1e-5)
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Channel LayerNorm for (N, C, H, W) images: normalise each pixel over C."""

    def __init__(self, dim, LayerNorm_type='WithBias'):
        super().__init__()
        if LayerNorm_type != 'WithBias':
            raise ValueError(f"sctnet.py: LayerNorm_type {LayerNorm_type!r} is not supported (only 'WithBias')")
        self.body = WithBias_LayerNorm(dim)

    def forward(self, x):
        b, c, h, w = x.shape
        # permute -> reshape (not flatten/transpose): keeps the release's memory layout and rounding.
        y = self.body(x.permute(0, 2, 3, 1).reshape(b, h * w, c))  # (b, h*w, c)
        return y.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (b, c, h, w) channels-last view


class Mutual_Attention(nn.Module):
    """Channel-to-channel attention across the whole image: query from x, key/value from y."""

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.k = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.v = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x, y):
        b, c, h, w = x.shape
        nh = self.num_heads
        q = self.q(x).reshape(b, nh, c // nh, h * w)  # (b, head, c', h*w)
        k = self.k(y).reshape(b, nh, c // nh, h * w)  # (b, head, c', h*w)
        v = self.v(y).reshape(b, nh, c // nh, h * w)  # (b, head, c', h*w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (b, head, c', c')
        attn = attn.softmax(dim=-1)
        out = (attn @ v).reshape(b, c, h, w)  # (b, head, c', h*w) -> (b, c, h, w)
        return self.project_out(out)


class SCAB(nn.Module):
    """Semantic consistency attention block: reference stream x attends to frame stream y over channels."""

    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):
        super().__init__()
        self.norm1_x = LayerNorm(dim, LayerNorm_type)
        self.norm1_y = LayerNorm(dim, LayerNorm_type)
        self.attn = Mutual_Attention(dim, num_heads, bias)
        self.norm2 = TokenLayerNorm(dim)
        self.ffn = Mlp(in_features=dim, hidden_features=int(dim * ffn_expansion_factor), act_layer=nn.GELU, drop=0.)

    def forward(self, x, y, x_size):
        """x, y: (N, H*W, c) tokens -> (N, H*W, c)."""
        h, w = x_size
        b, _, c = x.shape
        x = x.transpose(1, 2).view(b, c, h, w)  # (b, c, h, w) view
        y = y.transpose(1, 2).view(b, c, h, w)  # (b, c, h, w) view
        fused = x + self.attn(self.norm1_x(x), self.norm1_y(y))  # (b, c, h, w)
        fused = fused.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (b, h*w, c)
        return fused + self.ffn(self.norm2(fused))


class UpsampleOneStep(nn.Sequential):
    """A single 3x3 conv to num_out_ch * scale^2 channels (scale 1 here: no pixel shuffle)."""

    def __init__(self, scale, num_feat, num_out_ch, input_resolution=None):
        m = [nn.Conv2d(num_feat, (scale ** 2) * num_out_ch, 3, 1, 1)]
        super().__init__(*m)
        self.num_feat = num_feat
        self.input_resolution = input_resolution


class SCTNet(SwinTrunk):
    """SCTNet backbone. forward(x1, x2, x3) with (N, 6, H, W) inputs, x2 the reference exposure.

    Returns (N, 3, ceil(H/8)*8, ceil(W/8)*8) in (0, 1); H and W must be >= 5 (reflect padding).
    """

    def __init__(self, img_size=128, patch_size=1, in_chans=18, embed_dim=60, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=8, mlp_ratio=2., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.1, norm_layer=TokenLayerNorm, ape=False, patch_norm=True,
                 use_checkpoint=False, upscale=1, img_range=1., upsampler='', resi_connection='1conv', **kwargs):
        super().__init__()
        if in_chans % 3 or embed_dim % 3:
            raise ValueError(f'sctnet.py: in_chans {in_chans} and embed_dim {embed_dim} must split into 3 frames')
        num_in_ch = in_chans // 3
        num_out_ch = 3
        num_feat = embed_dim // 3
        c_num_heads = [4, 4, 4, 4]
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler

        # Shallow per-frame features.
        self.conv1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv_end = nn.Conv2d(num_feat, embed_dim, 3, 1, 1)
        self.conv_first = Mlp(in_features=embed_dim, hidden_features=embed_dim, out_features=embed_dim,
                              act_layer=nn.GELU, drop=drop_rate)

        # Deep features: the GSAB stack, then per stage two SCABs and a token MLP.
        self.build_trunk(GSAB, img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
                         qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, ape, patch_norm,
                         use_checkpoint, resi_connection)
        self.channel_layers_lm = nn.ModuleList([
            SCAB(dim=num_feat, num_heads=c_num_heads[i], ffn_expansion_factor=4, bias=False,
                 LayerNorm_type='WithBias') for i in range(self.num_layers)])
        self.channel_layers_rm = nn.ModuleList([
            SCAB(dim=num_feat, num_heads=c_num_heads[i], ffn_expansion_factor=4, bias=False,
                 LayerNorm_type='WithBias') for i in range(self.num_layers)])
        self.mlps = nn.ModuleList([
            Mlp(in_features=embed_dim, hidden_features=embed_dim, out_features=embed_dim, act_layer=nn.GELU,
                drop=drop_rate) for _ in range(self.num_layers)])
        self.norm = norm_layer(self.num_features)

        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = UpsampleOneStep(upscale, embed_dim, num_out_ch, tuple(self.patches_resolution))

        self.apply(self._init_weights)
        # Registered after the init pass, as in the release (parameter-free, order irrelevant to keys).
        self.sigmoid = nn.Sigmoid()

    def check_image_size(self, x):
        """Reflect-pad bottom/right up to multiples of the window size."""
        _, _, h, w = x.shape
        M = self.window_size
        mod_pad_h = (M - h % M) % M
        mod_pad_w = (M - w % M) % M
        if mod_pad_h == 0 and mod_pad_w == 0:
            return x
        if mod_pad_h >= h or mod_pad_w >= w:
            raise RuntimeError(f'sctnet.py: input {h}x{w} needs reflect padding ({mod_pad_h}, {mod_pad_w}) to a '
                               f'multiple of {M}; padding must be smaller than the size (use H, W >= {M // 2 + 1})')
        return F.pad(x, (0, mod_pad_w, 0, mod_pad_h), 'reflect')

    def forward_features(self, x):
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)  # (N, L, C), LayerNorm-ed
        x = self.pos_drop(x) if self.pos_drop.p > 0 else x
        c = self.embed_dim // 3
        t1, t2, t3 = x[..., :c], x[..., c:2 * c], x[..., 2 * c:]  # per-frame token streams, reused every stage
        # Token orders and mask for this size, shared by all blocks (stored masks cover img_size).
        plan = self.window_plan(x_size, x.device)
        x = self.conv_first(x)
        for i in range(self.num_layers):
            x = self.layers[i](x, x_size, plan)
            u1, u2, u3 = x[..., :c], x[..., c:2 * c], x[..., 2 * c:]
            ref = t2 + u2
            a_l = self.channel_layers_lm[i](ref, t1 + u1, x_size)
            a_r = self.channel_layers_rm[i](ref, t3 + u3, x_size)
            x = self.mlps[i](torch.cat([a_l, ref, a_r], dim=-1))  # no residual around mlps, as released
        x = self.norm(x)
        return self.patch_unembed(x, x_size)

    def forward(self, x1, x2, x3):
        for name, t in (('x1', x1), ('x2', x2), ('x3', x3)):
            if t.dim() != 4 or t.shape[1] != self.conv1.in_channels or t.shape != x1.shape:
                raise ValueError(f'sctnet.py: {name} has shape {tuple(t.shape)}; expected three equal '
                                 f'(N, {self.conv1.in_channels}, H, W) tensors')
        # Padding each frame equals padding their concatenation (reflect padding is per channel).
        x1, x2, x3 = self.check_image_size(x1), self.check_image_size(x2), self.check_image_size(x3)
        e1, e2, e3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
        x = torch.cat([e1, e2, e3], dim=1)  # (N, 60, H', W')
        x = _conv(self.conv_after_body, self.forward_features(x)) + self.conv_end(e2)
        return self.sigmoid(_conv(self.upsample[0], x))
