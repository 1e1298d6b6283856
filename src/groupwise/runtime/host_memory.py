"""Keep freed host memory for the next step instead of handing it back to the OS (glibc).

A CPU training step allocates its activations and gradients (megabytes to gigabytes,
by net and batch) and frees them before the next step. glibc's
``malloc`` gives memory back to the kernel when more than its trim threshold lies free at
the top of its heap, and serves large blocks with ``mmap``; both thresholds adapt at run
time, but not to this pattern, so every step touches freshly mapped pages again: a minor
page fault (a kernel entry and 4 KiB zeroed) per page. ``bash scripts/bench.sh
host_memory`` on the 2-core AMD EPYC VM (``docs/benchmarks.md``), faults per training step
with glibc's adaptive thresholds and with the two fixed as below: LeNet-5 657 and 0,
FastNet 5,456 and 0, ResNet-18 341,714 and 58,887 (its largest blocks exceed glibc's
largest mmap threshold); the fixed thresholds made a step 1.26x, 1.14x and 1.22x faster.

What torch and Lightning lack: torch's own CPU launcher (``python -m
torch.backends.xeon.run_cpu``) preloads tcmalloc or jemalloc for this reason, which needs
a library installed and a launcher; nothing in a plain ``python`` process does it. This
sets glibc's two thresholds once per process with ``mallopt`` (no other library): freed
memory up to ``TRIM_THRESHOLD`` stays in the heap for reuse, and blocks up to
``MMAP_THRESHOLD`` (glibc's largest allowed value) come from the heap instead of a fresh
``mmap``. The cost: up to ``TRIM_THRESHOLD`` of freed memory stays counted in the
process's resident size.

``GroupwiseCLI`` calls :func:`keep_freed_host_memory` for runs on the CPU. It changes
nothing when glibc is not the C library, or when the environment already configures the
allocator (any ``MALLOC_*`` variable, ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``, or
another allocator in ``LD_PRELOAD``). To keep glibc's adaptive thresholds, set a variable
that leaves them adaptive, e.g. ``MALLOC_ARENA_MAX=8`` (``tests/test_host_memory.py`` runs a fit
both ways).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 << 20  # bytes of freed memory kept at the top of the heap
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_applied: bool | None = None  # None: not tried yet in this process


def allocator_configured(environ: Mapping[str, str]) -> str | None:
    """The variable by which ``environ`` already configures ``malloc``, or None."""
    for name, value in environ.items():
        if name.startswith("MALLOC_"):
            return name
        if name == "GLIBC_TUNABLES" and "glibc.malloc." in value:
            return name
        if name == "LD_PRELOAD" and any(a in value for a in OTHER_ALLOCATORS):
            return name
    return None


def keep_freed_host_memory() -> bool:
    """Fix glibc's trim and mmap thresholds for this process (once); whether they are set.

    Nothing is changed off Linux/glibc or when the environment configures the allocator
    (see the module's docstring)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    configured = allocator_configured(os.environ)
    if configured:
        log.debug("host allocator left as %s configures it", configured)
        return False
    if not _glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    _applied = bool(trimmed and mapped)
    log.debug("glibc malloc: trim threshold %d, mmap threshold %d", TRIM_THRESHOLD, MMAP_THRESHOLD)
    return _applied


def _glibc() -> bool:
    """Whether this process runs on Linux with glibc as its C library."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # e.g. musl: no such name
        return False
