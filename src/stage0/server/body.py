"""What every JSON body must be, on ``POST /check`` and on the routed ``POST`` endpoints alike:
declared as JSON (or not declared at all) and strict JSON (``contract/strict_json.py``).

A declared ``Content-Type`` must be ``application/json`` or ``application/<anything>+json``, with
no ``charset`` other than UTF-8 (RFC 8259 §8.1), else the answer is 415
``CONTENT_TYPE_UNSUPPORTED``. A request without the header is read as JSON: clients of the
hosted API that send none keep working. ``/check`` checks the header in ``decide_check``; the
routes here take :data:`STRICT_JSON` as a dependency, which FastAPI runs before it validates
the body model.
"""

from __future__ import annotations

from fastapi import Depends, Request

from stage0.contract import RequestValidationError
from stage0.contract.strict_json import check_strict
from stage0.server.errors import ApiError

_UTF8 = frozenset({"utf-8", "utf8"})


def is_json_type(value: str | None) -> bool:
    """Whether a ``Content-Type`` header (``None``: absent) lets the body be read as JSON."""
    if value is None or value == "application/json":  # the common cases first
        return True
    media, _, params = value.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")):
        return False
    for param in params.split(";"):
        name, _, val = param.partition("=")
        if name.strip().lower() == "charset" and val.strip().strip('"').lower() not in _UTF8:
            return False
    return True


def unsupported(value: str) -> tuple[int, str, str]:
    """The 415 refusal of a body declared as ``value``: status, code and detail."""
    shown = value if len(value) <= 100 else value[:100] + "…"
    return (415, "CONTENT_TYPE_UNSUPPORTED",
            f"Content-Type `{shown}` is not JSON: send the body as `application/json` "
            "(UTF-8)")


async def strict_json_body(request: Request) -> None:
    """The routed endpoints' dependency: a 415 for a body declared as something other than
    JSON, a 422 ``REQUEST_INVALID`` for a body that is not strict JSON."""
    body = await request.body()
    if not body:
        return  # the route's own validation says what is missing
    content_type = request.headers.get("content-type")
    if not is_json_type(content_type):
        raise ApiError(*unsupported(str(content_type)))
    try:
        check_strict(body)
    except RequestValidationError as exc:
        raise ApiError(422, "REQUEST_INVALID", exc.summary(),
                       errors=[e.to_dict() for e in exc.errors]) from None


STRICT_JSON = Depends(strict_json_body)
"""``dependencies=[STRICT_JSON]`` on a route that takes a JSON body."""
