"""SIGKILL a process that is appending to and consuming a DurableQueue; reopen and verify.

Every record whose ``append`` returned before the kill is still there unless it was
committed (committed ones may come back too: at-least-once), and no corrupt record ever
surfaces: torn tails are truncated on open.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phoenixcp.platform.queue import DurableQueue, QueueConfig

pytestmark = pytest.mark.chaos

HELPER = Path(__file__).with_name("_queue_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(directory: Path, seconds: float, first_id: int) -> tuple[set[int], set[int]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'libs'}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, str(HELPER), str(directory), str(first_id)],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.stdout.read().decode().splitlines()
    proc.wait()
    acked = {int(line[2:]) for line in output if line.startswith("A ") and line[2:].isdigit()}
    committed = {int(line[2:]) for line in output
                 if line.startswith("C ") and line[2:].isdigit()}
    return acked, committed


async def test_acked_records_survive_sigkill_and_nothing_corrupt_surfaces(
        tmp_path: Path) -> None:
    directory = tmp_path / "queue"
    for round_, seconds in enumerate((0.4, 0.7, 0.25)):
        acked, committed = run_and_kill(directory, seconds, round_ * 10_000_000)
        assert len(acked) > 100, f"round {round_}: the writer barely ran"
        present: list[int] = []
        async with DurableQueue(config=QueueConfig(
                directory=directory, name="chaos", segment_bytes=64 * 1024,
                max_bytes=64 << 20)) as queue:
            while entries := await queue.get(10_000, timeout=0.05):
                for entry in entries:
                    record_id, digest, padding = entry.payload.split(b":", 2)
                    assert hashlib.sha256(padding).hexdigest().encode() == digest
                    present.append(int(record_id))
                if round_ < 2:
                    continue  # leave them uncommitted: the next round replays them too
                queue.commit(entries)
        assert len(present) == len(set(present)), "a record surfaced twice in one replay"
        lost = acked - set(present) - committed
        assert not lost, f"round {round_}: acknowledged records lost: {sorted(lost)[:10]}"
