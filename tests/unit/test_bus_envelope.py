"""The Event envelope: ids, stamping, subjects, decoding, subject matching."""

from __future__ import annotations

import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from phoenixcp.api.phoenix.v1 import common_pb2, events_pb2
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform.bus.envelope import (
    decode_event,
    event_subject,
    service_enum,
    stamp,
    subject_kind,
    subject_matches,
    uuid7,
)

pytestmark = pytest.mark.unit

SERVICE = common_pb2.SERVICE_NAME_CHAOS_ENGINEER


def slo_breach(tenant: str = "") -> events_pb2.Event:
    event = events_pb2.Event(tenant=tenant)
    event.slo_breach.resolved = False
    return event


def test_uuid7_is_a_version_7_uuid_whose_prefix_is_the_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after
    assert len({uuid7() for _ in range(1000)}) == 1000


def test_stamp_fills_the_envelope_and_returns_the_subject() -> None:
    event = slo_breach()
    subject = stamp(event, service=SERVICE, replica_id="ce-1", tenant="acme")
    assert subject == "phoenix.events.slo_breach.acme"
    assert uuid.UUID(event.id).version == 7
    assert abs(event.time.ToSeconds() - time.time()) < 5
    assert (event.source_service, event.source_replica, event.tenant) == (SERVICE, "ce-1", "acme")


def test_stamp_keeps_an_existing_id_and_time_so_a_retry_is_the_same_event() -> None:
    event = slo_breach()
    event.id = "fixed"
    event.time.FromSeconds(1_700_000_000)
    stamp(event, service=SERVICE, replica_id="ce-1")
    stamp(event, service=SERVICE, replica_id="ce-2")
    assert event.id == "fixed" and event.time.ToSeconds() == 1_700_000_000
    assert event.source_replica == "ce-2"


def test_a_cluster_event_goes_to_the_cluster_subject() -> None:
    subject = stamp(slo_breach(), service=SERVICE, replica_id="r")
    assert subject == "phoenix.events.slo_breach._cluster"
    assert event_subject(slo_breach("t1")) == "phoenix.events.slo_breach.t1"


@pytest.mark.parametrize("tenant", ["a.b", "a*", ">", "with space", "_cluster", "x" * 129])
def test_a_tenant_that_is_not_one_subject_token_is_refused(tenant: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        stamp(slo_breach(), service=SERVICE, replica_id="r", tenant=tenant)
    assert caught.value.field == "tenant"


def test_conflicting_tenants_and_a_missing_payload_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="differs"):
        stamp(slo_breach("a"), service=SERVICE, replica_id="r", tenant="b")
    with pytest.raises(InvalidArgument, match="no payload"):
        stamp(events_pb2.Event(), service=SERVICE, replica_id="r")


def test_stamp_takes_the_traceparent_of_the_current_span() -> None:
    context = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    event = slo_breach()
    with trace.use_span(NonRecordingSpan(context)):
        stamp(event, service=SERVICE, replica_id="r")
    assert event.traceparent == f"00-{0x1234:032x}-{0x5678:016x}-01"
    untraced = slo_breach()
    stamp(untraced, service=SERVICE, replica_id="r")
    assert untraced.traceparent == ""


def test_service_names_map_to_the_enum() -> None:
    assert service_enum("metrics-pipeline") == common_pb2.SERVICE_NAME_METRICS_PIPELINE
    with pytest.raises(InvalidArgument):
        service_enum("billing")


def test_decode_refuses_what_is_not_an_event_with_an_id() -> None:
    event = slo_breach()
    stamp(event, service=SERVICE, replica_id="r")
    assert decode_event(event.SerializeToString()) == event
    with pytest.raises(ValueError, match=r"not a phoenix\.v1\.Event"):
        decode_event(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="without an id"):
        decode_event(slo_breach().SerializeToString())


@pytest.mark.parametrize(("pattern", "subject", "match"), [
    ("phoenix.events.>", "phoenix.events.slo_breach.acme", True),
    ("phoenix.events.>", "phoenix.events", False),
    ("phoenix.events.*.acme", "phoenix.events.slo_breach.acme", True),
    ("phoenix.events.*.acme", "phoenix.events.slo_breach.other", False),
    ("phoenix.events.slo_breach.*", "phoenix.events.slo_breach.acme.x", False),
    ("phoenix.events.slo_breach.acme", "phoenix.events.slo_breach.acme", True),
])
def test_subject_matching_follows_nats(pattern: str, subject: str, match: bool) -> None:
    assert subject_matches(pattern, subject) is match


def test_subject_kind_drops_the_tenant() -> None:
    assert subject_kind("phoenix.events.slo_breach.acme") == "events.slo_breach"
    assert subject_kind("phoenix.telemetry.pipeline.acme") == "telemetry.pipeline"
