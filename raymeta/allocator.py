"""Keep freed memory in the process: no page faults for the next step's tensors.

Why: torch allocates CPU tensors with ``malloc``, which glibc serves from fresh ``mmap``
regions for anything above its mmap threshold (at most 32 MiB) and hands back to the kernel
on ``free``. A training step that allocates a 120 MB activation each call therefore page-faults
and zeroes 30,000 new pages every step: measured on a 2-core CPU (issue 17, sixth pass), the
Conv4 meta-gradient at meta-batch 32 spent 2.3-2.7 s of system time per 4.7 s of user time, and
a 16,384-member population 12 s of system time per 29 s of user time. Telling glibc to serve
every block from its heap and to keep what is freed removes that system time entirely (the same
reason a GPU framework caches device memory).

The cost: a process keeps its peak heap until it exits (its resident size no longer falls after
a large step). raymeta calls :func:`retain_freed_memory` in the processes it owns for the
whole of their life -- the ``raymeta`` command and the Ray workers running its tasks -- and
never on ``import raymeta``, since a library must not change its host's allocator unasked; the
Python API leaves the caller's process alone unless the caller opts in.

It does nothing (and says so by returning False) when the C library is not glibc, when the user
tunes glibc's allocator through its own ``MALLOC_*`` environment variables or preloads another
allocator (``LD_PRELOAD``), or when ``RAYMETA_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_SWITCH = "RAYMETA_KEEP_FREED_MEMORY"
# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the largest int mallopt takes: a heap top is never trimmed below this many free bytes
_NEVER_TRIM = 2**31 - 1

_applied = False


def user_tunes_allocator(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """True when the environment already chooses the allocator's behaviour: glibc's own
    ``MALLOC_*`` tunables, a preloaded allocator (jemalloc, tcmalloc), or raymeta's switch set
    to off. Those win over raymeta's default."""
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1").strip().lower() in {"0", "false", "no", "off"}:
        return True
    if env.get("LD_PRELOAD", "").strip() or env.get("GLIBC_TUNABLES", "").strip():
        return True
    return any(k.startswith("MALLOC_") for k in env)


def retain_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never trim it (``mallopt``). Idempotent;
    returns whether the setting is in force in this process."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or user_tunes_allocator():
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl's mallopt is a no-op
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mmap off: large blocks come from the heap too, so a freed one is reused, not unmapped;
    # trim off: the heap's free top is kept instead of being returned after each large step
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))
    return _applied


def in_force() -> bool:
    """Whether :func:`retain_freed_memory` is in force in this process (a benchmark's spawned
    children copy the parent's setting, so their peak memory is what the parent would see)."""
    return _applied
