"""A profile that names its own exporter (``Profile.exporter``): a real metrics-pipeline
replica with two backends sends the active profile's output to one and the named profile's
output to the other, and stops when the profile is deleted."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
import uuid

import pytest

from phoenixcp.api.phoenix.v1 import common_pb2, pipeline_pb2, pipeline_pb2_grpc, state_pb2
from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.cli.stack import Backend, ServiceProcess
from phoenixcp.core.identity import OPERATOR, service
from phoenixcp.platform.embedded import EmbeddedEtcd, EmbeddedNats
from phoenixcp.platform.export.sink import CountingSink
from phoenixcp.platform.rpc import health_status, secure_channel
from phoenixcp.platform.tls import LocalCA
from tests.integration._pipeline_support import eventually, post, snappy, write_request

pytestmark = pytest.mark.integration


def names(sink: CountingSink) -> set[str]:
    return {next(lb.value for lb in s.labels if lb.name == "__name__")
            for body in sink.bodies for s in remote_pb2.WriteRequest.FromString(body).timeseries}


async def test_a_profile_with_its_own_exporter_feeds_the_second_backend(
        nats_server: EmbeddedNats, etcd_server: EmbeddedEtcd,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    state_dir = tmp_path_factory.mktemp("profile-exporter")
    operator = LocalCA.open(state_dir / "ca").issue(OPERATOR, ttl=dt.timedelta(hours=1))
    main, lab = CountingSink(keep_bodies=True), CountingSink(keep_bodies=True)
    await main.start()
    await lab.start()
    lab_name = f"lab-{uuid.uuid4().hex[:8]}"  # etcd is shared: other replicas lack it
    proc = ServiceProcess(service("metrics-pipeline"), 0, state_dir)
    proc.write_config(nats_url=nats_server.url, etcd_endpoint=etcd_server.endpoint, pipeline={
        "otlp_grpc_listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0",
        "merge_flush_interval": "1s",
        "exporters": [Backend("remote-write", main.url).exporter(0),
                      {**Backend("remote-write", lab.url).exporter(1), "name": lab_name}]})
    proc.start(python=sys.executable)
    profile = f"compare-{uuid.uuid4().hex[:8]}"
    try:
        deadline = time.monotonic() + 30
        while not (proc.read_announcement() and await health_status(
                proc.announced["grpc"], operator) == "SERVING"):
            assert proc.exit_code() is None, proc.log_tail(40)
            assert time.monotonic() < deadline, proc.log_tail(40)
            await asyncio.sleep(0.1)
        url = proc.announced["ingest"]["remote_write"]
        async with secure_channel(proc.announced["grpc"], operator) as channel:
            api = pipeline_pb2_grpc.PipelineServiceStub(channel)
            await api.ApplyProfile(pipeline_pb2.ApplyProfileRequest(profile=state_pb2.Profile(
                name=profile, exporter=lab_name, policies=[state_pb2.Policy(
                    id="no-debug", reason="compare without debug series",
                    match=common_pb2.MetricSelector(metric_name="debug_info"),
                    drop=state_pb2.DropAction())])))
            step = 0

            async def send() -> None:
                nonlocal step
                step += 1
                body = write_request([((("__name__", "up"), ("job", "a")), [(step * 1000, 1.0)]),
                                      ((("__name__", "debug_info"), ("job", "a")),
                                       [(step * 1000, 1.0)])])
                status, _, text = await post(url, snappy(body))
                assert status == 204, text

            async def lab_is_fed() -> bool:
                lab.bodies.clear()
                await send()
                await asyncio.sleep(0.1)
                return names(lab) == {"up"} and lab.counts.samples > 0

            deadline = time.monotonic() + 10
            while not await lab_is_fed():  # the watch applies the profile within ~100 ms
                assert time.monotonic() < deadline, (names(lab), proc.log_tail(20))
            lab.bodies.clear()
            main.bodies.clear()
            await send()
            await eventually(lambda: names(main) == {"up", "debug_info"} and bool(lab.bodies),
                             what="both backends fed")
            assert names(lab) == {"up"}  # the named profile dropped debug_info, only there
            await api.DeleteProfile(pipeline_pb2.DeleteProfileRequest(name=profile))
            main.bodies.clear()

            async def both_get_everything() -> bool:
                lab.bodies.clear()
                await send()
                await asyncio.sleep(0.2)
                return names(lab) == {"up", "debug_info"}

            deadline = time.monotonic() + 10
            while not await both_get_everything():  # the feed stopped: lab gets the active
                assert time.monotonic() < deadline, proc.log_tail(20)
            assert names(main) == {"up", "debug_info"}
    finally:
        proc.terminate()
        proc.wait_or_kill(time.monotonic() + 15)
        await main.stop()
        await lab.stop()
