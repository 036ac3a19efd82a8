"""charformer.heap: with its malloc settings, a large activation comes from the heap and its memory stays there
for the next one when freed; with glibc's defaults it is mapped from the kernel and unmapped again. Read from
glibc's own accounting (mallinfo2), since page-fault counts depend on the kernel (transparent huge pages) and
are not repeatable. Each case runs in a process of its own: malloc settings are per process."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Allocate a 48 MiB tensor (above glibc's largest dynamic mmap threshold, 32 MiB; below ours, 64 MiB) and free
# it; print the bytes glibc holds in mmapped blocks while it lives, and the heap (main arena) size before the
# allocation and after the free.
PROBE = """
import ctypes, sys, torch
from charformer.heap import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2()
x = torch.ones(12 << 20)
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, before.arena, after.arena)
"""
MIB = 1 << 20


def _mallinfo(mode: str) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    mapped, arena_before, arena_after = map(int, out.stdout.split())
    return mapped, arena_before, arena_after


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or tuple(map(int, platform.libc_ver()[1].split("."))) < (2, 33),
                    reason="mallopt settings exist on glibc only; mallinfo2 since glibc 2.33")
def test_large_blocks_come_from_the_heap_and_stay_there():
    mapped, _, _ = _mallinfo("default")
    assert mapped >= 48 * MIB  # glibc's defaults: mmapped, and unmapped on free
    mapped, arena_before, arena_after = _mallinfo("retain")
    assert mapped < 48 * MIB  # the settings: from the heap...
    assert arena_after - arena_before >= 48 * MIB  # ...which keeps the freed block for the next allocation
