"""Profiles with their own exporter: a feed applies its profile to every batch, for its
exporter only; the active profile's output skips the exporters that feeds claim."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from metrics_pipeline.profile_feeds import ProfileFeeds
from phoenixcp.api.prometheus import remote_pb2
from phoenixcp.core.batch import MetricBatch
from phoenixcp.core.policy.model import (
    Aggregate,
    Drop,
    MetricSelector,
    PolicySpec,
    ProfileSpec,
)
from phoenixcp.platform.ingest import decode_remote_write

pytestmark = pytest.mark.unit

DROP_DEBUG = PolicySpec(id="no-debug", action=Drop(),
                        match=MetricSelector(metric_name="debug_info"))
SUM_USERS = PolicySpec(id="no-user", action=Aggregate(without=("user_id",)),
                       match=MetricSelector(metric_name="http_requests_total"))


@dataclass
class Source:
    profiles: dict[str, ProfileSpec]
    active: str = "full"
    own: dict[str, tuple[PolicySpec, ...]] = field(default_factory=dict)
    rejections: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()

    def profile_for(self, tenant: str) -> ProfileSpec:
        return self.profiles.get(self.active, ProfileSpec(name="full"))

    def policies_for(self, tenant: str, now: datetime) -> tuple[PolicySpec, ...]:
        return tuple(self.profile_for(tenant).policies) + self.own.get(tenant, ())


def batch(series: Mapping[str, float], ts: int = 1_000) -> MetricBatch:
    request = remote_pb2.WriteRequest()
    for text, value in series.items():
        name, _, user = text.partition("/")
        one = request.timeseries.add()
        one.labels.add(name="__name__", value=name)
        if user:
            one.labels.add(name="user_id", value=user)
        one.samples.add(value=value, timestamp=ts)
    return decode_remote_write(request.SerializeToString(), tenant="acme",
                               content_encoding="identity")


def names(b: MetricBatch) -> list[str]:
    request = remote_pb2.WriteRequest.FromString(b.write_request)
    return sorted("/".join(lb.value for lb in s.labels) for s in request.timeseries)


def feeds_for(*profiles: ProfileSpec, exporters: tuple[str, ...] = ("main", "lab"),
              own: dict[str, tuple[PolicySpec, ...]] | None = None) -> ProfileFeeds:
    feeds = ProfileFeeds(replica_id="r1", exporters=exporters,
                         default_flush=timedelta(seconds=15))
    feeds.apply(Source({p.name: p for p in profiles}, own=own or {}))
    return feeds


def test_a_profile_with_an_exporter_feeds_it_its_own_output() -> None:
    lab = ProfileSpec(name="experimental", policies=(DROP_DEBUG,), exporter="lab")
    feeds = feeds_for(ProfileSpec(name="full"), lab)
    assert feeds.claimed == {"lab"}
    out = feeds.process(batch({"up": 1.0, "debug_info": 1.0}))
    assert [(exporter, names(b)) for exporter, b in out] == [("lab", ["up"])]


def test_a_tenants_own_policies_apply_in_the_feed_too() -> None:
    lab = ProfileSpec(name="experimental", exporter="lab")
    feeds = feeds_for(lab, own={"acme": (DROP_DEBUG,)})
    out = feeds.process(batch({"up": 1.0, "debug_info": 1.0}))
    assert [names(b) for _, b in out] == [["up"]]


def test_merged_output_of_a_feed_goes_to_its_exporter() -> None:
    lab = ProfileSpec(name="experimental", policies=(SUM_USERS,), exporter="lab")
    feeds = feeds_for(lab)
    assert feeds.process(batch({"http_requests_total/u1": 3.0,
                                "http_requests_total/u2": 4.0})) == []
    flushed = feeds.flush(force=True)
    assert [(exporter, [v for _, _, v in o.points]) for exporter, o in flushed] == [
        ("lab", [7.0])]


def test_an_exporter_the_replica_lacks_is_ignored_and_the_last_one_is_never_claimed() -> None:
    elsewhere = ProfileSpec(name="experimental", policies=(DROP_DEBUG,), exporter="nowhere")
    assert feeds_for(elsewhere).claimed == frozenset()
    greedy = ProfileSpec(name="experimental", exporter="main")
    assert feeds_for(greedy, exporters=("main",)).claimed == frozenset()


def test_a_feed_that_stops_hands_its_last_output_to_its_exporter() -> None:
    lab = ProfileSpec(name="experimental", policies=(SUM_USERS,), exporter="lab")
    feeds = feeds_for(lab)
    feeds.process(batch({"http_requests_total/u1": 3.0}))
    feeds.apply(Source({"experimental": ProfileSpec(name="experimental",
                                                    policies=(SUM_USERS,))}))
    assert feeds.claimed == frozenset()
    assert [exporter for exporter, _ in feeds.flush()] == ["lab"]
    assert feeds.flush(force=True) == []
