"""HTTP ingest cost: server CPU per request of the data path's HTTP server, against aiohttp.

    .venv/bin/python bench/pipeline/http_bench.py [--duration 10] [--rounds 3]
        [--targets floor,phoenix,aiohttp,ingest] [--server-cpu 0] [--driver-cpu 1]

Each target is a server process pinned to ``--server-cpu`` (taskset, when installed) that wrk,
pinned to ``--driver-cpu``, loads with the same remote-write bodies (bench/pipeline/workload.py,
``--samples`` samples each, ~30 KB snappy for the default 650) over ``--connections``
keep-alive connections, unpaced, for ``--duration`` s after a ``--warmup``. The figure is the
server's CPU (utime + stime from /proc) over the timed run divided by the requests wrk
completed: **CPU µs per request**, the median over ``--rounds`` (min-max after it).

Targets:

- ``floor``: a bare ``asyncio.Protocol`` that frames requests by Content-Length and writes a
  constant 204: no parser, no routing, no handler; what the event loop and the syscalls cost.
- ``phoenix``: ``phoenixcp.platform.http.HttpServer`` with a handler that answers 204.
- ``aiohttp``: an aiohttp app as metrics-pipeline served before ADR 0010 (an ``AppRunner``, no
  access log, no auto-decompression) with the same handler (``await request.read()``, 204).
- ``ingest``: metrics-pipeline's ``HttpIngest`` with an ``accept`` that does nothing: the
  server plus remote-write decoding, validation and metrics; also printed per sample.

``--uvloop`` runs every server on uvloop's event loop instead of asyncio's (uvloop is not a
Phoenix dependency: install it, or put it on PYTHONPATH, to compare).

Needs wrk (``scripts/ensure_system_deps.sh --bench``) and, for meaningful figures, two idle
cores. Writes the figures to bench/results/http-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "libs"))
sys.path.insert(0, str(ROOT / "services"))

from relays import process_tree_cpu  # noqa: E402
from workload import DEFAULT_START_MS, build_series, remote_write_bodies  # noqa: E402

from phoenixcp.platform.embedded import free_port  # noqa: E402

TARGETS = ("floor", "phoenix", "aiohttp", "ingest")
PATH = "/api/v1/write"


# The servers (run as ``http_bench.py --serve TARGET --port N``)


class _Floor(asyncio.Protocol):
    """Frames by Content-Length and answers a constant 204: the least Python per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.need = -1
        self.answer = (b"HTTP/1.1 204 No Content\r\nDate: " + formatdate(usegmt=True).encode()
                       + b"\r\n\r\n")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.need < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
                self.need = end + 4 + length
            if len(buffer) < self.need:
                return
            del buffer[:self.need]
            self.need = -1
            assert self.transport is not None
            self.transport.write(self.answer)


async def _serve_floor(port: int) -> Callable[[], Awaitable[None]]:
    server = await asyncio.get_running_loop().create_server(_Floor, "127.0.0.1", port)

    async def stop() -> None:
        server.close()
    return stop


async def _serve_phoenix(port: int) -> Callable[[], Awaitable[None]]:
    from phoenixcp.platform.http import HttpRequest, HttpResponse, HttpServer

    no_content = HttpResponse(204)

    async def trivial(request: HttpRequest) -> HttpResponse:
        return no_content

    server = HttpServer({("POST", PATH): trivial}, host="127.0.0.1", port=port)
    await server.start()
    return server.shutdown


async def _serve_aiohttp(port: int) -> Callable[[], Awaitable[None]]:
    from aiohttp import web

    async def trivial(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=204)

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post(PATH, trivial)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner.cleanup


async def _serve_ingest(port: int) -> Callable[[], Awaitable[None]]:
    from prometheus_client import CollectorRegistry

    from metrics_pipeline.ingest_http import HttpIngest
    from metrics_pipeline.ingest_metrics import IngestMetrics
    from phoenixcp.core.batch import MetricBatch

    async def accept(batch: MetricBatch) -> None:
        return None

    ingest = HttpIngest(host="127.0.0.1", port=port, max_bytes=10 * 1024 * 1024,
                        accept=accept, metrics=IngestMetrics(CollectorRegistry()))
    await ingest.start()
    return ingest.shutdown


async def serve(target: str, port: int) -> None:
    starters = {"floor": _serve_floor, "phoenix": _serve_phoenix, "aiohttp": _serve_aiohttp,
                "ingest": _serve_ingest}
    stop = await starters[target](port)
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    print("READY", flush=True)
    await done.wait()
    await stop()


# The driver


def write_bodies(directory: Path, samples: int) -> tuple[int, float]:
    """remote-write bodies of ``samples`` samples into ``directory``: (count, mean bytes)."""
    bodies = remote_write_bodies(build_series(1), seed=1, rounds=1, start_ms=DEFAULT_START_MS,
                                 samples_per_request=samples)[:-1]  # all of ``samples``
    for n, body in enumerate(bodies):
        (directory / f"rw-{n:05d}.bin").write_bytes(body)
    return len(bodies), statistics.mean(map(len, bodies))


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") else argv


def wrk(args: argparse.Namespace, port: int, bodies: Path, count: int,
        seconds: float) -> dict[str, Any]:
    argv = pinned(args.driver_cpu, [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(HERE / "remote_write.lua"),
        f"http://127.0.0.1:{port}{PATH}", "--", str(bodies), str(count)])
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            summary: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
            return summary
    raise SystemExit(f"wrk printed no summary:\n{out}")


def measure(args: argparse.Namespace, target: str, bodies: Path, count: int) -> dict[str, float]:
    """One round of one target: its CPU µs per request and requests per second."""
    port = free_port()
    server = subprocess.Popen(
        pinned(args.server_cpu, [sys.executable, __file__, "--serve", target,
                                 "--port", str(port), *(["--uvloop"] if args.uvloop else [])]),
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit(f"the {target} server did not start")
        wrk(args, port, bodies, count, args.warmup)
        before = process_tree_cpu(server.pid)
        summary = wrk(args, port, bodies, count, args.duration)
        cpu = process_tree_cpu(server.pid) - before
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    requests = summary["requests"]
    bad = summary["errors"]["status"] + summary["errors"]["read"] + summary["errors"]["write"]
    if not requests or bad:
        raise SystemExit(f"{target}: {requests} requests, {bad} failed: {summary['errors']}")
    return {"cpu_us_per_request": cpu / requests * 1e6,
            "requests_per_s": requests / (summary["duration_us"] / 1e6),
            "server_cpu_share": cpu / (summary["duration_us"] / 1e6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=650,
                        help="samples per request (650: ~30 KB snappy bodies)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--driver-cpu", type=int, default=1)
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop's event loop")
    parser.add_argument("--serve", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.uvloop:
            import uvloop
            uvloop.install()
        asyncio.run(serve(args.serve, args.port))
        return
    targets = [t for t in args.targets.split(",") if t]
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: scripts/ensure_system_deps.sh --bench, or apt-get install wrk")
    if args.uvloop and importlib.util.find_spec("uvloop") is None:
        raise SystemExit("--uvloop: uvloop is not installed")
    if not shutil.which("taskset"):
        print("taskset not found: the server and wrk are not pinned (figures are noisier)")

    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        count, size = write_bodies(Path(tmp), args.samples)
        print(f"{count} remote-write bodies of {args.samples} samples, {size / 1024:.1f} KiB "
              f"mean; wrk -c{args.connections} -t{args.threads} {args.duration:g}s x "
              f"{args.rounds} rounds; server on CPU {args.server_cpu}, wrk on {args.driver_cpu}"
              f"{'; uvloop' if args.uvloop else ''}")
        rounds: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
        for r in range(args.rounds):
            for target in targets:  # interleaved, so a noisy minute hits every target
                rounds[target].append(measure(args, target, Path(tmp), count))
                print(f"  round {r + 1} {target:8} "
                      f"{rounds[target][-1]['cpu_us_per_request']:7.1f} µs/request", flush=True)

    print(f"\n{'target':10}{'CPU µs/request':>16}{'(min-max)':>16}{'requests/s':>12}"
          f"{'server CPU':>12}")
    medians: dict[str, float] = {}
    for target, runs in rounds.items():
        us = [run["cpu_us_per_request"] for run in runs]
        medians[target] = statistics.median(us)
        rate = statistics.median(run["requests_per_s"] for run in runs)
        share = statistics.median(run["server_cpu_share"] for run in runs)
        print(f"{target:10}{medians[target]:16.1f}{f'{min(us):.1f}-{max(us):.1f}':>16}"
              f"{rate:12.0f}{share:11.0%}")
    if "phoenix" in medians and "aiohttp" in medians:
        saved = medians["aiohttp"] - medians["phoenix"]
        print(f"\naiohttp / phoenix: {medians['aiohttp'] / medians['phoenix']:.2f}x; "
              f"{saved:.1f} µs saved per request = {saved / args.samples * 1000:.0f} ns per "
              f"sample at {args.samples} samples per request")
    if "ingest" in medians:
        print(f"ingest (server + decode + metrics): "
              f"{medians['ingest'] / args.samples * 1000:.0f} ns per sample")

    out = ROOT / "bench" / "results" / f"http-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                        if k not in ("serve", "port")},
                               "median_cpu_us_per_request": medians, "rounds": rounds},
                              indent=2) + "\n")
    print(f"results: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
