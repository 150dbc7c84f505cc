"""Test-time padding (the release's `chop`) and tiled inference in bounded memory."""
import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


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
    seams, by the networks' border effects (tests state the tolerance). A tiled result is float32 whatever the
    forward's dtype."""
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
            piece = fn(*window).float()  # blended in fp32: a bf16 forward's tiles summed in bf16 lose 8 bits
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


# ------------------------------------------------------------------------------------------ memory and --tile auto
GIB = 1 << 30
MIN_TILE = 96  # below this the overlap is most of every tile; an image that needs smaller tiles does not fit
MAX_AUTO_TILE = 768  # larger tiles save little work (the overlap costs ~9% at 768) and cost memory
# A tiled run also holds the whole image's fp32 output, its weight sum and the result's copies (division, the
# caller's HWC array): bytes per pixel of the image, taken from the budget before the tiles get theirs.
TILED_OUTPUT_BYTES_PER_PIXEL = 56
# On a CPU a whole multi-megapixel forward is slower than the same image in tiles: its activations leave the caches.
# AHDRNet fp32, 2 threads, Zen 5: 7.5 us per pixel at 512x512, 9.4 at 768x768, 14.3 at 1000x1500; in one run,
# 1000x1500 took 14.2 s in tiles of at most 768 pixels against 21.3 s whole (bf16: 6.2 s against 8.6 s; Zen 3 fp32:
# 26.2 s against 36.5 s). So on a CPU --tile auto tiles images of more than CPU_SPEED_TILE**2 pixels even when they
# fit whole (by area: a thin strip stays in cache); a GPU keeps the whole image.
CPU_SPEED_TILE = MAX_AUTO_TILE


class MemoryBudgetError(ValueError):
    """The image does not fit the memory budget even in the smallest tiles; the message says what to change."""


def tile_flag(text):
    """--tile: a tile side in pixels (0: the whole image) or 'auto' (chosen per image from the memory budget)."""
    import argparse

    if str(text).strip().lower() == 'auto':
        return 'auto'
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a tile side in pixels or 'auto', got {text!r}") from None


def available_memory(meminfo='/proc/meminfo', cgroup='/sys/fs/cgroup'):
    """Bytes that can still be allocated without swapping: the kernel's MemAvailable, capped by the memory limit of
    the process's cgroup (v2 `memory.max` less `memory.current`, or v1's limit less usage) inside a container.
    None where neither can be read (not Linux)."""
    found = []
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith('MemAvailable:'):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_name, usage_name in (('memory.max', 'memory.current'),
                                   ('memory/memory.limit_in_bytes', 'memory/memory.usage_in_bytes')):
        try:
            with open(os.path.join(cgroup, limit_name)) as handle:
                limit = handle.read().strip()
            with open(os.path.join(cgroup, usage_name)) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # 'max' or v1's huge sentinel: no limit
            found.append(max(0, int(limit) - usage))
        break
    return min(found) if found else None


def resident_memory(status='/proc/self/status'):
    """This process's resident memory in bytes (VmRSS), or 0 where it cannot be read."""
    try:
        with open(status) as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_memory_budget(fraction=0.8):
    """--max_memory's default in bytes: `fraction` of the memory available now plus what this process already
    holds (the budget covers the whole process); 8 GiB where the available memory cannot be read."""
    free = available_memory()
    if free is None:
        return 8 * GIB
    return int(fraction * free) + resident_memory()


def forward_bytes(height, width, bytes_per_pixel, multiple=0):
    """Estimated peak memory of one forward on a height x width input, padded to `multiple` as the release pads
    (up to `multiple` more pixels per side); `bytes_per_pixel` is the backbone's measured figure
    (models/backbones.py, bench/infer_memory.py)."""
    if multiple:
        height, width = height + multiple, width + multiple
    return bytes_per_pixel * height * width


def _largest_tile(height, width, bytes_per_pixel, budget, start, min_tile, multiple):
    """The largest tile side from `start` down to `min_tile` (steps of 16) whose forward fits `budget`; None."""
    tile = start
    while tile >= min_tile:
        if forward_bytes(min(tile, height), min(tile, width), bytes_per_pixel, multiple) <= budget:
            return tile
        tile -= 16
    return None


def choose_tile(height, width, bytes_per_pixel, budget, overlap=32, multiple=0, max_tile=None, min_tile=None,
                speed_tile=0):
    """--tile auto: the tile side for an image of height x width whose forward may use `budget` bytes.

    0 (the whole image at once, the release's way and free of seams) when that fits; otherwise the largest tile
    side of at most `max_tile` whose forward fits (tiles are blended over `overlap` pixels, see `tiled_forward`).
    Raises MemoryBudgetError, saying what to change, when even `min_tile` pixels do not fit. `max_tile` and
    `min_tile` default to MAX_AUTO_TILE and MIN_TILE. `speed_tile` (CPU_SPEED_TILE on a CPU; 0: off): an image of more
    than speed_tile**2 pixels goes in tiles of at most this side even when the whole image fits, because that is
    faster."""
    max_tile = MAX_AUTO_TILE if max_tile is None else max_tile
    min_tile = max(MIN_TILE if min_tile is None else min_tile, 2 * overlap)  # tiles mostly of their own pixels
    left = budget - TILED_OUTPUT_BYTES_PER_PIXEL * height * width  # what the tiles' forwards may use
    if forward_bytes(height, width, bytes_per_pixel, multiple) <= budget:
        if not speed_tile or height * width <= speed_tile ** 2:
            return 0
        # the whole image fits where no tile plus the output buffers does: keep it whole (0)
        return _largest_tile(height, width, bytes_per_pixel, left, min(max_tile, speed_tile), min_tile, multiple) or 0
    tile = _largest_tile(height, width, bytes_per_pixel, left, min(max_tile, max(height, width)), min_tile, multiple)
    if tile:
        return tile
    tile_h, tile_w = min(min_tile, height), min(min_tile, width)
    need = forward_bytes(tile_h, tile_w, bytes_per_pixel, multiple)
    raise MemoryBudgetError(
        f'a {width}x{height} image does not fit in memory: the network needs about {need / GIB:.2f} GB even in '
        f'tiles of {tile_w}x{tile_h} pixels, and {max(left, 0) / GIB:.2f} GB are left for it. Free memory '
        f'(close other programs), raise --max_memory if the machine has more, or use smaller frames (downscale '
        f'the photos)')


def is_out_of_memory(exc):
    """Whether `exc` is PyTorch's (or the OS's) failure to allocate memory, CPU or CUDA."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or 'out of memory' in text.lower()
                                              or 'DefaultCPUAllocator' in text)


def auto_tile(height, width, bytes_per_pixel, max_memory=0.0, overlap=32, multiple=0, device='cpu', log=True):
    """--tile auto as the command lines run it: `choose_tile` with the memory this process has left, i.e.
    `max_memory` GB (0: `default_memory_budget()`, most of what is available now) less what it holds already; on
    a CUDA device `max_memory` GB or 90% of the device's free memory. On a CPU, images of more than
    CPU_SPEED_TILE**2 pixels are tiled even when they fit (faster). Logs the choice (at debug level without
    `log`); raises MemoryBudgetError."""
    limit = max_memory * GIB
    on_gpu = str(device).startswith('cuda')
    if on_gpu:
        budget = limit or 0.9 * torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        budget = (limit or default_memory_budget()) - resident_memory()
    tile = choose_tile(height, width, bytes_per_pixel, budget, overlap, multiple=multiple,
                       speed_tile=0 if on_gpu else CPU_SPEED_TILE)
    fits = forward_bytes(height, width, bytes_per_pixel, multiple) <= budget
    why = ' (faster than the whole image on a CPU)' if tile and fits and tile == CPU_SPEED_TILE else ''
    logger.log(logging.INFO if log else logging.DEBUG, '--tile auto: %s%s for %dx%d inputs (%.1f GB left for the '
               'network)', f'tiles of at most {tile} pixels' if tile else 'the whole image', why, width, height,
               budget / GIB)
    return tile
