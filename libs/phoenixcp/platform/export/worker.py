"""Drains one durable queue into one exporter: batching, concurrency, retries, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_result,
    wait_exponential,
    wait_random,
)

from phoenixcp.platform.export.config import ExportWorkerConfig
from phoenixcp.platform.export.metrics import ExportMetrics
from phoenixcp.platform.export.result import Exporter, ExportOutcome, ExportResult
from phoenixcp.platform.export.snappy_blocks import join_blocks
from phoenixcp.platform.queue import DurableQueue, Entry

__all__ = ["ExportWorker"]

_log = logging.getLogger(__name__)
_POLL: Final = 0.1  # how soon an idle worker notices shutdown / force_flush
_GET_RECORDS: Final = 1024
#: Bytes read from the queue at a time: a batch rarely needs more (10,000 samples are
#: ~0.3 MiB of remote-write), and with a backlog each read is held in memory twice (the file
#: read, then the records) until sent: 4 MiB reads cost ~10 MiB of peak RSS.
_GET_BYTES: Final = 1 << 20
_REASON_KEY_CHARS: Final = 160
_REMEMBERED_REASONS: Final = 1024
_RETRY_LOG_EVERY: Final = 30.0


@dataclass(slots=True)
class _Batch:
    tenant: str
    deadline: float
    entries: list[Entry] = field(default_factory=list)
    samples: int = 0
    size: int = 0


class ExportWorker:
    """Sends what ``queue`` holds to ``exporter`` until shut down; at-least-once.

    Records of one tenant are combined (their ``WriteRequest`` bytes concatenated) into
    requests of up to ``max_samples``/``max_bytes``, sent when full or ``flush_interval``
    after their first record arrived, ``concurrency`` at a time. RETRYABLE is retried with
    exponential backoff and jitter (honouring ``Retry-After``) until it succeeds: the records
    stay in the queue meanwhile, and the queue fills and pushes back. REJECTED batches are
    split so only the refused records go to the dead-letter file; each distinct reason is
    logged once. Per-tenant order holds only with ``concurrency=1``.

    Concurrency: one event loop; ``run`` once; ``shutdown`` idempotent. The worker does not
    close the queue or own it beyond committing.
    """

    def __init__(self, *, queue: DurableQueue, exporter: Exporter,
                 config: ExportWorkerConfig | None = None,
                 metrics: ExportMetrics | None = None) -> None:
        self._queue = queue
        self._exporter = exporter
        self._config = config or ExportWorkerConfig()
        self._metrics = metrics
        self._slots = asyncio.Semaphore(self._config.concurrency)
        self._batches: dict[str, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._flush_now = False
        self._stopping = False
        self._run_task: asyncio.Task[None] | None = None
        self._logged_reasons: set[str] = set()
        self._last_retry_log = 0.0
        self._wake = asyncio.Event()
        self._shutdown_done = False
        cfg = self._config
        self._backoff = wait_exponential(
            multiplier=cfg.backoff_initial.total_seconds(), max=cfg.backoff_max.total_seconds()
        ) + wait_random(0, cfg.backoff_initial.total_seconds())

    @property
    def name(self) -> str:
        """The exporter's name."""
        return self._exporter.name

    def start(self) -> None:
        """Run in a background task (alternative to awaiting :meth:`run`)."""
        if self._run_task is None:
            self._run_task = asyncio.create_task(self.run(), name=f"export-{self.name}")

    async def run(self) -> None:
        """Pull, batch and dispatch until :meth:`shutdown`."""
        interval = self._config.flush_interval.total_seconds()
        while not self._stopping:
            now = time.monotonic()
            wait = min((b.deadline for b in self._batches.values()), default=now + _POLL) - now
            entries = await self._queue.get(_GET_RECORDS,
                                            max_bytes=min(_GET_BYTES, self._config.max_bytes),
                                            timeout=max(0.0, min(wait, _POLL)))
            if not entries and self._queue.closed:
                # Closed under a running worker (shutdown out of order): get() no longer
                # waits, so looping on would spin. What is not sent stays on disk.
                _log.warning("export worker %s stops: its queue was closed before the worker",
                             self.name)
                return
            now = time.monotonic()
            for entry in entries:
                batch = self._batches.get(entry.tenant)
                if batch is not None and batch.entries and (
                        batch.samples + entry.count > self._config.max_samples
                        or batch.size + len(entry.payload) > self._config.max_bytes):
                    await self._dispatch(batch)
                    batch = None
                if batch is None:
                    batch = self._batches[entry.tenant] = _Batch(entry.tenant, now + interval)
                batch.entries.append(entry)
                batch.samples += entry.count
                batch.size += len(entry.payload)
                if batch.samples >= self._config.max_samples:
                    await self._dispatch(batch)
            flush_all = self._flush_now
            self._flush_now = False
            for batch in list(self._batches.values()):
                if flush_all or batch.deadline <= now:
                    await self._dispatch(batch)

    async def force_flush(self, timeout: float = 30.0) -> bool:
        """Send partial batches now and wait until everything queued so far is acknowledged
        (or dead-lettered); False if ``timeout`` seconds passed first."""
        self._flush_now = True
        return await self._queue.wait_committed(timeout)

    async def shutdown(self, timeout: float = 30.0) -> bool:
        """Flush for up to ``timeout`` s, then stop; unsent records stay queued for the next
        start. Idempotent; returns whether everything was sent."""
        if self._shutdown_done:
            return True
        self._shutdown_done = True
        deadline = time.monotonic() + timeout
        flushed = (await self.force_flush(timeout)) if self._run_task is not None else False
        self._stopping = True
        self._wake.set()
        if self._run_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._run_task, max(0.0, deadline - time.monotonic()))
        if self._sending:
            await asyncio.wait(self._sending, timeout=max(0.01, deadline - time.monotonic()))
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        await self._exporter.shutdown()
        return flushed

    async def _dispatch(self, batch: _Batch) -> None:
        if self._batches.get(batch.tenant) is batch:
            del self._batches[batch.tenant]
        await self._slots.acquire()  # backpressure: pull no more while all slots are busy
        task = asyncio.create_task(self._send(batch.entries, batch.tenant))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, entries: list[Entry], tenant: str) -> None:
        gauge = self._metrics.in_flight.labels(self.name) if self._metrics else None
        if gauge is not None:
            gauge.inc()
        try:
            await self._deliver(entries, tenant)
        except RetryError:
            pass  # shutting down: the records stay in the queue for the next start
        except Exception:
            _log.exception("export worker failed a batch; it stays queued",
                           extra={"fields": {"exporter": self.name}})
        finally:
            self._slots.release()
            if gauge is not None:
                gauge.dec()

    async def _deliver(self, entries: list[Entry], tenant: str) -> None:
        snappy = self._config.snappy_payloads
        if snappy:  # the records' blocks joined: not decompressed and compressed again
            body = join_blocks([e.payload for e in entries])
        else:
            body = b"".join(e.payload for e in entries)
        samples = sum(e.count for e in entries)
        outcome = ExportOutcome(ExportResult.RETRYABLE)
        retrying = AsyncRetrying(
            retry=retry_if_result(lambda o: o.result is ExportResult.RETRYABLE),
            wait=self._wait, stop=lambda _state: self._stopping, sleep=self._sleep,
            before_sleep=lambda state: self._on_retry(state, samples),
        )
        async for attempt in retrying:
            with attempt:
                outcome = await self._attempt(body, tenant, snappy)
            state = attempt.retry_state
            if state.outcome is not None and not state.outcome.failed:
                state.set_result(outcome)  # tenacity's way to retry on a returned value
        if outcome.result is ExportResult.SUCCESS:
            self._acknowledged(entries, samples, outcome)
        elif outcome.result is ExportResult.REJECTED and len(entries) > 1:
            for entry in entries:  # find the refused records; deliver the rest
                await self._deliver([entry], tenant)
        elif outcome.result is ExportResult.REJECTED:
            await self._reject(entries[0], samples, outcome.reason)

    async def _attempt(self, body: bytes, tenant: str, snappy: bool) -> ExportOutcome:
        started = time.perf_counter()
        outcome = await self._exporter.export(body, tenant=tenant, snappy=snappy)
        if self._metrics is not None:
            self._metrics.request_seconds.labels(self.name).observe(
                time.perf_counter() - started)
            self._metrics.requests.labels(self.name, outcome.result.value).inc()
        return outcome

    def _acknowledged(self, entries: list[Entry], samples: int, outcome: ExportOutcome) -> None:
        self._queue.commit(entries)
        if outcome.reason:
            self._log_once("export partly accepted", outcome.reason, logging.WARNING)
        if self._metrics is not None:
            self._metrics.samples.labels(self.name, "exported").inc(samples)
            now = time.time()
            e2e = self._metrics.end_to_end_seconds.labels(self.name)
            for entry in entries:
                e2e.observe(max(0.0, now - entry.enqueued_at))

    async def _reject(self, entry: Entry, samples: int, reason: str) -> None:
        await self._queue.dead_letter(entry, f"{self.name}: {reason}")
        if self._metrics is not None:
            self._metrics.samples.labels(self.name, "dead_lettered").inc(samples)
        self._log_once("backend refused a batch; set aside to the dead-letter file", reason,
                       logging.ERROR)

    def _log_once(self, message: str, reason: str, level: int) -> None:
        key = reason[:_REASON_KEY_CHARS]
        if key in self._logged_reasons or len(self._logged_reasons) >= _REMEMBERED_REASONS:
            return
        self._logged_reasons.add(key)
        _log.log(level, message, extra={"fields": {"exporter": self.name, "reason": reason,
                                                  "queue_dir": str(self._queue.config.directory)}})

    def _wait(self, state: RetryCallState) -> float:
        told = state.outcome.result().retry_after if state.outcome and not state.outcome.failed \
            else None
        return max(self._backoff(state), told or 0.0)

    def _on_retry(self, state: RetryCallState, samples: int) -> None:
        if self._metrics is not None:
            self._metrics.samples.labels(self.name, "retried").inc(samples)
        now = time.monotonic()
        if now - self._last_retry_log >= _RETRY_LOG_EVERY:
            self._last_retry_log = now
            outcome = state.outcome.result() if state.outcome and not state.outcome.failed \
                else None
            _log.warning("export failed; retrying with backoff (records stay queued)",
                         extra={"fields": {"exporter": self.name, "attempt": state.attempt_number,
                                           "reason": outcome.reason if outcome else "",
                                           "queued_records": len(self._queue)}})

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
