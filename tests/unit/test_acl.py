"""The ACL: who may call which RPC, as a table, plus the rules of the matcher itself."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pool

import phoenixcp.api.phoenix.v1 as api
from phoenixcp.core.acl import ANY_PHOENIX_IDENTITY, Acl, default_acl
from phoenixcp.core.identity import OPERATOR, SERVICES, spiffe_id

pytestmark = pytest.mark.unit

OPERATOR_ID = spiffe_id(OPERATOR)
PIPELINE, GUARD, COST, PERF, CHAOS = (spiffe_id(s.name) for s in SERVICES)

ACL = default_acl()

ALLOWED = [
    # The operator may call everything, including RPCs no rule names.
    (OPERATOR_ID, "/phoenix.v1.PipelineService/ApplyPolicy"),
    (OPERATOR_ID, "/phoenix.v1.CostOptimizerService/ApplyRecommendation"),
    (OPERATOR_ID, "/phoenix.v1.ChaosEngineerService/StartExperiment"),
    (OPERATOR_ID, "/some.future.Service/Anything"),
    # Health, reflection and ReplicaService are open to every Phoenix identity.
    (CHAOS, "/grpc.health.v1.Health/Check"),
    (CHAOS, "/grpc.health.v1.Health/Watch"),
    (PIPELINE, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
    (PERF, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    (CHAOS, "/phoenix.v1.ReplicaService/GetLeader"),
    (PIPELINE, "/phoenix.v1.ReplicaService/GetLeader"),
    # Service-to-service reads.
    (COST, "/phoenix.v1.PipelineService/GetStats"),
    (COST, "/phoenix.v1.PipelineService/ListMetricStats"),
    (COST, "/phoenix.v1.PipelineService/DryRunPolicy"),
    (GUARD, "/phoenix.v1.PipelineService/GetStats"),
    (GUARD, "/phoenix.v1.PipelineService/DryRunPolicy"),
    (GUARD, "/phoenix.v1.PipelineService/GetActiveProfile"),
    (PERF, "/phoenix.v1.PipelineService/GetStats"),
    (CHAOS, "/phoenix.v1.PipelineService/GetStats"),
    (CHAOS, "/phoenix.v1.PerformanceMonitorService/GetSLOStatus"),
    (CHAOS, "/phoenix.v1.CardinalityGuardService/WatchExplosions"),
    (CHAOS, "/phoenix.v1.CostOptimizerService/GetControllerState"),
    (COST, "/phoenix.v1.CardinalityGuardService/GetTopLabels"),
    (COST, "/phoenix.v1.PerformanceMonitorService/GetBurnRates"),
    (GUARD, "/phoenix.v1.CostOptimizerService/GetBudget"),
    (PERF, "/phoenix.v1.ChaosEngineerService/ListExperiments"),
    # The leading slash is optional.
    (COST, "phoenix.v1.PipelineService/GetStats"),
]

DENIED = [
    # Every state-changing RPC is the operator's alone.
    (CHAOS, "/phoenix.v1.PipelineService/ApplyPolicy"),
    (CHAOS, "/phoenix.v1.CostOptimizerService/ApplyRecommendation"),
    (COST, "/phoenix.v1.CostOptimizerService/ApplyRecommendation"),
    (COST, "/phoenix.v1.PipelineService/SetActiveProfile"),
    (GUARD, "/phoenix.v1.PipelineService/ApplyPolicy"),
    (GUARD, "/phoenix.v1.CardinalityGuardService/SetLimits"),
    (PERF, "/phoenix.v1.ChaosEngineerService/StartExperiment"),
    (PIPELINE, "/phoenix.v1.ChaosEngineerService/AbortExperiment"),
    (CHAOS, "/phoenix.v1.CostOptimizerService/SetBudget"),
    # Reads a caller has no need for.
    (PIPELINE, "/phoenix.v1.CostOptimizerService/GetCostReport"),
    (CHAOS, "/phoenix.v1.PipelineService/DryRunPolicy"),
    (PERF, "/phoenix.v1.CardinalityGuardService/GetTopLabels"),
    # Unknown methods, foreign trust domains, no identity.
    (CHAOS, "/some.future.Service/Anything"),
    ("spiffe://other/operator", "/phoenix.v1.PipelineService/ApplyPolicy"),
    ("spiffe://other/chaos-engineer", "/grpc.health.v1.Health/Check"),
    (None, "/grpc.health.v1.Health/Check"),
    ("", "/grpc.health.v1.Health/Check"),
]


@pytest.mark.parametrize(("identity", "method"), ALLOWED)
def test_allowed(identity: str, method: str) -> None:
    assert ACL.allows(identity, method)


@pytest.mark.parametrize(("identity", "method"), DENIED)
def test_denied(identity: str | None, method: str) -> None:
    assert not ACL.allows(identity, method)


def test_denial_names_identity_method_and_who_is_allowed() -> None:
    assert ACL.explain_denial(CHAOS, "/phoenix.v1.PipelineService/ApplyPolicy") == (
        "spiffe://phoenix/chaos-engineer may not call /phoenix.v1.PipelineService/ApplyPolicy; "
        "allowed: spiffe://phoenix/operator"
    )
    assert ACL.explain_denial(PIPELINE, "phoenix.v1.PipelineService/GetStats").endswith(
        "allowed: spiffe://phoenix/cardinality-guard, spiffe://phoenix/chaos-engineer, "
        "spiffe://phoenix/cost-optimizer, spiffe://phoenix/operator, "
        "spiffe://phoenix/performance-monitor"
    )
    assert ACL.explain_denial(None, "/x.Y/Z").startswith(
        "a caller whose certificate has no SPIFFE ID may not call /x.Y/Z"
    )
    assert ACL.explain_denial(CHAOS, "/x.Y/Z").endswith("allowed: spiffe://phoenix/operator")


def test_rules_are_data() -> None:
    acl = Acl(rules={
        "pkg.Svc": ["spiffe://phoenix/a"],
        "/pkg.Other/Get*": ["spiffe://phoenix/b", "spiffe://phoenix/c"],
        "pkg.Other/GetX": "spiffe://phoenix/d",
    })
    assert acl.rules == {
        "pkg.Svc/*": ("spiffe://phoenix/a",),
        "pkg.Other/Get*": ("spiffe://phoenix/b", "spiffe://phoenix/c"),
        "pkg.Other/GetX": ("spiffe://phoenix/d",),
    }
    assert acl.allows("spiffe://phoenix/a", "/pkg.Svc/Anything")
    assert not acl.allows("spiffe://phoenix/a", "/pkg.SvcX/Anything")  # no prefix match
    assert acl.allows("spiffe://phoenix/b", "/pkg.Other/GetY")
    assert not acl.allows("spiffe://phoenix/b", "/pkg.Other/SetY")
    assert acl.allowed("/pkg.Other/GetX") == (
        "spiffe://phoenix/b", "spiffe://phoenix/c", "spiffe://phoenix/d")
    assert acl.explain_denial("spiffe://phoenix/a", "/nope.N/M").endswith("allowed: nobody")
    assert not acl.allows("spiffe://phoenix/A", "/pkg.Svc/x")  # case-sensitive


def test_identity_globs() -> None:
    acl = Acl(rules={"pkg.S": [ANY_PHOENIX_IDENTITY]})
    assert acl.allows("spiffe://phoenix/anything", "/pkg.S/M")
    assert not acl.allows("spiffe://phoenixx/anything", "/pkg.S/M")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"": ["spiffe://phoenix/a"]}, "empty"),
        ({"pkg.S": ["phoenix/a"]}, "is not a SPIFFE ID"),
    ],
)
def test_bad_rules_are_refused(rules: dict[str, list[str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Acl(rules=rules)


def _rpc_names() -> set[str]:
    # Importing the generated modules registers them; the pool then lists every RPC.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(api.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{api.__name__}.{info.name}")
    pool = descriptor_pool.Default()
    names: set[str] = set()
    for file_name in ("phoenix/v1/pipeline.proto", "phoenix/v1/cardinality.proto",
                      "phoenix/v1/cost.proto", "phoenix/v1/performance.proto",
                      "phoenix/v1/chaos.proto", "phoenix/v1/replica.proto"):
        for service in pool.FindFileByName(file_name).services_by_name.values():
            names.update(f"{service.full_name}/{m.name}" for m in service.methods)
    return names


def test_every_named_rpc_exists() -> None:
    """A typo in the table would silently deny; every exact method it names is in the protos."""
    rpcs = _rpc_names()
    named = {p for p in ACL.rules if "*" not in p}
    assert named, "the default ACL names no RPC"
    assert named - rpcs == set()


def test_operator_may_call_every_rpc_and_services_no_write() -> None:
    writes = ("Apply", "Set", "Delete", "Update", "Acknowledge", "Start", "Abort")
    services = [spiffe_id(s.name) for s in SERVICES]
    for rpc in _rpc_names():
        assert ACL.allows(OPERATOR_ID, f"/{rpc}")
        if rpc.split("/")[1].startswith(writes):
            assert not any(ACL.allows(s, f"/{rpc}") for s in services), rpc
