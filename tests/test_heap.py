"""charformer.heap: with its malloc settings, a block of an activation's size comes from the heap and its memory
stays there for the next one when freed; with glibc's defaults it is mapped from the kernel and unmapped again.
Read from glibc's own accounting (mallinfo2): page-fault counts depend on the kernel (transparent huge pages)
and are not repeatable. Each case runs in a process of its own: malloc settings are per process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# malloc a 48 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB; below ours, 64 MiB), write it and
# free it, as PyTorch's CPU allocator does with a tensor's memory; print the bytes glibc holds in mmapped blocks
# while it lives, and the free bytes in its heap (main arena) after the free.
PROBE = """
import ctypes, sys
from charformer.heap import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
block = libc.malloc(48 << 20)
ctypes.memset(block, 1, 48 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, after.fordblks)
"""
MIB = 1 << 20


def _mallinfo(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    mapped, heap_free = map(int, out.stdout.split())
    return mapped, heap_free


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or tuple(map(int, platform.libc_ver()[1].split("."))) < (2, 33),
                    reason="mallopt settings exist on glibc only; mallinfo2 since glibc 2.33")
def test_large_blocks_come_from_the_heap_and_stay_there():
    mapped, heap_free = _mallinfo("default")
    assert mapped >= 48 * MIB and heap_free < 48 * MIB  # glibc's defaults: mmapped, and unmapped on free
    mapped, heap_free = _mallinfo("retain")
    assert mapped < 48 * MIB  # the settings: from the heap...
    assert heap_free >= 48 * MIB  # ...which keeps the freed block for the next allocation
