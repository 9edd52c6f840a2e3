"""Adapters for agent runtimes. Each module needs its own optional dependency group:
``stage0-authz[mcp]``, ``stage0-authz[openai-agents]``, ``stage0-authz[langgraph]``. The core
package never imports them."""
