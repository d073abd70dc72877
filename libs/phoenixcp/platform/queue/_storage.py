"""Blocking file work of a durable queue: the segment writer, recovery at open, checkpoints.

:func:`create_segment`, :func:`open_prepared` and :func:`write_at` run on the event loop
(page-cache writes; the
syncs are the syncer's, ``_syncer.c``); :func:`recover`, :func:`write_checkpoint` and
:func:`delete_segments` run through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from phoenixcp.platform.queue._format import (
    MAGIC,
    decode_checkpoint,
    encode_checkpoint,
    iter_records,
    segment_name,
    segment_seq,
)

__all__ = ["PREPARED", "Recovered", "create_segment", "delete_segments", "open_prepared",
           "prepare_segment", "recover", "write_at", "write_checkpoint"]

_log = logging.getLogger("phoenixcp.platform.queue")

CHECKPOINT: Final = "checkpoint"
PREPARED: Final = "next-segment.tmp"
"""The segment written ahead of use (:func:`prepare_segment`); not a segment until renamed."""
_ZERO_CHUNK: Final = 1 << 20
_IOV_MAX: Final = 512

def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_segment(directory: Path, seq: int) -> int:
    """Create segment ``seq`` (truncating a leftover) with its magic; return its fd.

    Not synced here: the caller has the file, then the directory, synced before it counts
    any record in it as durable. Runs on the loop: an open and a page-cache write.
    """
    fd = os.open(directory / segment_name(seq),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_at(fd, [MAGIC], 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def prepare_segment(directory: Path, size: int) -> Path:
    """Write :data:`PREPARED` (the magic, then zeros up to ``size`` bytes) and sync it.

    Blocking (zeros go to disk): run it in a thread. The queue renames the file to its
    next segment's name when it needs one; appends then overwrite zeros in place, so their
    syncs need no journal commit for the file's size or block map.
    """
    path = directory / PREPARED
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        write_at(fd, [MAGIC], 0)
        zeros = bytes(_ZERO_CHUNK)
        for off in range(len(MAGIC), size, _ZERO_CHUNK):
            write_at(fd, [zeros[:min(_ZERO_CHUNK, size - off)]], off)
            # A chunk at a time: one 16 MiB flush would hold up the appends' syncs behind it.
            os.fdatasync(fd)
    finally:
        os.close(fd)
    return path


def open_prepared(directory: Path, seq: int) -> int:
    """Rename :data:`PREPARED` to segment ``seq`` and open it for writing (on the loop: a
    rename and an open). The directory must be synced before records in it count."""
    path = directory / segment_name(seq)
    os.rename(directory / PREPARED, path)
    return os.open(path, os.O_WRONLY | os.O_CLOEXEC)


def write_at(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write ``buffers`` in order at ``offset``, finishing short writes (a full disk raises
    OSError)."""
    for i in range(0, len(buffers), _IOV_MAX):
        group = [memoryview(b) for b in buffers[i:i + _IOV_MAX] if b]
        while group:
            written = os.pwritev(fd, group, offset)
            offset += written
            # A regular file takes all of it unless the disk is full; finish a short write.
            while group and written >= len(group[0]):
                written -= len(group[0])
                group.pop(0)
            if group and written:
                group[0] = group[0][written:]


@dataclass(slots=True)
class Recovered:
    """What :func:`recover` found: segment sizes, where reading starts, what is waiting."""

    segments: dict[int, int] = field(default_factory=dict)
    start: tuple[int, int] = (0, len(MAGIC))
    records: int = 0
    oldest: float | None = None
    next_seq: int = 0


def recover(directory: Path, *, queue: str) -> Recovered:
    """Validate the segments from the checkpoint on, truncating a torn or corrupt tail.

    Segments wholly before the checkpoint are deleted (they were consumed). Never raises for
    bad data: a bad record is logged and the segment is cut just before it, so every record
    before it survives.
    """
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = _read_checkpoint(directory / CHECKPOINT, queue)
    seqs = sorted(s for s in (segment_seq(p.name) for p in directory.iterdir()) if s is not None)
    found = Recovered()
    start_seq, start_off = checkpoint or (seqs[0] if seqs else 0, len(MAGIC))
    for seq in seqs:
        path = directory / segment_name(seq)
        if seq < start_seq:
            path.unlink()
            continue
        data = path.read_bytes()
        if data[:len(MAGIC)] != MAGIC:
            _log.warning("queue segment without its header; set aside",
                         extra={"fields": {"queue": queue, "segment": path.name}})
            path.rename(path.with_suffix(".corrupt"))
            continue
        begin = start_off if seq == start_seq else len(MAGIC)
        if begin > len(data):
            _log.warning("queue checkpoint past the end of its segment; starting at the end",
                         extra={"fields": {"queue": queue, "segment": path.name}})
            begin = len(data)
        valid = begin
        for item in iter_records(data, segment=seq, base=0, start=begin):
            if isinstance(item, str):
                _truncate(path, valid, len(data), item, queue)
                break
            found.records += 1
            valid = item.end
            if found.oldest is None:
                found.oldest = item.enqueued_at
        found.segments[seq] = valid
    found.start = (start_seq, start_off)
    if start_seq not in found.segments:
        later = [s for s in found.segments if s > start_seq]
        found.start = (min(later), len(MAGIC)) if later else (start_seq, len(MAGIC))
    found.next_seq = max([*found.segments, start_seq, -1]) + 1
    if found.segments:
        fsync_dir(directory)
    return found


def _truncate(path: Path, valid: int, size: int, reason: str, queue: str) -> None:
    _log.warning(
        "queue segment has a torn or corrupt record; truncating it there (records before it "
        "are kept)",
        extra={"fields": {"queue": queue, "segment": path.name, "offset": valid,
                          "dropped_bytes": size - valid, "reason": reason}},
    )
    with path.open("r+b") as f:
        f.truncate(valid)
        f.flush()
        os.fsync(f.fileno())


def _read_checkpoint(path: Path, queue: str) -> tuple[int, int] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    position = decode_checkpoint(data)
    if position is None:
        # Only written by rename, so this is disk damage: replaying from the start is safe.
        _log.warning("queue checkpoint is unreadable; replaying every segment",
                     extra={"fields": {"queue": queue, "path": str(path)}})
    return position


def write_checkpoint(directory: Path, position: tuple[int, int]) -> None:
    """Replace the checkpoint with ``position`` atomically and durably."""
    tmp = directory / (CHECKPOINT + ".tmp")
    with tmp.open("wb") as f:
        f.write(encode_checkpoint(*position))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CHECKPOINT)
    fsync_dir(directory)


def delete_segments(directory: Path, seqs: list[int]) -> None:
    """Remove fully consumed segments."""
    for seq in seqs:
        (directory / segment_name(seq)).unlink(missing_ok=True)
