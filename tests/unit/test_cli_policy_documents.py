"""phoenixctl's policy documents: YAML or JSON, one or many, tenants, durations, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenixcp.api.phoenix.v1 import state_pb2
from phoenixcp.cli.remote import EXIT_INVALID, CliError, load_policies

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_documents_and_lists_with_human_durations(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "id: agg\naggregate: {without: [user_id], flush_interval: 1m30s}\n"
        "---\n"
        "- id: cap\n  tenant: acme\n  cap: {max_series: 10, idle_timeout: 5m}\n"
        "- {id: drop, drop: {}, match: {metric_name: debug_total}}\n"))
    policies = load_policies(path, "acme")
    assert [p.id for p in policies] == ["agg", "cap", "drop"]
    assert all(p.tenant == "acme" for p in policies)
    assert policies[0].aggregate.flush_interval.seconds == 90
    assert policies[1].cap.idle_timeout.seconds == 300
    assert policies[2].WhichOneof("action") == "drop"


def test_json_and_the_default_tenant(tmp_path: Path) -> None:
    path = write(tmp_path, '{"id": "cap", "cap": {"maxSeries": "3", "idleTimeout": "30s"}}',
                 "p.json")
    [policy] = load_policies(path, None)
    assert policy == state_pb2.Policy(id="cap", tenant="default", cap=state_pb2.SeriesCapAction(
        max_series=3, idle_timeout={"seconds": 30}))


@pytest.mark.parametrize(("text", "message"), [
    ("id: x\ntenant: other\ndrop: {}\n", "the document's tenant is 'other' but --tenant says"),
    ("id: x\nbogus: 1\n", 'has no field named "bogus"'),
    ("[1, 2]\n", "expected a Policy mapping"),
    ("id: [unclosed\n", "is neither YAML nor JSON"),
    ("", "holds no policy document"),
    ("id: x\nmatch: {metric_type: METRIC_TYPE_BOGUS}\n", "Invalid enum value METRIC_TYPE_BOGUS"),
])
def test_mistakes_are_exit_2_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CliError) as caught:
        load_policies(write(tmp_path, text), "acme")
    assert caught.value.code == EXIT_INVALID
    assert message in str(caught.value)


def test_a_missing_file_is_exit_1(tmp_path: Path) -> None:
    with pytest.raises(CliError) as caught:
        load_policies(str(tmp_path / "nope.yaml"), None)
    assert caught.value.code == 1 and "cannot read" in str(caught.value)


def test_policy_list_says_expired_once_expire_time_has_passed(
        capsys: pytest.CaptureFixture[str]) -> None:
    from datetime import UTC, datetime

    from phoenixcp.cli.policy import _print_policies

    def policy(pid: str, expires: str | None) -> state_pb2.Policy:
        p = state_pb2.Policy(tenant="acme", id=pid, author="ops", generation=1)
        p.match.metric_name = "http_requests_total"
        p.drop.SetInParent()
        if expires is not None:
            p.expire_time.FromDatetime(datetime.fromisoformat(expires))
        return p

    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    _print_policies([policy("old", "2026-11-28T11:59:59+00:00"),
                     policy("later", "2026-11-29T00:00:00+00:00"), policy("never", None)],
                    "table", now=now)
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["old"][3] == "expired" and rows["old"][-2:] == ["2026-11-28", "11:59:59Z"]
    assert rows["later"][3] == "enforce" and rows["later"][-2:] == ["2026-11-29", "00:00:00Z"]
    assert rows["never"][3] == "enforce" and rows["never"][-1] == "-"
