"""What a service process sets up before anything else runs: its memory is the budget
(metrics-pipeline: 150 MiB of RSS at 100k series, issue 4), and two settings cost nothing.

A service's ``__main__`` calls :func:`prepare_service_process` before it imports anything
else. Only service processes do: a library must not decide what its importer may load or how
its allocator works, and tests, the CLI and the built-in sink import aiohttp themselves.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MALLOC_ARENAS", "UNUSED", "prepare_service_process"]

#: Imported by a dependency but never used by a service:
#: - ``aiohttp``: nats-py imports it for its WebSocket transport (``ws://`` URLs), which
#:   ``NatsConfig`` refuses (``nats://`` and ``tls://`` only); ~12 MiB of RSS.
UNUSED = ("aiohttp",)

#: glibc malloc arenas. By default each thread that allocates may get its own, up to 8 per
#: core, and memory freed in one stays there: the window build, the report encoder, the
#: fsync and gRPC threads each kept their peak. Two arenas: metrics-pipeline's peak RSS at
#: 101k series 154 -> 150 MiB (bench/pipeline/run.py), throughput unchanged within noise.
#: ``MALLOC_ARENA_MAX`` in the environment wins (glibc reads it itself).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def prepare_service_process() -> None:
    """Keep :data:`UNUSED` modules out (their ``import`` raises ImportError in this process;
    the dependencies that import them optionally fall back), unless already imported, and
    cap malloc arenas at :data:`MALLOC_ARENAS` (glibc only; elsewhere nothing happens)."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    if "MALLOC_ARENA_MAX" not in os.environ:
        _mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt``; False where there is none (musl, macOS)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(param, value))
