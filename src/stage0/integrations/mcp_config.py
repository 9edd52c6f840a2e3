"""The MCP gateway's configuration (``stage0 mcp-proxy --config``): the downstream servers,
their tools' rules, the Stage0 connection and the re-exported names' settings. Loading it needs
PyYAML and pydantic only, not the MCP SDK."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

QUALIFIED_SEPARATOR = "."  # `<server>.<tool>`: the name Stage0 (and so the policy) sees
DEFAULT_NAME_SEPARATOR = "__"  # `<server>__<tool>`: the name the MCP client sees
DESTRUCTIVE_EFFECTS = ("delete",)
OPEN_WORLD_EFFECTS = ("external_notification",)
#: The ``_meta`` key of a blocked result: a reverse-DNS prefix (the project's GitHub namespace,
#: outside the prefixes MCP reserves) and a name, per the MCP spec's ``_meta`` key format.
META_KEY = "io.github.stage0-authz/decision"
#: Function names that OpenAI function calling (and the clients built on it) accept.
OPENAI_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: Tool names per the MCP spec (SEP-986, revision 2025-11-25): 1-128 of A-Z a-z 0-9 _ - .
MCP_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEPARATOR = re.compile(r"^[A-Za-z0-9_.-]{1,8}$")
NAME_CHAR = re.compile(r"[A-Za-z0-9_-]")
HASH_LENGTH = 8


class ConfigError(ValueError):
    """The gateway's configuration file is missing, unreadable or invalid."""


# -- configuration ---------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolRule(_Model):
    """What Stage0 is told about one downstream tool (keyed by its downstream name)."""

    side_effects: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    goal: str | None = None
    success_criteria: list[str] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict)
    export_as: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class DownstreamServer(_Model):
    """A downstream MCP server started over stdio."""

    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    prefix: bool = True
    side_effects: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    tools: dict[str, ToolRule] = Field(default_factory=dict)
    call_timeout: float | None = Field(default=None, gt=0)


class Stage0Settings(_Model):
    """How to reach Stage0; ``None`` means ``STAGE0_API_BASE`` / ``STAGE0_API_KEY``."""

    base_url: str | None = None
    api_key: str | None = None
    timeout: float = Field(default=5.0, gt=0)
    environment: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    wait_for_approval: float = Field(default=0.0, ge=0)


class AnnotationEffects(_Model):
    """Side effects added by tool annotations (only ever added, never removed)."""

    destructive: list[str] = Field(default_factory=lambda: list(DESTRUCTIVE_EFFECTS), min_length=1)
    open_world: list[str] = Field(default_factory=lambda: list(OPEN_WORLD_EFFECTS), min_length=1)


class ToolNames(_Model):
    """How re-exported tool names are made (see :func:`export_name`)."""

    separator: str = DEFAULT_NAME_SEPARATOR
    max_length: int = Field(default=64, ge=16, le=128)

    @field_validator("separator")
    @classmethod
    def _separator(cls, value: str) -> str:
        if not _SEPARATOR.match(value):
            raise ValueError(f"separator `{value}`: use 1-8 of A-Z a-z 0-9 _ - .")
        return value


class GatewayConfig(_Model):
    """The whole configuration file."""

    stage0: Stage0Settings = Field(default_factory=Stage0Settings)
    servers: dict[str, DownstreamServer] = Field(min_length=1)
    annotations: AnnotationEffects = Field(default_factory=AnnotationEffects)
    tool_names: ToolNames = Field(default_factory=ToolNames)

    @field_validator("servers")
    @classmethod
    def _names(cls, value: dict[str, DownstreamServer]) -> dict[str, DownstreamServer]:
        for name in value:
            if not _SERVER_NAME.match(name):
                raise ValueError(f"server name `{name}`: use 1-64 of A-Z a-z 0-9 _ -")
        return value

    @model_validator(mode="after")
    def _export_as_fits(self) -> GatewayConfig:
        limit = self.tool_names.max_length
        for server_name, server in self.servers.items():
            for tool_name, rule in server.tools.items():
                if rule.export_as is not None and len(rule.export_as) > limit:
                    raise ValueError(f"servers.{server_name}.tools.{tool_name}.export_as: "
                                     f"longer than tool_names.max_length ({limit})")
        return self


def load_config(path: str | Path) -> GatewayConfig:
    """Read a YAML or JSON configuration file (JSON is YAML, so one parser reads both)."""
    try:
        raw = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read `{path}`: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"`{path}` is not valid YAML/JSON: {exc}") from None
    try:
        return GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"`{path}`: {exc}") from None


def single_server_config(command: Sequence[str], name: str = "server") -> GatewayConfig:
    """The configuration for ``stage0 mcp-proxy -- COMMAND ARGS...``."""
    if not command:
        raise ConfigError("no downstream command given")
    return GatewayConfig.model_validate(
        {"servers": {name: {"command": command[0], "args": list(command[1:])}}})


# -- the risk of one call --------------------------------------------------------------------
