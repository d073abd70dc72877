"""SnapshotBuilder and its SeriesMemo, through the window report: what a report says of a
random window equals what the straightforward computation over every series says."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from datasketches import HLL_4, hll_sketch, hll_union  # type: ignore[import-untyped]

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.memo import SeriesMemo
from phoenixcp.core.policy.model import MetricKind, PriorityClass
from phoenixcp.core.policy.snapshot import SnapshotBuilder
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, TenantSnapshot
from phoenixcp.core.series import series_key
from phoenixcp.core.sketches import hll_estimate, hll_of_keys, hll_of_strings
from phoenixcp.platform.telemetry.window_report import ReportCache, build_reports

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
K = 16  # a small bottom-k, so metrics have more series than their sample


@dataclass
class Window:
    """One window of a tenant as the engine hands it to the builder."""

    keys: np.ndarray
    slots: np.ndarray
    points: np.ndarray


def random_labels(rng: np.random.Generator, metric: str, user: str) -> LabelSet:
    labels = {"__name__": metric, "job": f"job-{rng.integers(4)}",
              "instance": f"10.0.0.{rng.integers(30)}:9100",
              "code": ("200", "404", "500", "")[rng.integers(4)],  # "" is left out
              "user": user}
    if rng.random() < 0.3:
        labels["zone"] = ("eu", "us", "ÄÖ-ünïcode")[rng.integers(3)]
    return tuple(sorted((n, v) for n, v in labels.items() if v))


class Tenant:
    """Labels by key and slots as the engine keeps them: a slot per live series, reused."""

    def __init__(self, seed: int, *, unique_users: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.unique_users = unique_users
        self.catalog: dict[int, LabelSet] = {}
        self.slot_of: dict[int, int] = {}
        self.free: list[int] = []
        self.made = 0

    def new_series(self, n: int) -> list[int]:
        keys: list[int] = []
        while len(keys) < n:
            self.made += 1
            user = f"u{self.made if self.unique_users else self.rng.integers(1_000)}"
            labels = random_labels(self.rng, ("a_total", "b_seconds", "c")[self.rng.integers(3)],
                                   user)
            key = series_key(labels)
            if key in self.catalog:
                continue
            self.catalog[key] = labels
            self.slot_of[key] = self.free.pop() if self.free else self.made + 100
            keys.append(key)
        return keys

    def forget(self, keys: list[int]) -> None:
        for key in keys:
            del self.catalog[key]
            self.free.append(self.slot_of.pop(key))

    def window(self, keys: list[int]) -> Window:
        order = self.rng.permutation(len(keys))  # slot order, not key order
        chosen = np.asarray(keys, dtype=np.uint64)[order]
        return Window(chosen, np.asarray([self.slot_of[int(k)] for k in chosen]),
                      self.rng.integers(1, 5, len(keys)).astype(np.int64))


def snapshot(tenant: Tenant, window: Window, memo: SeriesMemo, last: dict[int, float],
             start_ms: int) -> TenantSnapshot:
    kinds = {"a_total": MetricKind.COUNTER, "b_seconds": MetricKind.HISTOGRAM}
    builder = SnapshotBuilder(active="full", shadows={}, positions=window.slots,
                              kind=lambda name: kinds.get(name, MetricKind.GAUGE),
                              last_value=last.get, now_ms=start_ms + 10_000, shadow_budget=100,
                              sample_k=K, memo=memo)
    labels = [tenant.catalog.get(key) for key in window.keys.tolist()]
    metrics = builder.build(window.keys, window.points, np.zeros(len(window.keys), np.int32),
                            [], labels, 10_000)
    return TenantSnapshot(tenant="acme", replica_id="r0", start_ms=start_ms,
                          end_ms=start_ms + 10_000, active_profile="full", replica_count=1,
                          metrics=metrics, counts=PointTally())


def per_series_sketch(values: list[str]) -> hll_sketch:
    """The straightforward HLL: one update per series (duplicates included)."""
    sketch = hll_sketch(12, HLL_4)
    for value in values:
        sketch.update(value)
    return sketch


def check(tenant: Tenant, window: Window, metrics: tuple[MetricSnapshot, ...],
          last: dict[int, float]) -> None:
    """The snapshot and its report against a computation over every series of the window."""
    by_metric: dict[str, list[int]] = {}
    points = dict(zip(window.keys.tolist(), window.points.tolist(), strict=True))
    for key in window.keys.tolist():
        by_metric.setdefault(tenant.catalog[key][0][1], []).append(key)
    expected_order = sorted(by_metric, key=lambda m: min(by_metric[m]))
    assert [m.name for m in metrics] == expected_order
    report = build_reports(TenantSnapshot(
        tenant="acme", replica_id="r0", start_ms=0, end_ms=10_000, active_profile="full",
        replica_count=1, metrics=metrics, counts=PointTally()), max_bytes=MIB, sample_k=K)
    windows = {w.metric_name: w for part in report for w in part.metrics}
    for metric in metrics:
        keys = sorted(by_metric[metric.name])
        window_report = windows[metric.name]
        assert metric.input_keys.tolist() == keys
        assert metric.counts.received == sum(points[k] for k in keys)
        assert window_report.counts.received == metric.counts.received
        assert window_report.input_series_hll == hll_of_keys(np.asarray(keys, np.uint64))
        assert window_report.input_series_estimate == round(
            hll_estimate(window_report.input_series_hll))
        [profile] = window_report.profiles
        assert profile.output_series_hll == window_report.input_series_hll
        # Per label: the HLL of the distinct values is the one updated once per series.
        values: dict[str, list[str]] = {}
        for key in keys:
            for name, value in tenant.catalog[key]:
                values.setdefault(name, []).append(value)
        del values["__name__"]
        assert [w.label_name for w in window_report.labels] == sorted(values)
        for label in window_report.labels:
            straight = per_series_sketch(values[label.label_name])
            assert label.values_hll == hll_of_strings(sorted(set(values[label.label_name])))
            reported = hll_sketch.deserialize(label.values_hll)
            union = hll_union(12)
            union.update(reported)
            union.update(straight)
            assert reported.get_estimate() == straight.get_estimate() == union.get_estimate()
            assert label.values_estimate == round(straight.get_estimate())
        # The sample: the K smallest keys, with their labels, points and last values.
        sample = window_report.sample
        assert [s.series_hash for s in sample.series] == keys[:K]
        assert sample.k == K
        assert sample.max_hash == (keys[K - 1] if len(keys) >= K else 2**64 - 1)
        for seen, sent in zip(metric.series, sample.series, strict=True):
            assert seen.key == sent.series_hash
            assert seen.labels == tenant.catalog[seen.key]
            assert [(x.name, x.value) for x in sent.labels] == [
                (n, v) for n, v in tenant.catalog[seen.key] if n != "__name__"]
            assert sent.points == points[seen.key]
            expected = last.get(seen.key, math.nan)
            assert ((math.isnan(sent.last_value) and math.isnan(expected))
                    or sent.last_value == expected)
            assert sent.priority_class == int(PriorityClass.MEDIUM)


def test_reports_of_changing_windows_equal_the_straightforward_computation() -> None:
    tenant = Tenant(seed=3)
    memo, cache = SeriesMemo(), ReportCache()
    live = tenant.new_series(400)
    for number in range(6):
        if number in (2, 4):  # some series go (their slots are reused), others come
            gone = live[: 60]
            tenant.forget(gone)
            live = live[60:] + tenant.new_series(90)
        window = tenant.window(live)
        last = {k: float(i) for i, k in enumerate(live[::3])}
        snap = snapshot(tenant, window, memo, last, start_ms=number * 10_000)
        check(tenant, window, snap.metrics, last)
        # The reporter's cache (same window to window) changes nothing in the report.
        cached = build_reports(snap, max_bytes=MIB, sample_k=K, cache=cache)
        assert cached == build_reports(snap, max_bytes=MIB, sample_k=K)


def test_a_series_without_labels_unknown_to_the_memo_is_left_out() -> None:
    tenant = Tenant(seed=5)
    live = tenant.new_series(50)
    window = tenant.window(live)
    stranger = np.uint64(12345)
    window = Window(np.append(window.keys, stranger), np.append(window.slots, 7),
                    np.append(window.points, 3))
    metrics = snapshot(tenant, window, SeriesMemo(), {}, start_ms=0).metrics
    assert sum(len(m.input_keys) for m in metrics) == 50
    assert all(stranger not in m.input_keys for m in metrics)


def test_forgotten_label_pairs_are_pruned_and_pairs_stay_right() -> None:
    """A bomb of label values: pair ids of series gone are dropped, and each metric's
    distinct pairs are still those of its live series."""
    tenant = Tenant(seed=11, unique_users=True)
    memo = SeriesMemo()
    live = tenant.new_series(1_200)
    for number in range(8):
        tenant.forget(live[:1_000])
        live = live[1_000:] + tenant.new_series(1_000)  # 1,000 new user values a window
        window = tenant.window(live)
        metrics = snapshot(tenant, window, memo, {}, start_ms=number * 10_000).metrics
        for metric in metrics:
            expected = frozenset(pair for key in metric.input_keys.tolist()
                                 for pair in tenant.catalog[key])
            assert metric.label_pairs == expected
    assert tenant.made > 9_000 and memo.pair_count < 6_000  # not every value ever seen


def test_the_memo_gives_back_each_held_series_labels_through_pruning_and_slot_reuse() -> None:
    """The engine drops its own copy of a series' labels once the memo holds them, so the
    memo's are the only ones: they must be the labels the series came with, after pair ids
    were pruned and renumbered and after slots went to other series."""
    tenant = Tenant(seed=13, unique_users=True)
    memo = SeriesMemo()
    live = tenant.new_series(1_200)
    for number in range(6):
        gone = live[:1_000]
        window = tenant.window(live)
        snapshot(tenant, window, memo, {}, start_ms=number * 10_000)
        assert memo.label_sets(window.slots, window.keys) == [
            tenant.catalog[key] for key in window.keys.tolist()]
        assert memo.holds(window.slots, window.keys).all()
        stale_slots = window.slots[np.isin(window.keys, gone)]
        tenant.forget(gone)
        live = live[1_000:] + tenant.new_series(1_000)  # reuses the slots of those gone
        window = tenant.window(live)
        reused = np.isin(window.slots, stale_slots)
        assert reused.any()
        # A slot now given to a new series: the memo does not hold the new key there yet.
        assert not memo.holds(window.slots[reused], window.keys[reused]).any()
        assert memo.label_sets(window.slots[reused], window.keys[reused]) == [None] * int(
            reused.sum())
    assert tenant.made > 6_000 and memo.pair_count < 6_000  # pruning ran
