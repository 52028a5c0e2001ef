"""Memory the process gives back: large blocks are mapped, not kept in the heap.

glibc serves allocations above its mmap threshold (128 KiB at first) with their own mapping,
returned to the system on free. But each time such a block is freed it *raises* the threshold
to that block's size (up to 32 MiB), so after the first large message every later body,
response and encoded document of a few MiB comes from the threads' heaps, where freed memory
stays resident and fragments. With many threads handling 1 MiB messages, resident memory then
grows far beyond what is in use (measured: 264 MiB peak for 60 messages of emoji text, 199 MiB
with the threshold fixed). Fixing the threshold keeps the in-flight budget
(``service.max_in_flight_mib``) a bound on what the process really holds.

An operator's own ``MALLOC_MMAP_THRESHOLD_`` wins; on other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 128 * 1024


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; True if it was set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, done)
    return done
