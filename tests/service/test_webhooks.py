"""Webhooks on approval events: signed, retried with backoff, visible on the approval."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stage0.cli.main import cli
from stage0.store import ledger
from stage0.store.webhooks import add_webhook, verify_signature
from tests.service.conftest import free_port, running_app
from tests.service.test_approvals import PAYOUT, T0


@dataclass
class Receiver:
    url: str
    fail_first: int = 0
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, event: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = [b for h, b in self.calls if h.get("stage0-event") == event]
            if len(bodies) >= count:
                return bodies
            time.sleep(0.05)
        raise AssertionError(f"no {event} delivery in {timeout} s; got {self.calls}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            failing = len(state.calls) <= state.fail_first
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def test_events_are_delivered_signed(db_url: str, receiver: Receiver) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        hook_id, secret = add_webhook(api.store, "default", receiver.url, [])
        agent = api.new_key(scopes=["check"], principal="bot")
        approver = api.new_key(scopes=["approve"], principal="dana")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        created = orjson.loads(receiver.wait_for("approval.created")[0])
        assert created["approval"]["approval_id"] == aid
        assert created["tenant"] == "default"
        headers, body = next((h, b) for h, b in receiver.calls
                             if h["stage0-event"] == "approval.created")
        assert verify_signature(secret, headers["stage0-signature"], body, now=time.time())
        assert not verify_signature("whsec_wrong", headers["stage0-signature"], body,
                                    now=time.time())
        api.client.post(f"/v1/approvals/{aid}/approve", json={"reason": "ok"},
                        headers={"x-api-key": approver}).raise_for_status()
        approved = orjson.loads(receiver.wait_for("approval.approved")[0])
        assert approved["approval"]["status"] == "approved"
        assert approved["actor"] == "dana"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = api.client.get(f"/v1/approvals/{aid}", headers={"x-api-key": approver}).json()
            if all(d["status"] == "delivered" for d in shown["webhook_deliveries"]):
                break
            time.sleep(0.1)
        events = [d["event"] for d in shown["webhook_deliveries"]]
        assert events == ["approval.created", "approval.approved"]
        assert {d["status"] for d in shown["webhook_deliveries"]} == {"delivered"}
        assert hook_id.startswith("whk_")


def test_failures_are_retried_with_backoff(db_url: str, receiver: Receiver,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGE0_WEBHOOK_BACKOFF_S", "0.2")
    receiver.fail_first = 2
    with running_app(db_url, frozen_time=T0) as api:
        add_webhook(api.store, "default", receiver.url, ["approval.created"])
        agent = api.new_key(scopes=["check"], principal="bot")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        receiver.wait_for("approval.created", count=3, timeout=20)
        ids = {h["stage0-delivery"] for h, _ in receiver.calls}
        assert len(ids) == 1  # the same delivery, retried
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            shown = api.client.get(f"/v1/approvals/{aid}", headers={"x-api-key": api.key}).json()
            if shown["webhook_deliveries"][0]["status"] == "delivered":
                break
            time.sleep(0.1)
        delivery = shown["webhook_deliveries"][0]
        assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)


def test_expired_requests_are_swept_logged_and_announced(
    db_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    with running_app(db_url, frozen_time=T0) as api:
        add_webhook(api.store, "default", receiver.url, ["approval.expired"])
        agent = api.new_key(scopes=["check"], principal="bot")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
    with running_app(db_url, frozen_time="2026-03-18T10:00:01Z") as api:
        expired = orjson.loads(receiver.wait_for("approval.expired")[0])
        assert expired["approval"]["approval_id"] == aid
        assert expired["approval"]["status"] == "expired"
        kinds = [r["kind"] for r in ledger.export(api.store, tenant="default", since=None,
                                                  until=None)]
        assert "approval.expired" in kinds
        assert all(r.ok for r in ledger.verify(api.store))


def test_approvers_are_warned_once_before_a_request_expires(
    db_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STAGE0_APPROVAL_EXPIRY_WARNING_S", "3600")
    with running_app(db_url, frozen_time=T0) as api:
        add_webhook(api.store, "default", receiver.url, ["approval.expiring", "approval.expired"])
        agent = api.new_key(scopes=["check"], principal="bot")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        # 24 h to go: no warning yet
        time.sleep(0.3)
        assert [h["stage0-event"] for h, _ in receiver.calls] == []
    # 30 minutes before it expires (T0 + 24 h): one warning, however often the sweep runs
    with running_app(db_url, frozen_time="2026-03-18T09:30:00Z") as api:
        [warning] = receiver.wait_for("approval.expiring")
        event = orjson.loads(warning)
        assert event["approval"]["approval_id"] == aid
        assert event["approval"]["status"] == "pending"
        assert (event["seconds_left"], event["expires_at"]) == (1800, "2026-03-18T10:00:00Z")
        api.client.app.state.stage0.pipeline.sweep().result(timeout=30)  # type: ignore[attr-defined]
        kinds = [r["kind"] for r in ledger.export(api.store, tenant="default", since=None,
                                                  until=None)]
        assert kinds.count("approval.expiring") == 1
    with running_app(db_url, frozen_time="2026-03-18T10:00:01Z") as api:
        receiver.wait_for("approval.expired")
        assert [h["stage0-event"] for h, _ in receiver.calls] == [
            "approval.expiring", "approval.expired"]
        assert all(r.ok for r in ledger.verify(api.store))


def test_webhook_cli(db_url: str) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["migrate", "--db", db_url]).exit_code == 0
    added = runner.invoke(cli, ["webhooks", "add", "--db", db_url, "--tenant", "default",
                                "--url", "https://chat.example/hook"])
    assert added.exit_code == 0, added.output
    assert "whsec_" in added.stdout
    listed = orjson.loads(runner.invoke(cli, ["webhooks", "list", "--db", db_url]).stdout)
    assert listed[0]["url"] == "https://chat.example/hook"
    assert "secret" not in listed[0]
    bad = runner.invoke(cli, ["webhooks", "add", "--db", db_url, "--tenant", "default",
                              "--url", "ftp://x", "--events", "approval.created"])
    assert bad.exit_code == 2
    removed = runner.invoke(cli, ["webhooks", "remove", "--db", db_url, listed[0]["id"]])
    assert removed.exit_code == 0


def test_removed_webhooks_stop_and_urls_stay_private(db_url: str) -> None:
    from stage0.store.webhooks import remove_webhook  # noqa: PLC0415

    with running_app(db_url, frozen_time=T0) as api:
        secret_url = f"http://user:pa55@127.0.0.1:{free_port()}/hook?token=SLACKSECRET"
        hook_id, _ = add_webhook(api.store, "default", secret_url, [])
        agent = api.new_key(scopes=["check"], principal="bot")
        aid = api.check(PAYOUT, key=agent).json()["approval"]["approval_id"]
        assert remove_webhook(api.store, hook_id)
        shown = api.client.get(f"/v1/approvals/{aid}", headers={"x-api-key": api.key}).json()
        deliveries = shown["webhook_deliveries"]
        assert [d["status"] for d in deliveries] == ["cancelled"]
        assert "SLACKSECRET" not in str(shown)
        assert "pa55" not in str(shown)
