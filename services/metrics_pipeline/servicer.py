"""The gRPC servicer of metrics-pipeline (``phoenix.v1.PipelineService``).

* Stats and dry-runs are this replica's own view: the policy engine's last closed window per
  tenant (every ``pipeline.window_interval``, 10 s by default) and its counters since start.
  Before a tenant's first window has closed they answer FAILED_PRECONDITION (NO_DATA).
* Policies, profiles and active-profile pointers are read from and written to etcd through
  :class:`~phoenixcp.platform.policy.PolicyStore`; every replica's watcher applies a write
  within a second. etcd is reached once the replica has joined the cluster; until then (and
  in standalone mode) these RPCs answer UNAVAILABLE. A write that changed something
  publishes its event (``PolicyChanged``, ``ProfileSwitched``); an event that cannot be
  published is logged, never fails the write that already happened.

Invalid policies and profiles are refused with INVALID_ARGUMENT listing every violation with
its path from the request (``policy.aggregate.by[1]``) and change nothing. Errors are raised
as Phoenix errors and mapped by the status interceptor; only FAILED_PRECONDITION, which has
no Phoenix error of its own, is answered here with its ``ErrorDetail``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, Protocol

import grpc

from metrics_pipeline.paging import page
from metrics_pipeline.stats import (
    ReplicaCounters,
    metric_stats,
    tenant_stats,
    time_window,
)
from phoenixcp.api.phoenix.v1 import (
    common_pb2,
    events_pb2,
    pipeline_pb2,
    pipeline_pb2_grpc,
    state_pb2,
    telemetry_pb2,
)
from phoenixcp.core.batch import LabelSet
from phoenixcp.core.durations import format_duration
from phoenixcp.core.policy.dry_run import DryRunResult, distinct_series, dry_run
from phoenixcp.core.policy.engine import PolicyEngine
from phoenixcp.core.policy.profiles import DEFAULT_PROFILE
from phoenixcp.core.policy.window import SeriesSeen, TenantSnapshot
from phoenixcp.core.series import METRIC_NAME_LABEL
from phoenixcp.errors import InvalidArgument, PhoenixError, Unavailable
from phoenixcp.platform.bus import EventPublisher
from phoenixcp.platform.coord.ports import ReplicatedState
from phoenixcp.platform.idle_work import run_when_idle
from phoenixcp.platform.policy import PolicyRejected, PolicyStore, Violation, policy_from_proto
from phoenixcp.platform.policy.codec import id_problem, tenant_problem
from phoenixcp.platform.rpc.authz import peer_identity
from phoenixcp.platform.rpc.errors import ERROR_DETAIL_KEY

__all__ = ["PipelineServicer", "ReplicaView"]

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_DEFAULT_EXAMPLES = 20
_MAX_EXAMPLES = 1000


class ReplicaView(Protocol):
    """What the servicer needs of the running replica; the composition root provides it."""

    def identity(self) -> common_pb2.ReplicaIdentity: ...

    def replica_count(self) -> int:
        """Pipeline replicas alive now (from etcd); 0 when not known."""
        ...

    def state(self) -> ReplicatedState | None:
        """The etcd state store, or None until the replica has joined the cluster."""
        ...

    def events(self) -> EventPublisher | None:
        """Where events go, or None without a cluster."""
        ...


@contextlib.contextmanager
def _paths_under(prefix: str) -> Iterator[None]:
    """Re-raise a PolicyRejected with its field paths relative to the request."""
    try:
        yield
    except PolicyRejected as exc:
        raise PolicyRejected([Violation(prefix + v.field, v.description)
                              for v in exc.violations]) from None


def _check(field: str, problem: str | None) -> None:
    if problem is not None:
        raise InvalidArgument(f"{field}: {problem}", field=field)


def _required(request: Any, field: str) -> None:
    if not request.HasField(field):
        raise InvalidArgument(f"{field}: is required", field=field)


async def _refuse(context: Context, reason: common_pb2.ErrorReason.ValueType,
                  message: str) -> NoReturn:
    detail = common_pb2.ErrorDetail(reason=reason, message=message)
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message,
                        trailing_metadata=((ERROR_DETAIL_KEY, detail.SerializeToString()),))
    raise AssertionError("context.abort returned")  # it raises


def _labels(labels: LabelSet) -> list[common_pb2.Label]:
    return [common_pb2.Label(name=n, value=v) for n, v in labels if n != METRIC_NAME_LABEL]


def _sampled(seen: SeriesSeen) -> telemetry_pb2.SampledSeries:
    return telemetry_pb2.SampledSeries(
        series_hash=seen.key, labels=_labels(seen.labels), points=seen.points,
        last_value=seen.last_value,
        priority_class=common_pb2.PriorityClass.ValueType(int(seen.priority)))


def _dry_run_response(result: DryRunResult, replica: common_pb2.ReplicaIdentity
                      ) -> pipeline_pb2.DryRunPolicyResponse:
    return pipeline_pb2.DryRunPolicyResponse(
        replica=replica, window=time_window(result.start_ms, result.end_ms),
        matched_series_sample=result.matched, series_before_sample=result.before,
        series_after_sample=result.after, estimated_series_before=result.estimated_before,
        estimated_series_after=result.estimated_after,
        merged_groups=[pipeline_pb2.MergedGroup(
            output_labels=_labels(g.labels), metric_name=g.metric, sampled_inputs=g.inputs,
            example_inputs=[_sampled(e) for e in g.examples]) for g in result.merged_groups],
        dropped_series=[_sampled(s) for s in result.dropped],
        dropped_series_sample=result.dropped_count,
        overflowed_series_sample=result.overflowed_count, warnings=list(result.warnings))


def _written_since(stored: state_pb2.Policy, since: datetime) -> bool:
    return stored.update_time.ToDatetime(tzinfo=UTC) >= since


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    """The metrics-pipeline API; see the module docstring. One instance per process; every
    RPC may run concurrently with the others (state lives in the engine and in etcd)."""

    def __init__(self, *, engine: PolicyEngine, replica: ReplicaView, counters: ReplicaCounters,
                 window_interval: timedelta = timedelta(seconds=10)) -> None:
        self._engine = engine
        self._replica = replica
        self._counters = counters
        self._window_interval = window_interval
        self._started_ms = int(time.time() * 1000)

    # -- plumbing -------------------------------------------------------------------------

    def _store(self) -> PolicyStore:
        state = self._replica.state()
        if state is None:
            raise Unavailable("etcd is not connected yet: this replica reads and writes "
                              "policies and profiles in etcd once it has joined the cluster "
                              "(after NATS and etcd answer); retry in a few seconds")
        return PolicyStore(state)

    async def _publish(self, event: events_pb2.Event, tenant: str) -> None:
        bus = self._replica.events()
        if bus is None:
            return
        try:
            await bus.publish(event, tenant=tenant)
        except PhoenixError as exc:
            log.error("event could not be published", extra={"fields": {
                "payload": event.WhichOneof("payload"), "error": str(exc)}})

    async def _window(self, tenant: str, context: Context, *,
                      series: bool = False) -> TenantSnapshot:
        """The tenant's last closed window (with ``series``: one that saw some), else
        FAILED_PRECONDITION (NO_DATA) saying what to do."""
        window = self._engine.last_window(tenant)
        wait = f"wait one window ({format_duration(self._window_interval)})"
        if window is None:
            await _refuse(context, common_pb2.ERROR_REASON_NO_DATA, (
                f"no window has closed for tenant {tenant!r} on this replica yet: send its "
                f"traffic here and {wait}"))
        if series and not window.metrics:
            await _refuse(context, common_pb2.ERROR_REASON_NO_DATA, (
                f"the last window of tenant {tenant!r} on this replica saw no series: its "
                f"traffic stopped or goes to other replicas; send some here and {wait}"))
        return window

    # -- stats ----------------------------------------------------------------------------

    async def GetStats(self, request: pipeline_pb2.GetStatsRequest,
                       context: Context) -> pipeline_pb2.GetStatsResponse:
        tenants = self._engine.tenants()
        if request.tenant:
            _check("tenant", tenant_problem(request.tenant))
            tenants = [t for t in tenants if t == request.tenant]
        out = pipeline_pb2.GetStatsResponse(
            replica=self._replica.identity(), replica_count=self._replica.replica_count(),
            exporters=self._counters.exporters())
        out.start_time.FromMilliseconds(self._started_ms)
        refused: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        for tenant in tenants:
            window = self._engine.last_window(tenant)
            out.tenants.append(tenant_stats(
                tenant, active_profile=self._engine.active_profile(tenant),
                total=self._counters.totals(tenant), window=window))
            if window is not None:
                refused.update(window.rejected_policies)
        for tenant, policy_id, violations in sorted(refused):
            out.rejected_policies.add(tenant=tenant, policy_id=policy_id, violations=[
                common_pb2.FieldViolation(field=f, description=d) for f, d in violations])
        return out

    async def ListMetricStats(self, request: pipeline_pb2.ListMetricStatsRequest,
                              context: Context) -> pipeline_pb2.ListMetricStatsResponse:
        _check("tenant", tenant_problem(request.tenant))
        pattern = None
        if request.metric_name_regex:
            try:
                pattern = re.compile(request.metric_name_regex)
            except re.error as exc:
                raise InvalidArgument(
                    f"metric_name_regex: {request.metric_name_regex!r} is not a valid regular "
                    f"expression: {exc}", field="metric_name_regex") from None
        window = await self._window(request.tenant, context)
        metrics = sorted((m for m in window.metrics
                          if pattern is None or pattern.fullmatch(m.name)),
                         key=lambda m: (-distinct_series(m), m.name))
        chosen, token = page(metrics, page_size=request.page_size,
                             page_token=request.page_token,
                             query=f"{request.tenant}\0{request.metric_name_regex}")
        return pipeline_pb2.ListMetricStatsResponse(
            replica=self._replica.identity(), next_page_token=token,
            metrics=[metric_stats(m, window.active_profile) for m in chosen])

    # -- profiles -------------------------------------------------------------------------

    async def ListProfiles(self, request: pipeline_pb2.ListProfilesRequest,
                           context: Context) -> pipeline_pb2.ListProfilesResponse:
        store = self._store()
        profiles, token = page(await store.list_profiles(), page_size=request.page_size,
                               page_token=request.page_token)
        out = pipeline_pb2.ListProfilesResponse(profiles=profiles, next_page_token=token)
        if not request.page_token:
            active = await store.list_active_profiles()
            if not any(not p.tenant for p in active):  # the implicit default
                active.insert(0, state_pb2.ActiveProfile(profile_name=DEFAULT_PROFILE))
            out.active.extend(active)
        return out

    async def GetProfile(self, request: pipeline_pb2.GetProfileRequest,
                         context: Context) -> pipeline_pb2.GetProfileResponse:
        return pipeline_pb2.GetProfileResponse(
            profile=await self._store().get_profile(request.name))

    async def ApplyProfile(self, request: pipeline_pb2.ApplyProfileRequest,
                           context: Context) -> pipeline_pb2.ApplyProfileResponse:
        _required(request, "profile")
        with _paths_under("profile."):
            stored, created = await self._store().apply_profile(
                request.profile, author_default=peer_identity(context) or "",
                expected_generation=request.expected_generation or None)
        return pipeline_pb2.ApplyProfileResponse(profile=stored, created=created)

    async def DeleteProfile(self, request: pipeline_pb2.DeleteProfileRequest,
                            context: Context) -> pipeline_pb2.DeleteProfileResponse:
        _check("name", id_problem(request.name, "profile name"))
        store = self._store()
        try:
            profile = await store.delete_profile(
                request.name, expected_generation=request.expected_generation or None)
        except InvalidArgument as exc:  # the name is valid: built in, or in use
            await _refuse(context, common_pb2.ERROR_REASON_UNSPECIFIED, str(exc))
        return pipeline_pb2.DeleteProfileResponse(profile=profile)

    async def GetActiveProfile(self, request: pipeline_pb2.GetActiveProfileRequest,
                               context: Context) -> pipeline_pb2.GetActiveProfileResponse:
        active, inherited = await self._store().get_active_profile(request.tenant)
        return pipeline_pb2.GetActiveProfileResponse(active=active, inherited=inherited)

    async def SetActiveProfile(self, request: pipeline_pb2.SetActiveProfileRequest,
                               context: Context) -> pipeline_pb2.SetActiveProfileResponse:
        caller = peer_identity(context) or ""
        active, previous = await self._store().set_active_profile(
            request.tenant, request.profile_name, set_by=request.set_by or caller,
            reason=request.reason)
        if active.profile_name != previous:
            await self._publish(events_pb2.Event(profile_switched=events_pb2.ProfileSwitched(
                from_profile=previous, to_profile=active.profile_name, active=active,
                trigger=events_pb2.PROFILE_SWITCH_TRIGGER_OPERATOR)), request.tenant)
        return pipeline_pb2.SetActiveProfileResponse(active=active,
                                                     previous_profile_name=previous)

    # -- policies -------------------------------------------------------------------------

    async def ApplyPolicy(self, request: pipeline_pb2.ApplyPolicyRequest,
                          context: Context) -> pipeline_pb2.ApplyPolicyResponse:
        _required(request, "policy")
        caller = peer_identity(context) or ""
        since = datetime.now(UTC)
        with _paths_under("policy."):
            stored, created = await self._store().apply_policy(
                request.policy, author_default=caller,
                expected_generation=request.expected_generation or None)
        if created or _written_since(stored, since):
            change = (events_pb2.POLICY_CHANGE_CREATED if created
                      else events_pb2.POLICY_CHANGE_UPDATED)
            await self._publish(events_pb2.Event(policy_changed=events_pb2.PolicyChanged(
                change=change, policy=stored, changed_by=caller, reason=stored.reason,
                previous_generation=0 if created else stored.generation - 1)), stored.tenant)
        return pipeline_pb2.ApplyPolicyResponse(policy=stored, created=created)

    async def GetPolicy(self, request: pipeline_pb2.GetPolicyRequest,
                        context: Context) -> pipeline_pb2.GetPolicyResponse:
        return pipeline_pb2.GetPolicyResponse(
            policy=await self._store().get_policy(request.tenant, request.id))

    async def ListPolicies(self, request: pipeline_pb2.ListPoliciesRequest,
                           context: Context) -> pipeline_pb2.ListPoliciesResponse:
        policies = await self._store().list_policies(request.tenant or None)
        if request.mode:
            policies = [p for p in policies
                        if (p.mode or state_pb2.POLICY_MODE_ENFORCE) == request.mode]
        if request.origin:
            policies = [p for p in policies
                        if (p.origin or state_pb2.POLICY_ORIGIN_OPERATOR) == request.origin]
        chosen, token = page(policies, page_size=request.page_size,
                             page_token=request.page_token,
                             query=f"{request.tenant}\0{request.mode}\0{request.origin}")
        return pipeline_pb2.ListPoliciesResponse(policies=chosen, next_page_token=token)

    async def DeletePolicy(self, request: pipeline_pb2.DeletePolicyRequest,
                           context: Context) -> pipeline_pb2.DeletePolicyResponse:
        policy = await self._store().delete_policy(
            request.tenant, request.id, expected_generation=request.expected_generation or None)
        await self._publish(events_pb2.Event(policy_changed=events_pb2.PolicyChanged(
            change=events_pb2.POLICY_CHANGE_DELETED, policy=policy,
            previous_generation=policy.generation, changed_by=peer_identity(context) or "",
            reason=request.reason)), request.tenant)
        return pipeline_pb2.DeletePolicyResponse(policy=policy)

    async def DryRunPolicy(self, request: pipeline_pb2.DryRunPolicyRequest,
                           context: Context) -> pipeline_pb2.DryRunPolicyResponse:
        _required(request, "policy")
        candidate = policy_from_proto(request.policy, field_prefix="policy.")
        window = await self._window(candidate.tenant, context, series=True)
        examples = min(request.max_examples or _DEFAULT_EXAMPLES, _MAX_EXAMPLES)
        # Routing every series of a window is CPU work: off the event loop, while it sleeps.
        result = await run_when_idle(lambda: dry_run(candidate, window,
                                                     replica=self._engine.replica_id,
                                                     max_examples=examples))
        return _dry_run_response(result, self._replica.identity())
