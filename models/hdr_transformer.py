"""HDR-Transformer backbone: spatial-attention CNN front end + context-aware Swin transformer blocks.

Paper: Z. Liu, Y. Wang, B. Zeng, S. Liu, "Ghost-free High Dynamic Range Imaging with Context-aware
Transformer", ECCV 2022. SelfHDR (ICLR 2024) trains it as `--network HDR-Transformer`.

This is a clean-room implementation of `shared/specs/hdr_transformer.md`. Built with no arguments it has the
release's state_dict (keys, order, shapes, dtypes, persistent buffers) and, after `torch.manual_seed(0)`, the
release's seeded initial values. The forward computes the same maths with fewer memory passes:

* cyclic shift + window partition (and their inverse) are one precomputed token permutation each;
* window attention runs in chunks of windows (`_WindowAttentionFunction`) so the (windows, heads, 64, 64)
  attention maps never exist in full: they stay in cache, and the backward recomputes them instead of storing
  them (flash-attention style). This is what makes a training step fast and light on memory on CPU;
* the local context extractor's 1x1 convolutions run as matrix products on the token layout.

Inputs: three (N, 6, H, W) float tensors (short, reference, long exposure; [HDR, LDR] channels); H and W must be
multiples of `window_size`. Output: (N, 3, H, W) in (0, 1) (final sigmoid).
"""
import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, to_2tuple, trunc_normal_

logger = logging.getLogger(__name__)

# Windows per attention chunk (per head): 512 x 64 x 64 floats = 8 MiB per attention-sized temporary, small
# enough to stay in the last-level cache, large enough that the per-chunk Python overhead is negligible.
_CHUNK_WINDOWS = 512
_KEEP_PROBS = True


def _check_window_multiple(height, width, window_size):
    """The windowed attention tiles the image exactly; the release fails with a RuntimeError otherwise."""
    if height % window_size or width % window_size or height < window_size or width < window_size:
        raise RuntimeError(
            f'models/hdr_transformer.py: input size {height}x{width} is not a positive multiple of the '
            f'window size {window_size}; pad the inputs (the release test path reflection-pads them)')


def window_partition(x, window_size):
    """(B, H, W, C) -> (B * nW, M, M, C), windows in batch, window-row, window-column order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)  # (B, H/M, M, W/M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)  # (B*nW, M, M, C)


def window_reverse(windows, window_size, height, width):
    """Inverse of `window_partition`: (B * nW, M, M, C) -> (B, H, W, C)."""
    b = windows.shape[0] // ((height // window_size) * (width // window_size))
    x = windows.view(b, height // window_size, width // window_size, window_size, window_size,
                     -1)  # (B, H/M, W/M, M, M, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, height, width, -1)  # (B, H, W, C)


def _window_order(height, width, window_size, shift_size, device):
    """Token permutation that rolls the (H, W) grid by -shift and partitions it into windows.

    Returns (order, inverse): windowed token k is image token order[k]; image token l is windowed token
    inverse[l]. Both are int64 of length H*W.
    """
    grid = torch.arange(height * width, device=device).view(1, height, width, 1)  # (1, H, W, 1)
    if shift_size > 0:
        grid = torch.roll(grid, shifts=(-shift_size, -shift_size), dims=(1, 2))
    order = window_partition(grid, window_size).reshape(-1)  # (H*W,)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return order, inverse


def compute_attention_mask(height, width, window_size, shift_size, device=None):
    """Shifted-window mask (nW, M*M, M*M): 0 between tokens of the same region, -100 otherwise (spec §4.2)."""
    labels = torch.zeros((1, height, width, 1), device=device)  # (1, H, W, 1)
    count = 0
    bands = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    for rows in bands:
        for cols in bands:
            labels[:, rows, cols, :] = count
            count += 1
    lab = window_partition(labels, window_size).view(-1, window_size * window_size)  # (nW, T)
    diff = lab.unsqueeze(1) - lab.unsqueeze(2)  # (nW, T, T)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def _windows_with_mask(mask):
    """Per window: does its mask hold any non-zero entry? (Only windows on the last row/column do.)"""
    return mask.reshape(mask.shape[0], -1).ne(0).any(dim=1)  # (nW,) bool


def _chunks(batch, num_windows, target):
    """Split (batch, windows) into blocks of about `target` windows: (n0, n1, w0, w1)."""
    if num_windows >= target:
        for n in range(batch):
            for w0 in range(0, num_windows, target):
                yield n, n + 1, w0, min(w0 + target, num_windows)
    else:
        step = max(1, target // num_windows)
        for n0 in range(0, batch, step):
            yield n0, min(n0 + step, batch), 0, num_windows


class _WindowAttentionFunction(torch.autograd.Function):
    """softmax(scale*q k^T + bias + mask) v for every window and head, from channel-major q/k/v.

    qkv_t: (3C, B'*T), row (j*C + h*d + i) for j in (q, k, v), head h, channel i; column b*T + p for window b
    and token p; window b belongs to image b // nW and uses mask[b % nW]. bias: (nH, T, T); mask: (nW, T, T)
    or None (never differentiated); mask_flags: (nW,) bool, which windows' masks hold non-zeros.
    Returns out_t (C, B'*T), rows (h*d + i).

    Windows are processed in chunks; within a chunk q/k/v are copied once to (head, window, d, T) so that
    every product is one batched GEMM over all heads and windows in a layout MKL handles fast, and the
    attention-sized work is a handful of large ops. The per-element operation order is the release's (q scaled
    before the product, bias added before the mask). Under autograd the probabilities are kept for the
    backward; without autograd they live one chunk at a time.
    """

    @staticmethod
    def _plan(mask, mask_flags, batch, num_windows):
        """Chunks (n0, n1, w0, w1) with the chunk's masked windows (local indices) and their mask rows."""
        masked = torch.nonzero(mask_flags).flatten().tolist() if mask is not None else []
        plan = []
        for n0, n1, w0, w1 in _chunks(batch, num_windows, _CHUNK_WINDOWS):
            local = [i - w0 for i in masked if w0 <= i < w1]
            if local:
                index = torch.tensor(local, device=mask.device)
                plan.append((n0, n1, w0, w1, index, mask[w0 + index]))  # (k,), (k, T, T)
            else:
                plan.append((n0, n1, w0, w1, None, None))
        return plan

    @staticmethod
    def _heads(qkv_t, cols, num_heads, tokens, scale):
        """Chunk columns -> (3, nH, nb, d, T) contiguous, q already scaled."""
        c3 = qkv_t.shape[0]
        d = c3 // (3 * num_heads)
        nb = (cols.stop - cols.start) // tokens
        heads = qkv_t[:, cols].view(3, num_heads, d, nb, tokens).permute(0, 1, 3, 2, 4).contiguous()  # (3, nH, nb, d, T)
        heads[0].mul_(scale)  # same rounding as the release's q * scale
        return heads

    @staticmethod
    def _probs(q, k, bias, n, w, index, mask_rows):
        """softmax(q^T k + bias (+ mask)) for one chunk: q, k (nH*nb, d, T) -> (nH*nb, T, T)."""
        num_heads, tokens = bias.shape[0], bias.shape[-1]
        probs = torch.bmm(q.transpose(1, 2), k)  # logits (nH*nb, T, T)
        probs.view(num_heads, -1, tokens, tokens).add_(bias.unsqueeze(1))  # += (nH, 1, T, T)
        if index is not None:
            # under autocast the logits are bf16/fp16 while the mask stays fp32; index_add_ needs one dtype
            probs.view(num_heads, n, w, tokens, tokens).index_add_(
                2, index, mask_rows.to(probs.dtype).expand(num_heads, n, -1, -1, -1))  # masked windows += rows
        return torch._softmax(probs, -1, False, out=probs)  # in place: the logits are not needed again

    @staticmethod
    def forward(ctx, qkv_t, bias, mask, mask_flags, num_windows, num_heads, scale):
        c3, total = qkv_t.shape
        dim = c3 // 3
        d = dim // num_heads
        tokens = bias.shape[-1]
        batch = total // tokens // num_windows
        keep = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        out_t = qkv_t.new_empty(dim, total)  # (C, B'T)
        plan = _WindowAttentionFunction._plan(mask, mask_flags, batch, num_windows)
        kept = []
        for n0, n1, w0, w1, index, mask_rows in plan:
            n, w = n1 - n0, w1 - w0
            nb = (n - 1) * num_windows + w
            b0 = n0 * num_windows + w0
            cols = slice(b0 * tokens, (b0 + nb) * tokens)
            heads = _WindowAttentionFunction._heads(qkv_t, cols, num_heads, tokens, scale)
            q, k, v = (heads[j].view(num_heads * nb, d, tokens) for j in range(3))  # (nH*nb, d, T) each
            probs = _WindowAttentionFunction._probs(q, k, bias, n, w, index, mask_rows)
            o_t = torch.bmm(v, probs.transpose(1, 2))  # (nH*nb, d, T) = (P V)^T
            out_t[:, cols].view(num_heads, d, nb, tokens).copy_(
                o_t.view(num_heads, nb, d, tokens).transpose(1, 2))  # (nH, d, nb, T)
            if keep and _KEEP_PROBS:
                kept.append(probs)
        if keep:
            ctx.save_for_backward(qkv_t, bias, *kept)
            ctx.plan = plan
            ctx.num_windows, ctx.num_heads, ctx.scale, ctx.tokens = num_windows, num_heads, scale, tokens
        return out_t

    @staticmethod
    def backward(ctx, grad_out_t):
        qkv_t, bias, *kept = ctx.saved_tensors
        num_windows, num_heads, scale, tokens = ctx.num_windows, ctx.num_heads, ctx.scale, ctx.tokens
        dim = qkv_t.shape[0] // 3
        d = dim // num_heads
        grad_qkv_t = torch.empty_like(qkv_t)  # (3C, B'T)
        grad_bias = qkv_t.new_zeros(num_heads, tokens, tokens)  # (nH, T, T)
        for i, (n0, n1, w0, w1, index, mask_rows) in enumerate(ctx.plan):
            n, w = n1 - n0, w1 - w0
            nb = (n - 1) * num_windows + w
            b0 = n0 * num_windows + w0
            cols = slice(b0 * tokens, (b0 + nb) * tokens)
            heads = _WindowAttentionFunction._heads(qkv_t, cols, num_heads, tokens, scale)
            q, k, v = (heads[j].view(num_heads * nb, d, tokens) for j in range(3))  # (nH*nb, d, T) each
            probs = kept[i] if kept else _WindowAttentionFunction._probs(q, k, bias, n, w, index, mask_rows)
            g = grad_out_t[:, cols].reshape(num_heads, d, nb, tokens).transpose(1, 2)  # (nH, nb, d, T)
            g = g.contiguous().view(num_heads * nb, d, tokens)  # dO^T per head and window
            grads = torch.empty_like(heads)  # (3, nH, nb, d, T)
            torch.bmm(g, probs, out=grads[2].view(num_heads * nb, d, tokens))  # dV^T = (P^T dO)^T
            grad_logits = torch.bmm(g.transpose(1, 2), v)  # (nH*nb, T, T) = dO V^T, gradient of P
            # softmax backward in place: P * (dP - sum(dP * P)) is the gradient of the logits
            torch._softmax_backward_data(grad_logits, probs, -1, probs.dtype, grad_input=grad_logits)
            grad_bias += grad_logits.view(num_heads, nb, tokens, tokens).sum(dim=1)
            torch.bmm(k, grad_logits.transpose(1, 2), out=grads[0].view(num_heads * nb, d, tokens))  # (dS K)^T
            grads[0].mul_(scale)
            torch.bmm(q, grad_logits, out=grads[1].view(num_heads * nb, d, tokens))  # (dS^T q)^T
            grad_qkv_t[:, cols].view(3, num_heads, d, nb, tokens).copy_(grads.permute(0, 1, 3, 2, 4))  # (3, nH, d, nb, T)
        return grad_qkv_t, grad_bias, None, None, None, None, None


class _PermuteTokens(torch.autograd.Function):
    """x[:, order] for (N, L, C) tokens; the backward is the inverse gather (no scatter-add)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)  # (N, L, C)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None  # (N, L, C)


class Mlp(nn.Module):
    """fc1 -> GELU (erf) -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside M x M windows with a learned relative-position bias (Swin)."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # (Mh, Mw)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5

        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]), torch.arange(window_size[1]),
                                            indexing='ij')).flatten(1)  # (2, T)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (T, T, 2)
        index = (relative[..., 0] + window_size[0] - 1) * (2 * window_size[1] - 1) + (relative[..., 1] + window_size[1] - 1)
        self.register_buffer('relative_position_index', index.contiguous())

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # The release draws the table after qkv/proj exist: keep that RNG order for seeded equality.
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def relative_position_bias(self):
        """(nH, T, T) bias gathered from the table."""
        t = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (T*T, nH)
        return bias.view(t, t, -1).permute(2, 0, 1).contiguous()  # (nH, T, T)

    def forward(self, x, mask=None, mask_flags=None):
        """x: windows (B', T, C), B' = N * nW; mask: (nW, T, T) or None. Returns (B', T, C).

        `mask_flags` (nW,) bool, which windows' masks are non-zero, is derived from `mask` when omitted.
        """
        b, t, c = x.shape
        num_windows = mask.shape[0] if mask is not None else b
        if b % num_windows:
            raise ValueError(f'models/hdr_transformer.py: {b} windows are not a whole number of images of '
                             f'{num_windows} windows (mask shape {tuple(mask.shape)})')
        bias = self.relative_position_bias()
        if self.training and self.attn_drop.p > 0:
            return self.proj_drop(self.proj(self._attend_reference(x, bias, mask)))
        tokens = x.reshape(b * t, c)  # (B'T, C)
        # channel-major q/k/v: every head becomes a plain strided matrix (see _WindowAttentionFunction)
        if self.qkv.bias is not None:
            qkv_t = torch.addmm(self.qkv.bias.unsqueeze(1), self.qkv.weight, tokens.t())  # (3C, B'T)
        else:
            qkv_t = torch.mm(self.qkv.weight, tokens.t())  # (3C, B'T)
        if mask is not None and mask_flags is None:
            mask_flags = _windows_with_mask(mask)
        out_t = _WindowAttentionFunction.apply(qkv_t, bias, mask, mask_flags, num_windows, self.num_heads,
                                               self.scale)  # (C, B'T)
        # proj reads the transposed view directly (BLAS transposes for free; no layout copy)
        return self.proj_drop(self.proj(out_t.t())).view(b, t, c)  # (B', T, C)

    def _attend_reference(self, x, bias, mask):
        """Unchunked attention in the release's op sequence (needed for attention dropout; a test oracle)."""
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B', nH, T, d)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1) + bias.unsqueeze(0)  # (B', nH, T, T)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(b // num_windows, num_windows, self.num_heads, t, t) + mask.unsqueeze(1).unsqueeze(0)  # (N, nW, nH, T, T)
            attn = attn.view(b, self.num_heads, t, t)  # (B', nH, T, T)
        attn = self.attn_drop(self.softmax(attn))
        return (attn @ v).transpose(1, 2).reshape(b, t, c)  # (B', T, C)


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
        z = self.fc(y.mean(dim=(1, 2)))  # (N, C): global average over the whole image
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


def _add_residual(shortcut, branch, drop_path):
    """shortcut + drop_path(branch); in training the per-sample DropPath scale is fused into one addcmul.

    The scale is drawn exactly as timm's DropPath draws it, so the RNG stream matches the release.
    """
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0:
        keep = 1.0 - drop_path.drop_prob
        scale = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)  # (N, 1, 1)
        if keep > 0.0 and drop_path.scale_by_keep:
            scale.div_(keep)
        return torch.addcmul(shortcut, branch, scale)
    return shortcut + drop_path(branch)


class ContextAwareTransformer(nn.Module):
    """Swin block (optionally shifted windows) plus a local-context branch added after the MLP residual."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        if min(self.input_resolution) <= self.window_size:
            # a window covering the whole (construction-time) image cannot be shifted
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f'models/hdr_transformer.py: shift_size {self.shift_size} must be in '
                             f'[0, window_size={self.window_size})')

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=to_2tuple(self.window_size), num_heads=num_heads,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        attn_mask = self.calculate_mask(self.input_resolution) if self.shift_size > 0 else None
        self.register_buffer('attn_mask', attn_mask)
        self.lce = LocalContextExtractor(self.dim)

    def calculate_mask(self, x_size):
        return compute_attention_mask(x_size[0], x_size[1], self.window_size, self.shift_size)

    def forward(self, x, x_size):
        """x: tokens (N, H*W, C); x_size: (H, W). Returns (N, H*W, C)."""
        h, w = x_size
        n, length, c = x.shape
        m = self.window_size
        _check_window_multiple(h, w, m)
        if length != h * w:
            raise ValueError(f'models/hdr_transformer.py: {length} tokens do not match x_size {h}x{w}')
        num_windows = (h // m) * (w // m)

        shortcut = x
        x = self.norm1(x)  # (N, L, C)
        lce_input = x.view(n, h, w, c).permute(0, 3, 1, 2)  # (N, C, H, W) channels-last view, unshifted

        mask = mask_flags = None
        if self.shift_size > 0:
            if tuple(x_size) == tuple(self.input_resolution):
                mask = self.attn_mask
            else:
                mask = compute_attention_mask(h, w, m, self.shift_size, device=x.device)
            mask_flags = _windows_with_mask(mask)
        order, inverse = _window_order(h, w, m, self.shift_size, x.device)

        windows = _PermuteTokens.apply(x, order, inverse).view(n * num_windows, m * m, c)  # (B', T, C)
        attended = self.attn(windows, mask, mask_flags).view(n, length, c)  # (N, L, C) in window order
        attended = _PermuteTokens.apply(attended, inverse, order)  # (N, L, C) image order, shift undone

        x = _add_residual(shortcut, attended, self.drop_path)
        x = _add_residual(x, self.mlp(self.norm2(x)), self.drop_path)
        return self.lce.add_to_tokens(lce_input, x)  # lce(norm1(input)) + x

    def extra_repr(self):
        return (f'dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}')


class BasicLayer(nn.Module):
    """`depth` context-aware blocks alternating plain and shifted windows."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, downsample=None,
                 use_checkpoint=False):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            ContextAwareTransformer(
                dim=dim, input_resolution=input_resolution, num_heads=num_heads, window_size=window_size,
                shift_size=0 if (i % 2 == 0) else window_size // 2, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path, norm_layer=norm_layer)
            for i in range(depth)])
        if downsample is not None:
            self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer)
        else:
            self.downsample = None

    def forward(self, x, x_size):
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, x_size, use_reentrant=False)
            else:
                x = block(x, x_size)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed(nn.Module):
    """Image (N, C, H, W) -> tokens (N, H*W, C), with an optional LayerNorm (patch_size 1: no projection)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
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
        if norm_layer is not None:
            self.norm = norm_layer(embed_dim)
        else:
            self.norm = None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)  # (N, H*W, C), a view
        if self.norm is not None:
            x = self.norm(x)
        return x


class PatchUnEmbed(nn.Module):
    """Tokens (N, H*W, C) -> image (N, C, H, W) (a channels-last strided view)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
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
        n = x.shape[0]
        return x.transpose(1, 2).view(n, self.embed_dim, x_size[0], x_size[1])  # (N, C, H, W)


class ContextAwareTransformerBlock(nn.Module):
    """CTB: six context-aware blocks, a dilated 3x3 conv on the image layout, and a residual."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, downsample=None,
                 use_checkpoint=False, img_size=224, patch_size=4, resi_connection='1conv'):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.residual_group = BasicLayer(
            dim=dim, input_resolution=input_resolution, depth=depth, num_heads=num_heads, window_size=window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
            drop_path=drop_path, norm_layer=norm_layer, downsample=downsample, use_checkpoint=use_checkpoint)
        if resi_connection != '1conv':
            raise ValueError(f"models/hdr_transformer.py: resi_connection {resi_connection!r} is not supported "
                             "(only '1conv', the release default, is specified)")
        self.dilated_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=2, dilation=2, bias=True)
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                      norm_layer=None)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim,
                                          norm_layer=None)

    def forward(self, x, x_size):
        y = self.patch_unembed(self.residual_group(x, x_size), x_size)  # (N, C, H, W)
        return self.patch_embed(self.dilated_conv(y)) + x  # (N, H*W, C)


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


class HDRTransformer(nn.Module):
    """HDR-Transformer (ECCV 2022). forward(x1, x2, x3): short, reference, long exposures (N, 6, H, W)."""

    def __init__(self, img_size=128, patch_size=1, in_chans=6, embed_dim=60, depths=(6, 6, 6),
                 num_heads=(6, 6, 6), window_size=8, mlp_ratio=2.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
                 use_checkpoint=False, resi_connection='1conv', **kwargs):
        super().__init__()
        if kwargs:
            logger.debug('HDRTransformer ignores keyword arguments %s (as the release does)', sorted(kwargs))
        if ape:
            raise ValueError('models/hdr_transformer.py: ape=True (absolute position embedding) is not '
                             'supported; the release default is False')
        depths, num_heads = list(depths), list(num_heads)
        num_out_ch = 3
        self.in_chans = in_chans
        self.window_size = window_size

        self.conv_f1 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_f2 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.conv_f3 = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.att_module_l = SpatialAttentionModule(embed_dim)
        self.att_module_h = SpatialAttentionModule(embed_dim)
        self.conv_first = nn.Conv2d(embed_dim * 3, embed_dim, 3, 1, 1)

        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.num_features = embed_dim
        self.mlp_ratio = mlp_ratio

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                      embed_dim=embed_dim, norm_layer=norm_layer if self.patch_norm else None)
        self.patches_resolution = self.patch_embed.patches_resolution
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                          embed_dim=embed_dim, norm_layer=norm_layer if self.patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)

        # stochastic depth rates rise linearly over all blocks
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i_layer in range(self.num_layers):
            self.layers.append(ContextAwareTransformerBlock(
                dim=embed_dim, input_resolution=(self.patches_resolution[0], self.patches_resolution[1]),
                depth=depths[i_layer], num_heads=num_heads[i_layer], window_size=window_size, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i_layer]):sum(depths[:i_layer + 1])], norm_layer=norm_layer,
                downsample=None, use_checkpoint=use_checkpoint, img_size=img_size, patch_size=patch_size,
                resi_connection=resi_connection))
        self.norm = norm_layer(self.num_features)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_last = nn.Conv2d(embed_dim, num_out_ch, 3, 1, 1)

        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # Linear and LayerNorm only: convolutions keep PyTorch's default init, as in the release.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def no_weight_decay(self):
        return {'absolute_pos_embed'}

    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table'}

    def forward_features(self, x):
        """(N, C, H, W) -> (N, C, H, W) through the three CTBs."""
        x_size = (x.shape[2], x.shape[3])
        x = self.pos_drop(self.patch_embed(x))  # (N, H*W, C)
        for layer in self.layers:
            x = layer(x, x_size)
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
