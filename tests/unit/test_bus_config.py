"""BusConfig refuses what cannot work, naming the key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from phoenixcp.errors import ConfigError
from phoenixcp.platform.bus import BusConfig

pytestmark = pytest.mark.unit

OK = {"url": "nats://127.0.0.1:4222", "connect_timeout": timedelta(seconds=2)}


def test_defaults_follow_the_design() -> None:
    config = BusConfig(**OK)  # type: ignore[arg-type]
    assert config.events_max_age == timedelta(days=7)
    assert config.telemetry_max_age == timedelta(minutes=15)
    assert config.duplicate_window >= timedelta(minutes=2)
    assert config.publish_buffer == 10_000
    assert config.publish_timeout == timedelta(seconds=2)
    assert config.nak_delay == timedelta(seconds=1)
    assert BusConfig(url="nats://a:1, tls://b:2", connect_timeout=timedelta(1)).servers == [
        "nats://a:1", "tls://b:2"]


@pytest.mark.parametrize(("key", "value"), [
    ("url", "http://127.0.0.1:4222"),
    ("connect_timeout", timedelta(0)),
    ("publish_timeout", timedelta(seconds=-1)),
    ("nak_delay", timedelta(seconds=-1)),
    ("duplicate_window", timedelta(seconds=30)),
    ("telemetry_max_age", timedelta(minutes=1)),  # shorter than the duplicate window
    ("publish_buffer", 0),
    ("dedupe_window", 0),
])
def test_a_bad_value_names_its_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        BusConfig(**{**OK, key: value})  # type: ignore[arg-type]
    assert caught.value.key in (key, "duplicate_window")
    assert str(caught.value).startswith("bus.")
