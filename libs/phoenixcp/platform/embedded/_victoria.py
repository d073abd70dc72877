"""VictoriaMetrics and vmagent (Debian's ``victoria-metrics`` package) as embedded servers.

``EmbeddedVictoriaMetrics`` is the backend the pipeline's exporters write to in tests: it takes
Prometheus remote-write at ``write_url`` and answers PromQL at ``url``. What makes written
samples visible at once (measured on 1.79.5):

- ``-search.latencyOffset=0s``: by default an instant query at "now" is moved one minute into
  the past, so just-written samples are invisible to it for a minute.
- ``flush()`` (``GET /internal/force_flush``): VictoriaMetrics buffers inserted rows and
  makes them searchable only every few seconds (2-10 s measured). After ``flush()``,
  ``export_series()`` sees every sample at once; PromQL sees them within about a second,
  sometimes answering with a series' older samples first, so ``query_until()`` flushes and
  polls until the expected answer, with a deadline.
- ``-search.disableCache``: no response cache, so a query never answers from before a write.
- ``-dedup.minScrapeInterval`` is left unset: every sample written is kept.

SIGTERM (``stop()``, ``restart()``) makes VictoriaMetrics write everything to disk; after
``kill()`` the samples of the last second or so may be gone unless ``flush()`` ran first.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from phoenixcp.errors import InvalidArgument, Unavailable
from phoenixcp.platform.embedded._base import EmbeddedServer
from phoenixcp.platform.embedded._support import _HTTP, _http_get

_REQUEST_TIMEOUT: Final = 10.0
_QUERY_POLL: Final = 0.05

# A PromQL result: [{"metric": {label: value}, "value": [unix_seconds, "value"]}, ...]
QueryResult = list[dict[str, Any]]


def _owns_flag(flags_page: bytes, flag: str, value: str) -> bool:
    """Whether ``/flags`` (``-name="value"`` lines) shows this value: proof it is our process."""
    return f'-{flag}="{value}"'.encode() in flags_page.splitlines()


def _fetch(url: str) -> bytes:
    """The body of a GET; ``Unavailable`` if nothing answers, ``InvalidArgument`` on a 4xx."""
    try:
        with _HTTP.open(url, timeout=_REQUEST_TIMEOUT) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        if 400 <= exc.code < 500:
            raise InvalidArgument(f"GET {url}: {exc.code}: {detail}") from exc
        raise Unavailable(f"GET {url}: {exc.code}: {detail}") from exc
    except OSError as exc:
        raise Unavailable(f"GET {url}: {exc}") from exc


class _VictoriaHttpServer(EmbeddedServer):
    """What victoria-metrics and vmagent share: one HTTP port, ``/api/v1/write``, and a
    readiness probe that checks ``/health`` and a ``/flags`` value only this process has."""

    def _owned_flag(self) -> tuple[str, str]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        """HTTP port (0 until the first start chooses it)."""
        return self._ports["http"]

    @property
    def url(self) -> str:
        """Base URL: ``/metrics`` for the server's own metrics, PromQL under ``/api/v1``."""
        return f"http://{self.host}:{self.port}"

    @property
    def write_url(self) -> str:
        """Prometheus remote-write 1.0 endpoint (snappy-compressed ``WriteRequest``)."""
        return f"{self.url}/api/v1/write"

    def _probe(self) -> bool:
        status, body = _http_get(f"{self.url}/health")
        if status != 200 or body.strip() != b"OK":
            return False
        status, flags = _http_get(f"{self.url}/flags")
        return status == 200 and _owns_flag(flags, *self._owned_flag())


class EmbeddedVictoriaMetrics(_VictoriaHttpServer):
    """Single-node ``victoria-metrics`` with its storage under ``data_dir/victoria-metrics-data``.

    Ready when ``GET /health`` says ``OK`` and ``/flags`` shows this object's storage path (so
    another server on the port is never mistaken for it). The data survives ``restart()``.
    Samples older than ``retention`` are rejected by the server, so keep test timestamps recent.
    """

    name = "victoria-metrics"
    binary = "victoria-metrics"

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        retention: str = "7d",
        extra_args: Sequence[str] = (),
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir, host=host, ports={"http": port}, die_with_parent=die_with_parent
        )
        self.retention = retention
        self.extra_args = tuple(extra_args)
        self.storage_path = self.data_dir / "victoria-metrics-data"

    def _owned_flag(self) -> tuple[str, str]:
        return "storageDataPath", str(self.storage_path)

    def _argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.storage_path}",
            f"-retentionPeriod={self.retention}",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            *self.extra_args,
        ]


    def flush(self) -> None:
        """Make every sample accepted so far visible to ``export_series()`` (and soon to PromQL)."""
        _fetch(f"{self.url}/internal/force_flush")

    def query(self, promql: str, *, at: float | None = None) -> QueryResult:
        """The ``result`` of an instant PromQL query at ``at`` (unix seconds; default now).

        Raises ``InvalidArgument`` for a query VictoriaMetrics rejects, ``Unavailable`` if it
        does not answer.
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = _fetch(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise InvalidArgument(f"query {promql!r}: {answer.get('error', answer)}")
        result: QueryResult = answer["data"]["result"]
        return result

    def query_until(
        self,
        promql: str,
        done: Callable[[QueryResult], bool],
        *,
        at: float | None = None,
        timeout: float = 10.0,
    ) -> QueryResult:
        """``flush()`` and ``query()`` until ``done(result)``; the last result is returned.

        Make ``done`` check the values expected, not only that series exist: for about a second
        after a write a query can answer with the series' older samples. Data that arrives
        while this waits (from a relay, an exporter) is flushed too. Raises ``TimeoutError``
        naming the last result if ``done`` is still false after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            result = self.query(promql, at=at)
            if done(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"query {promql!r} after {timeout:.1f}s still returns {result}")
            time.sleep(_QUERY_POLL)

    def export_series(
        self, match: str, *, start: float | None = None, end: float | None = None
    ) -> list[dict[str, Any]]:
        """Every raw sample of the series ``match`` selects (e.g. ``{__name__=~"http_.*"}``).

        Flushes first, so every sample accepted before the call is in the answer. One dict per
        series: ``{"metric": {label: value}, "values": [float], "timestamps": [unix_ms]}``.
        """
        self.flush()
        params = [("match[]", match)]
        params += [(key, f"{t:.3f}") for key, t in (("start", start), ("end", end)) if t]
        body = _fetch(f"{self.url}/api/v1/export?{urllib.parse.urlencode(params)}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]


class EmbeddedVmagent(_VictoriaHttpServer):
    """``vmagent`` relaying remote-write from ``write_url`` to ``remote_write_urls``.

    Its on-disk queue is under ``data_dir/vmagent-queue``; ready when ``GET /health`` says
    ``OK`` and ``/flags`` shows that queue path. ``/metrics`` has its queue size
    (``vmagent_remotewrite_pending_data_bytes``). Used by ``bench/pipeline`` as the relay Phoenix
    is compared with.
    """

    name = "vmagent"
    binary = "vmagent"

    def __init__(
        self,
        *,
        data_dir: Path,
        remote_write_urls: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        die_with_parent: bool = True,
    ) -> None:
        if not remote_write_urls:
            raise InvalidArgument("vmagent needs at least one remote-write URL")
        super().__init__(
            data_dir=data_dir, host=host, ports={"http": port}, die_with_parent=die_with_parent
        )
        self.remote_write_urls = tuple(remote_write_urls)
        self.extra_args = tuple(extra_args)
        self.queue_path = self.data_dir / "vmagent-queue"

    def _owned_flag(self) -> tuple[str, str]:
        return "remoteWrite.tmpDataPath", str(self.queue_path)

    def _argv(self, binary: Path) -> list[str]:
        return [
            str(binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-remoteWrite.tmpDataPath={self.queue_path}",
            *(f"-remoteWrite.url={url}" for url in self.remote_write_urls),
            *self.extra_args,
        ]

