"""prepare_service_process: what a service's __main__ runs before anything else."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import sys
{before}
from phoenixcp.platform.process_setup import prepare_service_process
prepare_service_process()
import nats  # imports aiohttp when it can, for ws:// only
try:
    import aiohttp
except ImportError:
    print("aiohttp kept out")
else:
    print("aiohttp loaded")
"""


def _run(before: str = "") -> str:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(before=before)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_a_service_process_never_loads_aiohttp_and_nats_still_imports() -> None:
    assert _run() == "aiohttp kept out"


def test_a_module_already_imported_is_left_alone() -> None:
    assert _run("import aiohttp") == "aiohttp loaded"
