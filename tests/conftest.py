"""Session-wide fixtures: the real NATS, etcd, OpenBao and VictoriaMetrics servers, started
once per test run.

NATS, etcd and OpenBao run from their PyPI wheels, VictoriaMetrics from Debian's package
(``make test`` installs it), on free loopback ports, with data and log in a temporary
directory, and are stopped by PID when the session ends. Tests that stop, kill or restart a
server start their own instance instead of touching these shared ones. A missing binary fails
the fixture with the install command: ``make test`` installs all four, so a skip would only
hide a broken environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from phoenixcp.errors import DependencyMissingError, StartupError
from phoenixcp.platform.embedded import (
    EmbeddedBao,
    EmbeddedEtcd,
    EmbeddedNats,
    EmbeddedServer,
    EmbeddedVictoriaMetrics,
)

_Server = TypeVar("_Server", bound=EmbeddedServer)


def _serve(server: _Server) -> Iterator[_Server]:
    try:
        server.start()
    except (DependencyMissingError, StartupError) as exc:
        pytest.fail(f"cannot start {server.name} for the test session: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A running nats-server with JetStream; ``.url`` is what ``nats.connect`` takes."""
    yield from _serve(EmbeddedNats(data_dir=tmp_path_factory.mktemp("nats")))


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """A running single-member etcd; ``.endpoint`` is what ``Etcd3Client([...])`` takes."""
    yield from _serve(EmbeddedEtcd(data_dir=tmp_path_factory.mktemp("etcd")))


@pytest.fixture(scope="session")
def bao_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBao]:
    """A running ``bao server -dev``; ``.addr`` and ``.root_token`` are what hvac takes."""
    yield from _serve(EmbeddedBao(data_dir=tmp_path_factory.mktemp("bao")))


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedVictoriaMetrics]:
    """A running VictoriaMetrics (Debian's ``victoria-metrics``, installed by ``make test``).

    ``.write_url`` takes remote-write; ``.query_until(promql, done)`` and ``.export_series(match)``
    read back (both flush first). Shared by the session: use metric names of your own.
    """
    yield from _serve(EmbeddedVictoriaMetrics(data_dir=tmp_path_factory.mktemp("victoria")))
