"""Keep freed activation memory in the process for CPU inference: two glibc malloc settings.

PyTorch's CPU tensors come from malloc. glibc serves a block larger than its *mmap threshold* with fresh pages
from the kernel (mmap) and returns them when the block is freed (munmap); the next block of that size starts
again from fresh pages, and the first touch of each 4 KiB page is a page fault in which the kernel zeroes it.
The threshold starts at 128 KiB and rises as large blocks are freed (glibc's dynamic threshold), but how far it
has risen depends on the order of everything allocated before, so the cost of the same forward pass changes
with what ran earlier in the process. A segmenter's activations at a batch of 64 windows are megabytes (the
MLP's hidden layer: 64 x 128 x 768 fp32 = 25 MiB), allocated and freed in every layer.

`retain_freed_memory` raises the mmap threshold to 64 MiB and the *trim threshold* (free memory at the top of
the heap that glibc gives back) to 1 GiB, so such blocks are reused from the heap. Measured on the CTB6
segmenter (500 test sentences, one thread, this 2-core Xeon; the settings switched back and forth in one
process): 26,000-53,000 page faults per pass at batch 64 with the dynamic threshold, none with these settings,
and the int8 model's end-to-end time down by a sixth to a half; the fp32 model gains less, since its time is
mostly its matmuls. The cost is that memory freed by one batch stays with the process for the next (the peak is
what it was). These are the settings the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment
variables (or ``GLIBC_TUNABLES``) would give, set from Python so that every tool gets them without a wrapper.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Apply the two malloc settings (see the module docstring) to this process. Returns whether they were
    applied: False off glibc (macOS, Windows, musl), where nothing is changed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
