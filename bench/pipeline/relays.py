"""The relays bench/pipeline/run.py compares, each pinned to one core, and /proc readings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from phoenixcp.platform.embedded import EmbeddedEtcd, EmbeddedNats, EmbeddedVmagent, free_port
from phoenixcp.platform.tls import LocalCA

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICKS = os.sysconf("SC_CLK_TCK")

# vmagent 1.79.5's counters of samples it accepted and will never send: the series limiters'
# (-remoteWrite.maxHourlySeries, maxDailySeries) and relabeling's (action drop and the like).
VMAGENT_DROPPED = ("vmagent_hourly_series_limit_rows_dropped_total",
                   "vmagent_daily_series_limit_rows_dropped_total",
                   "vmagent_remotewrite_global_relabel_metrics_dropped_total",
                   "vmagent_remotewrite_relabel_metrics_dropped_total")

# Hook: how the pipeline counts what its policies do with points (samples), one counter by
# ``action``. Adjust these names here if the pipeline's change; a relay without the counter
# reads as "not reported" (None), never as 0.
PHOENIX_POLICY_POINTS = "phoenix_policy_points_total"
PHOENIX_DROPPED_ACTIONS = ("dropped",)  # never forwarded
PHOENIX_MERGED_ACTIONS = ("merged", "overflowed")  # taken into merged or overflow series
PHOENIX_EMITTED_ACTIONS = ("emitted",)  # merged output points, queued at each flush


@dataclass(frozen=True, slots=True)
class Disposal:
    """What a relay did with the samples it accepted besides forwarding them as they came, by
    its own cumulative counters: ``dropped`` (never sent), ``merged`` (taken into a merged or
    overflow series) and ``emitted`` (points of merged series queued). Subtract two readings
    for a period; the sink should then get accepted - dropped - merged + emitted samples."""

    dropped: int = 0
    merged: int = 0
    emitted: int = 0
    by_action: tuple[tuple[str, int], ...] = ()

    def __sub__(self, other: Disposal) -> Disposal:
        before = dict(other.by_action)
        return Disposal(dropped=self.dropped - other.dropped, merged=self.merged - other.merged,
                        emitted=self.emitted - other.emitted,
                        by_action=tuple((k, v - before.get(k, 0)) for k, v in self.by_action))

    @property
    def not_forwarded_as_is(self) -> int:
        """Samples that reach the sink otherwise than one for one (or never), less the merged
        points already queued in their place."""
        return self.dropped + self.merged - self.emitted


class Relay(Protocol):
    """A process that takes remote-write at ``write_url`` and forwards it to the sink."""

    @property
    def pid(self) -> int: ...
    @property
    def write_url(self) -> str: ...
    def start(self) -> object: ...
    def stop(self) -> None: ...
    def queue_bytes(self) -> int | None: ...
    def disposal(self) -> Disposal | None:
        """Its counters of samples dropped or merged; None if it does not report them."""
        ...


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree_cpu(pid: int) -> float:
    """utime + stime, in seconds, of ``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(_stat(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat(current)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        todo.extend(children.get(current, []))
    return total / _TICKS


def rss(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of ``pid`` in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {m[1]: int(m[2]) * 1024 for m in re.finditer(r"^(VmHWM|VmRSS):\s+(\d+) kB", status,
                                                          re.MULTILINE)}
    return values.get("VmHWM", 0), values.get("VmRSS", 0)


def _scrape(url: str) -> str | None:
    """A Prometheus /metrics page; None if it does not answer."""
    try:
        with _HTTP.open(url, timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def _samples(text: str, name: str) -> list[tuple[str, float]]:
    """(label text, value) of every sample of ``name`` on a /metrics page."""
    out = []
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, value = line.rsplit(" ", 1)
            out.append((head[len(name):], float(value)))
    return out


def _metric_sum(url: str, name: str) -> int | None:
    """Sum of every sample of ``name`` on a Prometheus /metrics page; None if absent."""
    text = _scrape(url)
    values = [v for _, v in _samples(text, name)] if text is not None else []
    return int(sum(values)) if values else None


class VmagentRelay(EmbeddedVmagent):
    """vmagent exactly as Debian ships it, default flags plus the scenario's (``extra_args``;
    ``relabel_config``, YAML written to ``data_dir/relabel.yml`` for
    ``-remoteWrite.relabelConfig``), started under ``taskset -c CPU`` (so Go sizes GOMAXPROCS
    to that one core)."""

    def __init__(self, *, data_dir: Path, sink_write_url: str, cpu: int,
                 extra_args: tuple[str, ...] = (), relabel_config: str | None = None) -> None:
        args = ["-loggerLevel=WARN", *extra_args]
        if relabel_config is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "relabel.yml"
            path.write_text(relabel_config)
            args.append(f"-remoteWrite.relabelConfig={path}")
        super().__init__(data_dir=data_dir, remote_write_urls=[sink_write_url], extra_args=args)
        self.cpu = cpu

    def _argv(self, binary: Path) -> list[str]:
        return ["taskset", "-c", str(self.cpu), *super()._argv(binary)]

    @property
    def pid(self) -> int:
        pid = super().pid
        assert pid is not None, "vmagent is not running"
        return pid

    def queue_bytes(self) -> int | None:
        return _metric_sum(f"{self.url}/metrics", "vmagent_remotewrite_pending_data_bytes")

    def disposal(self) -> Disposal | None:
        text = _scrape(f"{self.url}/metrics")
        if text is None:
            return None
        by_name = tuple((name, int(sum(v for _, v in _samples(text, name))))
                        for name in VMAGENT_DROPPED)
        return Disposal(dropped=sum(n for _, n in by_name), by_action=by_name)


class _PortTaken(Exception):
    """The pipeline could not bind a port picked for it."""


class PhoenixRelay:
    """``python -m metrics_pipeline --config <generated yaml>`` under ``taskset -c CPU``.

    The config fills ``pipeline.http_listen`` (remote-write ingest at ``/api/v1/write``),
    ``pipeline.otlp_grpc_listen`` (OTLP/gRPC ``MetricsService/Export``, plaintext: ingest_tls
    off), ``pipeline.exporters[0].endpoint`` (the sink; default ``flush_interval``, 1 s),
    ``pipeline.data_dir`` (the durable queue; ``queue_fsync`` as given: ``interval``, the
    default, or ``always``) and
    ``metrics.listen`` (``phoenix_queue_bytes``, the ingest and end-to-end latency histograms)
    and, when the scenario has any, ``pipeline.static_policies`` (``Policy`` documents of
    state.proto, as in bench/pipeline/policies/). NATS, etcd and the local CA are set up on the
    driver core: the service reports ready only once they answer.
    """

    flush_interval_s = 1.0  # the exporter's default flush_interval, which the config keeps

    def __init__(self, *, data_dir: Path, sink_write_url: str, cpu: int, driver_cpu: int,
                 static_policies: list[dict[str, Any]] | None = None,
                 queue_fsync: str = "interval") -> None:
        self.data_dir = data_dir
        self.queue_fsync = queue_fsync
        self.sink_write_url = sink_write_url
        self.cpu, self.driver_cpu = cpu, driver_cpu
        self.static_policies = list(static_policies or [])
        self._pick_ports()
        self._proc: subprocess.Popen[bytes] | None = None
        self._nats = EmbeddedNats(data_dir=data_dir / "nats")
        self._etcd = EmbeddedEtcd(data_dir=data_dir / "etcd")

    @property
    def pid(self) -> int:
        assert self._proc is not None, "metrics-pipeline is not running"
        return self._proc.pid

    @property
    def write_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1/write"

    @property
    def otlp_target(self) -> str:
        """host:port of the OTLP/gRPC receiver."""
        return f"127.0.0.1:{self.otlp_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def config_yaml(self) -> str:
        return f"""\
service: metrics-pipeline
state_dir: {self.data_dir / "state"}
grpc:
  listen: 127.0.0.1:0
metrics:
  listen: 127.0.0.1:{self.metrics_port}
nats:
  url: {self._nats.url}
etcd:
  endpoints: [{self._etcd.endpoint}]
log:
  level: warning
pipeline:
  http_listen: 127.0.0.1:{self.http_port}
  otlp_grpc_listen: 127.0.0.1:{self.otlp_port}
  ingest_tls: "off"
  data_dir: {self.data_dir / "queue"}
  queue_fsync: {self.queue_fsync}
  exporters:
    - name: sink
      type: remote-write
      endpoint: {self.sink_write_url}
""" + self._policies_yaml()

    def _policies_yaml(self) -> str:
        if not self.static_policies:
            return ""
        block = yaml.safe_dump({"static_policies": self.static_policies}, sort_keys=False)
        return textwrap.indent(block, "  ")

    def _pick_ports(self) -> None:
        ports: list[int] = []
        while len(ports) < 3:  # free_port() may hand the same port out twice
            if (port := free_port()) not in ports:
                ports.append(port)
        self.http_port, self.metrics_port, self.otlp_port = ports

    def start(self) -> PhoenixRelay:
        for server in (self._nats, self._etcd):
            server.start()
            os.sched_setaffinity(server.pid or 0, {self.driver_cpu})
        LocalCA.open(self.data_dir / "state" / "ca")
        for _ in range(3):
            try:
                return self._start_pipeline()
            except _PortTaken:
                # A free port picked here can be taken by an outgoing connection before the
                # pipeline binds it (the same ephemeral range): pick others and start again.
                self._pick_ports()
        return self._start_pipeline()

    def _start_pipeline(self) -> PhoenixRelay:
        config = self.data_dir / "pipeline.yaml"
        config.write_text(self.config_yaml())
        log = (self.data_dir / "metrics-pipeline.log").open("ab")
        self._proc = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), sys.executable, "-m", "metrics_pipeline",
             "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while _metric_sum(f"http://127.0.0.1:{self.metrics_port}/metrics", "phoenix_ready") != 1:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop_pipeline()
                if "address already in use" in self._log_tail():
                    raise _PortTaken
                self.stop()
                raise SystemExit("metrics-pipeline did not become ready; its log ends (the "
                                 "directory is temporary):\n" + self._log_tail())
            time.sleep(0.1)
        return self

    def check_running(self) -> None:
        """SystemExit with the log's tail if the service has exited (e.g. crashed under load;
        the log's directory is temporary)."""
        if self._proc is not None and (code := self._proc.poll()) is not None:
            raise SystemExit(f"metrics-pipeline exited ({code}) while loaded; its log ends:\n"
                             + self._log_tail())

    def _log_tail(self, lines: int = 20) -> str:
        log = self.data_dir / "metrics-pipeline.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]
                         if log.exists() else [])

    def stop(self) -> None:
        self._stop_pipeline()
        self._etcd.stop()
        self._nats.stop()

    def _stop_pipeline(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def queue_bytes(self) -> int | None:
        return _metric_sum(f"http://127.0.0.1:{self.metrics_port}/metrics", "phoenix_queue_bytes")

    def disposal(self) -> Disposal | None:
        """From ``PHOENIX_POLICY_POINTS`` by ``action`` (summed over tenants); None while the
        pipeline does not expose it."""
        text = _scrape(self.metrics_url)
        samples = _samples(text, PHOENIX_POLICY_POINTS) if text is not None else []
        if not samples:
            return None
        by_action: dict[str, int] = {}
        for labels, value in samples:
            action = m[1] if (m := re.search(r'action="([^"]*)"', labels)) else ""
            by_action[action] = by_action.get(action, 0) + int(value)

        def total(actions: tuple[str, ...]) -> int:
            return sum(by_action.get(a, 0) for a in actions)

        return Disposal(dropped=total(PHOENIX_DROPPED_ACTIONS),
                        merged=total(PHOENIX_MERGED_ACTIONS),
                        emitted=total(PHOENIX_EMITTED_ACTIONS),
                        by_action=tuple(sorted(by_action.items())))
