"""Graceful drain: an in-flight call finishes after stop is requested; new calls are refused."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from chaos_engineer.servicer import ChaosEngineerServicer
from phoenixcp.api.phoenix.v1 import chaos_pb2, chaos_pb2_grpc, common_pb2
from phoenixcp.core.identity import OPERATOR
from phoenixcp.errors import NotFound
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.rpc import ServicerBinding, secure_channel
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY
from phoenixcp.platform.service import ServiceApp
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.integration

SLOW = 1.0


class SlowServicer(ChaosEngineerServicer):
    """GetExperiment takes SLOW seconds, then answers NOT_FOUND through the error mapping."""

    async def GetExperiment(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(SLOW)
        raise NotFound(f"experiment {request.id!r} does not exist")


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_in_flight_call_finishes_during_drain(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    operator = LocalCA.open(tmp_path / "ca").issue(OPERATOR, ttl=dt.timedelta(hours=1))
    config = load_service_config(None, "chaos-engineer", environ={
        "PHOENIX_STATE_DIR": str(tmp_path), "PHOENIX_GRPC_DRAIN_GRACE": "5s"})
    app = ServiceApp(config=config, standalone=True, bindings=[ServicerBinding(
        "phoenix.v1.ChaosEngineerService",
        chaos_pb2_grpc.add_ChaosEngineerServiceServicer_to_server, SlowServicer())])
    runner = asyncio.create_task(app.run())
    for _ in range(100):
        if app.ready:
            break
        await asyncio.sleep(0.05)
    assert app.ready
    address = f"127.0.0.1:{app.grpc_port}"

    async with secure_channel(address, operator) as channel:
        stub = chaos_pb2_grpc.ChaosEngineerServiceStub(channel)
        request = chaos_pb2.GetExperimentRequest(id="x")
        in_flight = asyncio.ensure_future(stub.GetExperiment(request))
        await asyncio.sleep(0.2)
        app.request_stop()
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.GetExperiment(chaos_pb2.GetExperimentRequest(id="y"), timeout=2)
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await in_flight
    await asyncio.wait_for(runner, 10)

    # The in-flight call ran to its own answer, mapped by the interceptor, not cut off.
    assert first.value.code() == grpc.StatusCode.NOT_FOUND
    assert first.value.details() == "experiment 'x' does not exist"
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE
    trailers = dict(first.value.trailing_metadata() or ())
    detail = common_pb2.ErrorDetail.FromString(trailers[ERROR_DETAIL_KEY])
    assert detail.reason == common_pb2.ERROR_REASON_NOT_FOUND
    assert detail.message == "experiment 'x' does not exist"

    # The call ran inside a server span named after the method, with its status code. The
    # span ends on the server's task, which may finish just after the client has its answer.
    def finished() -> list[Any]:
        return [s for s in spans.get_finished_spans()
                if s.name == "phoenix.v1.ChaosEngineerService/GetExperiment"
                and s.attributes and s.attributes.get("rpc.grpc.status_code") == 5]

    for _ in range(40):
        if finished():
            break
        await asyncio.sleep(0.05)
    (span,) = finished()
    assert span.kind == trace.SpanKind.SERVER
