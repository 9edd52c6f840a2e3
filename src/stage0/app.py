"""The served application: the API (:mod:`stage0.server`) with the operator console
(:mod:`stage0.console`) mounted at ``/console``. ``stage0 serve`` and ``uvicorn --factory``
run :func:`create_app_from_env`."""

from __future__ import annotations

from stage0.console import ConsoleSettings, mount_console
from stage0.server.app import Stage0App, create_api
from stage0.server.state import AppState, Settings, state_of

__all__ = ["AppState", "Settings", "create_app", "create_app_from_env", "state_of"]


def create_app(settings: Settings | None = None,
               console: ConsoleSettings | None = None) -> Stage0App:
    """The API and the console (docs/console.md), as one app."""
    app = create_api(settings)
    mount_console(app, console)
    return app


def create_app_from_env() -> Stage0App:
    """For ``uvicorn --factory`` and the workers of ``stage0 serve``."""
    return create_app(Settings.from_env())
