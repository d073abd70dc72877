"""The window reporter: every interval, each tenant's window goes to NATS as a WindowReport.

:class:`WindowReporter` is a service component (``start``/``shutdown``). Every ``interval``
it takes the closed windows from its source (the policy engine), builds the report parts
(:func:`~.window_report.encode_reports`, serialised, in a worker thread so the event loop
keeps serving the data path; with a :class:`~.window_report.ReportCache` kept from one
window to the next) and publishes each part to ``phoenix.telemetry.pipeline.<tenant>`` with
``Nats-Msg-Id`` ``<report_id>:<part>``, so a retried part is stored once.

The bus buffers publishes while NATS is away (its outbox retries them in order); what the
bus refuses (its buffer is full, JetStream refused the message) is counted and logged here
and never raised: reporting must not disturb the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from phoenixcp.core.policy.window import TenantSnapshot
from phoenixcp.platform.idle_work import run_when_idle
from phoenixcp.platform.telemetry.window_report import ReportCache, encode_reports, report_id

__all__ = ["DEFAULT_MAX_BYTES", "REPORT_SUBJECT_PREFIX", "ReportPublisher", "WindowReporter"]

_log = logging.getLogger(__name__)

REPORT_SUBJECT_PREFIX: Final = "phoenix.telemetry.pipeline"
DEFAULT_MAX_BYTES: Final = 1024 * 1024 - 4096
"""NATS' default ``max_payload`` (1 MiB) less room for the subject and headers."""


class ReportPublisher(Protocol):
    """What the reporter needs of the bus (``EventBus`` and ``InMemoryBus`` have it)."""

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> None:
        ...


class _ReporterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reports = Counter(
            "phoenix_window_reports_total",
            "Window reports (one per tenant and window) handed to the bus, all parts included.",
            registry=registry)
        self.parts = Counter(
            "phoenix_window_report_parts_total",
            "Window report parts (messages) handed to the bus.", registry=registry)
        self.bytes = Counter(
            "phoenix_window_report_bytes_total",
            "Serialised bytes of the window report parts handed to the bus.", registry=registry)
        self.failures = Counter(
            "phoenix_window_report_failures_total",
            "Window report work that failed: publish (the bus refused a part), build (a "
            "snapshot could not be turned into a report), source (no snapshots were taken).",
            ["stage"], registry=registry)
        self.build_seconds = Histogram(
            "phoenix_window_report_build_seconds",
            "CPU time to build one window's reports (all tenants), in a worker thread.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry)


class WindowReporter:
    """Publishes each tenant's window every ``interval``; one final window on shutdown.

    ``source`` closes the current window and returns its snapshots; it is called on the
    event loop, and the snapshots must not change after it returns (they are read in a
    worker thread). Lifecycle: ``start()`` and ``shutdown()`` are idempotent; shutdown of a
    started reporter stops the timer, waits for a report in progress and publishes the last
    window once, so call it before the bus shuts down. :meth:`report_now` reports at once
    (tests, drain). Concurrency: one event loop; reports never overlap. One reporter per
    ``registry`` (the metric names are fixed).
    """

    def __init__(
        self,
        source: Callable[[], Sequence[TenantSnapshot] | Awaitable[Sequence[TenantSnapshot]]],
        publisher: ReportPublisher,
        *,
        registry: CollectorRegistry,
        interval: timedelta = timedelta(seconds=10),
        max_bytes: int = DEFAULT_MAX_BYTES,
        address: str = "",
    ) -> None:
        if interval <= timedelta(0):
            raise ValueError(f"interval must be positive, got {interval}")
        self._source = source
        self._publisher = publisher
        self._interval = interval.total_seconds()
        self._max_bytes = max_bytes
        self._address = address
        self._metrics = _ReporterMetrics(registry)
        self._cache = ReportCache()  # used by one build at a time (the lock)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Start the timer. Idempotent; does nothing after shutdown."""
        if self._task is None and self._shutdown is None:
            self._task = asyncio.create_task(self._run(), name="window-reporter")

    async def shutdown(self) -> None:
        """Stop the timer and publish the last window once. Idempotent."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._close())
        await asyncio.shield(self._shutdown)

    def endpoints(self) -> dict[str, str]:
        """The reporter serves nothing."""
        return {}

    async def report_now(self) -> int:
        """Take the snapshots and publish their reports; the parts handed to the bus.

        Never raises for a failed source, build or publish: each is counted and logged.
        """
        async with self._lock:
            try:
                found = self._source()
                snapshots = list(await found if inspect.isawaitable(found) else found)
            except Exception as exc:
                self._metrics.failures.labels("source").inc()
                _log.exception("window reporter could not take the window's snapshots",
                               extra={"fields": {"error": repr(exc)}})
                return 0
            if not snapshots:
                return 0
            built = await run_when_idle(lambda: self._build(snapshots))
            published = 0
            for report in built:
                published += await self._publish(report)
            return published

    async def _close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            await self.report_now()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            if self._stop.is_set():
                return
            try:
                await self.report_now()
            except Exception as exc:  # a background task: report, never die silently
                _log.exception("window report failed", extra={"fields": {"error": repr(exc)}})

    def _build(self, snapshots: list[TenantSnapshot]) -> list[_Report]:
        started = time.thread_time()
        built = []
        for snapshot in snapshots:
            try:
                parts = encode_reports(snapshot, max_bytes=self._max_bytes,
                                       address=self._address, cache=self._cache)
            except Exception as exc:
                self._metrics.failures.labels("build").inc()
                _log.exception("window report could not be built",
                               extra={"fields": {"tenant": snapshot.tenant,
                                                 "error": repr(exc)}})
                continue
            built.append(_Report(snapshot.tenant, report_id(snapshot), parts))
        self._metrics.build_seconds.observe(time.thread_time() - started)
        return built

    async def _publish(self, report: _Report) -> int:
        published = 0
        subject = f"{REPORT_SUBJECT_PREFIX}.{report.tenant}"
        for index, data in enumerate(report.parts):
            try:
                await self._publisher.publish_raw(subject, data,
                                                  msg_id=f"{report.report_id}:{index}")
            except Exception as exc:
                self._metrics.failures.labels("publish").inc()
                _log.error("window report part not published",
                           extra={"fields": {"report_id": report.report_id, "part": index,
                                             "bytes": len(data), "error": repr(exc)}})
                continue
            published += 1
            self._metrics.parts.inc()
            self._metrics.bytes.inc(len(data))
        if published == len(report.parts):
            self._metrics.reports.inc()
        return published


@dataclass(frozen=True, slots=True)
class _Report:
    """One tenant's window report, its parts serialised (part ``i`` is ``parts[i]``)."""

    tenant: str
    report_id: str
    parts: list[bytes]
