"""Chaos helper: appends numbered records to a DurableQueue until killed.

``python _queue_writer.py DIR FIRST_ID``: 16 concurrent appenders; after each ``append`` returns it
prints ``A <id>``; a consumer takes records and commits them, printing ``C <id>`` once
committed. Each payload is ``<id>:<sha256 of the padding>:<padding>`` so a reader can tell a
corrupt record from a good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sys
from datetime import timedelta
from pathlib import Path

from phoenixcp.platform.queue import DurableQueue, QueueConfig


def payload(record_id: int) -> bytes:
    padding = (str(record_id) * 200).encode()[: 500 + record_id % 3000]
    return f"{record_id}:{hashlib.sha256(padding).hexdigest()}:".encode() + padding


async def main(directory: Path, first_id: int) -> None:
    queue = DurableQueue(config=QueueConfig(
        directory=directory, name="chaos", segment_bytes=64 * 1024, max_bytes=64 << 20,
        checkpoint_interval=timedelta(milliseconds=20)))
    await queue.start()
    ids = itertools.count(first_id)
    out = sys.stdout

    async def appender() -> None:
        while True:
            record_id = next(ids)
            await queue.append(payload(record_id), count=1)
            out.write(f"A {record_id}\n")
            out.flush()

    async def consumer() -> None:
        while True:
            entries = await queue.get(7)
            await asyncio.sleep(0.002)
            queue.commit(entries)
            for entry in entries:
                out.write(f"C {entry.payload.split(b':', 1)[0].decode()}\n")
            out.flush()

    print("ready", flush=True)
    await asyncio.gather(consumer(), *(appender() for _ in range(16)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
