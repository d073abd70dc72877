"""``phoenixctl serve`` refuses a bad config with one line naming it, and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def serve(config: Path, service: str = "metrics-pipeline") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phoenixcp.cli", "serve", service, "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("grpc:\n  lisen: 127.0.0.1:0\n", "unknown key grpc.lisen"),
        ("grpc:\n  drain_grace: soon\n", "grpc.drain_grace: 'soon' is not a duration"),
    ],
    ids=["bad-key", "bad-value"],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, names: str) -> None:
    config = tmp_path / "phoenix.yaml"
    config.write_text(text)
    result = serve(config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert str(config) in lines[0]


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = serve(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"phoenix metrics-pipeline: config error: config file {tmp_path / 'absent.yaml'} "
        "does not exist"
    )


def test_python_dash_m_runs_the_same_entry_point(tmp_path: Path) -> None:
    config = tmp_path / "phoenix.yaml"
    config.write_text("log:\n  level: loud\n")
    result = subprocess.run([sys.executable, "-m", "cost_optimizer", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "log.level: 'loud' is not allowed" in result.stderr
