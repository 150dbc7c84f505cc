"""Swin-style window-attention layers shared by the transformer backbones (HDR-Transformer and SCTNet).

Pure nn.Module / autograd code (torch and timm's layers only), so backbone files may import it
(tests/test_layers.py). Attribute names are the releases' checkpoint keys: never rename them.

* Window geometry: `window_partition` / `window_reverse`, `shifted_window_mask`, `window_order` (cyclic shift +
  partition as one token permutation) and `WindowPlan` (the orders and mask of one runtime size, built once per
  forward and shared by every block).
* `WindowAttentionFunction`: softmax(q k^T * scale + bias [+ mask]) v over windows, in chunks of `CHUNK_WINDOWS`
  windows with a hand-written backward, so the (windows, heads, T, T) attention maps never exist in full;
  `WindowAttention` is the module around it (learned relative-position bias). Under bf16 autocast on
  `SDPA_DEVICES` it calls F.scaled_dot_product_attention instead (`forward_sdpa`); float32 runs never do.
* `layer_norm` / `TokenLayerNorm` (LayerNorm; bf16 on a CPU through float32, which is faster), `TokenLinear` (a
  Linear run as a 1x1 convolution on a CPU, faster), `Mlp`,
  `add_residual` (DropPath fused into the residual), `SwinTransformerBlock`, `BasicLayer`, `ResidualGroup` (a
  BasicLayer, a conv on the image layout, a residual: HDR-Transformer's CTB and SCTNet's GSAB), `PatchEmbed` /
  `PatchUnEmbed`, and `SwinTrunk`, the base class that builds both networks' stack of groups.

The two backbones once had a copy each of this code, and the copies had drifted; where they differed, one
behaviour was picked and the reason is given where it is implemented. None of the choices changes either
network's outputs (the golden tests of both compare against the releases).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable
from timm.layers import DropPath, to_2tuple, trunc_normal_

# Windows per attention chunk. Kept from SCTNet (HDR-Transformer used 512): the chunk's probabilities are
# (heads * windows, T, T) float32 = 6 * 256 * 64 * 64 * 4 B = 24 MiB, under glibc's 32 MiB mmap ceiling, so a
# chunk's buffers are recycled from the heap instead of being mapped and page-faulted afresh for every chunk.
# Only speed and memory depend on it, not the values. Read at call time (tests shrink it).
CHUNK_WINDOWS = 256

# Devices on which bf16 window attention goes through F.scaled_dot_product_attention (with autograd's own backward
# when a gradient is needed). Not the CPU, by measurement: without gradients torch 2.14's fused CPU kernel is slower
# than the chunked function's bf16 GEMMs on these tiny heads (T = 64 tokens, d = 10 channels): a whole 512x512
# inference on a Zen 4 with avx512_bf16, 2 threads, took 1.34x (HDR-Transformer) and 1.48x (SCTNet) the time with
# SDPA, same outputs to bf16 rounding (bench/results/attention_path_amd_epyc_f25_m17.json; bench/attention_path.py
# re-measures on the machine at hand). With a gradient the learnable bias sends it to the float32 math fallback.
# Read at call time.
SDPA_DEVICES = ('cuda',)

# Devices on which a bf16 LayerNorm runs as float32 between two casts (`layer_norm`): the CPU, by measurement
# (bench/layer_norm_path.py). Read at call time.
LAYER_NORM_FLOAT32_DEVICES = ('cpu',)


# ------------------------------------------------------------------------------------------------ geometry

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


def check_window_multiple(height, width, window_size):
    """The windows tile the image exactly; the releases fail with a RuntimeError otherwise."""
    if height % window_size or width % window_size or height < window_size or width < window_size:
        raise RuntimeError(
            f'models/transformer_layers.py: input size {height}x{width} is not a positive multiple of the '
            f'window size {window_size}; pad the inputs (the release test path reflection-pads them)')


def shifted_window_mask(height, width, window_size, shift_size, device=None):
    """Shifted-window mask (nW, M*M, M*M): 0 between tokens of the same region, -100 otherwise."""
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


def windows_with_mask(mask):
    """Per window: does its mask hold any non-zero entry? (Only windows on the last row/column do.)"""
    return mask.reshape(mask.shape[0], -1).ne(0).any(dim=1)  # (nW,) bool


@functools.lru_cache(maxsize=64)
def masked_windows(height, width, window_size, shift_size):
    """The windows (row-major indices) whose shifted-window mask holds non-zeros, from the geometry alone: those of
    the last window row and column, where the rolled-in bands meet. Equal to windows_with_mask(shifted_window_mask(..))
    but computed on the host, so a GPU forward waits for nothing (a nonzero().tolist() per block did)."""
    if shift_size <= 0:
        return ()
    rows, cols = height // window_size, width // window_size
    return tuple(r * cols + c for r in range(rows) for c in range(cols) if r == rows - 1 or c == cols - 1)


@functools.lru_cache(maxsize=256)
def _window_index(local, device):
    """A chunk's masked windows as an index tensor on `device`, made once (a host-to-device copy waits)."""
    return torch.tensor(local, dtype=torch.long, device=device)


def window_order(height, width, window_size, shift_size, device=None):
    """Token permutation (and its inverse) for "roll by -shift, then partition into windows".

    `tokens.index_select(1, order)` on (N, H*W, C) equals the partition of the rolled (N, H, W, C) map,
    flattened; `inverse` undoes it. One gather replaces torch.roll's passes and the partition copy.
    """
    m = window_size
    grid = torch.arange(height * width, device=device).view(height, width)  # (H, W)
    if shift_size > 0:
        grid = torch.roll(grid, shifts=(-shift_size, -shift_size), dims=(0, 1))
    order = grid.view(height // m, m, width // m, m).permute(0, 2, 1, 3).reshape(-1)  # (H*W,) window-major
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    return order, inverse


class WindowPlan:
    """Token orders and the shifted-window mask for one runtime size, built once per forward.

    Every block of a network needs the same two orders (shift 0 and shift M/2) and, at sizes other than the one
    its stored masks were built for, the same mask; the releases rebuild both in every block.
    """

    def __init__(self, height, width, window_size, shift_size, device=None, with_mask=True):
        check_window_multiple(height, width, window_size)
        self.size = (height, width)
        self.window_size = window_size
        self.orders = {0: window_order(height, width, window_size, 0, device)}
        if shift_size > 0:
            self.orders[shift_size] = window_order(height, width, window_size, shift_size, device)
        self.mask = (shifted_window_mask(height, width, window_size, shift_size, device=device)
                     if with_mask and shift_size > 0 else None)

    def serves(self, size, window_size, shift_size):
        return self.size == tuple(size) and self.window_size == window_size and shift_size in self.orders


class PermuteTokens(torch.autograd.Function):
    """x[:, order] for (N, L, C) tokens; the backward is the inverse gather (no scatter-add)."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)  # (N, L, C)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None  # (N, L, C)


# ----------------------------------------------------------------------------------------------- attention

def _chunks(batch, num_windows, target):
    """Split (batch, windows) into blocks of about `target` windows: (n0, n1, w0, w1).

    A block is either whole images or part of one image, so a block's masks are one slice of the mask.
    """
    if num_windows >= target:
        for n in range(batch):
            for w0 in range(0, num_windows, target):
                yield n, n + 1, w0, min(w0 + target, num_windows)
    else:
        step = max(1, target // num_windows)
        for n0 in range(0, batch, step):
            yield n0, min(n0 + step, batch), 0, num_windows


class WindowAttentionFunction(torch.autograd.Function):
    """softmax(scale*q k^T + bias + mask) v for every window and head, from channel-major q/k/v.

    qkv_t: (3C, B'*T), row (j*C + h*d + i) for j in (q, k, v), head h, channel i; column b*T + p for window b
    and token p; window b belongs to image b // nW and uses mask[b % nW]. bias: (nH, T, T); mask: (nW, T, T)
    or None (never differentiated); mask_flags: which windows' masks hold non-zeros, as a tuple of window indices
    (host-side, see masked_windows) or an (nW,) bool tensor (read back to the host: a sync on a GPU).
    Returns out_t (C, B'*T), rows (h*d + i).

    Windows are processed in chunks of `CHUNK_WINDOWS`; within a chunk q/k/v are copied once to
    (head, window, d, T) so that every product is one batched GEMM over all heads and windows, and the
    attention-sized work is a handful of large in-place ops. The per-element operation order is the releases'
    (q scaled before the product, bias added before the mask). The probabilities are kept for the backward
    only when a gradient is needed; otherwise they live one chunk at a time.
    """

    @staticmethod
    def _plan(mask, mask_flags, batch, num_windows):
        """Chunks (n0, n1, w0, w1) with the chunk's masked windows (local indices) and their mask rows."""
        if mask is None:
            masked = ()
        elif torch.is_tensor(mask_flags):
            masked = torch.nonzero(mask_flags).flatten().tolist()
        else:
            masked = mask_flags
        plan = []
        for n0, n1, w0, w1 in _chunks(batch, num_windows, CHUNK_WINDOWS):
            local = tuple(i - w0 for i in masked if w0 <= i < w1)
            if local:
                index = _window_index(local, mask.device)
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
        heads[0].mul_(scale)  # same rounding as the releases' q * scale
        return heads

    @staticmethod
    def _probs(q, k, bias, n, w, index, mask_rows):
        """softmax(q^T k + bias (+ mask)) for one chunk: q, k (nH*nb, d, T) -> (nH*nb, T, T).

        The mask is added to the masked windows only, after the bias (HDR-Transformer's copy; SCTNet's added a
        precomputed bias + mask to every window): the releases' rounding order, and no (nW, nH, T, T) sum to
        build. The two orders differ only in logits pushed to -100, whose probabilities round the same.
        """
        num_heads, tokens = bias.shape[0], bias.shape[-1]
        probs = torch.bmm(q.transpose(1, 2), k)  # logits (nH*nb, T, T)
        probs.view(num_heads, -1, tokens, tokens).add_(bias.unsqueeze(1))  # += (nH, 1, T, T)
        if index is not None:
            # under autocast the logits are bf16/fp16 while the mask stays fp32; index_add_ needs one dtype
            probs.view(num_heads, n, w, tokens, tokens).index_add_(
                2, index, mask_rows.to(probs.dtype).expand(num_heads, n, -1, -1, -1))  # masked windows += rows
        return torch._softmax(probs, -1, False, out=probs)  # in place: the logits are not needed again

    @staticmethod
    def _chunk_slices(plan, num_windows, tokens):
        """Per chunk: its windows nb, its token columns, and its plan entry."""
        for entry in plan:
            n0, n1, w0, w1 = entry[:4]
            nb = (n1 - n0 - 1) * num_windows + (w1 - w0)
            b0 = n0 * num_windows + w0
            yield nb, slice(b0 * tokens, (b0 + nb) * tokens), entry

    @staticmethod
    def forward(ctx, qkv_t, bias, mask, mask_flags, num_windows, num_heads, scale):
        c3, total = qkv_t.shape
        dim = c3 // 3
        d = dim // num_heads
        tokens = bias.shape[-1]
        batch = total // tokens // num_windows
        keep = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if bias.dtype != qkv_t.dtype:
            # under autocast the logits are bf16 and the bias a float32 parameter: adding it as it is promotes every
            # chunk's logits to float32 and back (an attention-sized round trip); one (nH, T, T) cast instead.
            # Float32 runs never enter here.
            bias = bias.to(qkv_t.dtype)
        out_t = qkv_t.new_empty(dim, total)  # (C, B'T)
        plan = WindowAttentionFunction._plan(mask, mask_flags, batch, num_windows)
        kept = []
        for nb, cols, (n0, n1, w0, w1, index, mask_rows) in WindowAttentionFunction._chunk_slices(
                plan, num_windows, tokens):
            heads = WindowAttentionFunction._heads(qkv_t, cols, num_heads, tokens, scale)
            q, k, v = (heads[j].view(num_heads * nb, d, tokens) for j in range(3))  # (nH*nb, d, T) each
            probs = WindowAttentionFunction._probs(q, k, bias, n1 - n0, w1 - w0, index, mask_rows)
            o_t = torch.bmm(v, probs.transpose(1, 2))  # (nH*nb, d, T) = (P V)^T
            out_t[:, cols].view(num_heads, d, nb, tokens).copy_(
                o_t.view(num_heads, nb, d, tokens).transpose(1, 2))  # (nH, d, nb, T)
            if keep:
                kept.append(probs)
        if keep:
            ctx.save_for_backward(qkv_t, bias, *kept)
            ctx.plan = plan
            ctx.num_windows, ctx.num_heads, ctx.scale, ctx.tokens = num_windows, num_heads, scale, tokens
        return out_t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out_t):
        qkv_t, bias, *kept = ctx.saved_tensors
        num_windows, num_heads, scale, tokens = ctx.num_windows, ctx.num_heads, ctx.scale, ctx.tokens
        d = qkv_t.shape[0] // 3 // num_heads
        grad_qkv_t = torch.empty_like(qkv_t)  # (3C, B'T)
        # the bias gradient sums over every window: the chunks' sums are accumulated in at least float32 whatever the
        # logits' dtype (sum(dtype=float32) of bf16 logits would copy them to float32 first); float64 stays float64
        grad_bias = torch.zeros(num_heads, tokens, tokens, dtype=torch.promote_types(qkv_t.dtype, torch.float32),
                                device=qkv_t.device)  # (nH, T, T)
        for (nb, cols, _), probs in zip(WindowAttentionFunction._chunk_slices(ctx.plan, num_windows, tokens), kept):
            heads = WindowAttentionFunction._heads(qkv_t, cols, num_heads, tokens, scale)
            q, k, v = (heads[j].view(num_heads * nb, d, tokens) for j in range(3))  # (nH*nb, d, T) each
            g = grad_out_t[:, cols].reshape(num_heads, d, nb, tokens).transpose(1, 2)  # (nH, nb, d, T)
            g = g.contiguous().view(num_heads * nb, d, tokens)  # dO^T per head and window
            grads = torch.empty_like(heads)  # (3, nH, nb, d, T)
            torch.bmm(g, probs, out=grads[2].view(num_heads * nb, d, tokens))  # dV^T = (P^T dO)^T
            grad_logits = torch.bmm(g.transpose(1, 2), v)  # (nH*nb, T, T) = dO V^T, gradient of P
            # softmax backward in place: P * (dP - sum(dP * P)) is the gradient of the logits
            torch._softmax_backward_data(grad_logits, probs, -1, probs.dtype, grad_input=grad_logits)
            grad_bias += grad_logits.view(num_heads, nb, tokens, tokens).sum(dim=1)  # a bf16 chunk sum, added in fp32
            torch.bmm(k, grad_logits.transpose(1, 2), out=grads[0].view(num_heads * nb, d, tokens))  # (dS K)^T
            grads[0].mul_(scale)
            torch.bmm(q, grad_logits, out=grads[1].view(num_heads * nb, d, tokens))  # (dS^T q)^T
            grad_qkv_t[:, cols].view(3, num_heads, d, nb, tokens).copy_(grads.permute(0, 1, 3, 2, 4))  # (3, nH, d, nb, T)
        return grad_qkv_t, grad_bias, None, None, None, None, None


def _dropout(module, x):
    """Dropout that skips the call when p = 0 (every dropout in SelfHDR's configurations): same values."""
    return module(x) if module.p > 0 else x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside M x M windows with a learned relative-position bias (Swin)."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size  # (Mh, Mw)
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5

        mh, mw = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * mh - 1) * (2 * mw - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(mh), torch.arange(mw), indexing='ij')).flatten(1)  # (2, T)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (T, T, 2)
        index = (relative[..., 0] + mh - 1) * (2 * mw - 1) + (relative[..., 1] + mw - 1)
        self.register_buffer('relative_position_index', index.contiguous())

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # The releases draw the table after qkv/proj exist: keep that RNG order for seeded equality.
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.softmax = nn.Softmax(dim=-1)

    def relative_position_bias(self):
        """(nH, T, T) bias gathered from the table."""
        t = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (T*T, nH)
        return bias.view(t, t, -1).permute(2, 0, 1).contiguous()  # (nH, T, T)

    def forward(self, x, mask=None, mask_flags=None):
        """x: windows (B', T, C), B' = N * nW; mask: (nW, T, T) additive or None. Returns (B', T, C).

        `mask_flags` (window indices, or an (nW,) bool tensor), which windows' masks are non-zero, is derived from
        `mask` when omitted (a host sync on a GPU: blocks pass masked_windows(...) instead).
        """
        b, t, c = x.shape
        num_windows = mask.shape[0] if mask is not None else b
        if b % num_windows:
            raise ValueError(f'models/transformer_layers.py: {b} windows are not a whole number of images of '
                             f'{num_windows} windows (mask shape {tuple(mask.shape)})')
        if self.training and self.attn_drop.p > 0:
            return self.forward_reference(x, mask)
        if self.sdpa_applies(x):
            return self.forward_sdpa(x, mask, mask_flags, num_windows)
        # Channel-major q/k/v (HDR-Transformer's copy; SCTNet's took qkv = Linear(x) token-major and handed proj a
        # contiguous copy of the output): every head is a plain strided matrix and proj reads the transposed
        # output as it is. Float32 outputs are the same bits either way; bf16 autocast rounds differently.
        tokens = x.reshape(b * t, c)  # (B'T, C)
        if self.qkv.bias is not None:
            qkv_t = torch.addmm(self.qkv.bias.unsqueeze(1), self.qkv.weight, tokens.t())  # (3C, B'T)
        else:
            qkv_t = torch.mm(self.qkv.weight, tokens.t())  # (3C, B'T)
        if mask is not None and mask_flags is None:
            mask_flags = windows_with_mask(mask)
        out_t = WindowAttentionFunction.apply(qkv_t, self.relative_position_bias(), mask, mask_flags, num_windows,
                                              self.num_heads, self.scale)  # (C, B'T)
        return _dropout(self.proj_drop, self.proj(out_t.t())).view(b, t, c)  # (B', T, C)

    def sdpa_applies(self, x):
        """Whether this call takes `forward_sdpa`: under bf16 autocast (float32 runs keep the releases' bits) on one
        of `SDPA_DEVICES`."""
        device = x.device.type
        return (device in SDPA_DEVICES and torch.is_autocast_enabled(device)
                and torch.get_autocast_dtype(device) == torch.bfloat16)

    def forward_sdpa(self, x, mask, mask_flags, num_windows):
        """Window attention in bf16 through F.scaled_dot_product_attention (the fused kernels of `SDPA_DEVICES`).

        q, k, v are strided views of the token-major qkv product and SDPA's output is laid out (B', T, nH, d), so
        no copy is made on either side. Every window is attended with the bias alone; the masked windows (the last
        window row and column, where the shifted bands meet) are attended again with bias + mask and written over
        their first result, so no (windows, nH, T, T) mask is built. x: (B', T, C) -> (B', T, C).
        """
        b, t, c = x.shape
        nh = self.num_heads
        d = c // nh
        qkv = self.qkv(x).view(b, t, 3, nh, d).permute(2, 0, 3, 1, 4)  # (3, B', nH, T, d) views
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias().to(q.dtype)  # (nH, T, T), one small cast per call
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)  # (B', nH, T, d)
        if mask is not None:
            if mask_flags is None:
                mask_flags = windows_with_mask(mask)
            masked = tuple(torch.nonzero(mask_flags).flatten().tolist()) if torch.is_tensor(mask_flags) \
                else tuple(mask_flags)
            if masked:
                n = b // num_windows
                index = _window_index(masked, x.device)  # (k,)

                def pick(z):  # (B', nH, T, e) -> the masked windows of every image, (N*k, nH, T, e)
                    return z.reshape(n, num_windows, nh, t, -1).index_select(1, index).flatten(0, 1)

                rows = (bias.unsqueeze(0) + mask.index_select(0, index).to(q.dtype).unsqueeze(1))  # (k, nH, T, T)
                out_masked = F.scaled_dot_product_attention(pick(q), pick(k), pick(v), attn_mask=rows.repeat(n, 1, 1, 1),
                                                            scale=self.scale)  # (N*k, nH, T, d)
                out = out.reshape(n, num_windows, nh, t, d).index_copy(
                    1, index, out_masked.view(n, len(masked), nh, t, d)).flatten(0, 1)  # (B', nH, T, d)
        return _dropout(self.proj_drop, self.proj(out.transpose(1, 2).reshape(b, t, c)))  # (B', T, C)

    def forward_reference(self, x, mask=None):
        """Unchunked attention in the releases' op sequence (needed for attention dropout; a test oracle)."""
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B', nH, T, d)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)  # (B', nH, T, T)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(b // num_windows, num_windows, self.num_heads, t, t) + mask.unsqueeze(1).unsqueeze(0)  # (N, nW, nH, T, T)
            attn = attn.view(b, self.num_heads, t, t)  # (B', nH, T, T)
        attn = _dropout(self.attn_drop, self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(b, t, c)  # (B', nH, T, d) -> (B', T, C)
        return _dropout(self.proj_drop, self.proj(x))


# -------------------------------------------------------------------------------------------------- blocks

class Float32LayerNormFunction(torch.autograd.Function):
    """LayerNorm of a bf16 input computed in float32 and returned in bf16, saving the bf16 input (not its float32
    copy) and the float32 statistics for the backward, so training holds no more than torch's bf16 kernel would."""

    @staticmethod
    def forward(ctx, x, normalized_shape, weight, bias, eps):
        with torch.autocast(x.device.type, enabled=False):
            out, mean, rstd = torch.ops.aten.native_layer_norm(x.float(), normalized_shape, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.normalized_shape = normalized_shape
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[2],
                bias is not None and ctx.needs_input_grad[3]]
        with torch.autocast(x.device.type, enabled=False):
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_layer_norm_backward(
                grad_out.float(), x.float(), ctx.normalized_shape, mean, rstd, weight, bias, mask)
        return (grad_x.to(x.dtype) if grad_x is not None else None), None, grad_weight, grad_bias, None


def layer_norm(x, normalized_shape, weight, bias, eps=1e-5):
    """F.layer_norm; a bf16 input on a CPU (`LAYER_NORM_FLOAT32_DEVICES`) is normalised in float32 and cast back
    (`Float32LayerNormFunction`). Torch 2.14's CPU kernel for bf16 input is slower than the cast in, the float32
    kernel and the cast out (60 channels, 2 threads, Zen 5: 13.0 against 8.4 ms for 512x512 tokens; forward and
    backward of a training batch, 10.7 against 7.9 ms; the Zen 4's profile had bf16 LayerNorm at 2.5x its float32
    time). Both keep the statistics in float32; the outputs differ only in bf16 rounding. Float32 inputs take
    F.layer_norm unchanged."""
    if (x.dtype == torch.bfloat16 and x.device.type in LAYER_NORM_FLOAT32_DEVICES
            and all(t is None or t.dtype == torch.float32 for t in (weight, bias))):
        return Float32LayerNormFunction.apply(x, list(normalized_shape), weight, bias, eps)
    return F.layer_norm(x, normalized_shape, weight, bias, eps)


class TokenLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the tokens' channels (same parameters, state_dict keys and float32 values) through
    `layer_norm`, the faster form under bf16 autocast on a CPU: every norm of both transformer backbones."""

    def forward(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class TokenLinear(nn.Linear):
    """nn.Linear over the last axis of tokens (same parameters and state_dict keys). On a CPU, contiguous tokens go
    through a 1x1 convolution over a channels-last view of them: oneDNN runs it 2.5-3x faster than the GEMM torch
    picks for these narrow layers (60 -> 180 channels over 512x512 tokens, 2 threads, Zen 5: 368 against 135 GFLOP/s
    in float32, 594 against 384 in bf16; forward and backward 199 against 108), with the same float32 values to the
    last bit in that measurement (the golden tests hold them to 1e-5)."""

    def forward(self, x):
        if x.device.type != 'cpu' or x.dim() < 2 or x.numel() == 0 or not x.is_contiguous():
            return F.linear(x, self.weight, self.bias)
        k = x.shape[-1]
        rows = x.numel() // k
        image = x.reshape(1, rows, 1, k).permute(0, 3, 1, 2)  # (1, k, rows, 1), channels-last: no copy
        out = F.conv2d(image, self.weight.view(self.out_features, k, 1, 1), self.bias)  # (1, n, rows, 1) channels-last
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], self.out_features)  # (..., n)


class Mlp(nn.Module):
    """Token-wise fc1 -> GELU (erf) -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = TokenLinear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = TokenLinear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return _dropout(self.drop, self.fc2(_dropout(self.drop, self.act(self.fc1(x)))))


def add_residual(shortcut, branch, drop_path):
    """shortcut + drop_path(branch); in training the per-sample DropPath scale is fused into one addcmul.

    The scale is drawn exactly as timm's DropPath draws it, so the RNG stream matches the releases. Any rate
    above 0 takes the fused path (HDR-Transformer's copy; SCTNet's left a rate of 1 to timm): at rate 1 the
    draws are zeros and, as in timm, nothing is divided by the keep probability 0.
    """
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0:
        keep = 1.0 - drop_path.drop_prob
        scale = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)  # (N, 1, 1)
        if keep > 0.0 and drop_path.scale_by_keep:
            scale.div_(keep)
        return torch.addcmul(shortcut, branch, scale)
    return shortcut + drop_path(branch)


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm with residuals, on (N, H*W, C) tokens."""

    def __init__(self, dim, input_resolution, num_heads, window_size=8, shift_size=0, mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU,
                 norm_layer=TokenLayerNorm):
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
            raise ValueError(f'models/transformer_layers.py: shift_size {self.shift_size} must be in '
                             f'[0, window_size={self.window_size})')

        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size=to_2tuple(self.window_size), num_heads=num_heads,
                                    qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        attn_mask = (shifted_window_mask(*self.input_resolution, self.window_size, self.shift_size)
                     if self.shift_size > 0 else None)
        self.register_buffer('attn_mask', attn_mask)

    def check_size(self, x, x_size):
        """Both copies now check (SCTNet's had no check: it pads its input, so valid calls never fail it)."""
        h, w = x_size
        check_window_multiple(h, w, self.window_size)
        if x.shape[1] != h * w:
            raise ValueError(f'models/transformer_layers.py: {x.shape[1]} tokens do not match x_size {h}x{w}')

    def forward(self, x, x_size, plan=None):
        """x: tokens (N, H*W, C) of an H x W image; plan: the forward's shared WindowPlan. Returns (N, H*W, C)."""
        self.check_size(x, x_size)
        return self.attention_and_mlp(x, self.norm1(x), x_size, plan)

    def attention_and_mlp(self, x, normed, x_size, plan=None):
        """x + window attention of `normed` (= norm1(x)), then the MLP residual. x: (N, H*W, C)."""
        h, w = x_size
        n, length, c = x.shape
        m, s = self.window_size, self.shift_size
        if plan is None or not plan.serves((h, w), m, s):
            plan = WindowPlan(h, w, m, s, device=x.device, with_mask=(h, w) != tuple(self.input_resolution))
        if s == 0:
            mask = None
        elif (h, w) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = plan.mask if plan.mask is not None else shifted_window_mask(h, w, m, s, device=x.device)
        order, inverse = plan.orders[s]

        windows = PermuteTokens.apply(normed, order, inverse).view(-1, m * m, c)  # (N*nW, T, C) shifted windows
        flags = masked_windows(h, w, m, s) if mask is not None else None
        attended = self.attn(windows, mask, flags).view(n, length, c)  # (N, L, C) in window order
        attended = PermuteTokens.apply(attended, inverse, order)  # (N, L, C) image order, shift undone
        x = add_residual(x, attended, self.drop_path)
        return add_residual(x, self.mlp(self.norm2(x)), self.drop_path)

    def extra_repr(self):
        return (f'dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, shift_size={self.shift_size}, mlp_ratio={self.mlp_ratio}')


class BasicLayer(nn.Module):
    """`depth` blocks of `block_class`, alternating plain and shifted windows."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=TokenLayerNorm, downsample=None,
                 use_checkpoint=False, block_class=SwinTransformerBlock):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            block_class(dim=dim, input_resolution=input_resolution, num_heads=num_heads, window_size=window_size,
                        shift_size=0 if (i % 2 == 0) else window_size // 2, mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                        drop_path=drop_path[i] if isinstance(drop_path, list) else drop_path, norm_layer=norm_layer)
            for i in range(depth)])
        self.downsample = downsample(input_resolution, dim=dim, norm_layer=norm_layer) if downsample else None

    def forward(self, x, x_size, plan=None):
        for block in self.blocks:
            # Checkpoint only when a backward will follow (HDR-Transformer's guard; SCTNet's copy checkpointed
            # under no_grad too, which only costs time and warns). Values are the same either way.
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, x_size, plan, use_reentrant=False)
            else:
                x = block(x, x_size, plan)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class _PatchLayout(nn.Module):
    """The releases' image <-> token reshapes keep these plain attributes (patch_size 1: no projection)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.patches_resolution = [self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1]]
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim


class PatchEmbed(_PatchLayout):
    """Image (N, C, H, W) -> tokens (N, H*W, C), with an optional LayerNorm."""

    def __init__(self, img_size=128, patch_size=1, in_chans=60, embed_dim=60, norm_layer=None):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        # (N, H*W, C) made contiguous: from a channels-first image the view is strided, and every later residual
        # add, LayerNorm and token gather inherits that layout (7x slower bf16 adds, measured). The trunk's convs
        # return channels-first maps too, so this is one copy per group, far cheaper than what it saves. Values are
        # unchanged.
        x = x.flatten(2).transpose(1, 2).contiguous()
        if self.norm is not None:
            x = self.norm(x)
        return x


class PatchUnEmbed(_PatchLayout):
    """Tokens (N, H*W, C) -> image (N, C, H, W), a channels-last strided view (no parameters; the releases
    accept and ignore a norm_layer here)."""

    def __init__(self, img_size=128, patch_size=1, in_chans=60, embed_dim=60, norm_layer=None):
        super().__init__(img_size, patch_size, in_chans, embed_dim)

    def forward(self, x, x_size):
        return x.transpose(1, 2).view(x.shape[0], self.embed_dim, x_size[0], x_size[1])  # (N, C, H, W)


class ResidualGroup(nn.Module):
    """A BasicLayer of blocks, a conv on the image layout, plus the input (HDR-Transformer's CTB, SCTNet's GSAB).

    Subclasses register their conv (its name is a checkpoint key) after this constructor and apply it in
    `image_conv`.
    """

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=TokenLayerNorm, downsample=None,
                 use_checkpoint=False, img_size=128, patch_size=1, resi_connection='1conv',
                 block_class=SwinTransformerBlock):
        super().__init__()
        if resi_connection != '1conv':
            raise ValueError(f"models/transformer_layers.py: resi_connection {resi_connection!r} is not supported "
                             "(only '1conv', the releases' default, is specified)")
        self.dim = dim
        self.input_resolution = input_resolution
        self.residual_group = BasicLayer(
            dim=dim, input_resolution=input_resolution, depth=depth, num_heads=num_heads, window_size=window_size,
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
            drop_path=drop_path, norm_layer=norm_layer, downsample=downsample, use_checkpoint=use_checkpoint,
            block_class=block_class)
        # parameter-free, so registering them before the subclass's conv leaves the state_dict order as released
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=0, embed_dim=dim)

    def image_conv(self, image):
        raise NotImplementedError

    def forward(self, x, x_size, plan=None):
        """x: tokens (N, H*W, C) -> (N, H*W, C)."""
        image = self.patch_unembed(self.residual_group(x, x_size, plan), x_size)  # (N, C, H, W)
        return self.patch_embed(self.image_conv(image)) + x


# ---------------------------------------------------------------------------------------------------- trunk

class SwinTrunk(nn.Module):
    """Base of the transformer backbones: the token stack (patch embedding, groups of window-attention blocks,
    stochastic-depth rates), the releases' weight init, and the forward's WindowPlan."""

    def build_trunk(self, group_class, img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
                    qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path_rate, norm_layer, ape, patch_norm,
                    use_checkpoint, resi_connection):
        """Registers patch_embed, patch_unembed, pos_drop and `layers` (one `group_class` per depth) in the
        releases' order, so that seeded construction draws the releases' initial values."""
        if ape:
            raise ValueError(f'{type(self).__name__}: ape=True (absolute position embedding) is not supported; '
                             'the release default is False')
        depths, num_heads = list(depths), list(num_heads)
        self.window_size = window_size
        self.num_layers = len(depths)
        self.embed_dim = self.num_features = embed_dim
        self.ape, self.patch_norm, self.mlp_ratio = ape, patch_norm, mlp_ratio
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                      embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None)
        self.patches_resolution = self.patch_embed.patches_resolution
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                          embed_dim=embed_dim)
        self.pos_drop = nn.Dropout(p=drop_rate)
        # stochastic depth rates rise linearly over all blocks
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList([
            group_class(
                dim=embed_dim, input_resolution=tuple(self.patches_resolution), depth=depths[i],
                num_heads=num_heads[i], window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer, downsample=None,
                use_checkpoint=use_checkpoint, img_size=img_size, patch_size=patch_size,
                resi_connection=resi_connection)
            for i in range(self.num_layers)])

    @staticmethod
    def _init_weights(m):
        # Linear and LayerNorm only: convolutions keep PyTorch's default init, as in the releases.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def window_plan(self, x_size, device):
        """Token orders (and, away from img_size, the mask) for this forward's size, shared by all blocks."""
        return WindowPlan(x_size[0], x_size[1], self.window_size, self.window_size // 2, device=device,
                          with_mask=tuple(x_size) != tuple(self.patches_resolution))
