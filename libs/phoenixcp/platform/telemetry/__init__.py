"""Window reports: what each pipeline replica tells the control plane about its traffic.

:func:`build_reports` turns a tenant's window (:class:`~phoenixcp.core.policy.window.
TenantSnapshot`) into ``WindowReport`` parts under the JetStream payload limit;
:class:`WindowReporter` publishes them every interval on ``phoenix.telemetry.pipeline.<tenant>``;
:mod:`.codec` converts sketches to and from their messages for the consumers.
"""

from __future__ import annotations

from phoenixcp.platform.telemetry.codec import (
    bottom_k_from_proto,
    quantile_sketch_from_proto,
    quantile_sketch_to_proto,
)
from phoenixcp.platform.telemetry.reporter import (
    DEFAULT_MAX_BYTES,
    REPORT_SUBJECT_PREFIX,
    ReportPublisher,
    WindowReporter,
)
from phoenixcp.platform.telemetry.window_report import build_reports, report_id

__all__ = [
    "DEFAULT_MAX_BYTES",
    "REPORT_SUBJECT_PREFIX",
    "ReportPublisher",
    "WindowReporter",
    "bottom_k_from_proto",
    "build_reports",
    "quantile_sketch_from_proto",
    "quantile_sketch_to_proto",
    "report_id",
]
