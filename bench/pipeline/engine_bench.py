"""The policy engine alone, on the bench workload: CPU per sample and what it outputs.

    .venv/bin/python bench/pipeline/engine_bench.py --scenario cap|drop-label|plain [--passes 3]

Writes the workload of ``run.py``'s scenario (bench/pipeline/workload.py, with the 10%
``user_id`` bomb for cap and drop-label) to a temporary directory, then replays its bodies
through ``decode_remote_write`` and a :class:`PolicyEngine` holding the scenario's policy
(bench/pipeline/policies/*.yaml, the same ones ``run.py`` hands the pipeline), ``--passes``
times, in this process: no HTTP, no queue, no export. Prints CPU microseconds per sample
(decode included, and decode alone for comparison), the distinct series the engine let pass
or emitted (the cap scenario must print 120,001), and the merged points. Use it to see what a
change to ``phoenixcp.core.policy`` costs before running the side-by-side benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from phoenixcp.api.phoenix.v1 import state_pb2  # noqa: E402
from phoenixcp.core.policy.engine import PolicyEngine  # noqa: E402
from phoenixcp.core.policy.model import PolicySpec, ProfileSpec  # noqa: E402
from phoenixcp.platform.ingest import decode_remote_write  # noqa: E402
from phoenixcp.platform.policy import policy_from_proto  # noqa: E402

POLICY_FILES = {"cap": "cap.yaml", "drop-label": "drop-label.yaml"}


class BenchSource:
    """One tenant-independent set of policies under the ``full`` profile (a PolicySource)."""

    def __init__(self, policies: tuple[PolicySpec, ...]) -> None:
        self._policies = policies
        self.profiles = {"full": ProfileSpec(name="full")}
        self.rejections = ()

    def profile_for(self, tenant: str) -> ProfileSpec:
        return self.profiles["full"]

    def policies_for(self, tenant: str, now: object) -> tuple[PolicySpec, ...]:
        return self._policies


def scenario_policies(scenario: str) -> tuple[PolicySpec, ...]:
    if scenario == "plain":
        return ()
    docs = yaml.safe_load((Path(__file__).parent / "policies" / POLICY_FILES[scenario])
                          .read_text())
    docs = docs if isinstance(docs, list) else [docs]
    return tuple(policy_from_proto(json_format.ParseDict(d, state_pb2.Policy())) for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["plain", "cap", "drop-label"], default="cap")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bomb = [] if args.scenario == "plain" else ["--bomb-share", "0.1"]
        rounds = "3" if args.scenario == "plain" else "15"
        subprocess.run([sys.executable, str(Path(__file__).parent / "workload.py"), "--out", tmp,
                        "--rounds", rounds, "--no-otlp", *bomb], check=True,
                       stdout=subprocess.DEVNULL)
        bodies = [p.read_bytes() for p in sorted(Path(tmp).glob("rw-*.bin"))]
    engine = PolicyEngine(replica_id="bench")
    engine.apply(BenchSource(scenario_policies(args.scenario)))  # type: ignore[arg-type]
    seen: set[object] = set()
    samples = merged = 0
    per_pass: list[float] = []
    for _ in range(args.passes):
        spent = 0.0
        for body in bodies:
            start = time.process_time()
            batch = decode_remote_write(body, tenant="default")
            outcome = engine.process(batch)
            spent += time.process_time() - start
            samples += batch.sample_count
            merged += outcome.tally.merged + outcome.tally.overflowed
            if outcome.passthrough is not None:  # outside the timing: the bench's own check
                seen.update(outcome.passthrough.series_keys.tolist())
        start = time.process_time()
        outputs = engine.flush(force=True)
        spent += time.process_time() - start
        for output in outputs:
            seen.update(labels for labels, _, _ in output.points)
        per_pass.append(spent)
    spent = sum(per_pass)
    start = time.process_time()
    decoded = sum(decode_remote_write(body, tenant="default").sample_count for body in bodies)
    decode = (time.process_time() - start) / decoded
    print(f"scenario {args.scenario}: {len(bodies)} bodies x {args.passes} passes, "
          f"{samples:,} samples")
    print(f"  engine + decode   {spent / samples * 1e6:6.2f} us per sample (CPU), all passes")
    per_body = samples // args.passes
    for i, t in enumerate(per_pass, 1):
        print(f"    pass {i}          {t / per_body * 1e6:6.2f} us per sample")
    print(f"  decode alone      {decode * 1e6:6.2f} us per sample")
    print(f"  distinct series out {len(seen):,}; points merged {merged:,}")


if __name__ == "__main__":
    main()
