"""Stage0: pre-execution authorization for AI agents.

The package is laid out as the pipeline a decision travels through:
``contract`` (wire models) -> ``policy`` (load, validate, compile) -> ``engine``
(evaluate, combine) -> ``cli``. Dependencies point one way.
"""

__version__ = "0.1.0"

_SDK = {"Client", "AsyncClient", "LocalEngine", "CheckResult", "StageZeroError", "TokenRejected",
        "ActionDenied", "ActionDeferred", "guard", "guarded"}


def __getattr__(name: str) -> object:
    """The SDK at the top level (``stage0.Client``, ``stage0.guard``), imported on first use so
    that the CLI and the engine do not pay for the HTTP client."""
    if name in _SDK:
        from stage0 import sdk  # noqa: PLC0415

        return getattr(sdk, name)
    raise AttributeError(f"module 'stage0' has no attribute {name!r}")
