"""A small downstream MCP server (stdio, official SDK) for the gateway tests.

``python mcp_downstream.py MARKER_FILE``: every tool that actually runs appends one JSON line
to MARKER_FILE, so a test can prove whether (and how often) a call reached this server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

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


if __name__ == "__main__":
    server.run()
