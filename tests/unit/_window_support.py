"""Synthetic pipeline windows (``TenantSnapshot``) for the window report tests."""

from __future__ import annotations

import numpy as np

from phoenixcp.core.policy.model import MetricKind, PriorityClass
from phoenixcp.core.policy.window import (
    MetricSnapshot,
    PointTally,
    PolicyTally,
    SeriesSeen,
    TenantSnapshot,
)
from phoenixcp.core.series import series_key

PROFILES = ("aggressive", "balanced", "conservative", "experimental", "full")
START_MS = 1_700_000_000_000


def metric_snapshot(name: str, series_count: int, *, profiles: tuple[str, ...] = PROFILES,
                    seed: int = 0, jobs: int = 5, instances: int = 20) -> MetricSnapshot:
    """``series_count`` distinct series of ``name`` with labels job, instance, method and a
    unique user_id; profile ``i`` keeps every ``i+1``-th output key (``full`` all of them)."""
    rng = np.random.default_rng(seed)
    series = []
    for i in range(series_count):
        labels = tuple(sorted({
            "__name__": name, "job": f"job-{i % jobs}", "instance": f"10.0.0.{i % instances}:9100",
            "method": ("GET", "POST", "PUT", "DELETE")[i % 4], "user_id": f"u{seed}-{i}",
        }.items()))
        series.append(SeriesSeen(key=series_key(labels), labels=labels, points=1 + i % 3,
                                 last_value=float(rng.random()),
                                 priority=PriorityClass(1 + i % 4)))
    keys = np.array([s.key for s in series], dtype=np.uint64)
    outputs = {profile: keys[:: len(profiles) - index] if profile != "full" else keys
               for index, profile in enumerate(profiles)}
    points = sum(s.points for s in series)
    return MetricSnapshot(
        name=name, kind=MetricKind.COUNTER, series=tuple(series), outputs=outputs,
        counts=PointTally(received=points, accepted=points, merged=points // 2,
                          emitted=points // 4),
        policies=(PolicyTally("drop-user-id", dry_run=False, matched_points=points,
                              matched_series=series_count, changed_points=points // 2,
                              output_series=series_count // 10),
                  PolicyTally("balanced/cap", dry_run=True, matched_points=3)),
        output_points={p: int(outputs[p].size) for p in profiles},
    )


def tenant_snapshot(metrics: int, series_per_metric: int, *, tenant: str = "acme",
                    replica_id: str = "pipeline-0", profiles: tuple[str, ...] = PROFILES,
                    active: str = "balanced", start_ms: int = START_MS) -> TenantSnapshot:
    snaps = tuple(metric_snapshot(f"http_requests_{m}_total", series_per_metric,
                                  profiles=profiles, seed=m) for m in range(metrics))
    counts = PointTally()
    for snap in snaps:
        counts.add(snap.counts)
    return TenantSnapshot(
        tenant=tenant, replica_id=replica_id, start_ms=start_ms, end_ms=start_ms + 10_000,
        active_profile=active, replica_count=3, metrics=snaps, counts=counts,
        batch_latency_seconds=np.random.default_rng(7).lognormal(-5, 1, 500),
        rejected_policies=((tenant, "bad-regex", (("match.metric_name_regex", "invalid"),)),),
    )
