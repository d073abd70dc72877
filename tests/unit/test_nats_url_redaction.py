"""A password in the NATS URL (``nats://user:secret@host:4222``) is shown as ``***``: in the
config file's errors, the bus config's, the readiness probe's and the connection's errors when
NATS does not answer, and what the bus logs. Nothing listens on the ports these tests use."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from phoenixcp.errors import ConfigError, Unavailable
from phoenixcp.platform.bus.config import BusConfig
from phoenixcp.platform.bus.connection import open_connection
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.embedded._support import free_port
from phoenixcp.platform.probes import NatsProbe

pytestmark = pytest.mark.unit

SECRET = "n4ts-Pw"


async def ignore(error: Exception) -> None:
    pass


async def nothing() -> None:
    pass


def assert_hidden(text: str, *shown: str) -> None:
    assert SECRET not in text, text
    for part in shown:
        assert part in text, (part, text)


def test_the_config_file_error_shows_every_url_of_the_list_without_its_password(
        tmp_path: Path) -> None:
    path = tmp_path / "service.yaml"
    path.write_text(f"nats:\n  url: nats://a:{SECRET}@n1:4222,http://b:{SECRET}@n2:4222\n")
    with pytest.raises(ConfigError) as caught:
        load_service_config(path, "metrics-pipeline", environ={})
    assert_hidden(str(caught.value), "nats://a:***@n1:4222,http://b:***@n2:4222",
                  "is not a nats:// or tls:// URL")


def test_the_bus_config_error_and_shown_url_hide_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        BusConfig(url=f"http://user:{SECRET}@n1:4222", connect_timeout=timedelta(seconds=1))
    assert_hidden(str(caught.value), "'http://user:***@n1:4222'")
    config = BusConfig(url=f"nats://user:{SECRET}@n1:4222, tls://n2:4222",
                       connect_timeout=timedelta(seconds=1))
    assert config.shown_url == "nats://user:***@n1:4222, tls://n2:4222"
    assert config.servers[0] == f"nats://user:{SECRET}@n1:4222"  # the connection gets it


async def test_the_probe_and_the_connection_fail_and_say_where_without_the_password(
) -> None:
    """The probe of a NATS that is down fails (it used to retry without end)."""
    url = f"nats://user:{SECRET}@127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable) as probed:
        await asyncio.wait_for(NatsProbe(url=url, timeout=0.5).check(), 10)
    assert_hidden(str(probed.value), "NATS at nats://user:***@127.0.0.1:", "does not answer")
    config = BusConfig(url=url, connect_timeout=timedelta(seconds=0.5),
                       start_timeout=timedelta(seconds=1))
    with pytest.raises(Unavailable) as connected:
        await asyncio.wait_for(open_connection(
            config, name="redaction-test", error_cb=ignore, disconnected_cb=nothing,
            reconnected_cb=nothing, closed_cb=nothing), 10)
    assert_hidden(str(connected.value), "NATS at nats://user:***@127.0.0.1:")
