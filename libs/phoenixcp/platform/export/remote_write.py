"""Prometheus remote-write 1.0 out: snappy-compressed ``WriteRequest`` over HTTP keep-alive."""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import cramjam

from phoenixcp.platform.export.config import RemoteWriteConfig
from phoenixcp.platform.export.result import ExportOutcome, ExportResult

__all__ = ["RemoteWriteExporter", "classify_status"]

_HEADERS: Final = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "phoenix-control-plane",
}
_REASON_CHARS: Final = 512
#: Not about the data: throttling, timeouts, and credentials being rotated. Dead-lettering
#: them would throw good data away, so they are retried (the queue pushes back meanwhile).
_RETRY_4XX: Final = frozenset({401, 403, 408, 425, 429})


def classify_status(status: int) -> ExportResult:
    """2xx SUCCESS; 5xx and the retryable 4xx (408, 429, 401/403) RETRYABLE; other REJECTED."""
    if 200 <= status < 300:
        return ExportResult.SUCCESS
    if status >= 500 or status in _RETRY_4XX or status < 200:
        return ExportResult.RETRYABLE
    return ExportResult.REJECTED


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: rare from TSDBs, and backoff covers it


class RemoteWriteExporter:
    """Posts to one remote-write URL over one keep-alive ``aiohttp`` session.

    The session is created on first use (nothing connects at construction). Concurrency:
    ``export`` may run concurrently (up to ``max_connections`` sockets). Never raises.
    """

    def __init__(self, *, config: RemoteWriteConfig) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def name(self) -> str:
        """The exporter's name in metrics and logs."""
        return self._config.name

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._config.max_connections),
                timeout=aiohttp.ClientTimeout(total=self._config.timeout.total_seconds()),
                headers={**_HEADERS, **self._config.headers},
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def export(self, body: bytes, *, tenant: str, snappy: bool = False) -> ExportOutcome:
        """POST ``body`` snappy-compressed (as given when ``snappy``); see
        :func:`classify_status` for the outcome."""
        if self._closed:
            return ExportOutcome(ExportResult.RETRYABLE, "exporter is shut down")
        headers = {"X-Scope-OrgID": tenant} if self._config.tenant_header and tenant else None
        try:
            data = body if snappy else bytes(cramjam.snappy.compress_raw(body))
            async with self._client().post(self._config.url, data=data,
                                           headers=headers) as response:
                status = response.status
                result = classify_status(status)
                if result is ExportResult.SUCCESS:
                    await response.read()
                    return ExportOutcome(result)
                text = (await response.text(errors="replace"))[:_REASON_CHARS].strip()
                return ExportOutcome(result, f"HTTP {status}: {text}",
                                     _retry_after(response.headers.get("Retry-After")))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ExportOutcome(ExportResult.RETRYABLE,
                                 f"{type(exc).__name__}: {exc}"[:_REASON_CHARS])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the contract: never raise into the worker
            return ExportOutcome(ExportResult.RETRYABLE,
                                 f"unexpected {type(exc).__name__}: {exc}"[:_REASON_CHARS])

    async def shutdown(self) -> None:
        """Close the session and its connections; idempotent."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
