"""The operator console over HTTP (TestClient): sign-in and sessions, CSRF, scopes, approving
through the pipeline and its refusals, the explorer, the policy page, headers and assets."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pyotp
import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import select, update

from stage0.console import assets
from stage0.console.sessions import ConsoleSettings
from stage0.store import ledger
from stage0.store.keys import ApiKey, create_key, revoke_key
from stage0.store.schema import console_sessions, decisions
from tests.helpers import request
from tests.service.conftest import Api, running_app
from tests.service.test_approvals import PAYOUT, People, strict_pack
from tests.service.test_replay import pack_file

HTMX = {"hx-request": "true"}


class Console:
    """A browser-like client of the console: cookies, the CSRF token of the signed-in page."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.csrf = ""

    def sign_in(self, secret: str) -> httpx.Response:
        page = self.client.get("/console/login")
        token = _field(page.text, "csrf_token")
        answer = self.client.post("/console/login", data={"api_key": secret, "csrf_token": token},
                                  follow_redirects=False)
        if answer.status_code == 303:
            self.csrf = _field(self.client.get("/console/inbox").text, "csrf_token")
        return answer

    def decide(self, approval_id: str, op: str = "approve", reason: str = "checked",
               totp: str = "", htmx: bool = True, csrf: str | None = None) -> httpx.Response:
        return self.client.post(
            f"/console/approvals/{approval_id}/{op}",
            data={"reason": reason, "totp": totp,
                  "csrf_token": self.csrf if csrf is None else csrf},
            headers=HTMX if htmx else {})


def _field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found is not None, f"no {name} in the page"
    return found.group(1)


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    with running_app(db_url) as a:
        yield a


def _console(api: Api, base_url: str = "http://testserver") -> Console:
    return Console(TestClient(api.client.app, base_url=base_url))


def _pending(api: Api, people: People) -> str:
    body = api.check(PAYOUT, key=people.agent_key).json()
    assert body["verdict"] == "DEFER"
    return str(body["approval"]["approval_id"])


# -- sign-in and sessions ---------------------------------------------------------------------


def test_sign_in_sets_a_hardened_cookie_and_stores_only_a_hash(api: Api) -> None:
    people = People(api.store)
    console = _console(api)
    answer = console.sign_in(people.alice_key)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/inbox"
    cookie = next(c for c in answer.headers.get_list("set-cookie")
                  if c.startswith("stage0_session="))
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "secure" not in attributes  # plain HTTP; see the https test
    assert "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    value = cookie.split(";")[0].split("=", 1)[1]
    assert people.alice_key not in cookie
    with api.store.connect() as conn:
        rows = list(conn.execute(select(console_sessions)))
    assert len(rows) == 1
    row = rows[0]
    assert row.id_hash == hashlib.sha256(value.encode()).hexdigest() != value
    assert row.key_id == people.alice.id
    assert row.tenant_id == "default"
    assert people.alice_key not in str(tuple(row))
    assert "Signed in as" in console.client.get("/console/inbox").text


def test_the_cookie_is_secure_over_https(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    people = People(api.store)
    answer = _console(api, "https://testserver").sign_in(people.alice_key)
    assert answer.status_code == 303
    assert all("; secure" in c.lower() for c in answer.headers.get_list("set-cookie"))
    monkeypatch.setenv("STAGE0_CONSOLE_SECURE_COOKIE", "always")
    monkeypatch.setenv("STAGE0_CONSOLE_SESSION_TTL_S", "600")
    assert ConsoleSettings.from_env() == ConsoleSettings(session_ttl_s=600, secure_cookie="always")
    monkeypatch.setenv("STAGE0_CONSOLE_SECURE_COOKIE", "sometimes")
    with pytest.raises(ValueError, match="auto"):
        ConsoleSettings.from_env()


def test_sign_in_refusals_are_clear(api: Api) -> None:
    people = People(api.store)
    console = _console(api)
    unknown = console.sign_in("s0_not-a-key")
    assert unknown.status_code == 401
    assert "unknown or revoked" in unknown.text
    agent = console.sign_in(people.agent_key)
    assert agent.status_code == 403
    assert "cannot sign in" in agent.text
    assert "approve, audit:read or admin" in agent.text
    # the sign-in form carries its own CSRF token (double submit with a cookie)
    forged = _console(api).client.post("/console/login", data={"api_key": people.alice_key},
                                       follow_redirects=False)
    assert forged.status_code == 403
    assert "CSRF" in forged.text
    assert "stage0_session" not in forged.headers.get("set-cookie", "")


def test_sessions_expire_end_on_sign_out_and_with_their_key(api: Api) -> None:
    people = People(api.store)
    console = _console(api)
    assert console.sign_in(people.alice_key).status_code == 303
    with api.store.begin() as conn:
        conn.execute(update(console_sessions).values(expires_us=1))
    gone = console.client.get("/console/inbox", follow_redirects=False)
    assert gone.status_code == 303
    assert gone.headers["location"] == "/console/login?m=expired"
    assert "session has expired" in console.client.get(gone.headers["location"]).text
    htmx = console.client.get("/console/inbox/items", headers=HTMX)
    assert htmx.headers["hx-redirect"] == "/console/login?m=expired"

    assert console.sign_in(people.alice_key).status_code == 303
    cookie = console.client.cookies.get("stage0_session")
    assert console.client.post("/console/logout", data={}).status_code == 403  # no CSRF token
    out = console.client.post("/console/logout", data={"csrf_token": console.csrf},
                              follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/console/login?m=signed_out"
    replay = _console(api)
    replay.client.cookies.set("stage0_session", str(cookie), path="/console")
    assert replay.client.get("/console/inbox", follow_redirects=False).status_code == 303

    assert console.sign_in(people.bob_key).status_code == 303
    # signing in again from a browser that holds a session replaces it
    again = _console(api)
    form = again.client.get("/console/login").text
    again.client.cookies.set("stage0_session", str(console.client.cookies.get("stage0_session")),
                             path="/console")
    assert again.client.post("/console/login", follow_redirects=False, data={
        "api_key": people.bob_key, "csrf_token": _field(form, "csrf_token")}).status_code == 303
    with api.store.connect() as conn:
        assert len(list(conn.execute(select(console_sessions)))) == 1
    assert again.client.get("/console/inbox", follow_redirects=False).status_code == 200
    revoke_key(api.store, people.bob.id)
    assert again.client.get("/console/inbox", follow_redirects=False).status_code == 303


# -- approving ----------------------------------------------------------------------------------


def test_approving_goes_through_the_pipeline_and_the_hash_chain(api: Api) -> None:
    people = People(api.store)
    approval_id = _pending(api, people)
    console = _console(api)
    assert console.sign_in(people.carol_key).status_code == 303
    inbox = console.client.get("/console/inbox").text
    assert f'id="card-{approval_id}"' in inbox
    for shown in ("payments.create_payout", "production", "money_movement", "agent-7",
                  "0 of 1", "APPROVAL_REQUIRED_PENDING", "left",
                  '<span class="nt">"amount"</span>'):
        assert shown in inbox, shown

    card = console.decide(approval_id, reason="invoice matches PO-88")
    assert card.status_code == 200
    assert 'data-status="approved"' in card.text
    assert "Approved (1 of 1)" in card.text
    assert "<html" not in card.text  # a fragment for htmx, not a page
    approval = api.client.get(f"/v1/approvals/{approval_id}",
                              headers={"x-api-key": api.key}).json()
    assert approval["status"] == "approved"
    assert approval["votes"][0]["principal"] == "carol"
    assert approval["votes"][0]["reason"] == "invoice matches PO-88"
    events, _ = ledger.search(api.store, "default", kind="approval.vote")
    assert [e["key_id"] for e in events] == [people.carol.id]
    assert all(r.ok for r in ledger.verify(api.store))
    assert 'id="card-' not in console.client.get("/console/inbox/items").text


def test_csrf_is_checked_on_every_post(api: Api) -> None:
    people = People(api.store)
    approval_id = _pending(api, people)
    console = _console(api)
    assert console.sign_in(people.carol_key).status_code == 303
    for token in ("", "forged"):
        refused = console.decide(approval_id, csrf=token)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    assert api.client.get(f"/v1/approvals/{approval_id}",
                          headers={"x-api-key": api.key}).json()["status"] == "pending"
    # htmx sends the token in a header (hx-headers on <body>)
    by_header = console.client.post(f"/console/approvals/{approval_id}/reject",
                                    data={"reason": "no PO"},
                                    headers={**HTMX, "x-csrf-token": console.csrf})
    assert 'data-status="rejected"' in by_header.text


def test_refusals_are_shown_as_clear_messages(db_url: str, tmp_path: Path) -> None:
    with running_app(db_url, policy=strict_pack(tmp_path)) as api:
        people = People(api.store)
        approval_id = _pending(api, people)

        def sign_in(secret: str) -> Console:
            console = _console(api)
            assert console.sign_in(secret).status_code == 303
            return console

        selfie = sign_in(people.selfie_key)
        page = selfie.client.get("/console/inbox").text
        assert f'id="totp-{approval_id}"' in page
        assert "risk_ops" in page
        assert "0 of 2" in page
        assert "you (or your key) requested it" in selfie.decide(approval_id, totp="1").text
        assert "holds none of the roles" in sign_in(people.carol_key).decide(
            approval_id, totp=_totp(people.carol)).text
        alice = sign_in(people.alice_key)
        assert "needs a TOTP code" in alice.decide(approval_id).text
        assert "TOTP code is wrong" in alice.decide(approval_id, totp="000000").text
        assert "Give a reason" in alice.decide(approval_id, reason=" ", totp="1").text
        ok = alice.decide(approval_id, totp=_totp(people.alice))
        assert "Approved (1 of 2)" in ok.text
        assert 'data-status="pending"' in ok.text
        again = alice.decide(approval_id, totp=_totp(people.alice))
        assert "already decided on this request" in again.text
        # without htmx: the inbox page, with the refusal's status
        plain = sign_in(people.carol_key).decide(approval_id, totp="1", htmx=False)
        assert plain.status_code == 403
        assert "<html" in plain.text
        assert "holds none of the roles" in plain.text
        refusals, _ = ledger.search(api.store, "default", kind="approval.refused", limit=20)
        assert len(refusals) >= 5  # the refusals are in the hash chain, as over the API


def _totp(key: ApiKey) -> str:
    assert key.totp_secret is not None
    return pyotp.TOTP(key.totp_secret).now()


def test_scopes_decide_what_each_key_sees(api: Api) -> None:
    people = People(api.store)
    approval_id = _pending(api, people)
    _, auditor_key = create_key(api.store, tenant="default", name="auditor",
                                scopes=["audit:read"])
    auditor = _console(api)
    assert auditor.sign_in(auditor_key).status_code == 303
    inbox = auditor.client.get("/console/inbox").text
    assert f'id="card-{approval_id}"' in inbox
    assert "<form class=\"decide\"" not in inbox
    refused = auditor.decide(approval_id)
    assert "lacks the approve scope" in refused.text
    assert auditor.client.get("/console/decisions").status_code == 200
    approver = _console(api)
    assert approver.sign_in(people.carol_key).status_code == 303
    explorer = approver.client.get("/console/decisions")
    assert explorer.status_code == 403
    assert "audit:read" in explorer.text
    policy = approver.client.get("/console/policy")
    assert policy.status_code == 200
    assert "need the audit:read scope" in policy.text
    # another tenant's approver sees nothing of this tenant
    _, other_key = create_key(api.store, tenant="globex", name="o",
                              scopes=["approve", "audit:read"], principal="olga")
    other = _console(api)
    assert other.sign_in(other_key).status_code == 303
    assert approval_id not in other.client.get("/console/inbox").text
    assert "APPROVAL_NOT_FOUND" not in other.decide(approval_id).text
    assert "no such approval request" in other.decide(approval_id).text
    assert other.client.get(f"/console/decisions/{_first_request(api)}").status_code == 404


def _first_request(api: Api) -> str:
    with api.store.connect() as conn:
        return str(conn.execute(select(decisions.c.request_id).where(
            decisions.c.kind == "decision").limit(1)).scalar_one())


# -- explorer and policy ------------------------------------------------------------------------


def test_the_explorer_filters_and_verifies_each_row(api: Api) -> None:
    people = People(api.store)
    approval_id = _pending(api, people)
    allowed = api.check(request(context={"environment": "staging"})).json()
    assert allowed["verdict"] == "ALLOW"
    console = _console(api)
    assert console.sign_in(api.key).status_code == 303

    def rows(query: str) -> str:
        answer = console.client.get(f"/console/decisions?{query}",
                                    headers={**HTMX, "hx-target": "results"})
        assert answer.status_code == 200, answer.text
        assert "<html" not in answer.text
        return answer.text

    everything = rows("")
    assert allowed["request_id"] in everything
    assert "verdict-DEFER" in everything
    assert "verdict-DEFER" not in rows("verdict=ALLOW")
    assert allowed["request_id"] not in rows("tool=payments.create_payout")
    assert allowed["request_id"] not in rows("bucket=money_movement")
    assert allowed["request_id"] in rows("environment=staging")
    assert "No record matches" in rows("environment=nowhere")
    assert "No record matches" in rows("since=2026-03-18T00:00:00")
    assert allowed["request_id"] in rows("since=2026-03-17T00:00&until=2026-03-18T00:00")
    assert "approval.created" in rows("kind=all")
    assert "Check the filters" in console.client.get("/console/decisions?since=yesterday").text

    deferred = _first_request(api)
    assert console.decide(approval_id).status_code == 200
    detail = console.client.get(f"/console/decisions/{deferred}").text
    for shown in ("Hash chain: verifies", "APPROVAL_REQUIRED_PENDING", "stage0-policy-pack@1.0.0",
                  "approval.created", "approval.vote", "approval.approved", "checked",
                  _remediation(api, deferred)):
        assert shown in detail, shown
    record = ledger.get(api.store, "default", deferred)
    assert record is not None
    assert record["policy_sha256"] in detail
    with api.store.begin() as conn:
        conn.execute(update(decisions).where(decisions.c.request_id == deferred)
                     .values(environment="staging"))
    assert "does not verify" in console.client.get(f"/console/decisions/{deferred}").text
    missing = console.client.get("/console/decisions/no-such-id")
    assert missing.status_code == 404


def _remediation(api: Api, request_id: str) -> str:
    record = ledger.get(api.store, "default", request_id)
    assert record is not None
    return str(escape(record["response"]["issues"][0]["remediation"]))[:30]


def test_the_policy_page_shows_the_pack_windows_and_shadow_hits(
        db_url: str, tmp_path: Path) -> None:
    def shadow(doc: dict) -> None:  # type: ignore[type-arg]
        doc["rules"].append({
            "code": "LARGE_AMOUNT", "mode": "shadow", "severity": "HIGH", "effect": "DENY",
            "condition": "has(arguments.amount) && double(arguments.amount) > 1000.0",
            "message": "Amounts over 1000 would be denied", "remediation": "Split it"})
        doc["freezes"] = [{"name": "year-end", "start": "2026-12-20T00:00:00Z",
                           "end": "2027-01-04T00:00:00Z", "reason": "Year-end close"}]

    with running_app(db_url, policy=pack_file(tmp_path, "shadow.yaml", shadow)) as api:
        api.check(request(arguments={"amount": 5000}))
        console = _console(api)
        assert console.sign_in(api.key).status_code == 303
        page = console.client.get("/console/policy").text
    for shown in ("stage0-policy-pack@1.0.0", "money_movement", "production_control_plane",
                  "Change windows", "Next opening", "LARGE_AMOUNT", "1 with shadow hits",
                  "ALLOW → DENY", "year-end", "Year-end close", "inactive"):
        assert shown in page, shown


# -- headers, markup, assets --------------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction", "hx-get", "hx-post"):
                self.refs.append(value or "")
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}")

    def handle_data(self, data: str) -> None:
        if self._tag in ("script", "style") and data.strip():
            self.inline.append(f"<{self._tag}> {data[:40]}")


def test_pages_are_hardened_and_reference_only_same_origin_assets(api: Api) -> None:
    people = People(api.store)
    _pending(api, people)
    console = _console(api)
    assert console.sign_in(api.key).status_code == 303
    request_id = _first_request(api)
    for path in ("/console/login", "/console/inbox", "/console/decisions",
                 f"/console/decisions/{request_id}", "/console/policy"):
        answer = console.client.get(path)
        assert answer.status_code == 200, path
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "unsafe-eval" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        parser = _Refs()
        parser.feed(answer.text)
        assert parser.refs, path
        for ref in parser.refs:
            assert ref.startswith(("/console", "#", "?")), (path, ref)
        assert parser.inline == [], (path, parser.inline)
        assert "<script src=\"/console/static/htmx.min.js\"" in answer.text
    for asset in ("htmx.min.js", "console.css"):
        served = console.client.get(f"/console/static/{asset}")
        assert served.status_code == 200
        assert served.headers["x-content-type-options"] == "nosniff"
    # the console is not part of the API's OpenAPI document
    assert not [p for p in api.client.get("/openapi.json").json()["paths"]
                if p.startswith("/console")]


def test_everything_shown_is_escaped(api: Api) -> None:
    body = dict(PAYOUT, goal="Pay <script>alert(1)</script> now",
                arguments={"note": "<img src=x onerror=alert(1)>"})
    _, agent = create_key(api.store, tenant="default", name="a2", scopes=["check"],
                          plan="pro", unlimited=True, principal="agent-9")
    assert api.check(body, key=agent).json()["verdict"] == "DEFER"
    console = _console(api)
    assert console.sign_in(api.key).status_code == 303
    page = console.client.get("/console/inbox").text
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;img src=x" in page


def test_the_vendored_htmx_matches_its_lock() -> None:
    assert assets.check() == []
    (asset,) = [a for a in assets.load_lock() if a.package == "htmx.org"]
    data = (assets.STATIC / asset.target).read_bytes()
    assert hashlib.sha256(data).hexdigest() == asset.sha256
    assert asset.integrity.startswith("sha512-")
    assert assets.sri_matches(b"abc", "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=")
    assert not assets.sri_matches(b"abd", "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=")
    assert not assets.sri_matches(b"abc", "md5-kAFQmDzST7DWlj99KOF/cg==")
