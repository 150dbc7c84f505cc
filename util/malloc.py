"""Tune glibc malloc for PyTorch on CPU.

With glibc's defaults every tensor larger than the (adaptive) mmap threshold gets fresh pages from the
kernel and returns them on free, so each training step pays page faults for all its large activations
again: on a 2-core CPU that is 15-20 % of an AHDRNet step, most of it system time. Disabling mmap for
large blocks and raising the trim threshold keeps freed memory in the heap for the next step instead.
This is the same allocator (glibc malloc) with two `mallopt` settings; it is equivalent to running with
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`. The price: memory that was
freed stays mapped, so the resident size stays near its peak (it is not a higher peak).

Entry points call `tune_malloc(opt.malloc)` right after parsing (default 'tuned'; `--malloc system` keeps
glibc's defaults). Inference gains even more than training: AHDRNet at 1000x1500 with `--tile 512` took
37 s and 1.5 GB peak RSS tuned, 76 s and 1.2 GB with the defaults (2-core Zen 3).
"""
import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes a C int; 2 GiB of free heap top is kept before trimming

_applied = False


def tune_malloc(mode='tuned'):
    """Apply the settings once per process. Returns True when they are in effect.

    mode: 'tuned' (default of the entry points) or 'system' (leave glibc's defaults). On platforms
    without glibc (macOS, Windows, musl) 'tuned' does nothing and says so at debug level.
    """
    global _applied
    if mode not in ('tuned', 'system'):
        raise ValueError(f"util/malloc.py: --malloc must be 'tuned' or 'system', got {mode!r}")
    if mode == 'system':
        return False
    if _applied:
        return True
    if not sys.platform.startswith('linux'):
        logger.debug('malloc tuning skipped: not Linux')
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug('malloc tuning skipped: no glibc mallopt')
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        logger.warning('util/malloc.py: glibc mallopt refused the settings; keeping the system allocator defaults')
        return False
    _applied = True
    return True
