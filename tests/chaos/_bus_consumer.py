"""A subscriber process for tests/chaos/test_bus_consumer_kill.py; the test SIGKILLs it.

    python _bus_consumer.py URL DURABLE SUBJECT OUT_FILE [DELAY_SECONDS [CRASH_AFTER]]

It consumes ``SUBJECT`` through the durable ``DURABLE`` and handles each event the way a
Phoenix handler must: idempotently by event id. The effect of handling an event is one line
``<id>`` appended (and fsync'd) to ``OUT_FILE``; an id already there is not applied again,
only noted in ``OUT_FILE.skips``. At start it drops a torn last line a kill may have left.
It runs until SIGTERM (clean shutdown) or SIGKILL; with ``CRASH_AFTER`` = n > 0 it SIGKILLs
itself right after applying its n-th event, before the bus acks it: the worst moment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from phoenixcp.api.phoenix.v1 import events_pb2
from phoenixcp.platform.bus import BusConfig, EventBus


def recover(out: Path) -> set[str]:
    """The ids already applied; a line without its newline was torn by a kill: drop it."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    return set(data.decode().split())


def append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


async def main(url: str, durable: str, subject: str, out: Path, delay: float,
               crash_after: int) -> None:
    done = recover(out)
    skips = out.with_name(out.name + ".skips")

    async def handle(event: events_pb2.Event) -> None:
        if event.id in done:
            append(skips, event.id)  # redelivered after a crash: already applied
            return
        await asyncio.sleep(delay)  # the work
        append(out, event.id)
        done.add(event.id)
        if len(done) == crash_after:
            os.kill(os.getpid(), signal.SIGKILL)

    config = BusConfig(url=url, connect_timeout=timedelta(seconds=2),
                       ack_wait=timedelta(seconds=1), pull_wait=timedelta(milliseconds=200))
    bus = EventBus(config=config, service="performance-monitor", replica_id=f"pm-{os.getpid()}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bus:
        await bus.subscribe(durable=durable, subjects=[subject], handler=handle)
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    url, durable, subject, out = sys.argv[1:5]
    delay = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    crash_after = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    asyncio.run(main(url, durable, subject, Path(out), delay, crash_after))
