"""``phoenixctl up`` as a user runs it: a subprocess, ready in time, clean stop, nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phoenixcp.core.identity import SERVICES

pytestmark = pytest.mark.e2e

PHOENIXCTL = [sys.executable, "-m", "phoenixcp.cli"]
READY_WITHIN = 20.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; only its parent can reap it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists():
            return time.monotonic() - start
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"phoenixctl up exited with {proc.returncode}:\n{out}\n{err}")
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    pytest.fail(f"{path} not written within {timeout}s:\n{out}\n{err}")


def test_up_serves_everything_and_stops_clean(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen([*PHOENIXCTL, "up", "--replicas", "2", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        took = wait_for(state / "endpoints.json", proc, READY_WITHIN)
        print(f"\nphoenixctl up --replicas 2: endpoints.json written after {took:.1f}s")
        endpoints = json.loads((state / "endpoints.json").read_text())

        assert set(endpoints["services"]) == {s.name for s in SERVICES}
        for name, replicas in endpoints["services"].items():
            assert len(replicas) == 2, name
            for replica in replicas:
                assert replica["grpc"].startswith("127.0.0.1:")
                assert replica["metrics"].startswith("http://127.0.0.1:")
                assert replica["metrics"].endswith("/metrics")
                assert alive(replica["pid"])
        assert endpoints["nats"].startswith("nats://127.0.0.1:")
        assert endpoints["etcd"].startswith("http://127.0.0.1:")
        for key in ("ca", "cert", "key"):
            assert Path(endpoints["tls"][key]).is_file()

        status = subprocess.run([*PHOENIXCTL, "status", "-o", "json", "--state-dir", str(state)],
                                capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        for name, replicas in report["services"].items():
            assert [r["health"] for r in replicas] == ["SERVING", "SERVING"], name
            assert {r["grpc"] for r in replicas} == {
                r["grpc"] for r in endpoints["services"][name]}

        table = subprocess.run([*PHOENIXCTL, "status", "--state-dir", str(state)],
                               capture_output=True, text=True, timeout=30)
        assert table.returncode == 0
        assert table.stdout.splitlines()[0].split() == ["SERVICE", "GRPC", "HEALTH", "LEADER"]

        pids = [r["pid"] for rs in endpoints["services"].values() for r in rs]
        pids += list(endpoints["pids"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Phoenix is up" in out
    assert [pid for pid in pids if alive(pid)] == []
    assert not (state / "endpoints.json").exists()


def test_status_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    result = subprocess.run([*PHOENIXCTL, "status", "--state-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "phoenixctl up" in result.stderr
