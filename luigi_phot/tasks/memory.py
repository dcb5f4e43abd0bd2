"""How a stage that works on arrays of hundreds of MB asks the system for memory.

On these machines (and most Linux hosts), the time to *get* memory for a large numpy
array can exceed the time to compute it:

- glibc serves every allocation above 32 MiB with a fresh ``mmap`` and gives it back
  with ``munmap`` when freed. Each new temporary's pages are then zeroed by the kernel
  on first touch, one fault per 4 KiB page: a 500 x 14,600 float64 array (58 MB) costs
  14,300 faults, about 40 ms here, against 10 ms for the arithmetic on it. The light
  curve makes dozens of such temporaries.
- numpy asks for transparent huge pages on every array of 4 MiB or more; on a kernel
  whose THP defrag setting is "madvise" (a common default, and these machines'), the
  first touch of each new array waits for the kernel to compact memory.

:func:`for_large_arrays` (a decorator for a stage method) switches both off while the
method runs: freed arrays stay in the process's heap and the next temporary reuses
their pages (glibc's ``mallopt``: no ``mmap`` for large blocks, no trimming of the
heap), and numpy does not ask for huge pages. Afterwards the settings are put back
and the heap's free pages returned to the system (``malloc_trim``), so a long-lived
process holds no more than before. Measured (benchmarks/lightcurve_increment.py, 500
frames x 14,600 stars): page faults of the light-curve update 280,000 -> 164,000;
huge pages cost 3-4 s of kernel time on the update.

numpy offers its huge-page switch only as the NUMPY_MADVISE_HUGEPAGE environment
variable, read once at import; the function that applies it, ``_set_madvise_hugepage``
(which returns the previous setting), is private: this is its one use, pinned by
tests/test_memory.py. Without it (another numpy), or without glibc (another C
library), that part is left out and the method runs as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import inspect

__all__ = ["for_large_arrays", "huge_pages_switch", "heap_reuse"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# what they are put back to: glibc's defaults once its dynamic threshold has grown to its
# ceiling for 64-bit processes, which it does at the first large array freed
_RESTORED = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 * 1024 * 1024), (_M_TRIM_THRESHOLD, 64 * 1024 * 1024))
_HELD_HEAP_BYTES = 1 << 30      # free heap kept while the stage runs before glibc trims it


def huge_pages_switch():
    """numpy's private ``_set_madvise_hugepage(enabled) -> previous``, or None."""
    import numpy as np

    return getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)


@functools.cache
def _glibc():
    """glibc, when this process runs on it (None on another C library)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


class heap_reuse:
    """Context: large blocks come from the heap and stay in it when freed (glibc), so the
    next array reuses pages already mapped; on exit, glibc's large-block settings are put
    back and the free heap returned to the system. Does nothing without glibc.
    ``active`` says whether it took effect."""

    def __enter__(self):
        libc = _glibc()
        self.active = bool(libc and libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _HELD_HEAP_BYTES))
        return self

    def __exit__(self, *exc):
        libc = _glibc()
        if libc is not None:
            for param, value in _RESTORED:
                libc.mallopt(param, value)
            libc.malloc_trim(0)
        return False


def for_large_arrays(method):
    """Decorator for a stage method that allocates arrays of hundreds of MB (the light
    curve's frames x stars arrays, the catalogue's full-frame images): while it runs,
    freed arrays' memory is reused (:class:`heap_reuse`) and numpy asks for no huge
    pages; both are restored afterwards, also when it raises. Not for a generator (a
    Luigi run() with dynamic dependencies): its body would run after the wrapper returned."""
    if inspect.isgeneratorfunction(method):
        raise TypeError(f"for_large_arrays cannot wrap the generator {method.__qualname__}")

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        switch = huge_pages_switch()
        before = switch(False) if switch is not None else None
        try:
            with heap_reuse():
                return method(*args, **kwargs)
        finally:
            if switch is not None:
                switch(before)

    return wrapper
