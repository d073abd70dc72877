"""The bus's NATS connection: a first connection within a deadline, then reconnects forever.

nats-py reconnects by itself once connected (``allow_reconnect``, unlimited attempts); the
hook here spaces its attempts with exponential backoff and jitter, so a fleet of replicas
does not hammer a NATS that is coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.errors import Error as NatsError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from phoenixcp.errors import Unavailable
from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.streams import ensure_streams

__all__ = ["open_connection", "reconnect_backoff"]

_RECONNECT_FIRST: Final = 0.1
_RECONNECT_MAX: Final = 2.0

Callback = Callable[[], Awaitable[None]]


def reconnect_backoff(servers: list[Server], info: dict[str, Any]) -> tuple[Server, float]:
    """nats-py reconnect hook: the least-tried server, after an exponential, jittered delay."""
    server = min(servers, key=lambda s: s.reconnects)
    delay = min(_RECONNECT_MAX, _RECONNECT_FIRST * 2 ** min(server.reconnects, 8))
    return server, delay * random.uniform(0.5, 1.0)


async def open_connection(
    config: BusConfig,
    *,
    name: str,
    error_cb: Callable[[Exception], Awaitable[None]],
    disconnected_cb: Callback,
    reconnected_cb: Callback,
    closed_cb: Callback,
) -> NATS:
    """Connect and create or update the streams, all within ``config.start_timeout``.

    Raises ``Unavailable`` (after closing the half-open client) when NATS or JetStream
    does not answer in time; ``StartupError`` from :func:`ensure_streams` passes through.
    """
    nc = NATS()
    deadline = config.start_timeout.total_seconds()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await asyncio.wait_for(nc.connect(
            servers=config.servers,
            name=name,
            connect_timeout=max(1, round(config.connect_timeout.total_seconds())),
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # forever: the process outlives any NATS outage
            # Only paces the first connection's attempts (the hook paces reconnects); nats-py
            # annotates it int but sleeps that many seconds, so a fraction works.
            reconnect_time_wait=_RECONNECT_FIRST,  # type: ignore[arg-type]
            reconnect_to_server_handler=reconnect_backoff,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            closed_cb=closed_cb,
        ), deadline)
        async for attempt in AsyncRetrying(
            # Right after a server starts, JetStream may not answer for a moment.
            stop=stop_after_delay(max(0.0, deadline - (loop.time() - began))),
            wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
            retry=retry_if_exception_type((NatsError, TimeoutError)),
            reraise=True,
        ):
            with attempt:
                await ensure_streams(nc.jetstream(), config)
    except (NatsError, TimeoutError, OSError) as exc:
        with contextlib.suppress(Exception):
            await nc.close()
        raise Unavailable(
            f"NATS at {config.shown_url} does not answer within {deadline:g}s: {exc!r}"
        ) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc
