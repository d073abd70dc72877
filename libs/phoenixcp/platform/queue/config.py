"""How a durable queue stores its records: one frozen, validated config per queue."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from phoenixcp.errors import ConfigError

__all__ = ["FsyncPolicy", "QueueConfig"]

_MIB = 1 << 20


class FsyncPolicy(enum.Enum):
    """When an ``append`` counts as durable, and what a crash can cost.

    ``ALWAYS`` (default): ``append`` returns after the record is written *and* ``fdatasync``ed;
    concurrent appends share one sync (group commit). Survives a process kill and a power cut.

    ``INTERVAL``: ``append`` returns once the record is written to the operating system (it
    survives a process kill, SIGKILL included); the segment is synced every
    ``fsync_interval``. A power cut or kernel crash loses up to that interval of records.

    ``NEVER``: as ``INTERVAL`` but never synced except on rotation and close; a power cut
    loses whatever the kernel had not written back. For benchmarks and throwaway stacks.
    """

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """Where and how one :class:`~phoenixcp.platform.queue.DurableQueue` keeps its records.

    ``directory`` holds one queue only (one per exporter). The constructor raises
    :class:`ConfigError` naming the bad key.
    """

    directory: Path
    #: A name for logs and metric labels (usually the exporter's name).
    name: str = "default"
    #: Most bytes of segment files on disk; an ``append`` beyond it raises ResourceExhausted.
    max_bytes: int = 512 * _MIB
    #: A segment is closed and a new one started when the next record would pass this size.
    segment_bytes: int = 16 * _MIB
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    #: With ``ALWAYS``: the next segment is written with zeros and synced ahead of use, so
    #: the sync of each append flushes data only, not the file's size and block map (about
    #: half the sync time under load, ADR 0014). Disk use is then up to two segments above
    #: the records' bytes (the active segment's unused tail and the next one).
    preallocate: bool = True
    #: How often ``INTERVAL`` syncs the active segment.
    fsync_interval: timedelta = timedelta(seconds=1)
    #: Longest the commit checkpoint may lag behind ``commit``; a crash replays at most this.
    checkpoint_interval: timedelta = timedelta(milliseconds=200)
    #: ``retry_after`` told to a caller whose append met a full queue.
    full_retry_after: timedelta = timedelta(seconds=1)
    #: Dead-letter file size at which it is rotated to ``dead-letter.jsonl.1`` (one kept).
    dead_letter_max_bytes: int = 256 * _MIB

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\\0"):
            raise ConfigError(f"queue.name: {self.name!r} must be a non-empty plain name",
                              key="name")
        if self.segment_bytes < 64 * 1024:
            raise ConfigError("queue.segment_bytes: must be at least 64KiB", key="segment_bytes")
        if self.max_bytes < 2 * self.segment_bytes:
            raise ConfigError(
                f"queue.max_bytes: {self.max_bytes} must be at least twice segment_bytes "
                f"({2 * self.segment_bytes})",
                key="max_bytes",
            )
        if not isinstance(self.fsync, FsyncPolicy):
            allowed = ", ".join(p.value for p in FsyncPolicy)
            raise ConfigError(f"queue.fsync: {self.fsync!r} is not one of {allowed}",
                              key="fsync")
        for key in ("fsync_interval", "checkpoint_interval"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(f"queue.{key}: must be a positive duration", key=key)
        if self.full_retry_after < timedelta(0):
            raise ConfigError("queue.full_retry_after: must not be negative",
                              key="full_retry_after")
        if self.dead_letter_max_bytes < 1024:
            raise ConfigError("queue.dead_letter_max_bytes: must be at least 1KiB",
                              key="dead_letter_max_bytes")
