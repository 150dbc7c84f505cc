"""Write failures that say what happened and where: a full disk, a read-only or forbidden folder.

torch.save reports a full disk as ``enforce fail at inline_container.cc ... file write failed`` and OpenCV's
writers only return False; both are turned into an :class:`OutputWriteError` naming the path and the cause."""
from __future__ import annotations

import errno
import os
import shutil

# Below this, a failed write is most likely a full disk (checkpoints and images are larger).
LOW_SPACE_BYTES = 64 * 1024 * 1024

_CAUSES = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'disk quota exceeded',
    errno.EROFS: 'read-only file system',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
    errno.ENOENT: 'a folder on the path does not exist and cannot be made there',
    errno.ENOTDIR: 'a part of the path is a file, not a folder',
}


class OutputWriteError(OSError):
    """An output (checkpoint, image, report) could not be written; the message names the path and the cause."""


def free_bytes(path) -> int | None:
    """Free space of the file system holding `path` (or its nearest existing parent); None if unknown."""
    folder = os.path.abspath(os.fspath(path))
    while folder and not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def write_failure_cause(exc: BaseException | None, path) -> str:
    """The most likely cause of a failed write of `path`, in words."""
    code = getattr(exc, 'errno', None)
    if code in _CAUSES:
        return _CAUSES[code]
    free = free_bytes(path)  # an error without a known errno (torch's writer, EIO on some mounts) may be a full disk
    if free is not None and free < LOW_SPACE_BYTES:
        return f'no space left on the device ({free // 1024} KiB free)'
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if os.path.isdir(folder) and not os.access(folder, os.W_OK):
        return 'the folder is not writable'
    return f'{type(exc).__name__}: {exc}' if exc is not None else 'unknown cause'


def write_failure(exc: BaseException | None, path, what: str = 'file') -> OutputWriteError:
    """An OutputWriteError for a failed write of `path` (raise it ``from exc``)."""
    return OutputWriteError(f'cannot write {what} {os.fspath(path)}: {write_failure_cause(exc, path)}')


def is_write_failure(exc: BaseException) -> bool:
    """OSErrors, and the RuntimeErrors torch.save raises when its writer fails."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ('inline_container' in text or 'write failed' in text
                                              or 'unexpected pos' in text)
