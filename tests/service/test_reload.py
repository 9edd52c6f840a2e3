"""Hot reload: a changed pack is applied between batches; a bad one is refused; SIGHUP works."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from stage0.policy import PolicyError
from stage0.policy.loader import default_pack_text
from stage0.policy.packset import load_pack_set
from stage0.store import Store
from stage0.store.keys import create_key
from tests.helpers import request
from tests.service.conftest import fresh_database, running_app, start_server


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_a_changed_pack_is_applied_and_a_bad_one_refused(tmp_path: Path) -> None:
    pack = tmp_path / "policy"
    pack.mkdir()
    (pack / "pack.yaml").write_text(default_pack_text())
    with fresh_database("sqlite", tmp_path) as url, running_app(url, policy=str(pack)) as api:
        assert api.check(request()).json()["policy_version"] == "stage0-policy-pack@1.0.0"
        answers: list[int] = []
        stop = threading.Event()

        def load() -> None:  # requests keep flowing through every reload
            while not stop.is_set():
                answers.append(api.check(request()).status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            (pack / "pack.yaml").write_text(
                default_pack_text().replace("version: 1.0.0", "version: 1.1.0"))
            assert wait_until(lambda: api.client.get("/readyz").json()["policy_version"]
                              == "stage0-policy-pack@1.1.0")
            assert wait_until(lambda: api.check(request()).json()["policy_version"]
                              == "stage0-policy-pack@1.1.0")
            (pack / "pack.yaml").write_text("apiVersion: stage0/v1\nbuckets: [\n")
            assert wait_until(lambda: api.client.get("/readyz").json()["last_reload"]["ok"]
                              is False)
        finally:
            stop.set()
            worker.join()
        ready = api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["policy_version"] == "stage0-policy-pack@1.1.0"
        assert "not valid YAML" in ready.json()["last_reload"]["error"]
        assert api.check(request()).json()["policy_version"] == "stage0-policy-pack@1.1.0"
        assert answers
        assert set(answers) == {200}
        metrics = api.client.get("/metrics").text
        assert 'stage0_policy_reloads_total{result="refused"}' in metrics
        assert 'stage0_policy_reloads_total{result="applied"}' in metrics


def test_sighup_reloads_a_running_server(tmp_path: Path) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(default_pack_text())
    with fresh_database("sqlite", tmp_path) as url:
        store = Store(url)
        store.migrate()
        _, key = create_key(store, tenant="default", name="k", plan="pro", unlimited=True)
        store.dispose()
        server = start_server(url, tmp_path, env={"STAGE0_POLICY": str(pack)})
        try:
            def version() -> str:
                return str(httpx.post(f"{server.url}/check", json=request(), timeout=10,
                                      headers={"x-api-key": key}).json()["policy_version"])

            assert version() == "stage0-policy-pack@1.0.0"
            before = pack.stat().st_mtime
            pack.write_text(default_pack_text().replace("version: 1.0.0", "version: 2.0.0"))
            os.utime(pack, (before, before))  # the poller sees no change: only SIGHUP can
            time.sleep(1.5)
            assert version() == "stage0-policy-pack@1.0.0"
            server.process.send_signal(signal.SIGHUP)
            assert wait_until(lambda: version() == "stage0-policy-pack@2.0.0")
            assert server.process.poll() is None
        finally:
            server.stop()


NEW_RULE = (
    "rules:\n  - id: NO_TICKET_SUMMARIES\n    when: \"'ticket_search' in tools\"\n"
    "    message: ticket summaries are paused\n    remediation: wait for the migration\n"
)


def test_several_versions_are_held_for_pinned_requests(tmp_path: Path) -> None:
    pack = tmp_path / "policy"
    pack.mkdir()
    (pack / "v1.0.0.yaml").write_text(default_pack_text() + NEW_RULE)
    (pack / "v1.1.0.yaml").write_text(
        default_pack_text().replace("version: 1.0.0", "version: 1.1.0"))
    with fresh_database("sqlite", tmp_path) as url, running_app(url, policy=str(pack)) as api:
        ready = api.client.get("/readyz").json()
        assert ready["policy_version"] == "stage0-policy-pack@1.1.0"  # the highest is active
        assert ready["held_versions"] == ["stage0-policy-pack@1.0.0"]
        latest = api.check(request()).json()
        assert (latest["policy_version"], latest["verdict"]) == ("stage0-policy-pack@1.1.0",
                                                                 "ALLOW")
        for pin in ("stage0-policy-pack@1.0.0", " 1.0.0"):
            old = api.check(request(policy_pack_version=pin)).json()
            assert (old["policy_version"], old["verdict"]) == ("stage0-policy-pack@1.0.0",
                                                               "DENY"), pin
            assert "NO_TICKET_SUMMARIES" in [i["code"] for i in old["issues"]]
            logged = api.client.get(f"/v1/decisions/{old['request_id']}",
                                    headers={"x-api-key": api.key}).json()
            assert logged["policy_version"] == "stage0-policy-pack@1.0.0"
            assert logged["policy_sha256"] == old["policy_sha256"] != latest["policy_sha256"]
        unknown = api.check(request(policy_pack_version="1.2.0")).json()
        assert unknown["verdict"] == "DENY"
        (issue,) = [i for i in unknown["issues"] if i["code"] == "POLICY_VERSION_UNKNOWN"]
        assert "`stage0-policy-pack@1.1.0`, `stage0-policy-pack@1.0.0`" in issue["message"]

        # a pin never loosens: when the active pack is stricter for the action, it decides
        (pack / "pack.yaml").write_text(
            default_pack_text().replace("version: 1.0.0", "version: 1.2.0") + NEW_RULE)
        assert wait_until(lambda: api.client.get("/readyz").json()["policy_version"]
                          == "stage0-policy-pack@1.2.0")
        assert api.check(request()).json()["verdict"] == "DENY"
        pinned = api.check(request(policy_pack_version="1.1.0")).json()
        assert (pinned["policy_version"], pinned["verdict"]) == ("stage0-policy-pack@1.2.0",
                                                                 "DENY")
        (note,) = [i for i in pinned["issues"] if i["code"] == "POLICY_PIN_TIGHTENED"]
        assert "stage0-policy-pack@1.1.0" in note["message"]
        assert api.check(request(policy_pack_version="1.0.0")).json()["policy_version"] == \
            "stage0-policy-pack@1.0.0"  # as strict as the active pack: the pin decides

        # one bad file refuses the whole set; the last good set keeps serving
        (pack / "v2.0.0.yaml").write_text(
            default_pack_text().replace("version: 1.0.0", "version: 2.0.0")
            .replace("quorum: 1", "quorum: 0"))
        assert wait_until(lambda: api.client.get("/readyz").json()["last_reload"]["ok"]
                          is False)
        error = api.client.get("/readyz").json()["last_reload"]["error"]
        assert "v2.0.0.yaml: approvals.quorum" in error
        assert api.check(request(policy_pack_version="1.0.0")).json()["policy_version"] == \
            "stage0-policy-pack@1.0.0"


def test_a_pack_set_refuses_ambiguous_versions(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(default_pack_text())
    (tmp_path / "b.yaml").write_text(default_pack_text() + NEW_RULE)
    with pytest.raises(PolicyError, match=r"also in a\.yaml with different content"):
        load_pack_set(tmp_path)
    (tmp_path / "b.yaml").write_text(default_pack_text())  # the same pack twice is harmless
    assert load_pack_set(tmp_path).versions == ["stage0-policy-pack@1.0.0"]
    (tmp_path / "pack.yaml").write_text(default_pack_text().replace("name: stage0-policy-pack",
                                                                 "name: other-pack"))
    both = load_pack_set(tmp_path)
    assert both.find("1.0.0") is None  # two packs have 1.0.0: ambiguous
    assert both.find("other-pack@1.0.0") is not None
    (tmp_path / "d.yaml").write_text(default_pack_text().replace("version: 1.0.0",
                                                                 "version: 01.0.0"))
    with pytest.raises(PolicyError, match="semantic version"):
        load_pack_set(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicyError, match="holds no pack"):
        load_pack_set(empty)


def test_an_approval_granted_under_a_laxer_pin_does_not_satisfy_the_active_pack(
        tmp_path: Path) -> None:
    pack = tmp_path / "policy"
    pack.mkdir()
    (pack / "v1.0.0.yaml").write_text(default_pack_text())
    (pack / "pack.yaml").write_text(default_pack_text().replace("version: 1.0.0", "version: 1.1.0")
                                    .replace("  quorum: 1 ", "  quorum: 2 "))
    payout = {**request(), "goal": "Release the manual payout for invoice 2231",
              "tools": ["payments.create_payout"], "side_effects": ["money movement"],
              "constraints": ["approval required", "max_records: 1"],
              "context": {"environment": "production", "actor_id": "agent-7"},
              "policy_pack_version": "1.0.0"}
    with fresh_database("sqlite", tmp_path) as url, running_app(url, policy=str(pack)) as api:
        agent = api.new_key(scopes=["check"], principal="agent-7")
        held = api.check(payout, key=agent).json()
        assert held["verdict"] == "DEFER"
        approval = held["approval"]
        assert (approval["policy_version"], approval["required_approvals"]) == (
            "stage0-policy-pack@1.0.0", 1)
        granted = api.client.post(f"/v1/approvals/{approval['approval_id']}/approve",
                                  json={"reason": "ok"}, headers={"x-api-key": api.key})
        assert granted.json()["status"] == "approved"
        retry = {**payout, "context": {**payout["context"],
                                       "approval_id": approval["approval_id"]}}
        pinned = api.check(retry, key=agent).json()
        assert (pinned["verdict"], pinned["policy_version"]) == ("DEFER",
                                                                 "stage0-policy-pack@1.1.0")
        codes = [i["code"] for i in pinned["issues"]]
        assert "POLICY_PIN_TIGHTENED" in codes
        (pending,) = [i for i in pinned["issues"] if i["code"] == "APPROVAL_REQUIRED_PENDING"]
        assert "1 approval(s) where 2 are needed" in pending["message"]
        unpinned = {k: v for k, v in retry.items() if k != "policy_pack_version"}
        assert api.check(unpinned, key=agent).json()["verdict"] == "DEFER"
