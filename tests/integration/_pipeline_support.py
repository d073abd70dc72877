"""Helpers for pipeline tests: build remote-write bodies, post them, wait for a sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp
import cramjam

from phoenixcp.api.prometheus import remote_pb2, types_pb2

Labels = Sequence[tuple[str, str]]


def write_request(series: Sequence[tuple[Labels, Sequence[tuple[int, float]]]]) -> bytes:
    """An uncompressed WriteRequest with ``(labels, [(ts_ms, value), ...])`` per series."""
    request = remote_pb2.WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name, value in sorted(labels):
            ts.labels.add(name=name, value=value)
        for stamp, value in samples:
            ts.samples.append(types_pb2.Sample(timestamp=stamp, value=value))
    return request.SerializeToString()


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


def counter_series(metric: str, n_series: int, n_samples: int, *, start_ms: int,
                   job: str = "test") -> bytes:
    """``n_series`` series of ``metric`` with ``n_samples`` increasing samples each."""
    return write_request([
        ([("__name__", metric), ("job", job), ("instance", f"i{i}")],
         [(start_ms + k * 1000, float(k + i)) for k in range(n_samples)])
        for i in range(n_series)
    ])


async def post(url: str, body: bytes, *, headers: dict[str, str] | None = None,
               encoding: str | None = "snappy") -> tuple[int, dict[str, str], bytes]:
    hdrs = {"Content-Type": "application/x-protobuf", **(headers or {})}
    if encoding:
        hdrs["Content-Encoding"] = encoding
    async with aiohttp.ClientSession() as session, session.post(url, data=body,
                                                                headers=hdrs) as response:
        return response.status, dict(response.headers), await response.read()


async def eventually(check: Callable[[], bool], *, timeout: float = 20.0,
                     what: str = "condition") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")
