"""Test-time padding (the release's `chop`) and tiled inference in bounded memory."""
import torch
import torch.nn.functional as F


def chop_padding(size, multiple=8, mode='release'):
    """(before, after) padding of one side. 'release' pads `multiple - size % multiple`, i.e. a full 8 when the side
    is already a multiple of 8 (method.md, known flaw 2; kept so outputs match); 'clean' pads only what is needed."""
    pad = multiple - size % multiple
    if mode == 'clean':
        pad %= multiple
    elif mode != 'release':
        raise ValueError(f"pad mode '{mode}' is not 'release' or 'clean'")
    return pad // 2, pad - pad // 2


def padded_forward(fn, inputs, multiple=8, mode='release'):
    """Reflection-pad every input, run `fn(*inputs)`, crop the output back to the input size."""
    height, width = inputs[0].shape[-2:]
    top, bottom = chop_padding(height, multiple, mode)
    left, right = chop_padding(width, multiple, mode)
    if top + bottom + left + right == 0:
        return fn(*inputs)
    if max(top, bottom) >= height or max(left, right) >= width:
        raise ValueError(f'image {height}x{width} is too small to reflection-pad to a multiple of {multiple}')
    padded = [F.pad(x, (left, right, top, bottom), mode='reflect') for x in inputs]
    out = fn(*padded)
    return out[..., top:top + height, left:left + width]


def padded(fn, multiple=8, mode='release'):
    """`fn` wrapped so that `padded(fn)(*inputs)` pads, runs and crops (see `padded_forward`); the form
    `tiled_forward` and plain calls take."""
    def run(*inputs):
        return padded_forward(fn, inputs, multiple, mode)
    return run


def _tile_layout(size, tile, overlap):
    """(length, starts) of the fewest tiles of at most `tile` pixels that cover `size` with at least `overlap`
    pixels shared by neighbours, all of one length and evenly spaced.

    Fixed `tile`-sized windows at a fixed stride would waste most of the last one (1000 rows in tiles of 512
    with overlap 32: three full tiles for 1000 rows, 1.5x the work); equal shorter tiles do the same job with
    the least computation and memory."""
    if size <= tile:
        return size, [0]
    count = -(-(size - overlap) // (tile - overlap))  # ceil: tiles needed at the largest length
    length = -(-(size + (count - 1) * overlap) // count)  # ceil: shortest length that still overlaps enough
    # floor keeps every gap <= length - overlap (the exact spacing is at most that, an integer)
    starts = [k * (size - length) // (count - 1) for k in range(count)]
    return length, starts


def _ramp(length, overlap, at_start, at_end, device):
    """1 inside, rising linearly over `overlap` pixels at sides that touch another tile."""
    weight = torch.ones(length, device=device)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 1) / (overlap + 1)
        if not at_start:
            weight[:overlap] = torch.minimum(weight[:overlap], ramp)
        if not at_end:
            weight[-overlap:] = torch.minimum(weight[-overlap:], ramp.flip(0))
    return weight


def tiled_forward(fn, inputs, tile, overlap=32):
    """Run `fn` on overlapping windows of at most `tile` x `tile` pixels (equal, evenly spaced, see
    `_tile_layout`) and blend them with linear ramps in the overlaps.

    Peak memory is that of one tile plus the output; the result differs from a whole-image pass only near tile
    seams, by the networks' border effects (tests state the tolerance)."""
    if tile <= 0:
        return fn(*inputs)
    if overlap < 0 or overlap >= tile:
        raise ValueError(f'--tile_overlap {overlap} must be in [0, --tile {tile})')
    height, width = inputs[0].shape[-2:]
    if height <= tile and width <= tile:
        return fn(*inputs)
    out = None
    weight_sum = None
    (tile_h, rows), (tile_w, cols) = _tile_layout(height, tile, overlap), _tile_layout(width, tile, overlap)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            window = [x[..., top:top + tile_h, left:left + tile_w] for x in inputs]
            piece = fn(*window)
            h, w = piece.shape[-2:]
            wy = _ramp(h, overlap, i == 0, i == len(rows) - 1, piece.device)
            wx = _ramp(w, overlap, j == 0, j == len(cols) - 1, piece.device)
            weight = (wy[:, None] * wx[None, :]).to(piece.dtype)  # (h, w)
            if out is None:
                out = piece.new_zeros(piece.shape[:-2] + (height, width))
                weight_sum = piece.new_zeros((height, width))
            out[..., top:top + h, left:left + w] += piece * weight
            weight_sum[top:top + h, left:left + w] += weight
    return out / weight_sum
