"""The benchmark's null backend: a remote-write receiver that counts, cheaply enough to keep up.

    .venv/bin/python bench/pipeline/sink.py --port 9201    # GET /stats -> JSON counts

Phoenix's ``CountingSink`` (phoenixcp.platform.export.sink) parses each request fully and loops
over its series in Python: about 0.5 M samples per CPU-second, less than a relay forwards, so it
would become what is measured. This one parses with upb against a schema that keeps each
``TimeSeries`` as raw bytes and counts them in C (about 5 M series per CPU-second). Samples are
counted exactly in one request of every ``SAMPLE_EVERY`` (labels skipped, samples parsed);
``samples`` is then series x the observed samples-per-series ratio, which is exact for the
benchmark workload (one sample per series per request, and vmagent keeps that shape).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import cramjam
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SAMPLE_EVERY = 8


def _message_classes() -> tuple[Any, Any]:
    """(WriteRequest with TimeSeries as bytes, WriteRequest whose TimeSeries keeps only samples)."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="phoenix_bench_sink.proto", package="phoenix_bench_sink", syntax="proto3"
    )
    raw = proto.message_type.add(name="RawWriteRequest")
    raw.field.add(name="timeseries", number=1, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    series = proto.message_type.add(name="SamplesOnly")
    series.field.add(name="samples", number=2, type=field.TYPE_BYTES, label=field.LABEL_REPEATED)
    counted = proto.message_type.add(name="CountedWriteRequest")
    counted.field.add(name="timeseries", number=1, type=field.TYPE_MESSAGE,
                      label=field.LABEL_REPEATED, type_name=".phoenix_bench_sink.SamplesOnly")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    find = pool.FindMessageTypeByName
    return (message_factory.GetMessageClass(find("phoenix_bench_sink.RawWriteRequest")),
            message_factory.GetMessageClass(find("phoenix_bench_sink.CountedWriteRequest")))


class Counts:
    def __init__(self) -> None:
        self.requests = self.series = self.bytes = self.refused = 0
        self.checked_series = self.checked_samples = 0

    def as_json(self) -> dict[str, float | int]:
        ratio = self.checked_samples / self.checked_series if self.checked_series else 1.0
        return {"requests": self.requests, "series": self.series, "bytes": self.bytes,
                "refused": self.refused, "samples_per_series": ratio,
                "samples": round(self.series * ratio)}


def make_app(counts: Counts) -> web.Application:
    raw_request, counted_request = _message_classes()

    async def write(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            data = bytes(cramjam.snappy.decompress_raw(body))
            message = raw_request.FromString(data)
        except Exception as exc:
            counts.refused += 1
            return web.Response(status=400, text=f"cannot decode: {exc}")
        counts.requests += 1
        counts.bytes += len(body)
        counts.series += len(message.timeseries)
        if counts.requests % SAMPLE_EVERY == 1:
            checked = counted_request.FromString(data)
            counts.checked_series += len(checked.timeseries)
            counts.checked_samples += sum(len(s.samples) for s in checked.timeseries)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counts.as_json())

    app = web.Application(client_max_size=256 << 20)
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", write)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(Counts()), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"bench sink on http://{host}:{port}/api/v1/write", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9201)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
