"""``phoenixctl status``: each replica's address and health, read from endpoints.json."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc

from phoenixcp.api.phoenix.v1 import replica_pb2, replica_pb2_grpc
from phoenixcp.cli.stack import operator_bundle, read_endpoints
from phoenixcp.cli.table import table_lines
from phoenixcp.platform.rpc import health_status, secure_channel
from phoenixcp.platform.tls import CertBundle

__all__ = ["collect_status", "leadership", "run_status"]


async def leadership(address: str, bundle: CertBundle, *, timeout: float = 2.0) -> bool | None:
    """Whether the replica at ``address`` leads its service; None if it does not elect or
    cannot say (unreachable)."""
    async with secure_channel(address, bundle) as channel:
        try:
            reply = await replica_pb2_grpc.ReplicaServiceStub(channel).GetLeader(
                replica_pb2.GetLeaderRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None
    return reply.is_leader if reply.elects_leader else None


async def collect_status(endpoints: dict[str, Any]) -> dict[str, Any]:
    """``{"services": {name: [{"grpc", "health", "leader"}]}}`` for every replica listed."""
    bundle = operator_bundle(endpoints)

    async def one(replica: dict[str, Any]) -> dict[str, Any]:
        address = replica.get("grpc")
        if not address:
            return {"grpc": address, "health": "UNREACHABLE", "leader": None}
        health, leader = await asyncio.gather(health_status(address, bundle),
                                              leadership(address, bundle))
        return {"grpc": address, "health": health, "leader": leader}

    services: dict[str, list[dict[str, Any]]] = {}
    for name, replicas in endpoints["services"].items():
        services[name] = list(await asyncio.gather(*(one(r) for r in replicas)))
    return {"services": services}


def run_status(*, state_dir: Path, output: str) -> int:
    """Print the stack's status as a table or JSON; 0 when every replica is SERVING."""
    try:
        endpoints = read_endpoints(state_dir)
    except FileNotFoundError:
        print(f"phoenixctl status: no Phoenix stack runs from {state_dir} "
              f"({state_dir / 'endpoints.json'} is missing); start one with `phoenixctl up`",
              file=sys.stderr)
        return 1
    status = asyncio.run(collect_status(endpoints))
    if output == "json":
        print(json.dumps(status, indent=2))
    else:
        rows = [("SERVICE", "GRPC", "HEALTH", "LEADER")]
        for name, replicas in status["services"].items():
            for r in replicas:
                leader = {True: "yes", False: "no", None: "-"}[r["leader"]]
                rows.append((name, r["grpc"] or "-", r["health"], leader))
        print("\n".join(table_lines(rows)))
    healthy = all(r["health"] == "SERVING" for rs in status["services"].values() for r in rs)
    return 0 if healthy else 3
