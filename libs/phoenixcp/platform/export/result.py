"""What an export attempt came to, and the port every exporter implements."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ExportOutcome", "ExportResult", "Exporter"]


class ExportResult(enum.Enum):
    """SUCCESS: the backend stored it. RETRYABLE: try the same request again later (outage,
    throttling, timeout). REJECTED: the backend refused this data for good (bad data)."""

    SUCCESS = "success"
    RETRYABLE = "retryable"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    """An :class:`ExportResult` with the backend's words; ``retry_after`` in seconds if told."""

    result: ExportResult
    reason: str = ""
    retry_after: float | None = None


class Exporter(Protocol):
    """Sends one request's worth of data to a backend.

    ``body`` is a Prometheus ``WriteRequest``: uncompressed (several concatenated ones are one
    valid request), or snappy-compressed (block format) when ``snappy`` is true, which lets a
    request received compressed go out without being compressed again. ``export`` never raises
    (cancellation aside): every failure is an outcome. It may be called concurrently.
    ``shutdown`` releases connections; idempotent.
    """

    @property
    def name(self) -> str:
        """The exporter's name in metrics and logs."""
        ...

    async def export(self, body: bytes, *, tenant: str, snappy: bool = False) -> ExportOutcome:
        """Send ``body`` for ``tenant``; see the class contract."""
        ...

    async def shutdown(self) -> None:
        """Close connections; idempotent."""
        ...
