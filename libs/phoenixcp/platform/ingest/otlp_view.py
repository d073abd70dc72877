"""A second schema for OTLP metrics in which data point attributes are left as bytes.

``MetricsData`` (``ExportMetricsServiceRequest`` has the same field 1) with the
``attributes`` of ``NumberDataPoint``, ``HistogramDataPoint`` and ``SummaryDataPoint``
declared ``repeated bytes``: parsing a request's bytes with it gives each attribute as its
serialized ``KeyValue`` (same field number, same wire type), which is a cheap, exact
dictionary key. Reading attributes as upb messages field by field cost more per data point
than the rest of the decode. The schema lives in a private descriptor pool; everything else
in it is OTLP's own. Built once, on first use.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

__all__ = ["metrics_view"]

_RAW_ATTRIBUTES = ("NumberDataPoint", "HistogramDataPoint", "SummaryDataPoint")


@functools.cache
def metrics_view() -> Any:
    """The message class: ``metrics_view().FromString(request_bytes)``. Thread-safe."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, metrics_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            if module is metrics_pb2 and message.name in _RAW_ATTRIBUTES:
                for field in message.field:
                    if field.name == "attributes":
                        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                        field.ClearField("type_name")
        pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("opentelemetry.proto.metrics.v1.MetricsData"))
