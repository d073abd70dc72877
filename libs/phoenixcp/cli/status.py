"""``phoenixctl status``: each replica's address and health, read from endpoints.json."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from phoenixcp.cli.stack import operator_bundle, read_endpoints
from phoenixcp.platform.rpc import health_status

__all__ = ["collect_status", "run_status"]


async def collect_status(endpoints: dict[str, Any]) -> dict[str, Any]:
    """``{"services": {name: [{"grpc", "health", "leader"}]}}`` for every replica listed."""
    bundle = operator_bundle(endpoints)

    async def one(replica: dict[str, Any]) -> dict[str, Any]:
        address = replica.get("grpc")
        health = await health_status(address, bundle) if address else "UNREACHABLE"
        # Leadership is reported once leader election exists (the platform issue).
        return {"grpc": address, "health": health, "leader": None}

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
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    healthy = all(r["health"] == "SERVING" for rs in status["services"].values() for r in rs)
    return 0 if healthy else 3
