"""The queue's syncer, C and pure-Python twin: order, group commit, sticky errors, close."""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path
from typing import Any

import pytest

from phoenixcp.platform.queue import _syncer_py

pytestmark = pytest.mark.unit

IMPLS: list[Any] = [_syncer_py]
try:
    from phoenixcp.platform.queue import _syncer  # type: ignore[attr-defined]

    IMPLS.insert(0, _syncer)
except ImportError:  # pragma: no cover - the C extension is built by `pip install -e .`
    pass


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def wait_done(syncer: Any, gen: int, timeout: float = 5.0) -> tuple[int, int]:
    """Wait on the eventfd, as the event loop does, until ``gen`` is done."""
    deadline = time.monotonic() + timeout
    while True:
        done, err = syncer.completed()
        if done >= gen:
            return done, err
        left = deadline - time.monotonic()
        assert left > 0, f"generation {gen} not done after {timeout} s (done: {done})"
        select.select([syncer.fileno()], [], [], left)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_generations_complete_in_order_and_signal_the_eventfd(impl: Any,
                                                               tmp_path: Path) -> None:
    syncer = impl.Syncer()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 4096)
        gens = [syncer.request(fd) for _ in range(50)]
        assert gens == list(range(1, 51))
        assert wait_done(syncer, 50) == (50, 0)
        # completed() cleared the eventfd: nothing is readable until the next generation.
        assert select.select([syncer.fileno()], [], [], 0.05)[0] == []
        gen = syncer.request(fd, impl.FULL)
        assert wait_done(syncer, gen) == (51, 0)
    finally:
        syncer.close()
        os.close(fd)


def test_close_flag_closes_the_fd_after_the_earlier_requests(impl: Any,
                                                            tmp_path: Path) -> None:
    syncer = impl.Syncer()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    syncer.request(fd)
    syncer.request(fd, impl.CLOSE)
    gen = syncer.request(dir_fd, impl.FULL | impl.CLOSE)
    assert wait_done(syncer, gen) == (3, 0)
    assert not is_open(fd) and not is_open(dir_fd)
    syncer.close()


def test_a_failed_sync_is_reported_with_every_later_generation(impl: Any,
                                                              tmp_path: Path) -> None:
    syncer = impl.Syncer()
    read_end, write_end = os.pipe()  # fdatasync on a pipe fails with EINVAL
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert wait_done(syncer, syncer.request(fd)) == (1, 0)
        assert wait_done(syncer, syncer.request(write_end)) == (2, errno.EINVAL)
        assert wait_done(syncer, syncer.request(fd)) == (3, errno.EINVAL)
    finally:
        syncer.close()
        for f in (read_end, write_end, fd):
            os.close(f)


def test_close_finishes_what_was_requested_and_refuses_more(impl: Any,
                                                           tmp_path: Path) -> None:
    syncer = impl.Syncer()
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    for _ in range(20):
        syncer.request(fd)
    syncer.request(fd, impl.CLOSE)
    syncer.close()
    syncer.close()
    assert not is_open(fd)
    with pytest.raises(RuntimeError, match="closed"):
        syncer.request(0)
    with pytest.raises(ValueError, match="closed"):
        syncer.fileno()


def test_bad_arguments_say_what_is_allowed(impl: Any) -> None:
    syncer = impl.Syncer()
    try:
        with pytest.raises(ValueError, match="fd must be >= 0, got -1"):
            syncer.request(-1)
        with pytest.raises(ValueError, match=r"unknown flags 0x10 \(allowed: FULL=1"):
            syncer.request(0, 16)
        assert syncer.completed() == (0, 0)  # a refused request takes no generation
    finally:
        syncer.close()
