"""The policy page: the active pack, its buckets, change windows and freezes, where it comes from
(the store's pushed versions: every replica and the version it serves, drift flagged), and
(scope ``audit:read``) the shadow rules' hits of the last days."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from stage0.console.web import SignedIn, html
from stage0.lifecycle.replay import shadow_report
from stage0.policy import CompiledPolicy
from stage0.server.state import State

router = APIRouter(prefix="/console", include_in_schema=False)
SHADOW_DAYS = 7


def windows_of(policy: CompiledPolicy, now: datetime) -> list[dict[str, Any]]:
    windows = []
    for name, window in sorted(policy.windows.items()):
        is_open = window.contains(now)
        windows.append({"name": name, "describe": window.describe(), "open": is_open,
                        "next_open": None if is_open else window.next_open(now)})
    return windows


def freezes_of(policy: CompiledPolicy, now: datetime) -> list[dict[str, Any]]:
    return [{"name": f.name, "start": f.start, "end": f.end, "reason": f.reason,
             "buckets": f.buckets, "active": f.start <= now < f.end}
            for f in policy.freezes]


@router.get("/policy")
async def policy_page(request: Request, state: State, session: SignedIn) -> Response:
    policy = state.policy
    now = state.clock()
    shadow = None
    if session.can("audit:read"):
        report = await run_in_threadpool(
            lambda: shadow_report(state.store, tenant=session.key.tenant_id,
                                  since=now - timedelta(days=SHADOW_DAYS)))
        shadow = report.to_dict()
    fleet = await run_in_threadpool(state.fleet.status) if state.fleet is not None else None
    return html(request, "policy.html", 200, session, title="Policy", page="policy",
                policy=policy, fleet=fleet,
                fleet_problems=state.fleet.problems() if state.fleet is not None else [],
                windows=windows_of(policy, now) if policy else [],
                freezes=freezes_of(policy, now) if policy else [], shadow=shadow,
                shadow_days=SHADOW_DAYS,
                shadow_rules=[r for r in policy.rules if r.shadow] if policy else [])
