"""The operator console: approval inbox, decision explorer and policy page at ``/console``."""

from stage0.console.routes import mount_console
from stage0.console.sessions import ConsoleSettings

__all__ = ["ConsoleSettings", "mount_console"]
