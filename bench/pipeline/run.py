"""Relay throughput and cost, Phoenix's metrics-pipeline side by side with vmagent.

    .venv/bin/python bench/pipeline/run.py --target vmagent|phoenix|both --duration 20 --rounds 3
    .venv/bin/python bench/pipeline/run.py --scenario cap|drop-label ...   # issue 5's (b), (c)

Needs wrk, taskset and vmagent (``scripts/ensure_system_deps.sh --bench`` installs them) and two
cores. Before anything is timed it writes the workload (bench/pipeline/workload.py: 101k series,
1,000-sample snappy remote-write bodies) to a temporary directory. Then, per round and target:

1. the relay starts on a fresh data dir pinned to ``--relay-cpu`` (taskset); the null sink
   (bench/pipeline/sink.py), wrk (or otlp_driver.py) and this script run on ``--driver-cpu``;
2. warm-up: the same load for ``--warmup`` s, then the relay drains its queue to the sink;
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

``--protocol otlp`` (Phoenix only: vmagent 1.79 has no OTLP receiver) drives the pipeline's
OTLP/gRPC port instead, with the same series as ``otlp-*.bin`` ExportMetricsServiceRequest bodies
(~930 data points each) from bench/pipeline/otlp_driver.py (grpc.aio, ``--connections`` calls in
flight over ``--otlp-channels`` channels, raw bytes, on the driver core). It reports data points
accepted/s (OK answers' points minus ``partial_success.rejected_data_points``), forwarded/s and
per CPU-second, and the same in Prometheus samples: the sink counts samples, and one OTLP
Histogram point becomes 14 of them (12 ``_bucket``, ``_sum``, ``_count``), so data points
forwarded = sink samples / the workload's samples per data point.

``--mode latency`` first measures capacity (an unpaced ``--probe-duration`` s probe on the first
round's relay, after warm-up), unless ``--rate`` gives it (samples/s for remote-write, data
points/s for OTLP), then paces the load at ``--load-fraction`` (default 0.5) of it. Remote-write
is paced by wrk's Lua ``delay()`` (``WRK_INTERVAL_MS``, remote_write.lua): every wrk thread
sends on a fixed schedule of send slots, each request delayed to its thread's next free slot, so
the rate holds whatever the latency while a connection is free; wrk times a request from its
actual send (request sent → answered), so under a stall its p99 is a lower bound (coordinated
omission). OTLP is paced by otlp_driver.py's ``--rate`` (call k of worker i sent at its scheduled
time, or at once when behind), which also reports latency from the scheduled send.
For Phoenix it reads from the pipeline's /metrics, over the paced load and its drain:
``phoenix_pipeline_ingest_seconds`` (request received → answered, i.e. durably queued; the
issue's target p99 ≤ 5 ms) and ``phoenix_export_end_to_end_seconds`` (appended to the durable
queue → acknowledged by the backend; the target p99 ≤ the exporter's flush interval, 1 s, + 50
ms). Their p99 is interpolated within a histogram bucket as PromQL's histogram_quantile does;
the share of observations in the buckets at or under the target is exact.

``--scenario`` (bench/pipeline/scenarios.py; default ``plain``, the above) ``cap`` or
``drop-label`` adds a 10% ``user_id`` bomb to the workload (15 rounds) and gives each relay the
scenario's configuration: vmagent flags, Phoenix ``pipeline.static_policies`` from
bench/pipeline/policies/. A relay then forwards fewer samples than it accepts, so the drain
waits for accepted - dropped - merged + merged-output samples by the relay's own counters
(vmagent's ``*_rows_dropped_total``; Phoenix's ``phoenix_policy_points_total`` by action, the
hook in relays.py) or, while a relay does not report them, for an empty queue and a sink quiet
for ``--quiet`` s; samples per CPU-second counts every accepted sample once drained. It also
prints the samples the relay dropped (and their share of those accepted), the samples Phoenix
merged, and the distinct series the sink received from the relay (warm-up included). Every
run prints the share of the driver core that the sink, wrk and this script used while loaded,
so a saturated driver shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
from typing import Any, cast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "libs"))

from otlp_driver import counts as otlp_counts  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from relays import Disposal, PhoenixRelay, Relay, VmagentRelay, process_tree_cpu, rss  # noqa: E402
from scenarios import SCENARIOS, Scenario  # noqa: E402
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


def sink_reset(sink_url: str) -> None:
    """Forget the distinct series the sink has seen (a new relay starts)."""
    with _HTTP.open(urllib.request.Request(f"{sink_url}/reset", method="POST"), timeout=15):
        pass


def children_cpu() -> float:
    """CPU seconds of this script's waited-for children (wrk, otlp_driver.py)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(args: argparse.Namespace, url: str, workload: Path, count: int, seconds: float,
            interval_ms: float = 0.0) -> dict[str, Any]:
    """One wrk run; wrk's WRK_JSON summary (see remote_write.lua for the pacing)."""
    env = {**os.environ, "WRK_INTERVAL_MS": f"{interval_ms:.4f}"}
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


def run_otlp_driver(args: argparse.Namespace, target: str, workload: Path, count: int,
                    seconds: float, rate: float | None, sink_url: str) -> dict[str, Any]:
    """One otlp_driver.py run on the driver core; its OTLP_JSON summary."""
    argv = ["taskset", "-c", str(args.driver_cpu), sys.executable, str(HERE / "otlp_driver.py"),
            "--target", target, "--dir", str(workload), "--count", str(count),
            "--duration", f"{seconds:g}", "--concurrency", str(args.connections),
            "--channels", str(args.otlp_channels), "--sink-url", sink_url]
    if rate:
        argv += ["--rate", f"{rate:.4f}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    for line in proc.stdout.splitlines():
        if line.startswith("OTLP_JSON "):
            summary: dict[str, Any] = json.loads(line[len("OTLP_JSON "):])
            return summary
    raise SystemExit(f"otlp_driver.py printed no summary (exit {proc.returncode}):\n"
                     f"{proc.stdout}{proc.stderr}")


def drive(args: argparse.Namespace, relay: Relay, sink_url: str, workload: Path, count: int,
          seconds: float, rate: float | None = None) -> dict[str, Any]:
    """One load run, wrk (remote-write) or otlp_driver.py (OTLP), in the same shape.

    ``rate``: requests/s to pace at (None: unpaced). ``samples`` are Prometheus samples
    accepted; ``points`` OTLP data points accepted (None for remote-write).
    """
    try:
        return _drive(args, relay, sink_url, workload, count, seconds, rate)
    finally:
        if isinstance(relay, PhoenixRelay):
            relay.check_running()


def _drive(args: argparse.Namespace, relay: Relay, sink_url: str, workload: Path, count: int,
           seconds: float, rate: float | None) -> dict[str, Any]:
    if args.protocol == "otlp":
        assert isinstance(relay, PhoenixRelay)
        r = run_otlp_driver(args, relay.otlp_target, workload, count, seconds, rate, sink_url)
        return {"ok": r["requests_ok"], "refused": sum(r["errors"].values()),
                "errors": r["errors"], "seconds": r["duration_s"],
                "samples": r["samples_accepted"], "points": r["points_accepted"],
                "points_rejected": r["points_rejected"],
                "samples_per_point": r["samples_per_point"], "sink_delta": r["sink_samples_delta"],
                "latency_us": r["latency_us"],
                "scheduled_latency_us": r["scheduled_latency_us"] or None,
                "wrk_interval_ms": None}
    interval_ms = args.threads * 1000 / rate if rate else 0.0  # per wrk thread
    w = run_wrk(args, relay.write_url, workload, count, seconds, interval_ms)
    ok = w["requests"] - w["errors"]["status"]
    return {"ok": ok, "refused": w["errors"]["status"],
            "errors": {k: v for k, v in w["errors"].items() if k != "status"},
            "seconds": w["duration_us"] / 1e6, "samples": ok * SAMPLES_PER_REQUEST,
            "points": None, "points_rejected": None, "samples_per_point": None,
            "sink_delta": None, "latency_us": w["latency_us"], "scheduled_latency_us": None,
            "wrk_interval_ms": interval_ms or None}


def wait_drained(relay: Relay, sink_url: str, sink0: int, accepted: int,
                 disposal0: Disposal | None, *, policies: bool, timeout: float,
                 quiet: float) -> bool:
    """Poll until the sink has every accepted sample the relay still owes it; False if
    ``timeout`` passes first. Owed: ``accepted`` less what the relay's counters say it
    dropped or merged, plus the merged points it queued. The counters are read from the
    relay's /metrics at the start, when the sink reaches what they said was owed, and when
    the sink has not moved for 0.5 s: a scrape costs the relay CPU that this run counts, so
    it is not read on every poll. A relay with ``policies`` and no counters is drained when
    its queue is empty and the sink has not moved for ``quiet`` s; one without policies
    owes every sample."""
    deadline = time.monotonic() + timeout
    owed, read_at = accepted, -1
    last, since = -1, time.monotonic()
    while True:
        now = time.monotonic()
        sink = sink_samples(sink_url)
        if sink != last:
            last, since = sink, now
        if disposal0 is not None and (read_at < 0 or (sink - sink0 >= owed and read_at != sink)
                                      or (now - since >= 0.5 and read_at != sink)):
            disposal, read_at = relay.disposal(), sink
            if disposal is not None:
                owed = accepted - (disposal - disposal0).not_forwarded_as_is
        if disposal0 is not None or not policies:
            if sink - sink0 >= owed and (disposal0 is None or read_at == sink):
                return True
        elif now - since >= quiet and not relay.queue_bytes():
            return True
        if now > deadline:
            return False
        time.sleep(0.1)


INGEST_HISTOGRAM = "phoenix_pipeline_ingest_seconds"
E2E_HISTOGRAM = "phoenix_export_end_to_end_seconds"
RECEIVERS = {"remote-write": "remote_write", "otlp": "otlp_grpc"}
INGEST_TARGET_S = 0.005


def latency_buckets(relay: Relay, protocol: str) -> dict[str, dict[float, float]] | None:
    """Cumulative bucket counts (by ``le``) of the ingest histogram for this protocol's receiver
    and of the end-to-end histogram (every exporter); None for a relay without them."""
    if not isinstance(relay, PhoenixRelay):
        return None
    with _HTTP.open(relay.metrics_url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[float, float]] = {INGEST_HISTOGRAM: {}, E2E_HISTOGRAM: {}}
    for family in text_string_to_metric_families(text):
        if family.name not in out:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            if family.name == INGEST_HISTOGRAM and (
                    sample.labels.get("receiver") != RECEIVERS[protocol]):
                continue
            le = float(sample.labels["le"])
            out[family.name][le] = out[family.name].get(le, 0.0) + sample.value
    return out


def histogram_summary(before: dict[float, float], after: dict[float, float],
                      target_s: float) -> dict[str, Any]:
    """p50/p99 of the observations between two scrapes (linear within a bucket, as PromQL's
    histogram_quantile), and the exact share in the buckets at or under ``target_s``."""
    bounds = sorted(after)
    cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return {"count": 0}

    def quantile(q: float) -> float:
        rank, low, below = q * total, 0.0, 0.0
        for bound, count in zip(bounds, cumulative, strict=True):
            if count >= rank:
                if bound == float("inf"):
                    return low  # in the +Inf bucket: the highest finite bound, as PromQL
                return low + (bound - low) * (rank - below) / (count - below)
            low, below = bound, count
        return low

    at_or_under = [c for b, c in zip(bounds, cumulative, strict=True) if b <= target_s]
    over = [(b, c) for b, c in zip(bounds, cumulative, strict=True) if b > target_s]
    return {"count": round(total), "p50_ms": quantile(0.5) * 1e3, "p99_ms": quantile(0.99) * 1e3,
            "target_ms": target_s * 1e3,
            "bound_ms": max((b for b in bounds if b <= target_s), default=0.0) * 1e3,
            "share_within": (at_or_under[-1] if at_or_under else 0.0) / total,
            "next_bound_ms": over[0][0] * 1e3 if over else None,
            "share_next": over[0][1] / total if over else None}


def verdict(summary: dict[str, Any] | None) -> str:
    """Whether p99 ≤ target, from the exact bucket shares; 'unclear' when p99 falls in the
    bucket that straddles the target."""
    if not summary or not summary.get("count"):
        return "no data"
    if summary["share_within"] >= 0.99:
        return "met"
    if summary["bound_ms"] == summary["target_ms"]:  # the target is a bucket bound: exact
        return "missed"
    if summary["share_next"] is not None and summary["share_next"] >= 0.99:
        return (f"unclear (p99 between the {summary['bound_ms']:g} and "
                f"{summary['next_bound_ms']:g} ms buckets)")
    return "missed"


def measure(args: argparse.Namespace, relay: Relay, sink_url: str, workload: Path, count: int,
            seconds: float, rate: float | None = None) -> dict[str, Any]:
    """Warm up, then one measured load + drain on a running relay."""
    scenario: Scenario = args.scenario_spec
    pid = relay.pid
    policies = bool(scenario.policy_file)
    if args.warmup > 0:  # then drained as the measured load is, so none of it is counted there
        disposal_w, sink_w = relay.disposal(), sink_samples(sink_url)
        warm = drive(args, relay, sink_url, workload, count, args.warmup, rate)
        wait_drained(relay, sink_url, sink_w, warm["samples"], disposal_w, policies=policies,
                     timeout=args.drain_timeout, quiet=args.quiet)
    buckets0 = latency_buckets(relay, args.protocol) if args.mode == "latency" else None
    disposal0 = relay.disposal()
    stats0 = get_json(f"{sink_url}/stats")
    sink0, cpu0, queue0 = int(stats0["samples"]), process_tree_cpu(pid), relay.queue_bytes()
    own0, children0 = time.process_time(), children_cpu()
    began = time.monotonic()
    load = drive(args, relay, sink_url, workload, count, seconds, rate)
    loaded = time.monotonic() - began
    own1, children1 = time.process_time(), children_cpu()
    stats1 = get_json(f"{sink_url}/stats")
    sink1, queue1 = int(stats1["samples"]), relay.queue_bytes()
    if load["sink_delta"] is not None:  # the OTLP driver read the sink when its clock ran
        loaded, forwarded_loaded = load["seconds"], load["sink_delta"]
    else:
        forwarded_loaded = sink1 - sink0
    accepted = load["samples"]
    drained = wait_drained(relay, sink_url, sink0, accepted, disposal0, policies=policies,
                           timeout=args.drain_timeout, quiet=args.quiet)
    sink2, cpu2 = sink_samples(sink_url), process_tree_cpu(pid)
    disposal2 = relay.disposal()
    disposed = disposal2 - disposal0 if disposal0 is not None and disposal2 is not None else None
    cpu = cpu2 - cpu0
    forwarded = sink2 - sink0
    through = accepted if drained and disposed is not None else min(
        accepted, forwarded + (disposed.not_forwarded_as_is if disposed else 0))
    if drained and disposed is None and policies:
        through = accepted  # drained by the quiet rule: every accepted sample was dealt with
    hwm, current = rss(pid)

    def share(key: str) -> float:
        return (float(stats1[key]) - float(stats0[key])) / loaded

    result: dict[str, Any] = {
        "accepted_samples_per_s": accepted / load["seconds"],
        "forwarded_samples_per_s": forwarded_loaded / loaded,
        "queue_growth_bytes_per_s": None if queue0 is None or queue1 is None
        else (queue1 - queue0) / loaded,
        "relay_cpu_seconds": cpu,
        "samples_per_cpu_second": through / cpu if cpu > 0 else None,
        "drained": drained,
        "rss_hwm_mib": hwm / 2**20,
        "rss_mib": current / 2**20,
        "requests_ok": load["ok"],
        "requests_ok_per_s": load["ok"] / load["seconds"],
        "requests_refused": load["refused"],
        "errors": load["errors"],
        "latency_us": load["latency_us"],
        "load_seconds": load["seconds"],
        "paced_requests_per_s": rate,
        "wrk_interval_ms": load["wrk_interval_ms"],
        "samples_accepted": accepted,
        "samples_forwarded": forwarded,
        "samples_dropped": disposed.dropped if disposed else None,
        "dropped_share": disposed.dropped / accepted if disposed and accepted else None,
        # vmagent merges nothing: "-", not 0
        "samples_merged": disposed.merged if disposed and isinstance(relay, PhoenixRelay)
        else None,
        "merged_points_emitted": disposed.emitted if disposed and isinstance(relay, PhoenixRelay)
        else None,
        "disposal_by_action": dict(disposed.by_action) if disposed else None,
        "sink_cpu_share": share("cpu_seconds"),
        "sink_scan_cpu_share": share("scan_cpu_seconds"),
        "sink_distinct_cpu_share": share("distinct_cpu_seconds"),
        "driver_cpu_share": share("cpu_seconds") + (own1 - own0 + children1 - children0)
        / loaded,
    }
    if load["points"] is not None:  # OTLP: data points as well as the samples they become
        per_point = load["samples_per_point"]
        result.update({
            "accepted_points_per_s": load["points"] / load["seconds"],
            "forwarded_points_per_s": forwarded_loaded / per_point / loaded,
            "points_per_cpu_second": min(load["points"], (sink2 - sink0) / per_point) / cpu
            if cpu > 0 else None,
            "points_rejected": load["points_rejected"],
            "samples_per_point": per_point,
            "scheduled_latency_us": load["scheduled_latency_us"],
        })
    if buckets0 is not None:
        time.sleep(0.3)  # the exporter observes end-to-end latency just after the sink answers
        buckets1 = latency_buckets(relay, args.protocol)
        assert buckets1 is not None
        flush_s = getattr(relay, "flush_interval_s", 1.0)
        ingest = histogram_summary(buckets0[INGEST_HISTOGRAM], buckets1[INGEST_HISTOGRAM],
                                   INGEST_TARGET_S)
        e2e = histogram_summary(buckets0[E2E_HISTOGRAM], buckets1[E2E_HISTOGRAM],
                                flush_s + 0.05)
        result.update({
            "server_ingest": ingest, "server_end_to_end": e2e,
            "ingest_p50_ms": ingest.get("p50_ms"), "ingest_p99_ms": ingest.get("p99_ms"),
            "ingest_share_within_target": ingest.get("share_within"),
            "e2e_p50_ms": e2e.get("p50_ms"), "e2e_p99_ms": e2e.get("p99_ms"),
            "e2e_share_within_target": e2e.get("share_within"),
            "e2e_target_ms": (flush_s + 0.05) * 1e3,
        })
    return result


def make_relay(target: str, args: argparse.Namespace, sink_url: str, work: Path) -> Relay:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=work))
    scenario: Scenario = args.scenario_spec
    if target == "vmagent":
        return VmagentRelay(data_dir=data_dir, sink_write_url=f"{sink_url}/api/v1/write",
                            cpu=args.relay_cpu, extra_args=scenario.vmagent_args,
                            relabel_config=scenario.vmagent_relabel_config)
    return PhoenixRelay(data_dir=data_dir, sink_write_url=f"{sink_url}/api/v1/write",
                        cpu=args.relay_cpu, driver_cpu=args.driver_cpu,
                        static_policies=scenario.policies(), queue_fsync=args.fsync)


class TargetRun:
    """The rounds of one relay: :meth:`round` starts a fresh relay, measures one round and
    stops it, so the two relays' rounds can alternate (drift of the machine's speed over
    the run then falls on both); :meth:`summary` gives the medians."""

    def __init__(self, target: str, args: argparse.Namespace, sink_url: str, work: Path,
                 workload: Path, count: int, log: Callable[[str], None]) -> None:
        self.target, self.args, self.sink_url, self.work = target, args, sink_url, work
        self.workload, self.count, self.log = workload, count, log
        self.rounds: list[dict[str, Any]] = []
        self.rate: float | None = None
        self.probe: dict[str, Any] | None = None

    def round(self, n: int) -> dict[str, Any]:
        args, target, log, sink_url = self.args, self.target, self.log, self.sink_url
        workload, count = self.workload, self.count
        unit = "data points" if args.protocol == "otlp" else "samples"
        relay = make_relay(target, args, sink_url, self.work)
        relay.start()
        sink_reset(sink_url)
        try:
            if args.mode == "latency" and n == 0:
                if args.rate:
                    capacity = args.rate / args.per_request
                    log(f"{target}: capacity given, {args.rate:,.0f} {unit}/s")
                else:
                    self.probe = measure(args, relay, sink_url, workload, count,
                                         args.probe_duration)
                    capacity = self.probe["requests_ok_per_s"]
                    log(f"{target}: probe ({args.probe_duration:g} s, unpaced): "
                        f"{capacity * args.per_request:,.0f} {unit}/s accepted")
                self.rate = capacity * args.load_fraction
                how = (f"wrk delay(): a send slot every {args.threads * 1000 / self.rate:.2f} "
                       f"ms per thread x {args.threads} threads"
                       if args.protocol == "remote-write"
                       else "otlp_driver.py --rate: scheduled sends")
                log(f"{target}: capacity {capacity:.1f} req/s; pacing at "
                    f"{args.load_fraction:g} x = {self.rate:.1f} req/s "
                    f"({self.rate * args.per_request:,.0f} {unit}/s; {how})")
            result = measure(args, relay, sink_url, workload, count, args.duration, self.rate)
            result["distinct_series"] = get_json(f"{sink_url}/stats?distinct=1")[
                "distinct_series"]
        finally:
            relay.stop()
        self.rounds.append(result)
        line = (f"{target} round {n + 1}/{args.rounds}: "
                f"accepted {result['accepted_samples_per_s'] / 1e3:.0f}k samples/s, "
                f"forwarded {result['forwarded_samples_per_s'] / 1e3:.0f}k samples/s, ")
        if "accepted_points_per_s" in result:
            line += (f"accepted {result['accepted_points_per_s'] / 1e3:.1f}k points/s, "
                     f"forwarded {result['forwarded_points_per_s'] / 1e3:.1f}k points/s, "
                     f"{(result['points_per_cpu_second'] or 0) / 1e3:.1f}k points/cpu-s, ")
        line += (f"cpu {result['relay_cpu_seconds']:.1f}s, "
                 f"{(result['samples_per_cpu_second'] or 0) / 1e3:.0f}k samples/cpu-s, "
                 f"client p99 {result['latency_us']['p99'] / 1e3:.1f} ms, "
                 f"rss {result['rss_hwm_mib']:.0f} MiB")
        if result.get("ingest_p99_ms") is not None:
            line += f", server ingest p99 {result['ingest_p99_ms']:.2f} ms"
        if result.get("e2e_p99_ms") is not None:
            line += f", end-to-end p99 {result['e2e_p99_ms']:.0f} ms"
        if result["samples_dropped"]:
            line += (f", dropped {result['samples_dropped']:,} "
                     f"({result['dropped_share']:.2%})")
        if result["samples_merged"]:
            line += f", merged {result['samples_merged']:,}"
        if result["distinct_series"] is not None:
            line += f", sink saw {result['distinct_series']:,} series"
        line += f", driver core {result['driver_cpu_share']:.0%} busy"
        if result["requests_refused"] or not result["drained"]:
            line += (f" [refused {result['requests_refused']} {result['errors']}, "
                     f"drained {result['drained']}]")
        log(line)
        return result

    def summary(self) -> dict[str, Any]:
        rounds = self.rounds
        numeric = [k for k, v in rounds[0].items() if isinstance(v, int | float)
                   and not isinstance(v, bool)]
        median = {k: statistics.median(r[k] for r in rounds if r[k] is not None)
                  for k in numeric if all(r.get(k) is not None for r in rounds)}
        median["latency_p99_ms"] = statistics.median(r["latency_us"]["p99"] for r in rounds) / 1e3
        median["latency_p50_ms"] = statistics.median(r["latency_us"]["p50"] for r in rounds) / 1e3
        if all(r.get("scheduled_latency_us") for r in rounds):
            median["scheduled_latency_p99_ms"] = statistics.median(
                r["scheduled_latency_us"]["p99"] for r in rounds) / 1e3
        return {"median": median, "rounds": rounds, "probe": self.probe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", choices=("vmagent", "phoenix", "both"), default="both")
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default="plain",
                        help="plain: forward everything; cap: + a 10%% user_id bomb, series "
                             "limit 120k; drop-label: + the bomb, user_id removed "
                             "(bench/pipeline/scenarios.py)")
    parser.add_argument("--protocol", choices=("remote-write", "otlp"), default="remote-write",
                        help="otlp: OTLP/gRPC into Phoenix only (vmagent 1.79 has no OTLP "
                             "receiver)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--quiet", type=float, default=3.0,
                        help="a relay with policies but no counters of them is drained when "
                             "its queue is empty and the sink has not moved for this long")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections; with otlp, calls in flight")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--otlp-channels", type=int, default=2,
                        help="gRPC channels (HTTP/2 connections) the OTLP calls share")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workload-rounds", type=int, default=None,
                        help="scrape rounds of the 101k series in the workload (101 bodies "
                             "each; 112 with the bomb); default 3, 15 with the bomb")
    parser.add_argument("--relay-cpu", type=int, default=0)
    parser.add_argument("--driver-cpu", type=int, default=1)
    parser.add_argument("--mode", choices=("throughput", "latency"), default="throughput")
    parser.add_argument("--rate", type=float, default=None,
                        help="latency mode: capacity in samples/s (remote-write) or data "
                             "points/s (otlp); default: measure it with a probe")
    parser.add_argument("--probe-duration", type=float, default=8.0,
                        help="latency mode: seconds of the unpaced capacity probe")
    parser.add_argument("--load-fraction", type=float, default=0.5)
    parser.add_argument("--fsync", choices=("interval", "always"), default="interval",
                        help="Phoenix's pipeline.queue_fsync: interval (the default, ADR "
                             "0016: answered once written, synced every second) or always "
                             "(answered once fdatasync'ed)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--show-config", action="store_true",
                        help="print how each relay is started for the scenario (vmagent's "
                             "command line, Phoenix's config file) and exit")
    args = parser.parse_args()
    args.scenario_spec = SCENARIOS[args.scenario]
    if args.show_config:
        show_config(args)
        return
    if args.workload_rounds is None:
        args.workload_rounds = args.scenario_spec.workload_rounds
    if args.protocol == "otlp" and args.scenario != "plain":
        raise SystemExit(f"--scenario {args.scenario} is remote-write only (the bomb is not "
                         "written as OTLP): drop --protocol otlp")

    missing = [b for b in ("taskset", *(("wrk",) if args.protocol == "remote-write" else ()))
               if shutil.which(b) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: run scripts/ensure_system_deps.sh "
                         "--bench (as root), or apt-get install wrk util-linux")
    if len(os.sched_getaffinity(0) | {args.relay_cpu, args.driver_cpu}) < 2:
        raise SystemExit("needs two CPUs (--relay-cpu and --driver-cpu must differ)")
    os.sched_setaffinity(0, {args.driver_cpu})

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    targets = ["vmagent", "phoenix"] if args.target == "both" else [args.target]
    if args.protocol == "otlp" and "vmagent" in targets:
        note = ("vmagent 1.79.5 (Debian's victoria-metrics) has no OTLP receiver, so the OTLP "
                "run is Phoenix only")
        if targets == ["vmagent"]:
            raise SystemExit(note)
        log(f"{note}: skipping vmagent")
        targets = ["phoenix"]
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        work = Path(tmp)
        start_ms = int(time.time() // 60 * 60 * 1000)
        manifest = write_workload(work / "workload", seed=args.seed, rounds=args.workload_rounds,
                                  start_ms=start_ms, otlp=args.protocol == "otlp",
                                  bomb_share=args.scenario_spec.bomb_share)
        if args.protocol == "otlp":
            count = int(manifest["otlp"]["requests"])  # type: ignore[index]
            points = samples = 0
            for i in range(count):
                p, s = otlp_counts((work / "workload" / f"otlp-{i:05d}.bin").read_bytes())
                points, samples = points + p, samples + s
            args.per_request = points / count
            manifest["otlp"].update({"data_points": points, "samples": samples,  # type: ignore
                                     "samples_per_data_point": samples / points})
            log(f"workload: {manifest['series']} series, {count} OTLP requests of "
                f"~{args.per_request:.0f} data points ({samples / points:.3f} Prometheus samples "
                f"per data point), generated in {manifest['generated_in_s']}s")
        else:
            count = int(manifest["remote_write"]["requests"])  # type: ignore[index]
            total = int(manifest["remote_write"]["samples"])  # type: ignore[index]
            if total != count * SAMPLES_PER_REQUEST:  # wrk counts requests x 1,000
                raise SystemExit(f"the workload's {total:,} samples do not fill its {count} "
                                 f"bodies of {SAMPLES_PER_REQUEST}: samples accepted would be "
                                 "miscounted; pick --workload-rounds to fill them")
            args.per_request = SAMPLES_PER_REQUEST
            log(f"workload: {manifest['series']} series, {count} bodies of "
                f"{SAMPLES_PER_REQUEST} samples, generated in {manifest['generated_in_s']}s")
            if bomb := cast(dict[str, Any] | None, manifest.get("bomb")):
                log(f"bomb: {bomb['samples_per_round']:,} samples of {bomb['metric']} per "
                    f"round ({bomb['share']:.1%} of all), each a new {bomb['label']}: "
                    f"{bomb['series']:,} series per pass over the bodies")
            for line in args.scenario_spec.expectations(manifest):
                log(f"scenario {args.scenario}: {line}")
        results: dict[str, Any] = {}
        with sink_process(args.driver_cpu) as sink_url:
            runs = {t: TargetRun(t, args, sink_url, work, work / "workload", count, log)
                    for t in targets}
            for n in range(args.rounds):  # alternating: vmagent, Phoenix, vmagent, ...
                for run in runs.values():
                    run.round(n)
            results = {t: run.summary() for t, run in runs.items()}
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                 if k != "scenario_spec"},
        "scenario": {"name": args.scenario,
                     "vmagent_args": list(args.scenario_spec.vmagent_args),
                     "vmagent_relabel_config": args.scenario_spec.vmagent_relabel_config,
                     "phoenix_static_policies": args.scenario_spec.policies()},
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        "workload": manifest,
        "results": results,
    }
    if args.protocol == "otlp":
        report["note"] = "vmagent 1.79.5 has no OTLP receiver: Phoenix only"
    if "vmagent" in results and "phoenix" in results:
        p, v = results["phoenix"]["median"], results["vmagent"]["median"]
        report["ratio_phoenix_vmagent"] = {
            k: p[k] / v[k] for k in ("samples_per_cpu_second", "accepted_samples_per_s",
                                     "forwarded_samples_per_s") if p.get(k) and v.get(k)}
        report["round_ratios_samples_per_cpu_second"] = [  # the rounds ran side by side
            (pr["samples_per_cpu_second"] or 0) / vr["samples_per_cpu_second"]
            for pr, vr in zip(results["phoenix"]["rounds"], results["vmagent"]["rounds"],
                              strict=True) if vr["samples_per_cpu_second"]]
    print_table(results, report.get("ratio_phoenix_vmagent"), args)
    if report.get("round_ratios_samples_per_cpu_second"):
        print("phoenix/vmagent samples per CPU-second, round by round (alternating relays): "
              + ", ".join(f"{r:.2f}x" for r in report["round_ratios_samples_per_cpu_second"]))
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = "pipeline" if args.protocol == "remote-write" else "pipeline-otlp"
    if args.scenario != "plain":
        prefix += f"-{args.scenario}"
    path = args.out / f"{prefix}-{args.mode}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def show_config(args: argparse.Namespace) -> None:
    """Print vmagent's command line (and relabel config) and Phoenix's generated config for
    ``--scenario``, with this run's would-be ports and a throwaway data directory."""
    with tempfile.TemporaryDirectory(prefix="phoenix-bench-") as tmp:
        sink_url = "http://127.0.0.1:SINK_PORT"
        vmagent = make_relay("vmagent", args, sink_url, Path(tmp))
        phoenix = make_relay("phoenix", args, sink_url, Path(tmp))
        assert isinstance(vmagent, VmagentRelay) and isinstance(phoenix, PhoenixRelay)
        print("# ports, NATS's and etcd's (0: not started here) and directories are "
              "placeholders; a run fills them in")
        print(f"# vmagent, scenario {args.scenario}")
        print(" ".join(vmagent._argv(Path("/usr/bin/vmagent"))))
        if args.scenario_spec.vmagent_relabel_config:
            print("# -remoteWrite.relabelConfig file:")
            print(args.scenario_spec.vmagent_relabel_config, end="")
        print(f"\n# metrics-pipeline --config, scenario {args.scenario}")
        print(phoenix.config_yaml(), end="")


def print_table(results: dict[str, Any], ratio: dict[str, float] | None,
                args: argparse.Namespace) -> None:
    otlp = args.protocol == "otlp"
    rows: list[tuple[str, str, float, str]] = []
    if otlp:
        rows += [("data points accepted/s", "accepted_points_per_s", 1e3, "k"),
                 ("data points forwarded/s (loaded)", "forwarded_points_per_s", 1e3, "k")]
    rows += [("samples accepted/s", "accepted_samples_per_s", 1e3, "k"),
             ("samples forwarded/s (loaded)", "forwarded_samples_per_s", 1e3, "k"),
             ("relay CPU seconds", "relay_cpu_seconds", 1, "")]
    if otlp:
        rows += [("data points per CPU-second", "points_per_cpu_second", 1e3, "k")]
    rows += [("samples per CPU-second", "samples_per_cpu_second", 1e3, "k")]
    if args.scenario != "plain":
        rows += [("samples accepted", "samples_accepted", 1e3, "k"),
                 ("samples forwarded", "samples_forwarded", 1e3, "k"),
                 ("samples dropped", "samples_dropped", 1e3, "k"),
                 ("  share of accepted", "dropped_share", 0.01, "%"),
                 ("samples merged (Phoenix)", "samples_merged", 1e3, "k")]
    rows += [("distinct series at the sink", "distinct_series", 1e3, "k")]
    rows += [("queue growth bytes/s", "queue_growth_bytes_per_s", 1e6, "M"),
             ("RSS peak MiB", "rss_hwm_mib", 1, ""),
             ("client latency p50 ms", "latency_p50_ms", 1, ""),
             ("client latency p99 ms", "latency_p99_ms", 1, ""),
             ("driver core busy (sink, wrk)", "driver_cpu_share", 0.01, "%"),
             ("  sink, all", "sink_cpu_share", 0.01, "%"),
             ("  sink, scan (keys, samples)", "sink_scan_cpu_share", 0.01, "%"),
             ("  sink, distinct-series keys", "sink_distinct_cpu_share", 0.01, "%")]
    targets: dict[str, str] = {}
    if args.mode == "latency":
        e2e_target = max((r["median"].get("e2e_target_ms", 0) for r in results.values()),
                         default=1050.0) or 1050.0
        rows = [("paced at requests/s", "paced_requests_per_s", 1, ""),
                ("requests answered OK/s", "requests_ok_per_s", 1, ""), *rows]
        if otlp:
            rows.append(("client p99 from schedule ms", "scheduled_latency_p99_ms", 1, ""))
        rows += [("server ingest p50 ms", "ingest_p50_ms", 1, ""),
                 ("server ingest p99 ms", "ingest_p99_ms", 1, ""),
                 ("  share ≤ 5 ms", "ingest_share_within_target", 0.01, "%"),
                 ("server end-to-end p50 ms", "e2e_p50_ms", 1, ""),
                 ("server end-to-end p99 ms", "e2e_p99_ms", 1, ""),
                 ("  share ≤ 1 s bucket", "e2e_share_within_target", 0.01, "%")]
        targets = {"ingest_p99_ms": "≤ 5", "e2e_p99_ms": f"≤ {e2e_target:g}"}
    names = list(results)
    client = "wrk" if not otlp else "otlp_driver"
    print(f"{args.protocol}, {args.mode}, scenario {args.scenario}, Phoenix queue_fsync "
          f"{args.fsync}; client latency = {client}'s (request sent → answered)")
    print(f"{'median of rounds':32}" + "".join(f"{n:>14}" for n in names)
          + (f"{'phoenix/vmagent':>18}" if ratio else "") + (f"{'target':>10}" if targets else ""))
    for label, key, scale, unit in rows:
        cells = []
        for n in names:
            value = results[n]["median"].get(key)
            cells.append(f"{'-' if value is None else f'{value / scale:,.1f}{unit}':>14}")
        extra = (f"{ratio[key]:>17.2f}x" if ratio and key in ratio
                 else " " * 18 if ratio and targets else "")
        goal = f"{targets[key]:>10}" if key in targets else ""
        print(f"{label:32}" + "".join(cells) + extra + goal)
    if args.mode == "latency":
        for n in names:
            rounds = results[n]["rounds"]
            if rounds[0].get("server_ingest") is None:
                print(f"{n}: no server-side latency histograms (wrk's figures only)")
                continue
            ingest = [verdict(r["server_ingest"]) for r in rounds]
            e2e = [verdict(r["server_end_to_end"]) for r in rounds]
            print(f"{n}: p99 ingest ≤ 5 ms: {', '.join(ingest)}; p99 end-to-end ≤ "
                  f"{rounds[0]['e2e_target_ms']:g} ms (flush interval + 50 ms): {', '.join(e2e)}"
                  " (per round; from the histograms' buckets)")


if __name__ == "__main__":
    main()
