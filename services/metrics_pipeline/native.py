"""Which of the data path's C extensions this process runs, and which pure-Python twins.

Each extension (built by ``pip install``) has a twin with the same contract that runs when
the extension is not built, e.g. when the code runs from a source tree without
``pip install -e .``: results are the same, the CPU cost is 3-10x. The pipeline says so at
start (a warning naming the parts) and on ``/metrics`` (``phoenix_pipeline_native_code``).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge

from phoenixcp.core.aggregation._counters import MERGE_STATE
from phoenixcp.core.policy.index import KEY_TABLE
from phoenixcp.platform.ingest.otlp import CONVERTER
from phoenixcp.platform.ingest.remote_write import SCANNER
from phoenixcp.platform.queue.queue import SYNCER

__all__ = ["native_parts", "report_native_parts"]

log = logging.getLogger("metrics_pipeline.native")


def native_parts() -> dict[str, bool]:
    """Per part of the data path, whether its C extension runs (False: its Python twin)."""
    return {"remote_write_scanner": SCANNER == "c", "otlp_converter": CONVERTER == "c",
            "merge_state": MERGE_STATE == "c", "series_key_table": KEY_TABLE == "c",
            "queue_syncer": SYNCER == "c"}


def report_native_parts(registry: CollectorRegistry) -> dict[str, bool]:
    """Set ``phoenix_pipeline_native_code{part}`` and warn once about the twins running."""
    parts = native_parts()
    gauge = Gauge("phoenix_pipeline_native_code",
                  "1 when this part of the data path runs its C extension, 0 when its "
                  "pure-Python twin runs (same results, 3-10x the CPU).", ["part"],
                  registry=registry)
    for part, native in parts.items():
        gauge.labels(part).set(1 if native else 0)
    missing = sorted(part for part, native in parts.items() if not native)
    if missing:
        log.warning("C extensions not built; their pure-Python twins run (same results, "
                    "3-10x the CPU): rebuild with `pip install -e .` or install the wheel",
                    extra={"fields": {"parts": missing}})
    return parts
