"""A service process: NOT_SERVING until its dependencies answer, clean drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from phoenixcp.cli.stack import ServiceProcess
from phoenixcp.core.identity import OPERATOR, service
from phoenixcp.platform.embedded import EmbeddedEtcd, EmbeddedNats, free_port
from phoenixcp.platform.rpc import health_status
from phoenixcp.platform.tls import LocalCA

pytestmark = pytest.mark.integration

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def readyz(metrics_url: str) -> int:
    try:
        with _HTTP.open(metrics_url.replace("/metrics", "/readyz"), timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def wait_announced(proc: ServiceProcess, timeout: float = 15) -> dict[str, object]:
    for _ in range(int(timeout * 10)):
        record = proc.read_announcement()
        if record:
            return record
        assert proc.exit_code() is None, proc.log_tail()
        await asyncio.sleep(0.1)
    pytest.fail(f"{proc.replica} never announced itself:\n{proc.log_tail()}")


async def wait_status(address: str, bundle: object, want: str, timeout: float = 15) -> None:
    got = ""
    for _ in range(int(timeout * 10)):
        got = await health_status(address, bundle)  # type: ignore[arg-type]
        if got == want:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"health of {address} stayed {got}, expected {want}")


async def test_not_serving_until_etcd_answers_then_drains_on_sigterm(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    ca = LocalCA.open(tmp_path / "ca")
    operator = ca.issue(OPERATOR, ttl=__import__("datetime").timedelta(hours=1))
    etcd_port = free_port()
    proc = ServiceProcess(service("performance-monitor"), 0, tmp_path)
    proc.write_config(nats_url=nats_server.url, etcd_endpoint=f"127.0.0.1:{etcd_port}")
    # The announce file is written once SERVING; to see NOT_SERVING we find the port in the log.
    proc.start(python=__import__("sys").executable)
    try:
        listening = await _listening_record(proc)
        address, metrics_port = listening["grpc"], listening["metrics_port"]
        assert await health_status(address, operator) == "NOT_SERVING"
        assert readyz(f"http://127.0.0.1:{metrics_port}/metrics") == 503
        assert proc.read_announcement() is None

        with EmbeddedEtcd(data_dir=tmp_path / "etcd", port=etcd_port):
            record = await wait_announced(proc)
            assert record["grpc"] == address
            await wait_status(address, operator, "SERVING")
            assert readyz(str(record["metrics"])) == 200

            assert proc.process is not None
            proc.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.process.wait, 20) == 0
    finally:
        proc.terminate()
        proc.wait_or_kill(__import__("time").monotonic() + 5)
    assert not proc.announce_path.exists()
    messages = [json.loads(line)["msg"] for line in proc.log_path.read_text().splitlines()
                if line.startswith("{")]
    assert "waiting for dependencies" in messages
    assert messages.index("serving") < messages.index("draining") < messages.index("stopped")


async def _listening_record(proc: ServiceProcess) -> dict[str, str]:
    for _ in range(150):
        for line in proc.log_path.read_text().splitlines() if proc.log_path.exists() else []:
            if line.startswith("{") and json.loads(line).get("msg") == "listening":
                return json.loads(line)  # type: ignore[no-any-return]
        assert proc.exit_code() is None, proc.log_tail()
        await asyncio.sleep(0.1)
    pytest.fail(f"{proc.replica} never logged 'listening':\n{proc.log_tail()}")
