"""Who may call which RPC: Phoenix's access-control list, as data.

An :class:`Acl` maps method patterns to the SPIFFE IDs allowed to call them. A pattern is a
fully qualified gRPC service (``phoenix.v1.ReplicaService``, meaning every method of it) or a
``service/method`` glob (``phoenix.v1.PipelineService/GetStats``, ``grpc.health.v1.Health/*``,
``*``); identities are SPIFFE IDs or globs of them (``spiffe://phoenix/*`` = every Phoenix
identity). Everything not allowed is denied, and a caller with no SPIFFE ID is always denied.

:func:`default_acl` is Phoenix's policy: the operator may call everything; health, reflection
and ``ReplicaService`` are open to every Phoenix identity; service-to-service calls are the
read-only RPCs each service needs (see the table in :func:`default_acl`); every RPC that
changes state (policies, profiles, budgets, limits, experiments) is the operator's alone,
because services change shared state by writing it to etcd, not by calling each other.

Pure: the standard library only, so the gRPC interceptor (platform/rpc/authz.py) is a thin
adapter and this table is unit-tested without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from phoenixcp.core.identity import OPERATOR, SERVICES, SPIFFE_TRUST_DOMAIN, spiffe_id

__all__ = ["ANY_PHOENIX_IDENTITY", "Acl", "default_acl"]

ANY_PHOENIX_IDENTITY = f"spiffe://{SPIFFE_TRUST_DOMAIN}/*"
"""Every identity the Phoenix CA vouches for: the five services and the operator."""

_MAX_CACHED_METHODS = 4096  # gRPC only routes registered methods here; this is a safety cap


def _method_pattern(pattern: str) -> str:
    pattern = pattern.strip().lstrip("/")
    if not pattern:
        raise ValueError("an ACL method pattern is empty; use a service, service/method or *")
    if pattern != "*" and "/" not in pattern:
        pattern += "/*"  # a bare service name means all of its methods
    return pattern


def _method_name(method: str) -> str:
    # gRPC names a method "/package.Service/Method"; patterns are written without the slash.
    return method.lstrip("/")


class Acl:
    """An allow-list from method patterns to SPIFFE IDs. Immutable; safe to share across tasks.

    ``Acl(rules={"phoenix.v1.PipelineService/GetStats": ["spiffe://phoenix/cost-optimizer"]})``.
    Raises ``ValueError`` for an empty pattern or an identity that is not a ``spiffe://`` ID.
    """

    def __init__(self, *, rules: Mapping[str, Iterable[str]]) -> None:
        merged: dict[str, set[str]] = {}
        for pattern, identities in rules.items():
            ids = [identities] if isinstance(identities, str) else list(identities)
            for identity in ids:
                if not identity.startswith("spiffe://"):
                    raise ValueError(
                        f"ACL entry {pattern!r}: {identity!r} is not a SPIFFE ID "
                        "(spiffe://<trust-domain>/<name>, globs allowed)"
                    )
            merged.setdefault(_method_pattern(pattern), set()).update(ids)
        self._rules: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (pattern, frozenset(ids)) for pattern, ids in merged.items()
        )
        self._by_method: dict[str, tuple[str, ...]] = {}

    @property
    def rules(self) -> dict[str, tuple[str, ...]]:
        """The rules, normalised (``service`` became ``service/*``), identities sorted."""
        return {pattern: tuple(sorted(ids)) for pattern, ids in self._rules}

    def allowed(self, method: str) -> tuple[str, ...]:
        """The identities (or identity globs) that may call ``method``, sorted."""
        name = _method_name(method)
        cached = self._by_method.get(name)
        if cached is None:
            ids: set[str] = set()
            for pattern, identities in self._rules:
                if fnmatchcase(name, pattern):
                    ids |= identities
            cached = tuple(sorted(ids))
            if len(self._by_method) < _MAX_CACHED_METHODS:
                self._by_method[name] = cached
        return cached

    def allows(self, identity: str | None, method: str) -> bool:
        """Whether ``identity`` (a SPIFFE ID; None = the caller has none) may call ``method``.

        ``method`` is gRPC's full name, ``/phoenix.v1.PipelineService/ApplyPolicy`` (the leading
        slash is optional).
        """
        if not identity:
            return False
        return any(fnmatchcase(identity, allowed) for allowed in self.allowed(method))

    def explain_denial(self, identity: str | None, method: str) -> str:
        """One line for a refused call: who, what, and who would have been allowed."""
        who = identity or "a caller whose certificate has no SPIFFE ID"
        allowed = ", ".join(self.allowed(method)) or "nobody"
        return f"{who} may not call /{_method_name(method)}; allowed: {allowed}"

    def __repr__(self) -> str:
        return f"Acl({len(self._rules)} rules)"


_PIPELINE = "phoenix.v1.PipelineService"
_CARDINALITY = "phoenix.v1.CardinalityGuardService"
_COST = "phoenix.v1.CostOptimizerService"
_PERFORMANCE = "phoenix.v1.PerformanceMonitorService"
_CHAOS = "phoenix.v1.ChaosEngineerService"


def _service_calls() -> dict[str, tuple[str, ...]]:
    """Read-only RPCs one service calls on another, each with why (DESIGN.md's data flow)."""
    guard, cost, perf, chaos = (
        "cardinality-guard", "cost-optimizer", "performance-monitor", "chaos-engineer"
    )
    calls: dict[str, tuple[str, ...]] = {}

    def allow(service: str, methods: Iterable[str], *callers: str) -> None:
        for method in methods:
            calls[f"{service}/{method}"] = callers

    # The data path's statistics: every service that reasons about it, and chaos-engineer's
    # steady-state hypothesis ("samples still flow").
    allow(_PIPELINE, ("GetStats", "ListMetricStats"), guard, cost, perf, chaos)
    # Policies and profiles, and what a policy would do: the two services that propose them
    # (remediation, recommendations). They apply them by writing etcd, never through the RPCs.
    allow(_PIPELINE, ("ListProfiles", "GetProfile", "GetActiveProfile", "ListPolicies",
                      "GetPolicy", "DryRunPolicy"), guard, cost)
    # Cardinality: recommendations name the labels to drop; a cardinality-bomb experiment
    # checks that the explosion was detected.
    allow(_CARDINALITY, ("GetMetricCardinality", "GetLabelCardinality", "GetTopMetrics",
                         "GetTopLabels", "GetLimits"), cost)
    allow(_CARDINALITY, ("ListExplosions", "GetExplosion", "WatchExplosions"), cost, chaos)
    # Cost: the risk score of an explosion weighs the tenant's budget.
    allow(_COST, ("GetCostReport", "GetBudget", "ListBudgets"), guard)
    # Steady state during experiments: the cost controller is not oscillating.
    allow(_COST, ("GetControllerState",), chaos)
    # SLOs: the cost controller must not trade them away; experiments abort on a burn.
    allow(_PERFORMANCE, ("GetSLOStatus", "GetBurnRates", "GetLatencyQuantiles",
                         "ListAnomalies"), cost, chaos)
    # Experiments: alerts and SLO breaches raised during one are labelled as such.
    allow(_CHAOS, ("GetExperiment", "ListExperiments"), guard, perf)
    return calls


def default_acl() -> Acl:
    """Phoenix's ACL for every service's gRPC server.

    ============================================  ===========================================
    methods                                       callers
    ============================================  ===========================================
    ``*``                                         operator
    ``grpc.health.v1.Health``, reflection,        every Phoenix identity
    ``phoenix.v1.ReplicaService``
    read-only RPCs listed in ``_service_calls``   the services named there
    anything else (every state-changing RPC)      operator only
    ============================================  ===========================================
    """
    everyone = (ANY_PHOENIX_IDENTITY,)
    rules: dict[str, tuple[str, ...]] = {
        "*": (spiffe_id(OPERATOR),),
        "grpc.health.v1.Health": everyone,
        "grpc.reflection.v1alpha.ServerReflection": everyone,
        "grpc.reflection.v1.ServerReflection": everyone,
        "phoenix.v1.ReplicaService": everyone,
    }
    names = {s.name for s in SERVICES}
    for method, callers in _service_calls().items():
        assert set(callers) <= names, callers  # a typo here would silently deny
        rules[method] = tuple(spiffe_id(c) for c in callers)
    return Acl(rules=rules)
