"""The durable queue between the receivers and each exporter.

One :class:`DurableQueue` per exporter, in its own directory: records (opaque bytes with a
count and a tenant) appended to segment files with group-committed fsyncs, bounded in bytes
(a full queue raises ``ResourceExhausted``), read at least once across crashes via a commit
checkpoint, with a dead-letter file for records a backend refused. The on-disk format is in
:mod:`phoenixcp.platform.queue._format`, the fsync policies in :class:`FsyncPolicy`.
"""

from __future__ import annotations

from phoenixcp.platform.queue._format import Entry
from phoenixcp.platform.queue.config import FsyncPolicy, QueueConfig
from phoenixcp.platform.queue.dead_letter import DEAD_LETTER_FILE
from phoenixcp.platform.queue.metrics import QueueMetrics
from phoenixcp.platform.queue.queue import DurableQueue

__all__ = ["DEAD_LETTER_FILE", "DurableQueue", "Entry", "FsyncPolicy", "QueueConfig",
           "QueueMetrics"]
