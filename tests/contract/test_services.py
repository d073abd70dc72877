"""Every service, as a real process over mTLS: reflection, health, every RPC of its proto.

Every RPC is routed: built ones answer (an empty request may be refused, but never as an
unknown method); those whose behaviour is not built yet answer UNIMPLEMENTED naming the
method. A client without a certificate, or with one from another CA, must be refused.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import phoenixcp.api.phoenix.v1 as api
from phoenixcp.core.identity import SERVICES, ServiceIdentity
from phoenixcp.platform.rpc import channel_credentials
from phoenixcp.platform.tls import CertBundle, LocalCA

pytestmark = pytest.mark.contract

for _mod in pkgutil.iter_modules(api.__path__):
    if _mod.name.endswith("_pb2"):
        importlib.import_module(f"{api.__name__}.{_mod.name}")

IDS = [s.name for s in SERVICES]


def address(endpoints: dict[str, Any], service: ServiceIdentity) -> str:
    return str(endpoints["services"][service.name][0]["grpc"])


def channel(target: str, bundle: CertBundle) -> grpc.Channel:
    return grpc.secure_channel(target, channel_credentials(bundle))


def methods(service: ServiceIdentity) -> list[MethodDescriptor]:
    return list(descriptor_pool.Default().FindServiceByName(service.grpc_service).methods)


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_reflection_lists_the_service(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    with channel(address(endpoints, service), operator) as ch:
        names = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert service.grpc_service in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_health_is_serving_per_service_name(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    with channel(address(endpoints, service), operator) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", service.grpc_service):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def call_empty(ch: grpc.Channel, service: ServiceIdentity, method: MethodDescriptor) -> None:
    """Call ``method`` with an empty request (and read the whole stream, if it streams)."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kind = ("stream" if method.client_streaming else "unary") + "_" + (
        "stream" if method.server_streaming else "unary")
    call = getattr(ch, kind)(f"/{service.grpc_service}/{method.name}",
                             request_serializer=request_type.SerializeToString,
                             response_deserializer=response_type.FromString)
    request: Any = iter([request_type()]) if method.client_streaming else request_type()
    result = call(request, timeout=5)
    if method.server_streaming:
        list(result)


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_every_rpc_answers(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    """Each RPC of the proto is routed; unbuilt ones say UNIMPLEMENTED and name themselves."""
    assert methods(service), f"{service.grpc_service} has no RPCs"
    with channel(address(endpoints, service), operator) as ch:
        for method in methods(service):
            path = f"/{service.grpc_service}/{method.name}"
            try:
                call_empty(ch, service, method)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    assert path in (exc.details() or ""), (path, exc.details())
                else:  # built: refuses an empty request with a message, or a dependency
                    assert exc.details(), path


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_plaintext_client_is_refused(service: ServiceIdentity, endpoints: dict[str, Any]) -> None:
    with grpc.insecure_channel(address(endpoints, service)) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_client_without_certificate_is_refused(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=operator.ca_pem)
    with grpc.secure_channel(address(endpoints, service), creds) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_client_from_a_foreign_ca_is_refused(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle, tmp_path: Path
) -> None:
    foreign = LocalCA.open(tmp_path / "foreign-ca").issue("operator", ttl=dt.timedelta(hours=1))
    # Trust the real CA, so only the server's verdict on our certificate can fail the call.
    impostor = CertBundle(ca_pem=operator.ca_pem, cert_pem=foreign.cert_pem,
                          key_pem=foreign.key_pem)
    with channel(address(endpoints, service), impostor) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_metrics_endpoint_counts_rpcs(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    first = methods(service)[0]
    with channel(address(endpoints, service), operator) as ch:
        try:
            call_empty(ch, service, first)
        except grpc.RpcError:
            pass
    url = endpoints["services"][service.name][0]["metrics"]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(url, timeout=5) as response:
        body = response.read().decode()
    assert "phoenix_build_info{" in body
    assert "phoenix_ready 1.0" in body
    assert "phoenix_idle_work_forced_slices_total " in body  # served on the gated loop
    handled = re.compile(r'phoenix_grpc_server_handled_total\{grpc_code="[A-Z_]+",'
                         f'grpc_method="{first.name}",grpc_service="{service.grpc_service}"'
                         r'\} [1-9]')
    assert handled.search(body), body


@pytest.mark.parametrize("service", SERVICES, ids=IDS)
def test_replica_service_names_the_replica(
    service: ServiceIdentity, endpoints: dict[str, Any], operator: CertBundle
) -> None:
    from phoenixcp.api.phoenix.v1 import replica_pb2, replica_pb2_grpc

    target = address(endpoints, service)
    with channel(target, operator) as ch:
        reply = replica_pb2_grpc.ReplicaServiceStub(ch).GetLeader(
            replica_pb2.GetLeaderRequest(), timeout=5)
    assert reply.replica.replica_id == endpoints["services"][service.name][0]["replica"]
    assert reply.replica.address == target
    assert reply.elects_leader == service.elects_leader
