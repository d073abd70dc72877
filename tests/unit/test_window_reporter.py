"""WindowReporter with the in-memory bus: what it publishes, when, and what it counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry

from phoenixcp.api.phoenix.v1 import telemetry_pb2
from phoenixcp.core.policy.window import TenantSnapshot
from phoenixcp.errors import ResourceExhausted
from phoenixcp.platform.bus import TELEMETRY_STREAM, InMemoryBus
from phoenixcp.platform.telemetry import WindowReporter
from tests.integration._coord_support import wait_until
from tests.unit._window_support import START_MS, tenant_snapshot

pytestmark = pytest.mark.unit


class Windows:
    """A source that hands out the next window of each tenant on every call."""

    def __init__(self, *tenants: str, metrics: int = 2, series: int = 300) -> None:
        self.tenants, self.metrics, self.series = tenants, metrics, series
        self.calls = 0
        self.times: list[float] = []

    def __call__(self) -> list[TenantSnapshot]:
        self.calls += 1
        self.times.append(time.monotonic())
        start_ms = START_MS + 10_000 * self.calls
        return [tenant_snapshot(self.metrics, self.series, tenant=t, start_ms=start_ms)
                for t in self.tenants]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_each_part_goes_to_the_tenant_subject_with_its_msg_id() -> None:
    bus, registry = InMemoryBus(), CollectorRegistry()
    reporter = WindowReporter(Windows("acme", "globex", metrics=6, series=2000), bus,
                              registry=registry, max_bytes=80_000)
    published = await reporter.report_now()
    stored = bus.stored(TELEMETRY_STREAM)
    assert published == len(stored) > 2
    for message in stored:
        report = telemetry_pb2.WindowReport.FromString(message.data)
        assert message.subject == f"phoenix.telemetry.pipeline.{report.tenant}"
        assert message.msg_id == f"{report.report_id}:{report.part}"
    assert {m.subject for m in stored} == {"phoenix.telemetry.pipeline.acme",
                                           "phoenix.telemetry.pipeline.globex"}
    assert sample(registry, "phoenix_window_reports_total") == 2
    assert sample(registry, "phoenix_window_report_parts_total") == len(stored)
    assert sample(registry, "phoenix_window_report_bytes_total") == sum(
        len(m.data) for m in stored)
    assert sample(registry, "phoenix_window_report_build_seconds_count") == 1


async def test_it_reports_every_interval_and_once_more_on_shutdown() -> None:
    bus, windows = InMemoryBus(), Windows("acme")
    reporter = WindowReporter(windows, bus, registry=CollectorRegistry(),
                              interval=timedelta(milliseconds=50))
    await reporter.start()
    await reporter.start()
    # Three intervals are enough on a quiet machine; a loaded CI runner may take a few more
    # (each report is built on a worker thread), so wait up to 2 s for the second one.
    await wait_until(lambda: windows.calls >= 2, timeout=2.0)
    assert windows.calls >= 2
    stopping = time.monotonic()
    await reporter.shutdown()
    await reporter.shutdown()
    # The last report is the shutdown's own (a tick that was already due may come before).
    assert windows.times[-1] >= stopping
    final = windows.calls
    assert len(bus.stored(TELEMETRY_STREAM)) == final
    await reporter.start()  # after shutdown: stays stopped
    await asyncio.sleep(0.1)
    assert windows.calls == final


class RefusingBus:
    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> None:
        raise ResourceExhausted("the bus publish buffer is full")


async def test_failures_are_counted_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    reporter = WindowReporter(Windows("acme"), RefusingBus(), registry=registry)
    assert await reporter.report_now() == 0
    assert sample(registry, "phoenix_window_report_failures_total", stage="publish") == 1
    assert sample(registry, "phoenix_window_reports_total") == 0
    assert "not published" in caplog.text

    def broken() -> Sequence[TenantSnapshot]:
        raise RuntimeError("engine is gone")

    registry = CollectorRegistry()
    failing = WindowReporter(broken, InMemoryBus(), registry=registry)
    assert await failing.report_now() == 0
    assert sample(registry, "phoenix_window_report_failures_total", stage="source") == 1

    registry = CollectorRegistry()
    tiny = WindowReporter(Windows("acme"), InMemoryBus(), registry=registry, max_bytes=10)
    assert await tiny.report_now() == 0  # the header cannot fit
    assert sample(registry, "phoenix_window_report_failures_total", stage="build") == 1


async def test_nothing_is_published_for_no_tenants() -> None:
    bus = InMemoryBus()
    reporter = WindowReporter(list, bus, registry=CollectorRegistry())
    assert await reporter.report_now() == 0
    assert bus.stored(TELEMETRY_STREAM) == []
    with pytest.raises(ValueError, match="interval"):
        WindowReporter(list, bus, registry=CollectorRegistry(), interval=timedelta(0))
