"""What bench/pipeline/run.py's ``--scenario`` adds to the workload and tells each relay.

- ``plain``: the 101k-series workload; both relays forward every sample (issue 4).
- ``cap``: the workload plus a 10% ``user_id`` bomb (workload.py: every bomb sample is a new
  series). vmagent runs with ``-remoteWrite.maxHourlySeries=120000``: samples of series beyond
  the first 120,000 it has seen within the hour are dropped (counted in
  ``vmagent_hourly_series_limit_rows_dropped_total``). Phoenix runs ``policies/cap.yaml``, a
  series cap of 120,000 per tenant whose overflow is merged into one series per metric, so it
  must drop nothing.
- ``drop-label``: the same workload and bomb. vmagent removes ``user_id`` with
  ``-remoteWrite.relabelConfig`` (``action: labeldrop``) and forwards the samples that became
  identical one by one, unsummed (a backend keeps one of them per timestamp: the totals are
  lost). Phoenix runs ``policies/drop-label.yaml``, an aggregate ``without: [user_id]`` that sums
  them.

The bomb scenarios replay 15 rounds (1,683 bodies) instead of 3, so that the bomb brings
168,000 series per pass over the bodies: far more than the 19,000 a 120k limit leaves after the
101,000 base series, as a bomb whose values keep changing would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from phoenixcp.api.phoenix.v1 import state_pb2

HERE = Path(__file__).resolve().parent
SERIES_LIMIT = 120_000
LABELDROP_USER_ID = """\
# bench/pipeline scenario drop-label: remove user_id from every series before it is sent
- action: labeldrop
  regex: user_id
"""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One ``--scenario``: the workload's bomb and each relay's configuration."""

    name: str
    bomb_share: float = 0.0
    workload_rounds: int = 3
    vmagent_args: tuple[str, ...] = ()
    vmagent_relabel_config: str | None = None  # YAML for -remoteWrite.relabelConfig
    policy_file: Path | None = None  # Policy documents for pipeline.static_policies

    def policies(self) -> list[dict[str, Any]]:
        """The policy file's documents, each checked against ``phoenix.v1.Policy`` (the schema
        the pipeline parses ``pipeline.static_policies`` with); SystemExit naming a bad one."""
        if self.policy_file is None:
            return []
        documents = yaml.safe_load(self.policy_file.read_text())
        if not isinstance(documents, list):
            raise SystemExit(f"{self.policy_file}: expected a list of Policy documents")
        for i, document in enumerate(documents):
            try:
                json_format.ParseDict(document, state_pb2.Policy())
            except json_format.ParseError as exc:
                raise SystemExit(f"{self.policy_file} [{i}]: not a phoenix.v1.Policy: {exc}") \
                    from None
        return documents

    def expectations(self, manifest: dict[str, Any]) -> list[str]:
        """What the figures should show for this workload, in sentences."""
        bomb = manifest.get("bomb")
        if not bomb:
            return [f"every relay forwards every sample; the sink sees {manifest['series']:,} "
                    "series"]
        base, extra = manifest["series"], bomb["series"]
        per_pass = manifest["remote_write"]["samples"]
        if self.name == "cap":
            beyond = max(0, base + extra - SERIES_LIMIT)
            return [
                f"{base + extra:,} series per pass over the bodies ({extra:,} of them the "
                f"bomb's); a limit of {SERIES_LIMIT:,} leaves {beyond:,} beyond it",
                f"once every series has been seen, {beyond / per_pass:.2%} of all samples are "
                f"of those series: vmagent drops them, Phoenix merges them into overflow "
                f"series (the sink sees about {SERIES_LIMIT:,} + one per capped metric)",
            ]
        groups = bomb["groups_without_label"]
        return [
            f"without {bomb['label']}, the bomb's {extra:,} series become {groups:,} "
            f"(instance x route): the sink sees about {base + groups:,} series",
            f"vmagent forwards all {bomb['samples_per_round']:,} bomb samples of a round into "
            f"those {groups:,} series (~{bomb['samples_per_round'] / groups:.0f} samples per "
            "series and timestamp, unsummed); Phoenix forwards their sums",
        ]


SCENARIOS = {
    "plain": Scenario(name="plain"),
    "cap": Scenario(
        name="cap", bomb_share=0.1, workload_rounds=15,
        vmagent_args=(f"-remoteWrite.maxHourlySeries={SERIES_LIMIT}",),
        policy_file=HERE / "policies" / "cap.yaml"),
    "drop-label": Scenario(
        name="drop-label", bomb_share=0.1, workload_rounds=15,
        vmagent_relabel_config=LABELDROP_USER_ID,
        policy_file=HERE / "policies" / "drop-label.yaml"),
}
