"""The raw-ASGI baseline of bench/http_check.py: the cheapest JSON answer uvicorn can serve."""

from __future__ import annotations

from typing import Any

BODY = b'{"verdict":"ALLOW"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the request body, as /check does
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
