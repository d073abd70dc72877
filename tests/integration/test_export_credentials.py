"""A password in a remote-write exporter's URL goes to the backend (``Authorization: Basic``)
and nowhere else: not into a log record while metrics-pipeline starts its exporters and fails
to deliver, not into an exception or an outcome's reason, not into ``GetPipelineStatus``.
Everywhere they show ``user:***@host``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from metrics_pipeline.forwarding import Forwarder
from metrics_pipeline.stats import ReplicaCounters
from phoenixcp.core.batch import MetricBatch
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.embedded import free_port
from phoenixcp.platform.export import ExportResult, RemoteWriteConfig, RemoteWriteExporter
from phoenixcp.platform.export.http_client import ConnectError, HttpClient
from phoenixcp.platform.export.sink import CountingSink
from phoenixcp.platform.logs import JsonFormatter
from tests.integration._coord_support import wait_until
from tests.integration._export_support import numbered, retryable

pytestmark = pytest.mark.integration

SECRET = "s3cret-Pw"


@pytest.fixture
async def refusing_sink() -> AsyncIterator[CountingSink]:
    sink = CountingSink()
    sink.status = 503
    await sink.start()
    yield sink
    await sink.stop()


def with_password(url: str) -> str:
    return url.replace("://", f"://user:{SECRET}@", 1)


def hidden(text: str) -> bool:
    return SECRET not in text


async def test_start_and_failed_deliveries_log_no_password(
        refusing_sink: CountingSink, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    refused = urlsplit(refusing_sink.url).netloc
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: every connect fails
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
pipeline:
  queue_max_bytes: 4194304
  queue_fsync: never
  exporters:
    - name: refusing
      type: remote-write
      endpoint: {with_password(refusing_sink.url)}
      flush_interval: 50ms
    - name: unreachable
      type: remote-write
      endpoint: https://user:{SECRET}@{closed}/api/v1/write
      flush_interval: 50ms
      insecure_skip_verify: true
    - name: plaintext
      type: remote-write
      endpoint: http://user:{SECRET}@192.0.2.7:8428/api/v1/write
""")
    config = load_service_config(path, "metrics-pipeline", environ={})
    registry = CollectorRegistry()
    forwarder = Forwarder(config=config.pipeline, data_dir=tmp_path / "data", registry=registry)
    await forwarder.start()
    try:
        batch = MetricBatch(tenant="acme", write_request=numbered(1),
                            series_keys=np.zeros(10, np.uint64), sample_count=50, received_at=0)
        await forwarder.accept(batch, skip=frozenset({"plaintext"}))
        await wait_until(lambda: retryable(registry, "refusing") >= 2
                         and retryable(registry, "unreachable") >= 2, 10.0)
        stats = ReplicaCounters(registry=registry,
                                exporters=config.pipeline.exporters).exporters()
    finally:
        await forwarder.shutdown(0.2)

    records = caplog.records
    formatter = JsonFormatter()
    for record in records:
        assert hidden(formatter.format(record)) and hidden(str(vars(record))), vars(record)
    started = {r.fields["exporter"]: r.fields["endpoint"]  # type: ignore[attr-defined]
               for r in records if r.getMessage() == "exporter started"}
    assert started == {
        "refusing": f"http://user:***@{refused}/api/v1/write",
        "unreachable": f"https://user:***@{closed}/api/v1/write",
        "plaintext": "http://user:***@192.0.2.7:8428/api/v1/write"}
    (unverified,) = [r for r in records if "insecure_skip_verify" in r.getMessage()]
    assert unverified.fields["url"] == started["unreachable"]  # type: ignore[attr-defined]
    (unencrypted,) = [r for r in records if "unencrypted" in r.getMessage()]
    assert started["plaintext"] in unencrypted.getMessage()
    retries = {r.fields["exporter"]: r.fields["reason"]  # type: ignore[attr-defined]
               for r in records if r.getMessage().startswith("export failed")}
    assert retries["refusing"].startswith("HTTP 503")
    assert retries["unreachable"].startswith(f"ConnectError: cannot connect to {closed}")
    assert {s.name: s.endpoint for s in stats} == started


async def test_a_failed_post_says_where_without_the_password() -> None:
    closed = f"127.0.0.1:{free_port()}"
    url = f"https://user:{SECRET}@{closed}/api/v1/write"
    client = HttpClient(url)
    with pytest.raises(ConnectError) as raised:
        await client.post(b"x")
    await client.close()
    assert hidden(str(raised.value)) and hidden(repr(raised.value))
    assert closed in str(raised.value)

    exporter = RemoteWriteExporter(config=RemoteWriteConfig(url=url, insecure_skip_verify=True))
    outcome = await exporter.export(numbered(0), tenant="")
    await exporter.shutdown()
    assert outcome.result is ExportResult.RETRYABLE
    assert hidden(outcome.reason) and closed in outcome.reason
