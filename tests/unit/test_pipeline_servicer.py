"""PipelineServicer over in-memory fakes of etcd and NATS: what each write publishes, the
UNAVAILABLE answer before etcd is connected, paging, and ErrorDetail violations."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
import pytest
from prometheus_client import CollectorRegistry

from metrics_pipeline.paging import page
from metrics_pipeline.servicer import PipelineServicer
from metrics_pipeline.stats import ReplicaCounters
from phoenixcp.api.phoenix.v1 import (
    common_pb2,
    events_pb2,
    pipeline_pb2,
    state_pb2,
)
from phoenixcp.core.policy.engine import PolicyEngine
from phoenixcp.errors import InvalidArgument, Unavailable
from phoenixcp.platform.bus import InMemoryBus
from phoenixcp.platform.coord.memory import MemoryState
from phoenixcp.platform.coord.ports import ReplicatedState
from phoenixcp.platform.policy import PolicyRejected, PolicyStore, Violation
from phoenixcp.platform.rpc.errors import error_detail

pytestmark = pytest.mark.unit

CALLER = "spiffe://phoenix/operator"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class Context:
    """The little of grpc.aio.ServicerContext the servicer uses."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_spiffe_id": [CALLER.encode()]}

    async def abort(self, code: grpc.StatusCode, details: str, **_: Any) -> NoReturn:
        raise Aborted(code, details)


class Replica:
    def __init__(self, state: ReplicatedState | None, bus: InMemoryBus) -> None:
        self._state = state
        self.bus = bus

    def identity(self) -> common_pb2.ReplicaIdentity:
        return common_pb2.ReplicaIdentity(replica_id="pipeline-0", address="127.0.0.1:1")

    def replica_count(self) -> int:
        return 1

    def state(self) -> ReplicatedState | None:
        return self._state

    def events(self) -> InMemoryBus:
        return self.bus


def servicer(state: ReplicatedState | None = None) -> tuple[PipelineServicer, InMemoryBus]:
    bus = InMemoryBus(service="metrics-pipeline")
    return PipelineServicer(
        engine=PolicyEngine(replica_id="pipeline-0"), replica=Replica(state, bus),
        counters=ReplicaCounters(registry=CollectorRegistry(), exporters=()),
    ), bus


def events(bus: InMemoryBus) -> list[events_pb2.Event]:
    return [events_pb2.Event.FromString(m.data) for m in bus.stored()]


def policy(n: int = 100) -> state_pb2.Policy:
    return state_pb2.Policy(id="cap", tenant="acme", cap=state_pb2.SeriesCapAction(max_series=n))


async def test_policy_writes_publish_policy_changed_once_per_change() -> None:
    api, bus = servicer(MemoryState())
    ctx: Any = Context()
    await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy()), ctx)
    await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy()), ctx)  # no change
    await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy(200)), ctx)
    await api.DeletePolicy(pipeline_pb2.DeletePolicyRequest(tenant="acme", id="cap",
                                                            reason="done"), ctx)
    changes = [(e.tenant, e.policy_changed.change, e.policy_changed.previous_generation,
                e.policy_changed.changed_by) for e in events(bus)]
    assert changes == [
        ("acme", events_pb2.POLICY_CHANGE_CREATED, 0, CALLER),
        ("acme", events_pb2.POLICY_CHANGE_UPDATED, 1, CALLER),
        ("acme", events_pb2.POLICY_CHANGE_DELETED, 2, CALLER),
    ]
    assert events(bus)[-1].policy_changed.reason == "done"


async def test_profile_switch_publishes_profile_switched() -> None:
    state = MemoryState()
    await PolicyStore(state).ensure_builtin_profiles()
    api, bus = servicer(state)
    reply = await api.SetActiveProfile(pipeline_pb2.SetActiveProfileRequest(
        tenant="acme", profile_name="balanced", reason="budget"), Context())  # type: ignore[arg-type]
    assert reply.previous_profile_name == "full" and reply.active.set_by == CALLER
    [event] = events(bus)
    switched = event.profile_switched
    assert (event.tenant, switched.from_profile, switched.to_profile) == (
        "acme", "full", "balanced")
    assert switched.trigger == events_pb2.PROFILE_SWITCH_TRIGGER_OPERATOR


async def test_deleting_a_builtin_profile_is_a_failed_precondition() -> None:
    state = MemoryState()
    await PolicyStore(state).ensure_builtin_profiles()
    api, _ = servicer(state)
    with pytest.raises(Aborted) as caught:
        await api.DeleteProfile(pipeline_pb2.DeleteProfileRequest(name="full"),
                                Context())  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "built in" in str(caught.value)


async def test_store_rpcs_are_unavailable_until_etcd_is_connected() -> None:
    api, _ = servicer(None)
    with pytest.raises(Unavailable, match="etcd is not connected yet"):
        await api.ListPolicies(pipeline_pb2.ListPoliciesRequest(), Context())  # type: ignore[arg-type]


async def test_rejected_fields_are_paths_from_the_request() -> None:
    api, _ = servicer(MemoryState())
    with pytest.raises(PolicyRejected) as caught:
        await api.ApplyPolicy(pipeline_pb2.ApplyPolicyRequest(policy=policy(0)),
                              Context())  # type: ignore[arg-type]
    assert [v.field for v in caught.value.violations] == ["policy.cap.max_series"]


async def test_dry_run_without_a_window_says_to_wait_one() -> None:
    api, _ = servicer(MemoryState())
    with pytest.raises(Aborted) as caught:
        await api.DryRunPolicy(pipeline_pb2.DryRunPolicyRequest(policy=policy()),
                               Context())  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(caught.value) == ("no window has closed for tenant 'acme' on this replica yet: "
                                 "send its traffic here and wait one window (10s)")


def test_error_detail_lists_every_violation() -> None:
    exc = PolicyRejected([Violation("policy.id", "is required"),
                          Violation("policy.cap.max_series", "must be at least 1, got 0")])
    detail = error_detail(exc)
    assert detail.reason == common_pb2.ERROR_REASON_VALIDATION_FAILED
    assert [(v.field, v.description) for v in detail.violations] == [
        ("policy.id", "is required"), ("policy.cap.max_series", "must be at least 1, got 0")]
    single = error_detail(InvalidArgument("tenant: is required", field="tenant"))
    assert [(v.field, v.description) for v in single.violations] == [
        ("tenant", "tenant: is required")]


def test_paging_walks_every_item_once_and_refuses_foreign_tokens() -> None:
    items = list(range(7))
    seen, token = [], ""
    while True:
        chunk, token = page(items, page_size=3, page_token=token, query="a")
        seen += chunk
        if not token:
            break
    assert seen == items
    _, token = page(items, page_size=3, page_token="", query="a")
    with pytest.raises(InvalidArgument, match="other filters"):
        page(items, page_size=3, page_token=token, query="b")
    with pytest.raises(InvalidArgument, match="not a token"):
        page(items, page_size=3, page_token="garbage!", query="a")
    with pytest.raises(InvalidArgument, match="page_size"):
        page(items, page_size=-1, page_token="", query="a")
    assert page(list(range(2000)), page_size=0, page_token="")[0] == list(range(100))
    assert len(page(list(range(2000)), page_size=5000, page_token="")[0]) == 1000
