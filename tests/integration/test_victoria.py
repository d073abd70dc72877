"""VictoriaMetrics and vmagent, the real ones: remote-write in, exact values back out."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from pathlib import Path

import cramjam
import pytest

from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.embedded import (
    EmbeddedVictoriaMetrics,
    EmbeddedVmagent,
    find_binary,
)
from phoenixcp.platform.embedded._victoria import QueryResult

pytestmark = pytest.mark.integration

Series = tuple[dict[str, str], list[tuple[float, int]]]  # labels, [(value, unix ms)]


def write_request(series: list[Series]) -> bytes:
    """A snappy-compressed remote-write 1.0 body."""
    request = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=labels[name])
        for value, timestamp in samples:
            ts.samples.add(value=value, timestamp=timestamp)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


def remote_write(url: str, series: list[Series]) -> int:
    request = urllib.request.Request(
        url,
        data=write_request(series),
        method="POST",
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return int(response.status)


def unique_metric() -> str:
    return f"phoenix_test_{uuid.uuid4().hex[:12]}"


def test_find_binary_finds_debians_victoria_metrics_and_vmagent() -> None:
    for name in ("victoria-metrics", "vmagent"):
        path = find_binary(name)
        assert os.access(path, os.X_OK)
        assert path.read_bytes()[:4] == b"\x7fELF"


def test_remote_write_is_queryable_with_exact_values(
    victoria_metrics: EmbeddedVictoriaMetrics,
) -> None:
    metric = unique_metric()
    now_ms = int(time.time()) * 1000
    samples_a = [(1.5, now_ms - 20_000), (2.25, now_ms - 10_000), (3.0, now_ms)]
    samples_b = [(-7.0, now_ms - 10_000), (1e12, now_ms)]
    status = remote_write(
        victoria_metrics.write_url,
        [
            ({"__name__": metric, "job": "api", "instance": "a:9100"}, samples_a),
            ({"__name__": metric, "job": "api", "instance": "b:9100"}, samples_b),
        ],
    )
    assert status == 204

    # PromQL can answer from slightly older samples for about a second after the write: wait
    # for the expected values (with a deadline), then the export proves each sample exactly.
    def by_instance(result: QueryResult) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in result}

    expected = {"a:9100": 3.0, "b:9100": 1e12}
    victoria_metrics.query_until(
        f'{metric}{{job="api"}}', lambda r: by_instance(r) == expected, at=now_ms / 1000
    )
    victoria_metrics.query_until(
        f"sum({metric})", lambda r: [float(x["value"][1]) for x in r] == [3.0 + 1e12]
    )

    exported = {
        s["metric"]["instance"]: list(zip(s["values"], s["timestamps"], strict=True))
        for s in victoria_metrics.export_series(f'{{__name__="{metric}"}}')
    }
    assert exported == {"a:9100": samples_a, "b:9100": samples_b}


def test_a_bad_query_is_invalid_argument(victoria_metrics: EmbeddedVictoriaMetrics) -> None:
    with pytest.raises(InvalidArgument, match="422"):
        victoria_metrics.query("sum(")


def test_restart_keeps_the_data(tmp_path: Path) -> None:
    metric = unique_metric()
    now_ms = int(time.time()) * 1000
    samples = [(float(i), now_ms - 1000 * (10 - i)) for i in range(10)]
    with EmbeddedVictoriaMetrics(data_dir=tmp_path / "vm") as vm:
        assert remote_write(vm.write_url, [({"__name__": metric, "job": "j"}, samples)]) == 204
        port = vm.port
        vm.restart()
        assert vm.port == port
        [series] = vm.export_series(metric)
        assert list(zip(series["values"], series["timestamps"], strict=True)) == samples
        # Even a crash keeps what was flushed.
        vm.flush()
        vm.kill()
        vm.start()
        assert len(vm.export_series(metric)[0]["values"]) == 10


def test_vmagent_relays_remote_write_to_victoria_metrics(
    victoria_metrics: EmbeddedVictoriaMetrics, tmp_path: Path
) -> None:
    metric = unique_metric()
    now_ms = int(time.time()) * 1000
    sent = [(42.0, now_ms)]
    with EmbeddedVmagent(
        data_dir=tmp_path / "vmagent", remote_write_urls=[victoria_metrics.write_url]
    ) as agent:
        status = remote_write(agent.write_url, [({"__name__": metric, "via": "vmagent"}, sent)])
        assert status == 204
        result = victoria_metrics.query_until(metric, lambda r: bool(r), at=now_ms / 1000)
    assert result[0]["metric"] == {"__name__": metric, "via": "vmagent"}
    assert float(result[0]["value"][1]) == 42.0
