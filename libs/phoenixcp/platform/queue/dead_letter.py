"""The dead-letter file: records a backend refused for good, kept for a person to inspect.

``<queue dir>/dead-letter.jsonl`` holds one JSON object per line::

    {"ts": 1732752000.1, "queue": "vm", "tenant": "acme", "count": 1000,
     "enqueued_at": 1732751999.8, "reason": "HTTP 400: out of order sample",
     "payload_b64": "<the record's bytes, base64>"}

The payload is the queued record as appended (metrics-pipeline queues a snappy-compressed
Prometheus ``WriteRequest``; ``base64 -d | snappy -d | protoc --decode`` shows it), so it can be
re-sent as it is once fixed. When the file passes ``dead_letter_max_bytes`` it is renamed to
``dead-letter.jsonl.1`` (replacing the previous one) and a new file is started, so the disk
use stays bounded at twice that size; the count of what was set aside is in
``phoenix_queue_dead_lettered_total``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Final

from phoenixcp.platform.queue._format import Entry

__all__ = ["DEAD_LETTER_FILE", "append_dead_letters"]

DEAD_LETTER_FILE: Final = "dead-letter.jsonl"


def append_dead_letters(
    directory: Path, items: list[tuple[Entry, str]], *, queue: str, max_bytes: int
) -> None:
    """Append one line per (entry, reason) and fsync; blocking, run it in a thread."""
    path = directory / DEAD_LETTER_FILE
    lines = b"".join(
        json.dumps({
            "ts": time.time(), "queue": queue, "tenant": entry.tenant, "count": entry.count,
            "enqueued_at": entry.enqueued_at, "reason": reason,
            "payload_b64": base64.b64encode(entry.payload).decode(),
        }, separators=(",", ":")).encode() + b"\n"
        for entry, reason in items
    )
    try:
        if path.stat().st_size + len(lines) > max_bytes:
            os.replace(path, path.with_name(DEAD_LETTER_FILE + ".1"))
    except FileNotFoundError:
        pass
    with path.open("ab") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
