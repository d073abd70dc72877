"""The policy stage between the receivers and the durable queues.

Every accepted batch goes through the :class:`~phoenixcp.core.policy.engine.PolicyEngine`:
the series it leaves unchanged are queued at once (before the sender gets its answer, as
without policies); merged points are queued when their flush interval ends, by a loop here;
dropped points are counted. Room in the queues is checked before the engine sees a batch, so a
429 / RESOURCE_EXHAUSTED normally changes no state; if concurrent requests fill the queue in
between, the sender's retry is harmless: a resent point adds nothing to a merged counter (its
increase is 0) or gauge (same latest value), and cap decisions are sticky (only the window's
counts see it twice). If merged output meets a full queue it waits and retries: it is never
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from metrics_pipeline.forwarding import Forwarder
from metrics_pipeline.profile_feeds import ProfileFeeds
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.policy.engine import MergedOutput, PolicyEngine
from phoenixcp.core.policy.window import TenantSnapshot
from phoenixcp.errors import ResourceExhausted
from phoenixcp.platform.idle_work import run_when_idle
from phoenixcp.platform.ingest.encode import batch_of_points

__all__ = ["PolicyStage"]

log = logging.getLogger(__name__)


class _StageMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.points = Counter(
            "phoenix_policy_points_total",
            "Points by what the policy stage did with them: passed, dropped (a drop policy, "
            "or a point a merger refused: out of order or NaN), merged, overflowed (into a "
            "cap's overflow series), emitted (merged output points).",
            ["tenant", "action"], registry=registry)
        self.policy_points = Counter(
            "phoenix_policy_matched_points_total",
            "Points matched by each policy (dry-run ones too), counted per window; "
            "changed=true for the points the policy changes or would change.",
            ["tenant", "policy", "mode", "changed"], registry=registry)
        self.plan_changes = Gauge(
            "phoenix_policy_plan_changes", "How many times this replica switched policy sets.",
            registry=registry)
        self.series = Gauge(
            "phoenix_pipeline_series",
            "Series this replica keeps state for, per tenant (those that sent points in the "
            "last 6 windows); the pipeline's memory grows with it (runbook "
            "pipeline-memory-high).", ["tenant"], registry=registry)
        self.applied_at = Gauge(
            "phoenix_policy_applied_timestamp_seconds",
            "Unix time at which this replica last applied new policy state.",
            registry=registry)


class PolicyStage:
    """Receivers call :meth:`accept`; ``start``/``shutdown`` run the merged-output loop."""

    def __init__(self, *, engine: PolicyEngine, forwarder: Forwarder,
                 registry: CollectorRegistry, flush_check: float = 0.5,
                 feeds: ProfileFeeds | None = None) -> None:
        self.engine = engine
        self.feeds = feeds
        self._forwarder = forwarder
        self._metrics = _StageMetrics(registry)
        self._flush_check = flush_check
        self._task: asyncio.Task[None] | None = None
        self._backlog: list[tuple[MetricBatch, str | None, frozenset[str]]] = []
        """Merged output waiting for room: (batch, only this exporter, or all but these)."""
        self._closed = False

    async def accept(self, batch: MetricBatch) -> None:
        """Route ``batch`` and queue what passes; ResourceExhausted (nothing changed) when a
        queue has no room for it."""
        self._forwarder.check_room(len(batch.compressed or batch.write_request))
        outcome = self.engine.process(batch)
        claimed = self.feeds.claimed if self.feeds is not None else frozenset()
        if outcome.passthrough is not None:
            await self._forwarder.accept(outcome.passthrough, skip=claimed)
        if self.feeds is not None and self.feeds.feeds:
            for exporter, fed in self.feeds.process(batch):
                await self._forwarder.accept(fed, only=exporter)
        tally = outcome.tally
        counter = self._metrics.points
        passed = tally.received - tally.dropped - tally.merged - tally.overflowed
        for action, n in (("passed", passed), ("dropped", tally.dropped),
                          ("merged", tally.merged), ("overflowed", tally.overflowed)):
            if n:
                counter.labels(batch.tenant, action).inc(n)
        self.engine.record_latency(batch.tenant,
                                   (time.monotonic_ns() - batch.received_at) / 1e9)

    def applied(self) -> None:
        """Note that new policy state was applied (for /metrics)."""
        self._metrics.plan_changes.set(self.engine.plan_changes)
        self._metrics.applied_at.set(time.time())

    async def windows(self, *, replica_count: int) -> list[TenantSnapshot]:
        """Close the engine's windows; counts per-policy effects on /metrics. The windows are
        taken at once; their snapshots are built on a worker thread that runs while the loop
        sleeps and parks at its checkpoints while the loop has work
        (:func:`~phoenixcp.platform.idle_work.run_when_idle`), so batches keep flowing."""
        jobs = self.engine.window_jobs(replica_count=replica_count)
        if self.feeds is not None:
            self.feeds.end_windows()
        for tenant, held in self.engine.series_held().items():
            self._metrics.series.labels(tenant).set(held)
        snapshots = await run_when_idle(lambda: [job() for job in jobs])
        for snap in snapshots:
            for metric in snap.metrics:
                for t in metric.policies:
                    mode = "dry_run" if t.dry_run else "enforce"
                    unchanged = t.matched_points - t.changed_points
                    if t.changed_points:
                        self._metrics.policy_points.labels(
                            snap.tenant, t.policy_id, mode, "true").inc(t.changed_points)
                    if unchanged:
                        self._metrics.policy_points.labels(
                            snap.tenant, t.policy_id, mode, "false").inc(unchanged)
        return snapshots

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="policy-flush")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_check)
            await self._flush(force=False)

    def _due(self, *, force: bool) -> list[tuple[MergedOutput, str | None, frozenset[str]]]:
        claimed = self.feeds.claimed if self.feeds is not None else frozenset()
        due: list[tuple[MergedOutput, str | None, frozenset[str]]] = [
            (o, None, claimed) for o in self.engine.flush(force=force)]
        if self.feeds is not None:
            due.extend((o, exporter, frozenset()) for exporter, o in
                       self.feeds.flush(force=force))
        return due

    async def _flush(self, *, force: bool) -> None:
        for output, only, skip in self._due(force=force):
            if only is None:  # a feed's output is not the active profile's: not counted
                self._metrics.points.labels(output.tenant, "emitted").inc(len(output.points))
            self._backlog.append((batch_of_points(output.tenant, output.points), only, skip))
        while self._backlog:
            batch, only, skip = self._backlog[0]
            try:
                await self._forwarder.accept(batch, only=only, skip=skip)
            except ResourceExhausted as exc:
                log.warning("queue full; merged output waits", extra={"fields": {
                    "error": str(exc), "waiting_batches": len(self._backlog)}})
                await asyncio.sleep(exc.retry_after or 1.0)
                continue
            self._backlog.pop(0)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop the loop, then queue every merge target's pending output (within ``grace``)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            async with asyncio.timeout(grace):
                await self._flush(force=True)
        except TimeoutError:
            log.error("merged output could not be queued before shutdown", extra={"fields": {
                "batches": len(self._backlog)}})

