"""What docs/approvals.md and docs/audit.md show, run against a served app.

- the policy pack of the approvals walkthrough is complete and valid, and yields quorum 2;
- the walkthrough's console block (``## With curl``) runs as written: its ``stage0`` commands go
  to the real CLI, its ``curl`` commands to the app, its ``jq`` filters are evaluated, and every
  output line the page shows must be what the commands print (``…`` stands for anything);
- the field table of docs/audit.md names exactly the keys of the rows that
  ``GET /v1/decisions``, ``GET /v1/decisions/{request_id}`` and ``stage0 audit export`` return.

The console block is interpreted by a small shell of the forms the page uses (``export``,
``NAME=$(…)``, ``NAME='…'``, pipes, ``>``, ``"$(…)"``, ``<<<``) and a small jq (paths,
``{a, b: .c}``, ``,``, ``path = $var``); anything else fails, so the page cannot drift into
commands this test does not run. SQLite only: the approval flow itself is tested on both
backends in test_approvals.py.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest
from click.testing import CliRunner

from stage0.cli.main import cli
from stage0.policy import load_policy
from tests.service.conftest import Api, fresh_database, running_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACK_FILE = "payments-strict.yaml"  # the name the walkthrough saves the pack under


def section(page: str, heading: str) -> str:
    """The text of the ``## heading`` section of docs/``page`` (up to the next ``## ``)."""
    text = (DOCS / page).read_text("utf-8")
    assert f"\n{heading}\n" in text, f"no `{heading}` in docs/{page}"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```\s*$", text, re.M | re.S)


# -- the pack -----------------------------------------------------------------------------------


def walkthrough_pack() -> str:
    blocks = fenced(section("approvals.md", "## Policy"), "yaml")
    assert len(blocks) == 1, "docs/approvals.md ## Policy should show exactly one pack"
    return blocks[0]


def test_the_pack_of_the_approvals_walkthrough_is_complete_and_valid(tmp_path: Path) -> None:
    path = tmp_path / PACK_FILE
    path.write_text(walkthrough_pack(), "utf-8")
    policy = load_policy(path)  # the real loader: a fragment of a pack does not load
    rule = policy.approval_rule(["money_movement"])
    assert (rule.quorum, set(rule.approver_roles), rule.approver_mfa) == (2, {"risk_ops"}, True)
    assert rule.execute_within == 15 * 60
    result = CliRunner().invoke(cli, ["policy", "validate", "--strict", str(path)])
    assert result.exit_code == 0, result.output


# -- a small shell and a small jq, for the console block ----------------------------------------


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, start, quote = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quote = not quote
        elif not quote and ch in "{[(":
            depth += 1
        elif not quote and ch in "}])":
            depth -= 1
        elif not quote and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _steps(path: str) -> list[str | int]:
    if path == ".":
        return []
    steps: list[str | int] = []
    pos = 0
    for m in _STEP.finditer(path):
        assert m.start() == pos, f"jq path `{path}` is not supported by this test"
        steps.append(m[1] if m[1] is not None else int(m[2]))
        pos = m.end()
    assert steps, f"jq path `{path}` is not supported by this test"
    assert pos == len(path), f"jq path `{path}` is not supported by this test"
    return steps


def _get(value: Any, path: str) -> Any:
    for step in _steps(path):
        if value is None:
            return None
        if isinstance(step, int):
            assert isinstance(value, list), f"jq: cannot index {type(value).__name__} with {step}"
            value = value[step] if step < len(value) else None
        else:
            assert isinstance(value, dict), f"jq: cannot index {type(value).__name__} with {step}"
            value = value.get(step)
    return value


def _set(value: Any, path: str, new: Any) -> None:
    *parents, last = _steps(path)
    for step in parents:
        value = value.setdefault(step, {}) if isinstance(step, str) else value[step]
    value[last] = new


def jq(expr: str, value: Any, args: dict[str, str]) -> list[Any]:
    out = []
    for part in (p.strip() for p in _split_top(expr, ",")):
        if part.startswith("{") and part.endswith("}"):
            obj = {}
            for entry in (e.strip() for e in _split_top(part[1:-1], ",")):
                name, sep, path = entry.partition(":")
                obj[name.strip()] = _get(value, path.strip() if sep else f".{name.strip()}")
            out.append(obj)
        elif " = " in part:
            target, _, source = part.partition(" = ")
            assert source.strip().startswith("$"), f"jq `{part}` is not supported by this test"
            changed = copy.deepcopy(value)
            _set(changed, target.strip(), args[source.strip()[1:]])
            out.append(changed)
        else:
            out.append(_get(value, part))
    return out


@dataclass
class Call:
    method: str
    path: str
    status: int
    body: Any


class Shell:
    """Runs the walkthrough's commands: ``stage0`` on the CLI, ``curl`` on the app."""

    def __init__(self, api: Api, db_url: str, cwd: Path) -> None:
        self.api, self.db_url, self.cwd = api, db_url, cwd
        self.vars: dict[str, str] = {}
        self.totp: dict[str, str] = {}  # API key -> its otpauth:// URI
        self.calls: list[Call] = []
        self.served_with: Path | None = None

    def expand(self, token: str) -> str:
        # shell variables are upper case; jq's ($id) are lower case and left alone
        return re.sub(r"\$\{?([A-Z][A-Z0-9_]*)\}?", lambda m: self.vars[m[1]], token)

    def run(self, command: str) -> str:
        if m := re.fullmatch(r"(?:export )?([A-Z][A-Z0-9_]*)=\$\((.*)\)", command, re.S):
            self.vars[m[1]] = self.run(m[2]).rstrip("\n")
            return ""
        if m := re.fullmatch(r"(?:export )?([A-Z][A-Z0-9_]*)='([^']*)'", command, re.S):
            self.vars[m[1]] = m[2]
            return ""
        if m := re.fullmatch(r"export ([A-Z][A-Z0-9_]*)=(\S+)", command):
            self.vars[m[1]] = self.expand(m[2])
            return ""
        command = re.sub(r'"\$\((.*?)\)"',
                         lambda m: shlex.quote(self.run(m[1]).rstrip("\n")), command, flags=re.S)
        tokens = [self.expand(t) for t in shlex.split(command, comments=True)]
        target = None
        if ">" in tokens:
            at = tokens.index(">")
            tokens, target = tokens[:at] + tokens[at + 2:], tokens[at + 1]
        output: str | None = None
        stages: list[list[str]] = [[]]
        for token in tokens:
            if token == "|":
                stages.append([])
            else:
                stages[-1].append(token)
        for stage in stages:
            output = self.program(stage, output)
        assert output is not None
        if target is not None:
            (self.cwd / target).write_text(output, "utf-8")
            return ""
        return output

    def program(self, args: list[str], stdin: str | None) -> str:
        name = args[0]
        if name == "stage0":
            return self.stage0(args[1:])
        if name == "curl":
            return self.curl(args[1:])
        if name == "jq":
            return self.jq(args[1:], stdin)
        raise AssertionError(f"the walkthrough runs `{name}`, which this test does not run")

    def stage0(self, args: list[str]) -> str:
        if args[0] == "serve":  # the app under test is that server: check the options only
            serve = cli.commands["serve"]
            option = next(p for p in serve.params if "--policy" in p.opts)
            with serve.make_context("serve", list(args[1:])) as ctx:
                self.served_with = self.cwd / str(ctx.params[str(option.name)])
            return ""
        result = CliRunner(env={"STAGE0_DATABASE_URL": self.db_url}).invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
        if args[:2] == ["keys", "create"] and "--format" in args:
            made = json.loads(result.stdout)
            if made.get("totp_uri"):
                self.totp[made["key"]] = made["totp_uri"]
        return result.stdout

    def curl(self, args: list[str]) -> str:
        method, headers, data, url = None, {}, None, None
        it = iter(args)
        for arg in it:
            if arg == "-s":
                continue
            if arg == "-X":
                method = next(it)
            elif arg == "-H":
                name, _, value = next(it).partition(":")
                headers[name.strip().lower()] = value.strip()
            elif arg == "-d":
                data = next(it)
            else:
                assert not arg.startswith("-"), f"curl: unsupported option {arg}"
                assert url is None, f"curl: a second URL {arg}"
                url = arg
        assert url is not None
        assert url.startswith(self.vars["S"]), url
        path = url[len(self.vars["S"]):]
        if data is not None:
            assert headers.get("content-type") == "application/json", "curl -d needs the header"
            payload = json.loads(data)
            if "totp" in payload:  # the code the approver reads off the authenticator app
                uri = self.totp[headers["x-api-key"]]
                payload["totp"] = pyotp.parse_uri(uri).now()  # type: ignore[attr-defined]
                data = json.dumps(payload)
        method = method or ("POST" if data is not None else "GET")
        response = self.api.client.request(method, path, headers=headers, content=data)
        self.calls.append(Call(method, path.split("?")[0], response.status_code,
                               response.json()))
        return response.text

    def jq(self, args: list[str], stdin: str | None) -> str:
        raw = compact = False
        jq_args: dict[str, str] = {}
        expr: str | None = None
        inputs: list[str] = []
        it = iter(args)
        for arg in it:
            if arg == "-r":
                raw = True
            elif arg == "-c":
                compact = True
            elif arg == "--arg":
                key = next(it)
                jq_args[key] = next(it)
            elif expr is None:
                expr = arg
            elif arg.startswith("<<<"):
                inputs.append(arg[3:])
            else:
                inputs.append((self.cwd / arg).read_text("utf-8"))
        assert expr is not None
        if not inputs:
            assert stdin is not None, "jq without input"
            inputs = [stdin]
        lines = []
        for text in inputs:
            for value in jq(expr, json.loads(text), jq_args):
                if raw and isinstance(value, str):
                    lines.append(value)
                elif compact:
                    lines.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
                else:
                    lines.append(json.dumps(value, ensure_ascii=False, indent=2))
        return "".join(f"{line}\n" for line in lines)


def console_commands(block: str) -> list[tuple[str, list[str]]]:
    """``(command, output lines shown after it)`` for each ``$ `` command of a console block."""
    found: list[tuple[str, list[str]]] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while True:
                if command.endswith("\\"):
                    command = command[:-1].rstrip() + " " + next(lines).strip()
                    continue
                try:
                    shlex.split(command, comments=True)
                except ValueError:  # a quoted argument goes on over the next line
                    command += "\n" + next(lines)
                    continue
                break
            found.append((command, []))
        elif line.strip() and not line.startswith("#"):
            assert found, f"output before any command: {line}"
            found[-1][1].append(line)
    return found


def matches(shown: str, printed: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split("…"))
    return re.fullmatch(pattern, printed) is not None


def test_the_two_approver_walkthrough_runs_as_written(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = fenced(section("approvals.md", "## With curl"), "console")
    assert blocks, "no console block under ## With curl in docs/approvals.md"
    work = tmp_path / "work"
    work.mkdir()
    (work / PACK_FILE).write_text(walkthrough_pack(), "utf-8")
    monkeypatch.chdir(work)
    with fresh_database("sqlite", tmp_path) as db_url, \
            running_app(db_url, frozen_time=None, policy=str(work / PACK_FILE)) as api:
        shell = Shell(api, db_url, work)
        for command, shown in console_commands(blocks[0]):
            printed = shell.run(command).rstrip("\n")
            if shown:
                lines = printed.split("\n")
                same = len(lines) == len(shown) and all(map(matches, shown, lines))
                assert same, (f"`{command}` prints\n{printed}\nbut docs/approvals.md shows\n"
                              + "\n".join(shown))

        assert shell.served_with == work / PACK_FILE, "the walkthrough serves another pack"
        checks = [c for c in shell.calls if c.path == "/check"]
        votes = [c for c in shell.calls if c.path.endswith("/approve")]
        consumed = [c for c in shell.calls if c.path == "/v1/tokens/consume"]
        assert (len(checks), len(votes)) == (2, 2), shell.calls
        assert consumed, shell.calls
        first, retry = checks[0].body, checks[1].body
        assert first["verdict"] == "DEFER", first
        approval = first["approval"]
        assert (approval["required_approvals"], approval["eligible_roles"],
                approval["requires_mfa"]) == (2, ["risk_ops"], True)
        assert [(v.status, v.body["status"]) for v in votes] == [(200, "pending"),
                                                                 (200, "approved")]
        assert retry["verdict"] == "ALLOW", retry["reason"]
        assert retry["guardrail_checks"]["approval"]["approval_id"] == approval["approval_id"]
        assert retry["execution_token"]
        assert (consumed[0].status, consumed[0].body["consumed"]) == (200, True)
        assert all(c.status == 409 for c in consumed[1:])
        final = api.client.get(f"/v1/approvals/{approval['approval_id']}",
                               headers={"x-api-key": api.key}).json()
        assert final["status"] == "used"


# -- the decision log's fields ------------------------------------------------------------------


def documented_fields() -> dict[str, str]:
    """``{field: meaning}`` from the table of ``## What a row holds`` in docs/audit.md."""
    fields = {}
    for line in section("audit.md", "## What a row holds").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"`[a-z][a-z0-9_]*`", cells[0]):
            fields[cells[0].strip("`")] = cells[-1]
    assert fields, "no field table under ## What a row holds in docs/audit.md"
    return fields


PAYOUT = {
    "goal": "Release the manual payout for invoice 2231",
    "tools": ["payments.create_payout"],
    "side_effects": ["money movement"],
    "constraints": ["approval required"],
    "arguments": {"vendor": "acme-supplies", "amount": 1250, "currency": "EUR"},
    "context": {"environment": "production", "actor_id": "agent-7", "api_token": "hunter2"},
}


def test_the_audit_field_table_names_exactly_the_returned_fields(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as db_url, running_app(db_url) as api:
        agent = api.new_key(scopes=["check"], principal="agent-7")
        approver = api.new_key(scopes=["approve"], principal="alice")
        reader = api.new_key(scopes=["audit:read"])
        read = {"x-api-key": reader}

        assert api.check({"goal": "Summarize yesterday's tickets", "tools": ["ticket_search"]},
                         key=agent).json()["verdict"] == "ALLOW"
        assert api.check({"goal": 5}, key=agent).status_code == 422
        deferred = api.check(PAYOUT, key=agent).json()
        approval_id = deferred["approval"]["approval_id"]
        voted = api.client.post(f"/v1/approvals/{approval_id}/approve",
                                json={"reason": "invoice checked"},
                                headers={"x-api-key": approver})
        assert voted.json()["status"] == "approved", voted.text
        retry = {**PAYOUT, "context": {**PAYOUT["context"], "approval_id": approval_id}}
        allowed = api.check(retry, key=agent).json()
        assert allowed["verdict"] == "ALLOW", allowed["reason"]
        consumed = api.client.post("/v1/tokens/consume", headers={"x-api-key": agent}, json={
            "token": allowed["execution_token"], "action_digest": allowed["action_digest"]})
        assert consumed.status_code == 200, consumed.text

        listed = api.client.get("/v1/decisions", params={"kind": "all", "limit": 500},
                                headers=read).json()["items"]
        default = api.client.get("/v1/decisions", headers=read).json()["items"]
        one = [api.client.get(f"/v1/decisions/{r['request_id']}", headers=read).json()
               for r in listed]
        exported = CliRunner().invoke(cli, ["audit", "export", "--db", db_url])
        assert exported.exit_code == 0, exported.output
        records = [json.loads(line) for line in exported.stdout.splitlines() if line]

    kinds = {r["kind"] for r in listed}
    assert {"decision", "rejected", "approval.created", "approval.vote", "approval.approved",
            "approval.used", "token.consumed"} <= kinds, kinds
    assert {r["kind"] for r in default} == {"decision", "rejected"}
    assert len(records) == len(listed) == len(one)

    documented = documented_fields()
    for where, rows in (("GET /v1/decisions", listed), ("GET /v1/decisions/{id}", one),
                        ("stage0 audit export", records)):
        for row in rows:
            assert set(row) == set(documented), (
                f"{where} ({row['kind']}): not documented {sorted(set(row) - set(documented))}, "
                f"documented but not returned {sorted(set(documented) - set(row))}")

    timings = set(re.findall(r"`([a-z_]+_us)`", documented["timings"]))
    for row in listed:
        if row["kind"] in ("decision", "rejected"):
            assert set(row["timings"]) == timings, row["timings"]
    payout = next(r for r in listed if r["request_id"] == deferred["request_id"])
    assert payout["redacted_paths"] == ["context.api_token"]
    assert payout["request"]["context"]["api_token"] == "[REDACTED]"
