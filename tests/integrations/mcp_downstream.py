"""A small downstream MCP server (stdio, official SDK) for the gateway tests.

``python mcp_downstream.py MARKER_FILE``: every tool that actually runs appends one JSON line
to MARKER_FILE, so a test can prove whether (and how often) a call reached this server.

``python mcp_downstream.py MARKER_FILE --http PORT TOKEN`` serves the same tools over streamable
HTTP at ``http://127.0.0.1:PORT/mcp`` (the SDK's own app, run by uvicorn) and answers 401 to any
request whose ``Authorization`` is not ``Bearer TOKEN``; every ``Authorization`` value it
receives is appended to ``MARKER_FILE.auth``, so a test can prove which credential reached it.

``read_note`` and ``purge_note`` declare an ``outputSchema`` (they return structured content);
``search.titles`` has a dot in its name and the last tool a name too long to re-export as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import BaseModel

MARKER = Path(sys.argv[1])

server: MCPServer = MCPServer("notes", version="0.0.1")


def _record(tool: str, **arguments: object) -> None:
    with MARKER.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool(description="Echo a text back (harmless).",
             annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
def echo(text: str) -> str:
    _record("echo", text=text)
    return f"echo: {text}"


@server.tool(description="Remove a note for good.",
             annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
def remove_note(note: str) -> str:
    _record("remove_note", note=note)
    return f"removed {note}"


class Note(BaseModel):
    note: str
    words: int


class Purged(BaseModel):
    note: str
    purged: bool


LONG_NAME = "count_the_words_of_every_note_in_the_notebook_and_show_totals"


@server.tool(description="Read a note (structured output).",
             annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
def read_note(note: str) -> Note:
    _record("read_note", note=note)
    return Note(note=note, words=len(note.split()))


@server.tool(description="Purge a note and its history (structured output).",
             annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False))
def purge_note(note: str) -> Purged:
    _record("purge_note", note=note)
    return Purged(note=note, purged=True)


@server.tool(name="search.titles", description="Search the note titles (a dot in the tool name).",
             annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
def search_titles() -> str:
    _record("search.titles")
    return "titles: n1, n2"


@server.tool(name=LONG_NAME, description="A tool whose prefixed name is over 64 characters.",
             annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
def long_named() -> str:
    _record(LONG_NAME)
    return "3 notes, 12 words"


def serve_http(port: int, token: str) -> None:
    import uvicorn  # noqa: PLC0415
    from starlette.responses import JSONResponse  # noqa: PLC0415
    from starlette.types import Receive, Scope, Send  # noqa: PLC0415

    app = server.streamable_http_app()
    seen = Path(f"{MARKER}.auth")

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            value = headers.get("authorization", "")
            with seen.open("a", encoding="utf-8") as out:
                out.write(json.dumps(value) + "\n")
            if value != f"Bearer {token}":
                await JSONResponse({"error": "invalid_token"}, status_code=401)(scope, receive,
                                                                                 send)
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--http":
        serve_http(int(sys.argv[3]), sys.argv[4])
    else:
        server.run()
