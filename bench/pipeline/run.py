"""Relay throughput and cost, Phoenix's metrics-pipeline side by side with vmagent.

    .venv/bin/python bench/pipeline/run.py --target vmagent|phoenix|both --duration 20 --rounds 3

Needs wrk, taskset and vmagent (``scripts/ensure_system_deps.sh --bench`` installs them) and two
cores. Before anything is timed it writes the workload (bench/pipeline/workload.py: 101k series,
1,000-sample snappy remote-write bodies) to a temporary directory. Then, per round and target:

1. the relay starts on a fresh data dir pinned to ``--relay-cpu`` (taskset); the null sink
   (bench/pipeline/sink.py), wrk and this script run on ``--driver-cpu``;
2. warm-up: wrk for ``--warmup`` s, then the relay drains its queue to the sink;
3. load: wrk posts the bodies round-robin over ``--connections`` keep-alive connections for
   ``--duration`` s, unpaced: more than one relay core can take;
4. drain: until the sink has every accepted sample (bounded by ``--drain-timeout``).

Per target it prints the median over rounds of: samples accepted/s (2xx answers x 1,000 / wrk's
duration); samples forwarded/s while loaded (sink count / duration); queue growth while loaded
(bytes/s; vmagent's ``vmagent_remotewrite_pending_data_bytes``, Phoenix's ``phoenix_queue_bytes``);
relay CPU seconds over load and drain (utime+stime of the relay's process tree);
**samples per CPU-second** = samples accepted and forwarded / those CPU seconds (the cost of
relaying a sample, backlog included, so an unbounded queue does not flatter the figure); RSS
(VmHWM, VmRSS). With ``both``, the ratio Phoenix/vmagent. Results go to bench/results/ as JSON.

``--mode latency`` paces wrk (``WRK_DELAY_MS``) at ``--load-fraction`` (default 0.5) of the
capacity measured in a first unpaced round and reports wrk's latency percentiles (request sent
→ answered, i.e. durably queued for Phoenix). wrk is closed-loop, so under a stall it sends
less rather than queueing (coordinated omission): read its p99 as a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "libs"))

from relays import PhoenixRelay, Relay, VmagentRelay, process_tree_cpu, rss  # noqa: E402
from workload import SAMPLES_PER_REQUEST, write_workload  # noqa: E402

from phoenixcp.platform.embedded import free_port  # noqa: E402

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str) -> dict[str, Any]:
    with _HTTP.open(url, timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


@contextmanager
def sink_process(cpu: int) -> Iterator[str]:
    """The bench sink on a free port, pinned to ``cpu``; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, str(HERE / "sink.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                get_json(f"{url}/stats")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the bench sink did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sink_samples(sink_url: str) -> int:
    return int(get_json(f"{sink_url}/stats")["samples"])


def run_wrk(args: argparse.Namespace, url: str, workload: Path, count: int, seconds: float,
            delay_ms: int = 0) -> dict[str, Any]:
    """One wrk run; wrk's WRK_JSON summary (see remote_write.lua)."""
    env = {**os.environ, "WRK_DELAY_MS": str(delay_ms)}
    argv = ["taskset", "-c", str(args.driver_cpu), "wrk", f"-t{args.threads}",
            f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(HERE / "remote_write.lua"), url, "--", str(workload), str(count)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            summary: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
            return summary
    raise SystemExit(f"wrk printed no summary:\n{out}")


def wait_drained(sink_url: str, target: int, timeout: float) -> bool:
    """Poll the sink until it has ``target`` samples; False if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while sink_samples(sink_url) < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def measure(args: argparse.Namespace, relay: Relay, sink_url: str, workload: Path, count: int,
            delay_ms: int = 0) -> dict[str, Any]:
    """Warm up, then one measured load + drain on a running relay."""
    pid = relay.pid
    if args.warmup > 0:
        run_wrk(args, relay.write_url, workload, count, args.warmup, delay_ms)
        time.sleep(0.5)
        before = sink_samples(sink_url)
        settle_deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < settle_deadline:  # until the sink count stops moving
            time.sleep(0.5)
            now = sink_samples(sink_url)
            if now == before:
                break
            before = now
    sink0, cpu0, queue0 = sink_samples(sink_url), process_tree_cpu(pid), relay.queue_bytes()
    began = time.monotonic()
    wrk = run_wrk(args, relay.write_url, workload, count, args.duration, delay_ms)
    loaded = time.monotonic() - began
    sink1, queue1 = sink_samples(sink_url), relay.queue_bytes()
    ok = wrk["requests"] - wrk["errors"]["status"]
    accepted = ok * SAMPLES_PER_REQUEST
    drained = wait_drained(sink_url, sink0 + accepted, args.drain_timeout)
    sink2, cpu2 = sink_samples(sink_url), process_tree_cpu(pid)
    wrk_seconds = wrk["duration_us"] / 1e6
    cpu = cpu2 - cpu0
    through = min(accepted, sink2 - sink0)
    hwm, current = rss(pid)
    return {
        "accepted_samples_per_s": accepted / wrk_seconds,
        "forwarded_samples_per_s": (sink1 - sink0) / loaded,
        "queue_growth_bytes_per_s": None if queue0 is None or queue1 is None
        else (queue1 - queue0) / loaded,
        "relay_cpu_seconds": cpu,
        "samples_per_cpu_second": through / cpu if cpu > 0 else None,
        "drained": drained,
        "rss_hwm_mib": hwm / 2**20,
        "rss_mib": current / 2**20,
        "requests_2xx": ok,
        "requests_refused": wrk["errors"]["status"],
        "socket_errors": {k: v for k, v in wrk["errors"].items() if k != "status"},
        "latency_us": wrk["latency_us"],
        "wrk_seconds": wrk_seconds,
        "delay_ms": delay_ms,
    }


def make_relay(target: str, args: argparse.Namespace, sink_url: str, work: Path) -> Relay:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=work))
    if target == "vmagent":
        return VmagentRelay(data_dir=data_dir, sink_write_url=f"{sink_url}/api/v1/write",
                            cpu=args.relay_cpu)
    return PhoenixRelay(data_dir=data_dir, sink_write_url=f"{sink_url}/api/v1/write",
                        cpu=args.relay_cpu, driver_cpu=args.driver_cpu)


def run_target(target: str, args: argparse.Namespace, sink_url: str, work: Path,
               workload: Path, count: int, log: Callable[[str], None]) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    delay_ms = 0
    for n in range(args.rounds):
        relay = make_relay(target, args, sink_url, work)
        relay.start()
        try:
            if args.mode == "latency" and n == 0:
                capacity = args.rate or measure(args, relay, sink_url, workload, count)[
                    "accepted_samples_per_s"] / SAMPLES_PER_REQUEST
                rate = capacity * args.load_fraction
                delay_ms = max(1, round(args.connections * 1000 / rate))
                log(f"{target}: capacity {capacity:.0f} req/s; pacing at ~{rate:.0f} req/s "
                    f"({delay_ms} ms between requests per connection)")
            result = measure(args, relay, sink_url, workload, count, delay_ms)
        finally:
            relay.stop()
        rounds.append(result)
        log(f"{target} round {n + 1}/{args.rounds}: "
            f"accepted {result['accepted_samples_per_s'] / 1e3:.0f}k/s, "
            f"forwarded {result['forwarded_samples_per_s'] / 1e3:.0f}k/s, "
            f"cpu {result['relay_cpu_seconds']:.1f}s, "
            f"{(result['samples_per_cpu_second'] or 0) / 1e3:.0f}k samples/cpu-s, "
            f"p99 {result['latency_us']['p99'] / 1e3:.1f} ms, rss {result['rss_hwm_mib']:.0f} MiB")
    numeric = [k for k, v in rounds[0].items() if isinstance(v, int | float)
               and not isinstance(v, bool)]
    median = {k: statistics.median(r[k] for r in rounds if r[k] is not None)
              for k in numeric if all(r[k] is not None for r in rounds)}
    median["latency_p99_ms"] = statistics.median(r["latency_us"]["p99"] for r in rounds) / 1e3
    median["latency_p50_ms"] = statistics.median(r["latency_us"]["p50"] for r in rounds) / 1e3
    return {"median": median, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=("vmagent", "phoenix", "both"), default="both")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workload-rounds", type=int, default=3,
                        help="scrape rounds of the 101k series in the workload (101 bodies each)")
    parser.add_argument("--relay-cpu", type=int, default=0)
    parser.add_argument("--driver-cpu", type=int, default=1)
    parser.add_argument("--mode", choices=("throughput", "latency"), default="throughput")
    parser.add_argument("--rate", type=float, default=None,
                        help="latency mode: requests/s at full capacity (default: measure it)")
    parser.add_argument("--load-fraction", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    missing = [b for b in ("wrk", "taskset") if shutil.which(b) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: run scripts/ensure_system_deps.sh "
                         "--bench (as root), or apt-get install wrk util-linux")
    if len(os.sched_getaffinity(0) | {args.relay_cpu, args.driver_cpu}) < 2:
        raise SystemExit("needs two CPUs (--relay-cpu and --driver-cpu must differ)")
    os.sched_setaffinity(0, {args.driver_cpu})

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    targets = ["vmagent", "phoenix"] if args.target == "both" else [args.target]
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        work = Path(tmp)
        start_ms = int(time.time() // 60 * 60 * 1000)
        manifest = write_workload(work / "workload", seed=args.seed, rounds=args.workload_rounds,
                                  start_ms=start_ms, otlp=False)
        count = int(manifest["remote_write"]["requests"])  # type: ignore[index]
        log(f"workload: {manifest['series']} series, {count} bodies of {SAMPLES_PER_REQUEST} "
            f"samples, generated in {manifest['generated_in_s']}s")
        results: dict[str, Any] = {}
        with sink_process(args.driver_cpu) as sink_url:
            for target in targets:
                results[target] = run_target(target, args, sink_url, work, work / "workload",
                                             count, log)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        "workload": manifest,
        "results": results,
    }
    if "vmagent" in results and "phoenix" in results:
        p, v = results["phoenix"]["median"], results["vmagent"]["median"]
        report["ratio_phoenix_vmagent"] = {
            k: p[k] / v[k] for k in ("samples_per_cpu_second", "accepted_samples_per_s",
                                     "forwarded_samples_per_s") if p.get(k) and v.get(k)}
    print_table(results, report.get("ratio_phoenix_vmagent"))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pipeline-{args.mode}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def print_table(results: dict[str, Any], ratio: dict[str, float] | None) -> None:
    rows = [("samples accepted/s", "accepted_samples_per_s", 1e3, "k"),
            ("samples forwarded/s (loaded)", "forwarded_samples_per_s", 1e3, "k"),
            ("relay CPU seconds", "relay_cpu_seconds", 1, ""),
            ("samples per CPU-second", "samples_per_cpu_second", 1e3, "k"),
            ("queue growth bytes/s", "queue_growth_bytes_per_s", 1e6, "M"),
            ("RSS peak MiB", "rss_hwm_mib", 1, ""),
            ("latency p50 ms", "latency_p50_ms", 1, ""),
            ("latency p99 ms", "latency_p99_ms", 1, "")]
    names = list(results)
    print(f"{'median of rounds':32}" + "".join(f"{n:>14}" for n in names)
          + (f"{'phoenix/vmagent':>18}" if ratio else ""))
    for label, key, scale, unit in rows:
        cells = []
        for n in names:
            value = results[n]["median"].get(key)
            cells.append(f"{'-' if value is None else f'{value / scale:,.1f}{unit}':>14}")
        extra = f"{ratio[key]:>17.2f}x" if ratio and key in ratio else ""
        print(f"{label:32}" + "".join(cells) + extra)


if __name__ == "__main__":
    main()
