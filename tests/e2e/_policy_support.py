"""Support for the policy tests against VictoriaMetrics: metrics-pipeline replicas as real
processes on the session's NATS and etcd, counter bombs with known values, /metrics pages.

:class:`PipelineReplicas` is :class:`~phoenixcp.cli.stack.LocalStack` without its own NATS and
etcd: the replicas join the session's servers (etcd keys under ``/phoenix/v1/``, so tests that
write policies there must delete them again), with replica ids unique to the run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from phoenixcp.cli.stack import Backend, ServiceProcess
from phoenixcp.core.identity import OPERATOR, SERVICES
from phoenixcp.errors import StartupError
from phoenixcp.platform.ingest.tenancy import TENANT_HEADER
from phoenixcp.platform.rpc import health_status
from phoenixcp.platform.tls import CertBundle, LocalCA
from tests.integration._pipeline_support import snappy, write_request

PIPELINE = next(s for s in SERVICES if s.name == "metrics-pipeline")


@dataclass
class _Replica(ServiceProcess):
    """A pipeline replica whose id is given (unique per run, as the session's etcd is shared)."""

    name: str = ""

    @property
    def replica(self) -> str:
        return self.name


class PipelineReplicas:
    """``count`` metrics-pipeline processes forwarding to ``backend_url`` (remote-write)."""

    def __init__(self, *, state_dir: Path, count: int, nats_url: str, etcd_endpoint: str,
                 backend_url: str, pipeline: dict[str, Any] | None = None) -> None:
        self.state_dir = state_dir
        run = uuid.uuid4().hex[:6]
        self.processes = [_Replica(PIPELINE, i, state_dir, name=f"pp-{run}-{i}")
                          for i in range(count)]
        self._nats_url = nats_url
        self._etcd_endpoint = etcd_endpoint
        self._pipeline = {
            "otlp_grpc_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "exporters": [Backend("remote-write", backend_url).exporter(0)],
            **(pipeline or {}),
        }
        self._operator: CertBundle | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Start every replica; returns once each reports SERVING (it follows etcd by then)."""
        ca_dir = self.state_dir / "ca"
        self._operator = LocalCA.open(ca_dir).issue(OPERATOR, ttl=dt.timedelta(days=1))
        tls = {"tls": {"source": "local-ca", "ca_dir": str(ca_dir)}}
        for proc in self.processes:
            proc.write_config(nats_url=self._nats_url, etcd_endpoint=self._etcd_endpoint,
                              tls=tls, pipeline=self._pipeline)
            proc.start(python=sys.executable)
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(self._wait_serving(p, deadline) for p in self.processes))

    async def _wait_serving(self, proc: ServiceProcess, deadline: float) -> None:
        assert self._operator is not None
        while time.monotonic() < deadline:
            if proc.exit_code() is not None:
                raise StartupError(f"{proc.replica} exited during start-up:\n{proc.log_tail()}",
                                   name=proc.replica)
            record = proc.read_announcement()
            if record and await health_status(record["grpc"], self._operator) == "SERVING":
                return
            await asyncio.sleep(0.1)
        raise StartupError(f"{proc.replica} not SERVING in time:\n{proc.log_tail()}",
                           name=proc.replica)

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        deadline = time.monotonic() + 15
        for proc in self.processes:
            proc.wait_or_kill(deadline)

    def replica_id(self, i: int) -> str:
        return self.processes[i].replica

    def write_url(self, i: int) -> str:
        return str(self.processes[i].announced["ingest"]["remote_write"])

    def metrics_url(self, i: int) -> str:
        return str(self.processes[i].announced["metrics"])

    def log_path(self, i: int) -> Path:
        return self.processes[i].log_path

    def __len__(self) -> int:
        return len(self.processes)


# -- /metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsPage:
    """One scrape of a replica's /metrics: ``value(name, **labels)`` sums the matching samples
    (0.0 when none match)."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    @classmethod
    def parse(cls, text: str) -> MetricsPage:
        return cls(tuple((s.name, dict(s.labels), float(s.value))
                         for family in text_string_to_metric_families(text)
                         for s in family.samples))

    def value(self, name: str, **labels: str) -> float:
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == want for k, want in labels.items()))


def unlabelled(text: str, name: str) -> float:
    """The value of the label-less sample ``name`` in an exposition page (NaN when absent):
    a regular expression, for polling faster than a full parse allows."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else math.nan


async def scrape(session: aiohttp.ClientSession, url: str) -> MetricsPage:
    async with session.get(url) as response:
        response.raise_for_status()
        return MetricsPage.parse(await response.text())


async def scrape_all(replicas: PipelineReplicas) -> list[MetricsPage]:
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(scrape(session, replicas.metrics_url(i))
                                           for i in range(len(replicas)))))


async def wait_view_revision(replicas: PipelineReplicas, revision: int,
                             timeout: float = 5.0) -> None:
    """Until every replica applies a policy view of etcd ``revision`` or later."""
    deadline = time.monotonic() + timeout
    while True:
        pages = await scrape_all(replicas)
        seen = [p.value("phoenix_policy_view_revision") for p in pages]
        if all(r >= revision for r in seen):
            return
        assert time.monotonic() < deadline, (
            f"replicas at policy view revisions {seen}, not {revision}, after {timeout}s")
        await asyncio.sleep(0.05)


# -- sending ----------------------------------------------------------------------------------


async def post_write(session: aiohttp.ClientSession, url: str, body: bytes,
                     tenant: str) -> None:
    """POST one remote-write request; fails the test unless it is accepted (204)."""
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
               TENANT_HEADER: tenant}
    async with session.post(url, data=snappy(body), headers=headers) as response:
        text = await response.text()
        assert response.status == 204, f"{url}: {response.status} {text}"


@dataclass(frozen=True)
class CounterBomb:
    """``users`` counters ``metric{job, user_id}``, sent in ``rounds`` rounds ``period_s`` apart.

    User ``i`` starts at ``i % 11`` and grows by ``i % 5 + 1`` per second, so every value, and
    every sum of them, is an integer that floats add exactly. Round ``r`` is stamped
    ``start_ms + r * period_s * 1000`` and carries one sample per user, split into
    ``chunks`` requests of consecutive users.
    """

    metric: str
    users: int
    rounds: int
    period_s: int
    chunks: int
    start_ms: int
    job: str = "bomb"

    def value(self, user: int, r: int) -> float:
        return float(user % 11 + (user % 5 + 1) * r * self.period_s)

    def stamp(self, r: int) -> int:
        return self.start_ms + r * self.period_s * 1000

    def request(self, r: int, chunk: int) -> bytes:
        size = -(-self.users // self.chunks)
        users = range(chunk * size, min((chunk + 1) * size, self.users))
        return write_request([
            ([("__name__", self.metric), ("job", self.job), ("user_id", f"u{u:05d}")],
             [(self.stamp(r), self.value(u, r))])
            for u in users])

    @property
    def last_sum(self) -> float:
        return sum(self.value(u, self.rounds - 1) for u in range(self.users))

    @property
    def increase_after_first_round(self) -> float:
        return sum(self.value(u, self.rounds - 1) - self.value(u, 0) for u in range(self.users))

    @property
    def sent_rate(self) -> float:
        """Units per second summed over all users."""
        return float(sum(u % 5 + 1 for u in range(self.users)))

    async def send(self, tenant: str, route: Callable[[int], str]) -> list[float]:
        """Send every round when the wall clock reaches its stamp; request ``k`` (counted over
        all rounds) goes to ``route(k)``. Returns the wall time each round was fully answered."""
        answered: list[float] = []
        k = 0
        async with aiohttp.ClientSession() as session:
            for r in range(self.rounds):
                await asyncio.sleep(max(0.0, self.stamp(r) / 1000 - time.time()))
                for chunk in range(self.chunks):
                    await post_write(session, route(k), self.request(r, chunk), tenant)
                    k += 1
                answered.append(time.time())
        return answered


def series_labels(series: dict[str, Any]) -> frozenset[tuple[str, str]]:
    return frozenset(series["metric"].items())


@dataclass
class Exported:
    """What VictoriaMetrics holds for one metric (``export_series`` output), split by kind."""

    series: list[dict[str, Any]]
    raw: list[dict[str, Any]] = field(init=False)
    overflow: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.overflow = [s for s in self.series
                         if s["metric"].get("otel_metric_overflow") == "true"]
        self.raw = [s for s in self.series
                    if s["metric"].get("otel_metric_overflow") != "true"]

    @property
    def last_timestamp_ms(self) -> int:
        return max(int(max(s["timestamps"])) for s in self.series)

    def last_sum(self) -> float:
        return sum(float(s["values"][s["timestamps"].index(max(s["timestamps"]))])
                   for s in self.series)
