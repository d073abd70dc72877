"""Config files: every bad key or value is refused with a message naming it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from phoenixcp.errors import ConfigError
from phoenixcp.platform.config import load_service_config
from phoenixcp.platform.config_loader import env_names

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "phoenix.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    config = load_service_config(None, "cost-optimizer", environ={})
    assert config.service == "cost-optimizer"
    assert config.grpc.listen == "127.0.0.1:0"
    assert config.grpc.drain_grace == timedelta(seconds=10)
    assert config.etcd.endpoints == ("127.0.0.1:2379",)


def test_the_pipeline_answers_once_written_and_syncs_every_second_by_default() -> None:
    pipeline = load_service_config(None, "metrics-pipeline", environ={}).pipeline
    assert pipeline.queue_fsync == "interval"  # ADR 0016
    assert pipeline.queue_fsync_interval == timedelta(seconds=1)


def test_file_values_and_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "grpc:\n  listen: 127.0.0.1:7000\n  drain_grace: 1m30s\n"
                           "etcd:\n  endpoints: [a:1, b:2]\n")
    config = load_service_config(
        path, "metrics-pipeline",
        environ={"PHOENIX_GRPC_LISTEN": "127.0.0.1:7001", "PHOENIX_LOG_LEVEL": "debug"},
    )
    assert config.grpc.listen == "127.0.0.1:7001"  # the environment wins over the file
    assert config.grpc.drain_grace == timedelta(seconds=90)
    assert config.etcd.endpoints == ("a:1", "b:2")
    assert config.log.level == "debug"


def test_every_leaf_key_has_an_environment_variable() -> None:
    from phoenixcp.platform.config import ServiceConfig

    names = env_names(ServiceConfig)
    assert names["grpc.drain_grace"] == "PHOENIX_GRPC_DRAIN_GRACE"
    assert names["state_dir"] == "PHOENIX_STATE_DIR"
    assert names["tls.cert_ttl"] == "PHOENIX_TLS_CERT_TTL"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grpc:\n  lisen: 1\n",
         "unknown key grpc.lisen; allowed keys at grpc: drain_grace, listen"),
        ("colour: blue\n", "unknown key colour"),
        ("grpc:\n  drain_grace: 10x\n", "grpc.drain_grace: '10x' is not a duration"),
        ("grpc:\n  drain_grace: 10\n", "a bare number has no unit"),
        ("grpc:\n  listen: localhost\n", "grpc.listen: 'localhost' is not host:port"),
        ("log:\n  level: loud\n", "log.level: 'loud' is not allowed; use one of: debug, info"),
        ("etcd:\n  endpoints: [http://x:2379]\n", "etcd.endpoints: 'http://x:2379' is not host"),
        ("nats:\n  url: http://x\n", "nats.url: 'http://x' is not a nats:// or tls:// URL"),
        ("tls:\n  source: files\n", "tls.ca_file: is missing"),
        ("service: cost-optimizer\n", "the file is for 'cost-optimizer'"),
        ("grpc: 5\n", "grpc: expected a mapping"),
        ("- a\n- b\n", "must hold a mapping"),
        ("grpc: [\n", "is not valid YAML at line"),
        ("pipeline:\n  queue_fsync: sometimes\n",
         "pipeline.queue_fsync: 'sometimes' is not allowed; use one of: always, interval, never"),
        ("pipeline:\n  queue_fsync_interval: 5ms\n",
         "pipeline.queue_fsync_interval: 5ms is out of range; use 10ms to 1m"),
    ],
)
def test_bad_config_names_key_and_allowed_values(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_service_config(path, "metrics-pipeline", environ={})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\(from \$PHOENIX_GRPC_DRAIN_GRACE\)"):
        load_service_config(None, "metrics-pipeline", environ={"PHOENIX_GRPC_DRAIN_GRACE": "soon"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_service_config(tmp_path / "nope.yaml", "metrics-pipeline", environ={})
