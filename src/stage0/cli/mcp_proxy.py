"""``stage0 mcp-proxy``: the MCP gateway (needs ``stage0-authz[mcp]``; imported only when run)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


@click.command("mcp-proxy", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Gateway configuration (YAML or JSON): downstream servers, Stage0, per-tool "
                   "side effects and constraints.")
@click.option("--server-name", default="server", show_default=True,
              help="Name of the single downstream server given after `--` (tools are exported "
                   "as NAME__TOOL).")
@click.option("--name-separator", default=None, metavar="SEP",
              help="What joins the server and tool names in a re-exported name (default: the "
                   "config's `tool_names.separator`, else `__`); 1-8 of A-Z a-z 0-9 _ - .")
@click.option("--api-base", default=None,
              help="Stage0 base URL (default: the config's, else STAGE0_API_BASE).")
@click.option("--api-key", default=None,
              help="Stage0 API key (default: the config's, else STAGE0_API_KEY).")
@click.option("--environment", default=None,
              help="`context.environment` sent with every check (e.g. production).")
@click.option("--wait-for-approval", type=click.FloatRange(min=0), default=None,
              help="Seconds to hold a deferred call while its approval is pending (default 0: "
                   "answer at once with the approval id).")
@click.option("--listen", default=None, metavar="[HOST:]PORT",
              help="Serve MCP over streamable HTTP at http://HOST:PORT/mcp instead of stdio "
                   "(host 127.0.0.1 unless given); clients need a bearer token (a Stage0 API "
                   "key, or a JWT from the config's `http.auth.jwt` issuer).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def mcp_proxy(config_path: Path | None, server_name: str, name_separator: str | None,
              api_base: str | None, api_key: str | None, environment: str | None,
              wait_for_approval: float | None, listen: str | None,
              command: tuple[str, ...]) -> None:
    """Serve MCP on stdio (or streamable HTTP) in front of downstream MCP servers, asking
    Stage0 before every call.

    stage0 mcp-proxy --config FILE, or stage0 mcp-proxy [--server-name NAME] -- COMMAND ARGS...
    """
    if (config_path is None) == (not command):
        raise click.UsageError("give either --config FILE or `-- COMMAND ARGS...` (not both)")
    try:
        import anyio  # noqa: PLC0415 - optional dependency, loaded only for this command

        from stage0.integrations import mcp as gateway  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException(
            f"the MCP gateway needs the `mcp` package: pip install 'stage0-authz[mcp]' ({exc})"
        ) from None
    try:
        config = (gateway.load_config(config_path) if config_path is not None
                  else gateway.single_server_config(command, server_name))
        if name_separator is not None:
            config = gateway.GatewayConfig.model_validate(
                {**config.model_dump(), "tool_names": {**config.tool_names.model_dump(),
                                                       "separator": name_separator}})
        listen = listen or config.http.listen
        if listen:
            from stage0.integrations.mcp_http import parse_listen  # noqa: PLC0415

            parse_listen(listen)
    except (gateway.ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    settings = config.stage0
    updates = {"base_url": api_base, "api_key": api_key, "environment": environment,
               "wait_for_approval": wait_for_approval}
    config.stage0 = settings.model_copy(
        update={k: v for k, v in updates.items() if v is not None})

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger = logging.getLogger(gateway.__name__)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        anyio.run(gateway.run_gateway, config, listen)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - report any start-up or transport failure
        raise click.ClickException(f"mcp-proxy: {type(exc).__name__}: {exc}") from None
