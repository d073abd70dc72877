"""Second schemas for OTLP in which some fields are left as bytes.

:func:`metrics_view`: ``MetricsData`` (``ExportMetricsServiceRequest`` has the same field 1)
with the ``attributes`` of ``NumberDataPoint``, ``HistogramDataPoint`` and
``SummaryDataPoint`` declared ``repeated bytes``: parsing a request's bytes with it gives each
attribute as its serialized ``KeyValue`` (same field number, same wire type), which is a
cheap, exact dictionary key. Reading attributes as upb messages field by field cost more per
data point than the rest of the decode. ``ResourceMetrics.resource`` is its serialized
``Resource`` too, and a ``Metric``'s ``name``, ``description`` and ``unit`` are bytes, so the
converter twin hands over and checks exactly what the C converter does (which reads them
raw).

:func:`raw_strings_view`: ``KeyValue`` and ``Resource`` with every string as bytes, so
parsing checks no UTF-8 and a refusal can name the string that is not.

The schemas live in private descriptor pools; everything else in them is OTLP's own. Built
once, on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

__all__ = ["RawStrings", "metrics_view", "raw_strings_view"]

_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
#: Per message of metrics.proto, its fields left as bytes.
_RAW_METRICS_FIELDS = {
    "NumberDataPoint": {"attributes"}, "HistogramDataPoint": {"attributes"},
    "SummaryDataPoint": {"attributes"}, "ResourceMetrics": {"resource"},
    "Metric": {"name", "description", "unit"},
}


def _pool(raw: Callable[[Any, descriptor_pb2.DescriptorProto,
                         descriptor_pb2.FieldDescriptorProto], bool]
          ) -> descriptor_pool.DescriptorPool:
    """OTLP's common, resource and metrics schemas, with the fields ``raw`` picks as bytes."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, metrics_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            for field in message.field:
                if raw(module, message, field):
                    field.type = _BYTES
                    field.ClearField("type_name")
        pool.Add(proto)
    return pool


@functools.cache
def metrics_view() -> Any:
    """The message class: ``metrics_view().FromString(request_bytes)``. Thread-safe."""
    pool = _pool(lambda module, message, field: module is metrics_pb2
                 and field.name in _RAW_METRICS_FIELDS.get(message.name, ()))
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("opentelemetry.proto.metrics.v1.MetricsData"))


class RawStrings(NamedTuple):
    """Message classes whose strings are bytes."""

    KeyValue: Any
    Resource: Any


@functools.cache
def raw_strings_view() -> RawStrings:
    """``KeyValue`` and ``Resource`` with every string as bytes. Thread-safe."""
    pool = _pool(lambda module, message, field: field.type == _STRING)
    return RawStrings(
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("opentelemetry.proto.common.v1.KeyValue")),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("opentelemetry.proto.resource.v1.Resource")))
