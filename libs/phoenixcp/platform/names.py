"""Service names as the protos spell them: ``cost-optimizer`` ↔ ``SERVICE_NAME_COST_OPTIMIZER``."""

from __future__ import annotations

from phoenixcp.api.phoenix.v1 import common_pb2

__all__ = ["service_enum", "service_enum_or_unspecified"]


def service_enum(service: str) -> common_pb2.ServiceName.ValueType:
    """The ``ServiceName`` of ``service``; ``ValueError`` naming the valid names otherwise."""
    try:
        return common_pb2.ServiceName.Value("SERVICE_NAME_" + service.upper().replace("-", "_"))
    except ValueError:
        allowed = ", ".join(n.removeprefix("SERVICE_NAME_").lower().replace("_", "-")
                            for n in common_pb2.ServiceName.keys()[1:])
        raise ValueError(f"{service!r} is not a Phoenix service name; use one of: {allowed}") \
            from None


def service_enum_or_unspecified(service: str) -> common_pb2.ServiceName.ValueType:
    """Like :func:`service_enum`, but ``SERVICE_NAME_UNSPECIFIED`` for unknown names."""
    try:
        return service_enum(service)
    except ValueError:
        return common_pb2.SERVICE_NAME_UNSPECIFIED
