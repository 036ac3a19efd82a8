"""Keep freed activation memory in the process for CPU inference: two glibc malloc settings.

PyTorch's CPU tensors come from malloc. glibc serves a block larger than its *mmap threshold* with fresh pages
from the kernel (mmap) and returns them when the block is freed (munmap); the next block of that size starts
again from fresh pages, and the first touch of each 4 KiB page is a page fault in which the kernel zeroes it.
The threshold starts at 128 KiB and rises as large blocks are freed (glibc's dynamic threshold), but how far it
has risen depends on the order of everything allocated before, so the cost of the same forward pass changes
with what ran earlier in the process. A segmenter's activations at a batch of 64 windows are megabytes (the
MLP's hidden layer: 64 x 128 x 768 fp32 = 25 MiB), allocated and freed in every layer.

`retain_freed_memory` raises the mmap threshold to 64 MiB and the *trim threshold* (free memory at the top of
the heap that glibc gives back) to 1 GiB, so such blocks are reused from the heap: with glibc's defaults a
segmenter's forward pass takes thousands of page faults, with these settings none once the heap has grown to
its working size (`bench/inference.py` with and without ``--default-heap`` measures what that is worth; figures
in bench/results/ and the README). The int8 model gains most: it allocates more (its quantized copies of the
inputs) and its matmuls are faster, so the faults were a larger share of its time. The cost is that memory freed by one batch stays with
the process for the next. These are the settings the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
environment variables (or ``GLIBC_TUNABLES``) would give, set from Python so that every tool gets them without
a wrapper script.
"""

from __future__ import annotations

import ctypes
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
    libc = ctypes.CDLL(None)  # the symbols already loaded in this process: glibc's mallopt among them
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
