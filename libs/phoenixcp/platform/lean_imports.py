"""Keep modules that a service process never uses out of it: their import alone costs RSS.

A service's ``__main__`` calls :func:`keep_out_unused` before it imports anything else. Only
service processes do: a library must not decide what its importer may load, and tests, the
CLI and the built-in sink import aiohttp themselves.
"""

from __future__ import annotations

import sys

__all__ = ["UNUSED", "keep_out_unused"]

#: Imported by a dependency but never used by a service:
#: - ``aiohttp``: nats-py imports it for its WebSocket transport (``ws://`` URLs), which
#:   ``NatsConfig`` refuses (``nats://`` and ``tls://`` only); ~12 MiB of RSS.
UNUSED = ("aiohttp",)


def keep_out_unused() -> None:
    """Make ``import`` of each :data:`UNUSED` module raise ImportError in this process (the
    dependencies that import them optionally fall back), unless one is imported already."""
    for name in UNUSED:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
