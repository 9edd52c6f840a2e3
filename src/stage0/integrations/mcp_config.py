"""The MCP gateway's configuration (``stage0 mcp-proxy --config``): the downstream servers,
their tools' rules, the Stage0 connection and the re-exported names' settings. Loading it needs
PyYAML and pydantic only, not the MCP SDK."""

from __future__ import annotations

import os
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
    """A downstream MCP server: started over stdio (``command``) or reached over streamable
    HTTP (``url``), exactly one of the two."""

    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every HTTP request to ``url`` (``${VAR}`` expanded; an unset one is an error):
    the gateway's own credential for that server, never the MCP client's."""
    connect_timeout: float = Field(default=30.0, gt=0)
    prefix: bool = True
    side_effects: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    tools: dict[str, ToolRule] = Field(default_factory=dict)
    call_timeout: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> DownstreamServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (streamable HTTP)")
        if self.url is None and self.headers:
            raise ValueError("`headers` are for a server reached by `url`")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("`args`, `env` and `cwd` are for a server started by `command`")
        return self


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


class JwtSettings(_Model):
    """OAuth 2.1 access tokens (JWT) from one issuer, verified with its JWKS."""

    issuer: str = Field(min_length=1)
    jwks_url: str = Field(pattern=r"^https?://")
    audience: str | None = None
    """Default: the gateway's resource URL (``http.resource_url``)."""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    required_scopes: list[str] = Field(default_factory=list)
    leeway: float = Field(default=30.0, ge=0, le=300)


class HttpAuth(_Model):
    """How MCP clients authenticate to the gateway's HTTP endpoint (a bearer token, always)."""

    stage0_keys: bool = True
    """Accept a Stage0 API key as the bearer token (checked with ``GET /usage``); the gateway
    then asks Stage0 with that key, so each decision is the caller's."""
    key_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    jwt: JwtSettings | None = None

    @model_validator(mode="after")
    def _some_method(self) -> HttpAuth:
        if not self.stage0_keys and self.jwt is None:
            raise ValueError("enable `stage0_keys` or configure `jwt`: the HTTP endpoint always "
                             "requires a bearer token")
        return self


class HttpSettings(_Model):
    """The gateway as a streamable-HTTP MCP server (``--listen``)."""

    listen: str | None = None
    """``HOST:PORT`` or ``PORT`` (host 127.0.0.1); ``--listen`` overrides it."""
    path: str = Field(default="/mcp", pattern=r"^/[A-Za-z0-9._~/-]*$")
    resource_url: str | None = Field(default=None, pattern=r"^https?://")
    """The gateway's public URL (its OAuth resource identifier); default
    ``http://HOST:PORT`` + ``path``."""
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_hosts: list[str] = Field(default_factory=list)
    auth: HttpAuth = Field(default_factory=HttpAuth)


class InputRequiredSettings(_Model):
    """Deferred calls of clients on MCP 2026-07-28: ``input_required`` with a sealed state."""

    enabled: bool = True
    poll_seconds: float = Field(default=15.0, ge=0, le=600)
    """How long each retry waits for a pending approval before answering again."""
    max_rounds: int = Field(default=8, ge=1, le=100)
    """Rounds answered with ``input_required``, then the DEFER result (SDK clients stop at 10)."""
    ttl: float = Field(default=900.0, gt=0, le=86400)
    """Seconds a request state is valid."""
    elicit: bool = True
    """Ask the human (an elicitation in the result) when the client supports it."""


class GatewayConfig(_Model):
    """The whole configuration file."""

    stage0: Stage0Settings = Field(default_factory=Stage0Settings)
    servers: dict[str, DownstreamServer] = Field(min_length=1)
    annotations: AnnotationEffects = Field(default_factory=AnnotationEffects)
    tool_names: ToolNames = Field(default_factory=ToolNames)
    http: HttpSettings = Field(default_factory=HttpSettings)
    input_required: InputRequiredSettings = Field(default_factory=InputRequiredSettings)

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


_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def expand_headers(server: str, headers: dict[str, str],
                   environ: dict[str, str] | None = None) -> dict[str, str]:
    """``servers.<server>.headers`` with ``$VAR`` / ``${VAR}`` taken from the environment; an
    unset variable is a :class:`ConfigError` (a credential must not be sent as written)."""
    env = dict(os.environ) if environ is None else environ
    out: dict[str, str] = {}
    for name, value in headers.items():
        def substitute(match: re.Match[str], header: str = name) -> str:
            variable = match.group(1) or match.group(2)
            if variable not in env:
                raise ConfigError(f"servers.{server}.headers.{header}: the environment variable "
                                  f"`{variable}` is not set")
            return env[variable]
        out[name] = _VARIABLE.sub(substitute, value)
    return out


def single_server_config(command: Sequence[str], name: str = "server") -> GatewayConfig:
    """The configuration for ``stage0 mcp-proxy -- COMMAND ARGS...``."""
    if not command:
        raise ConfigError("no downstream command given")
    return GatewayConfig.model_validate(
        {"servers": {name: {"command": command[0], "args": list(command[1:])}}})


# -- the risk of one call --------------------------------------------------------------------
