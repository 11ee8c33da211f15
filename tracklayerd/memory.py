"""Keeping the resident size flat on glibc (no-ops elsewhere).

Batches arrive as ~100 KB bodies and leave as many short-lived allocations. glibc raises its
mmap threshold each time such a block is freed, so later ones come from the heap, which then
fragments and does not shrink. A fixed threshold keeps large blocks in mmap (returned on
free), and a trim when the process goes idle hands back what the heap kept. Measured after a
6 s burst of 100-event batches: idle RSS 53 MB with this, 63-65 MB without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("tracklayerd")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc (musl, macOS)
    return libc


_LIBC = _libc()


def tune_allocator() -> None:
    if _LIBC is not None and not _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused")


def release_free_memory() -> None:
    """Return freed heap pages to the OS (cheap when there is little to return)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
