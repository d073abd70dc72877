"""Readiness probes: a service reports SERVING only once the dependencies it needs answer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from phoenixcp.errors import Unavailable
from phoenixcp.platform.redact import redacted_urls

__all__ = ["DependencyProbe", "EtcdProbe", "NatsProbe"]


class DependencyProbe(Protocol):
    """Checks one dependency; ``check`` raises :class:`Unavailable` saying what failed."""

    name: str

    async def check(self) -> None: ...


class NatsProbe:
    """NATS answers when a client can connect and round-trip a flush."""

    def __init__(self, *, url: str, timeout: float) -> None:
        self.name = "nats"
        self._servers = url.split(",")
        self._shown = redacted_urls(url)
        self._timeout = timeout

    async def check(self) -> None:
        import nats
        from nats.errors import Error as NatsError

        try:
            # nats-py retries a refused first connection without end when
            # max_reconnect_attempts is 0 (it treats 0 as no limit), so the whole attempt is
            # bounded here: a probe of a NATS that is down must fail, not hang.
            async with asyncio.timeout(2 * self._timeout + 1):
                nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=self._timeout,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    name="phoenix-readiness",
                    error_cb=_quiet,  # the failure is reported once, below, not per attempt
                )
        except (OSError, NatsError, TimeoutError) as exc:
            raise Unavailable(f"NATS at {self._shown} does not answer: {exc}") from exc
        try:
            await nc.flush(timeout=max(1, round(self._timeout)))
        except (NatsError, TimeoutError) as exc:
            raise Unavailable(f"NATS at {self._shown} does not answer: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


async def _quiet(error: Exception) -> None:
    """nats-py's default error callback logs a traceback for every refused attempt."""


class EtcdProbe:
    """etcd answers when a range read succeeds within the timeout."""

    def __init__(self, *, endpoints: tuple[str, ...], timeout: float) -> None:
        self.name = "etcd"
        self._endpoints = list(endpoints)
        self._timeout = timeout

    async def check(self) -> None:
        from etcd3aio import Etcd3Client, EtcdError

        client = Etcd3Client(self._endpoints, rpc_max_attempts=1)
        try:
            await client.connect()
            await asyncio.wait_for(
                client.ping(write_check=False, timeout=self._timeout), self._timeout
            )
        except (EtcdError, TimeoutError, OSError) as exc:
            where = ",".join(self._endpoints)
            reason = str(exc) or type(exc).__name__
            raise Unavailable(f"etcd at {where} does not answer: {reason}") from exc
        finally:
            await client.close()
