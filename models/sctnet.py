"""SCTNet: alignment-free HDR deghosting with a semantics consistent transformer.

Network of Tel et al., "Alignment-free HDR Deghosting with Semantics Consistent
Transformer" (ICCV 2023), as used by SelfHDR (``--network SCTNet``). Three
exposures (N, 6, H, W) each go through their own 3x3 conv; the 60-channel stack
goes through four spatial window-attention groups (GSAB, Swin blocks), each
followed by two cross-frame channel-attention blocks (SCAB: reference frame vs.
frame 1 and vs. frame 3) and a token MLP. Output: sigmoid, (N, 3, H', W') with
H', W' rounded up to multiples of 8 (internal reflect padding, never cropped).

Attribute names are checkpoint keys of the release; do not rename them.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from timm.layers import DropPath, to_2tuple, trunc_normal_

__all__ = ['SCTNet']


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, M, M, C); windows batch-major, then row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)  # (B, H/M, M, W/M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, C)  # (B*nW, M, M, C)


def shifted_window_mask(H, W, window_size, shift_size, device=None):
    """Attention mask (nW, M*M, M*M) for shifted windows: 0 within a region, -100 across."""
    M, s = window_size, shift_size
    img_mask = torch.zeros((1, H, W, 1), device=device)
    slices = (slice(0, -M), slice(-M, -s), slice(-s, None))
    cnt = 0
    for h in slices:
        for w in slices:
            img_mask[:, h, w, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, M).view(-1, M * M)  # (nW, M*M)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)  # (nW, M*M, M*M)
    return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)


def window_order(H, W, window_size, shift_size, device=None):
    """Token permutation (and its inverse) for "roll by -shift, then window partition".

    ``tokens.index_select(1, perm)`` on (N, H*W, C) equals
    ``window_partition(torch.roll(tokens.view(N, H, W, C), (-s, -s), (1, 2)), M)`` flattened
    to (N, H*W, C); one gather replaces torch.roll's narrow+cat passes and the partition copy.
    """
    M, s = window_size, shift_size
    idx = torch.arange(H * W, device=device).view(H, W)
    if s > 0:
        idx = torch.roll(idx, shifts=(-s, -s), dims=(0, 1))
    perm = idx.view(H // M, M, W // M, M).permute(0, 2, 1, 3).reshape(-1)  # (H*W,) window-major order
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(H * W, device=device)
    return perm, inv


class WindowPlan:
    """Token orders and the shifted-window mask for one runtime size, built once per forward.

    Every block of the network needs the same two orders (shift 0 and shift M/2) and, for sizes
    other than img_size, the same mask; the release rebuilds the mask in every shifted block.
    """

    def __init__(self, H, W, window_size, shift_size, device=None, with_mask=True):
        self.size = (H, W)
        self.window_size = window_size
        self.orders = {0: window_order(H, W, window_size, 0, device)}
        if shift_size > 0:
            self.orders[shift_size] = window_order(H, W, window_size, shift_size, device)
        self.mask = (shifted_window_mask(H, W, window_size, shift_size, device=device)
                     if with_mask and shift_size > 0 else None)


class _TokenGather(torch.autograd.Function):
    """x.index_select(1, perm) on (N, L, C) tokens; backward gathers with the inverse permutation."""

    @staticmethod
    def forward(ctx, x, perm, inv):
        ctx.save_for_backward(inv)
        return x.index_select(1, perm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        inv, = ctx.saved_tensors
        return grad.index_select(1, inv), None, None


def _add_drop_path(shortcut, x, drop_path):
    """shortcut + drop_path(x); in training one fused pass, drawing timm's per-sample mask the same way."""
    if isinstance(drop_path, DropPath) and drop_path.training and 0. < drop_path.drop_prob < 1.:
        keep = 1. - drop_path.drop_prob
        scale = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (N, 1, 1)
        if drop_path.scale_by_keep:
            scale.div_(keep)
        return torch.addcmul(shortcut, x, scale)
    return shortcut + drop_path(x)


class Mlp(nn.Module):
    """Token-wise two-layer MLP: fc2(GELU(fc1(x)))."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.act(self.fc1(x))
        if self.drop.p > 0:  # p = 0 everywhere in SelfHDR: skip the no-op calls
            x = self.drop(x)
        x = self.fc2(x)
        if self.drop.p > 0:
            x = self.drop(x)
        return x


# Windows per chunk in the fused window attention. 256 windows x 6 heads x 64 x 64 float32 is
# 24 MiB per score tensor: big enough for few, well-parallelised kernel calls, and below glibc's
# 32 MiB mmap ceiling, so chunks are recycled from the heap instead of being page-faulted in
# afresh (the release allocates ~100 MiB score tensors per block at batch 4 x 128 x 128).
_ATTN_CHUNK = 256


def _window_chunks(num_windows, nW, chunk):
    """Yield (w0, w1, m0, m1): windows [w0, w1) of the batch and mask rows [m0, m1) they use.

    A chunk is either whole images (m0, m1 = 0, nW) or part of one image, so the mask slice
    broadcasts over the chunk's images as (images, m1 - m0) windows.
    """
    if nW <= chunk:
        step = (chunk // nW) * nW
        for w0 in range(0, num_windows, step):
            yield w0, min(w0 + step, num_windows), 0, nW
    else:
        for img0 in range(0, num_windows, nW):
            for m0 in range(0, nW, chunk):
                m1 = min(m0 + chunk, nW)
                yield img0 + m0, img0 + m1, m0, m1


class _WindowAttentionFn(torch.autograd.Function):
    """softmax((q * scale) k^T + bias [+ mask]) v over windows, in chunks, with a hand-written backward.

    Same math as the release's formulation on one (B', nH, T, T) tensor, with fewer passes and
    allocations: q, k^T, v^T copied once; bias and mask added in one in-place pass; softmax and its
    backward in place; probabilities kept per chunk instead of one huge tensor. Products whose
    result is 10 wide are taken transposed, in the (d, T) orientation, where the batched GEMM is
    about twice as fast; for the forward's (attn v) this changes float32 rounding at the 1e-7 level
    (q k^T is taken exactly as the release does).
    """

    @staticmethod
    def forward(ctx, qkv, bias, mask, num_heads, scale, chunk, keep):
        # qkv (B', T, 3C); bias (nH, T, T); mask (nW, T, T) or None; keep: probabilities for backward.
        B_, T, C3 = qkv.shape
        nH = num_heads
        d = C3 // (3 * nH)
        nW = mask.shape[0] if mask is not None else B_
        if B_ % nW:
            raise ValueError(f'sctnet.py: {B_} windows are not a multiple of the mask\'s {nW} windows')
        src = qkv.view(B_, T, 3, nH, d)  # (B', T, 3, nH, d) view
        q = qkv.new_empty(B_ * nH, T, d)
        torch.mul(src[:, :, 0].transpose(1, 2), scale, out=q.view(B_, nH, T, d))  # scaled before q k^T
        k_t = qkv.new_empty(B_ * nH, d, T)
        k_t.view(B_, nH, d, T).copy_(src[:, :, 1].permute(0, 2, 3, 1))  # (B', nH, d, T)
        v_t = qkv.new_empty(B_ * nH, d, T)
        v_t.view(B_, nH, d, T).copy_(src[:, :, 2].permute(0, 2, 3, 1))  # (B', nH, d, T)
        # Bias plus mask in one term: differs from adding them one after the other only in logits
        # the -100 mask pushes to exp(-100) of the row sum, so the probabilities are unchanged.
        bm = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)  # (nW or 1, nH, T, T)
        out_t = qkv.new_empty(B_ * nH, d, T)
        probs = []
        for w0, w1, m0, m1 in _window_chunks(B_, nW, chunk):
            r = slice(w0 * nH, w1 * nH)
            attn = torch.bmm(q[r], k_t[r])  # (b*nH, T, T)
            bm_c = bm if mask is None else bm[m0:m1]
            attn.view(-1, bm_c.shape[0], nH, T, T).add_(bm_c)  # (images, nWc, nH, T, T)
            torch.ops.aten._softmax.out(attn, -1, False, out=attn)  # row-wise kernel: in place is exact
            torch.bmm(v_t[r], attn.transpose(1, 2), out=out_t[r])  # (attn v)^T: (b*nH, d, T)
            if keep:
                probs.append(attn)
        if keep:
            ctx.save_for_backward(q, k_t, v_t)
            ctx.probs, ctx.scale, ctx.chunk, ctx.nW, ctx.num_heads = probs, scale, chunk, nW, nH
        out = qkv.new_empty(B_, T, C3 // 3)  # contiguous, so proj runs as one addmm like the release
        out.view(B_, T, nH, d).copy_(out_t.view(B_, nH, d, T).permute(0, 3, 1, 2))  # channel = head*d + i
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k_t, v_t = ctx.saved_tensors
        probs = ctx.probs  # kept (not popped) so backward may run again with retain_graph=True
        nH = ctx.num_heads
        BnH, T, d = q.shape
        B_ = BnH // nH
        g_t = grad_out.reshape(B_, T, nH, d).permute(0, 2, 3, 1).reshape(BnH, d, T)  # (B'*nH, d, T)
        # Transposed gradients of q*scale, k, v; three tensors rather than one (3, ...) buffer keeps
        # each allocation small enough to be recycled by malloc instead of mmap-ed afresh.
        gq_t, gk_t, gv_t = (q.new_empty(BnH, d, T) for _ in range(3))
        grad_bias = q.new_zeros(nH, T, T) if ctx.needs_input_grad[1] else None
        for (w0, w1, _, _), attn in zip(_window_chunks(B_, ctx.nW, ctx.chunk), probs):
            r = slice(w0 * nH, w1 * nH)
            torch.bmm(g_t[r], attn, out=gv_t[r])  # dv^T = g^T attn
            grad_s = torch.bmm(g_t[r].transpose(1, 2), v_t[r])  # d(attn) = g v^T, (b*nH, T, T)
            torch.ops.aten._softmax_backward_data.out(grad_s, attn, -1, attn.dtype, grad_input=grad_s)
            if grad_bias is not None:
                grad_bias += grad_s.view(-1, nH, T, T).sum(0)  # (nH, T, T)
            torch.bmm(k_t[r], grad_s.transpose(1, 2), out=gq_t[r])  # d(q*scale)^T = k^T ds^T
            torch.bmm(q[r].transpose(1, 2), grad_s, out=gk_t[r])  # dk^T = (q*scale)^T ds
        gq_t.mul_(ctx.scale)
        grad_qkv = q.new_empty(B_, T, 3, nH, d)
        for i, gt in enumerate((gq_t, gk_t, gv_t)):
            grad_qkv[:, :, i].copy_(gt.view(B_, nH, d, T).permute(0, 3, 1, 2))  # (B', T, nH, d)
        grad_qkv = grad_qkv.view(B_, T, 3 * nH * d)  # (B', T, 3C)
        return grad_qkv, grad_bias, None, None, None, None, None


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


class WindowAttention(nn.Module):
    """Multi-head self-attention inside M x M windows with a relative position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # (Mh, Mw)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5

        Mh, Mw = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * Mh - 1) * (2 * Mw - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(Mh), torch.arange(Mw), indexing='ij'))  # (2, Mh, Mw)
        coords = coords.flatten(1)  # (2, Mh*Mw)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (Mh*Mw, Mh*Mw, 2)
        index = (rel[..., 0] + Mh - 1) * (2 * Mw - 1) + (rel[..., 1] + Mw - 1)
        self.register_buffer('relative_position_index', index)

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # The release initialises the table after qkv/proj exist: keeps the seeded RNG order.
        trunc_normal_(self.relative_position_bias_table, std=.02)
        self.softmax = nn.Softmax(dim=-1)

    def relative_position_bias(self):
        """(nH, T, T) bias gathered from the table."""
        T = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (T*T, nH)
        return bias.view(T, T, -1).permute(2, 0, 1).contiguous()  # (nH, T, T)

    def forward(self, x, mask=None):
        """x: (B*nW, T, C); mask: (nW, T, T) additive or None."""
        if self.attn_drop.p > 0 and self.training:
            return self.forward_reference(x, mask)
        qkv = self.qkv(x)  # (B', T, 3C)
        bias = self.relative_position_bias()
        keep = torch.is_grad_enabled() and (qkv.requires_grad or bias.requires_grad)
        x = _WindowAttentionFn.apply(qkv, bias, mask, self.num_heads, self.scale, _ATTN_CHUNK, keep)  # (B', T, C)
        x = self.proj(x)
        if self.proj_drop.p > 0:
            x = self.proj_drop(x)
        return x

    def forward_reference(self, x, mask=None):
        """Unfused attention, one (B', nH, T, T) tensor (the release's formulation; also for attn dropout)."""
        B_, T, C = x.shape
        qkv = self.qkv(x).reshape(B_, T, 3, self.num_heads, C // self.num_heads)  # (B', T, 3, nH, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B', nH, T, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale  # scaled before the product, as the release does
        attn = q @ k.transpose(-2, -1)  # (B', nH, T, T)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B_ // nW, nW, self.num_heads, T, T) + mask.unsqueeze(1).unsqueeze(0)  # (N, nW, nH, T, T)
            attn = attn.view(-1, self.num_heads, T, T)  # (B', nH, T, T)
        attn = self.softmax(attn)
        if self.attn_drop.p > 0:
            attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B_, T, C)  # (B', nH, T, d) -> (B', T, C)
        x = self.proj(x)
        if self.proj_drop.p > 0:
            x = self.proj_drop(x)
        return x


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm with residuals."""

    def __init__(self, dim, input_resolution, num_heads, window_size=8, shift_size=0, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= self.window_size:
            # Window larger than the image: no partition and no shift.
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f'sctnet.py: shift_size {self.shift_size} must be in [0, window_size '
                             f'{self.window_size})')

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=to_2tuple(self.window_size), num_heads=num_heads,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

        if self.shift_size > 0:
            attn_mask = shifted_window_mask(*self.input_resolution, self.window_size, self.shift_size)
        else:
            attn_mask = None
        self.register_buffer('attn_mask', attn_mask)

    def forward(self, x, x_size, plan=None):
        """x: (N, H*W, C) tokens of an H x W image (multiples of the window); ``plan``: shared WindowPlan."""
        H, W = x_size
        B, L, C = x.shape
        M, s = self.window_size, self.shift_size
        if plan is None or plan.size != (H, W) or plan.window_size != M or s not in plan.orders:
            plan = WindowPlan(H, W, M, s, device=x.device, with_mask=(H, W) != tuple(self.input_resolution))
        if s == 0:
            attn_mask = None
        elif tuple(self.input_resolution) == (H, W):
            attn_mask = self.attn_mask
        else:
            attn_mask = plan.mask if plan.mask is not None else shifted_window_mask(H, W, M, s, device=x.device)
        perm, inv = plan.orders[s]

        shortcut = x
        x = _TokenGather.apply(self.norm1(x), perm, inv)  # (N, L, C) shifted, window-major
        x = self.attn(x.view(-1, M * M, C), mask=attn_mask)  # (N*nW, M*M, C)
        x = _TokenGather.apply(x.view(B, L, C), inv, perm)  # (N, L, C) back in image order
        x = _add_drop_path(shortcut, x, self.drop_path)
        return _add_drop_path(x, self.mlp(self.norm2(x)), self.drop_path)


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating unshifted / shifted windows."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm, downsample=None,
                 use_checkpoint=False):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim=dim, input_resolution=input_resolution, num_heads=num_heads,
                                 window_size=window_size, shift_size=0 if (i % 2 == 0) else window_size // 2,
                                 mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                                 attn_drop=attn_drop,
                                 drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path,
                                 norm_layer=norm_layer)
            for i in range(depth)])
        if downsample is not None:
            self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer)
        else:
            self.downsample = None

    def forward(self, x, x_size, plan=None):
        for blk in self.blocks:
            if self.use_checkpoint:
                x = checkpoint.checkpoint(blk, x, x_size, plan, use_reentrant=False)
            else:
                x = blk(x, x_size, plan)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Module):
    """Image (N, C, H, W) -> tokens (N, H*W, C), optional LayerNorm (patch size 1: no parameters)."""

    def __init__(self, img_size=128, patch_size=1, in_chans=60, embed_dim=60, norm_layer=None):
        super().__init__()
        img_size = to_2tuple(img_size)
        patch_size = to_2tuple(patch_size)
        patches_resolution = [img_size[0] // patch_size[0], img_size[1] // patch_size[1]]
        self.img_size = img_size
        self.patch_size = patch_size
        self.patches_resolution = patches_resolution
        self.num_patches = patches_resolution[0] * patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C) view
        if self.norm is not None:
            x = self.norm(x)
        return x


class PatchUnEmbed(nn.Module):
    """Tokens (N, H*W, C) -> image (N, C, H, W) as a view (no parameters)."""

    def __init__(self, img_size=128, patch_size=1, in_chans=60, embed_dim=60, norm_layer=None):
        super().__init__()
        img_size = to_2tuple(img_size)
        patch_size = to_2tuple(patch_size)
        patches_resolution = [img_size[0] // patch_size[0], img_size[1] // patch_size[1]]
        self.img_size = img_size
        self.patch_size = patch_size
        self.patches_resolution = patches_resolution
        self.num_patches = patches_resolution[0] * patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim

    def forward(self, x, x_size):
        B, HW, C = x.shape
        return x.transpose(1, 2).view(B, self.embed_dim, x_size[0], x_size[1])  # (N, C, H, W) view


class GSAB(nn.Module):
    """Global spatial attention block: six Swin blocks, a 3x3 conv and a residual."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm, downsample=None,
                 use_checkpoint=False, img_size=128, patch_size=1, resi_connection='1conv'):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.residual_group = BasicLayer(dim=dim, input_resolution=input_resolution, depth=depth,
                                         num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                         drop_path=drop_path, norm_layer=norm_layer, downsample=downsample,
                                         use_checkpoint=use_checkpoint)
        if resi_connection != '1conv':
            raise ValueError(f"sctnet.py: resi_connection {resi_connection!r} is not supported (only '1conv')")
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                      norm_layer=None)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                          norm_layer=None)

    def forward(self, x, x_size, plan=None):
        y = self.residual_group(x, x_size, plan)
        return self.patch_embed(_conv(self.conv, self.patch_unembed(y, x_size))) + x


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
        self.norm2 = nn.LayerNorm(dim)
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


class SCTNet(nn.Module):
    """SCTNet backbone. forward(x1, x2, x3) with (N, 6, H, W) inputs, x2 the reference exposure.

    Returns (N, 3, ceil(H/8)*8, ceil(W/8)*8) in (0, 1); H and W must be >= 5 (reflect padding).
    """

    def __init__(self, img_size=128, patch_size=1, in_chans=18, embed_dim=60, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=8, mlp_ratio=2., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
                 use_checkpoint=False, upscale=1, img_range=1., upsampler='', resi_connection='1conv', **kwargs):
        super().__init__()
        if in_chans % 3 or embed_dim % 3:
            raise ValueError(f'sctnet.py: in_chans {in_chans} and embed_dim {embed_dim} must split into 3 frames')
        if ape:
            raise ValueError('sctnet.py: ape=True (absolute position embedding) is not supported')
        depths, num_heads = list(depths), list(num_heads)
        num_in_ch = in_chans // 3
        num_out_ch = 3
        num_feat = embed_dim // 3
        c_num_heads = [4, 4, 4, 4]
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size

        # Shallow per-frame features.
        self.conv1 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.conv_end = nn.Conv2d(num_feat, embed_dim, 3, 1, 1)
        self.conv_first = Mlp(in_features=embed_dim, hidden_features=embed_dim, out_features=embed_dim,
                              act_layer=nn.GELU, drop=drop_rate)

        # Deep features.
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = embed_dim
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                      embed_dim=embed_dim, norm_layer=norm_layer if self.patch_norm else None)
        num_patches = self.patch_embed.num_patches
        patches_resolution = self.patch_embed.patches_resolution
        self.patches_resolution = patches_resolution
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                          embed_dim=embed_dim, norm_layer=norm_layer if self.patch_norm else None)
        del num_patches
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]  # stochastic depth rates
        self.layers = nn.ModuleList()
        for i_layer in range(self.num_layers):
            self.layers.append(GSAB(
                dim=embed_dim, input_resolution=(patches_resolution[0], patches_resolution[1]),
                depth=depths[i_layer], num_heads=num_heads[i_layer], window_size=window_size,
                mlp_ratio=self.mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i_layer]):sum(depths[:i_layer + 1])],
                norm_layer=norm_layer, downsample=None, use_checkpoint=use_checkpoint, img_size=img_size,
                patch_size=patch_size, resi_connection=resi_connection))
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

        if resi_connection != '1conv':
            raise ValueError(f"sctnet.py: resi_connection {resi_connection!r} is not supported (only '1conv')")
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.upsample = UpsampleOneStep(upscale, embed_dim, num_out_ch,
                                        (patches_resolution[0], patches_resolution[1]))

        self.apply(self._init_weights)
        # Registered after the init pass, as in the release (parameter-free, order irrelevant to keys).
        self.sigmoid = nn.Sigmoid()

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

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
        plan = WindowPlan(x_size[0], x_size[1], self.window_size, self.window_size // 2, device=x.device,
                          with_mask=x_size != tuple(self.patches_resolution))
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
