"""Remote-write requests for the export tests, built with the generated Prometheus stubs."""

from __future__ import annotations

from phoenixcp.api.prometheus import remote_pb2, types_pb2

MetricType = types_pb2.MetricMetadata.MetricType


def write_request(series: list[tuple[dict[str, str], list[tuple[int, float]]]],
                  metadata: dict[str, int] | None = None) -> bytes:
    """A serialized WriteRequest: (labels, [(timestamp_ms, value)]) per series."""
    request = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in sorted(labels.items()):
            ts.labels.add(name=name, value=value)
        for timestamp, sample in samples:
            ts.samples.add(timestamp=timestamp, value=sample)
    for family, kind in (metadata or {}).items():
        request.metadata.add(metric_family_name=family, type=kind)
    return request.SerializeToString()


def numbered(batch: int, series: int = 10, samples: int = 5, marker: str = "ok") -> bytes:
    """``series`` series with ``samples`` samples each; values encode (batch, series, i)."""
    return write_request([
        ({"__name__": "phoenix_test_total", "batch": str(batch), "s": str(s), "m": marker},
         [(1_700_000_000_000 + i, float(batch * 1_000_000 + s * 1000 + i))
          for i in range(samples)])
        for s in range(series)
    ])


def sample_values(bodies: list[bytes]) -> list[float]:
    """Every sample value in these WriteRequest bodies."""
    values: list[float] = []
    for body in bodies:
        for ts in remote_pb2.WriteRequest.FromString(body).timeseries:
            values.extend(s.value for s in ts.samples)
    return values
