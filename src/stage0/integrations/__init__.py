"""Adapters for agent runtimes. Each module needs its own optional dependency group:
``stage0[mcp]``, ``stage0[openai-agents]``, ``stage0[langgraph]``. The core package never
imports them."""
