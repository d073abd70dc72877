"""The ``Event`` envelope on the wire: ids, stamping, subjects, decoding.

Shared by the NATS bus and the in-memory fake so both stamp and route events the same way.
The subject convention (events.proto) is ``phoenix.events.<payload field>.<tenant>``, with
``_cluster`` for events without a tenant.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Final

from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from phoenixcp.api.phoenix.v1 import common_pb2, events_pb2
from phoenixcp.errors import InvalidArgument
from phoenixcp.platform import names

__all__ = [
    "CLUSTER_TENANT",
    "EVENTS_PREFIX",
    "TELEMETRY_PREFIX",
    "decode_event",
    "event_subject",
    "service_enum",
    "stamp",
    "subject_kind",
    "subject_matches",
    "uuid7",
]

EVENTS_PREFIX: Final = "phoenix.events"
TELEMETRY_PREFIX: Final = "phoenix.telemetry"
CLUSTER_TENANT: Final = "_cluster"
# A tenant becomes one subject token: no dots, wildcards or whitespace.
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_PROPAGATOR: Final = TraceContextTextMapPropagator()


def uuid7() -> str:
    """A random UUID whose first 48 bits are the Unix time in ms, so ids sort by time (RFC 9562).

    Python 3.11 has no ``uuid.uuid7``; ids made in the same millisecond are not ordered.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def service_enum(service: str) -> common_pb2.ServiceName.ValueType:
    """``cost-optimizer`` → ``SERVICE_NAME_COST_OPTIMIZER``; InvalidArgument for other names."""
    try:
        return names.service_enum(service)
    except ValueError as exc:
        raise InvalidArgument(str(exc), field="service") from None


def event_subject(event: events_pb2.Event) -> str:
    """The subject ``event`` is published on; InvalidArgument if it has no payload."""
    payload = event.WhichOneof("payload")
    if payload is None:
        raise InvalidArgument("the event has no payload set", field="payload")
    return f"{EVENTS_PREFIX}.{payload}.{event.tenant or CLUSTER_TENANT}"


def stamp(
    event: events_pb2.Event,
    *,
    service: common_pb2.ServiceName.ValueType,
    replica_id: str,
    tenant: str = "",
) -> str:
    """Fill in the envelope of ``event`` in place and return its subject.

    Sets ``id`` (a UUIDv7) and ``time`` (now) only when unset, so a caller retrying the same
    event keeps its id; always sets the source service and replica; sets ``tenant`` from the
    argument (InvalidArgument if the event names another tenant); takes ``traceparent`` from
    the current OpenTelemetry span when unset.
    """
    if tenant:
        if event.tenant and event.tenant != tenant:
            raise InvalidArgument(
                f"the event's tenant {event.tenant!r} differs from tenant={tenant!r}",
                field="tenant",
            )
        event.tenant = tenant
    if event.tenant and (event.tenant == CLUSTER_TENANT or not _TENANT.match(event.tenant)):
        raise InvalidArgument(
            f"tenant {event.tenant!r} is not 1-128 letters, digits, '_' or '-' (and not "
            f"{CLUSTER_TENANT!r})",
            field="tenant",
        )
    subject = event_subject(event)
    if not event.id:
        event.id = uuid7()
    if not event.HasField("time"):
        event.time.GetCurrentTime()
    event.source_service = service
    event.source_replica = replica_id
    if not event.traceparent and trace.get_current_span().get_span_context().is_valid:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        event.traceparent = carrier.get("traceparent", "")
    return subject


def decode_event(data: bytes) -> events_pb2.Event:
    """Parse one message body; ValueError when it is not an ``Event`` with an id."""
    event = events_pb2.Event()
    try:
        event.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a phoenix.v1.Event: {exc}") from exc
    if not event.id:
        raise ValueError("an Event without an id")
    return event


def subject_kind(subject: str) -> str:
    """The bounded part of a subject for metric labels: ``events.leader_changed``,
    ``telemetry.pipeline`` (the tenant token is dropped)."""
    return ".".join(subject.split(".")[1:3])


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)
