"""One real Phoenix stack (``LocalStack``: NATS, etcd, CA, five service processes) per session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from phoenixcp.cli.stack import LocalStack, operator_bundle
from phoenixcp.errors import StartupError
from phoenixcp.platform.tls import CertBundle


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(state_dir=tmp_path_factory.mktemp("stack"), replicas=1)
    try:
        asyncio.run(local.start(timeout=30))
    except StartupError as exc:
        local.stop()
        pytest.fail(f"{exc}\n{exc.log_tail}", pytrace=False)
    yield local
    local.stop()


@pytest.fixture(scope="session")
def endpoints(stack: LocalStack) -> dict:  # type: ignore[type-arg]
    return stack.endpoints()


@pytest.fixture(scope="session")
def operator(endpoints: dict) -> CertBundle:  # type: ignore[type-arg]
    return operator_bundle(endpoints)


@pytest.fixture(scope="session")
def state_dir(stack: LocalStack) -> Path:
    return stack.state_dir
