"""``/docs``: Swagger UI from our own origin (vendored swagger-ui-dist, no CDN), under a CSP of
'self' and the hash of its one inline script; ``/redoc`` is not served (docs/http.md)."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from stage0.console import assets
from tests.service.conftest import Api

CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",),
                 ".svg": ("image/svg+xml",), ".png": ("image/png",), ".json": ("application/json",)}


def _references(html: str) -> list[str]:
    """Every ``src``/``href`` of the page, and the OpenAPI ``url`` its script loads."""
    found = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", html, re.IGNORECASE)
    found += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)
    return found


def test_docs_loads_nothing_from_another_host(api: Api) -> None:
    page = api.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    references = _references(page.text)
    assert any(r.endswith(".js") for r in references), references
    assert any(r.endswith(".css") for r in references), references
    assert "/openapi.json" in references
    for reference in references:
        parts = urlsplit(reference)
        assert not parts.scheme, f"{reference} is not on our own origin"
        assert not parts.netloc, f"{reference} is not on our own origin"
        assert reference.startswith("/"), reference
        served = api.client.get(reference)
        assert served.status_code == 200, reference
        suffix = "." + reference.rsplit(".", 1)[-1]
        assert served.headers["content-type"].split(";")[0] in CONTENT_TYPES[suffix], (
            reference, served.headers["content-type"])
        if reference.startswith("/docs/static/"):
            assert served.headers["x-content-type-options"] == "nosniff", reference
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", page.text.replace(
        "http://www.w3.org/", "")), "an absolute URL in the page"


def test_docs_has_a_same_origin_csp_that_admits_its_inline_script(api: Api) -> None:
    page = api.client.get("/docs")
    csp = page.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["frame-ancestors"] == ["'none'"]
    for name, sources in directives.items():
        for source in sources:  # keywords and hashes only: no host, no scheme but data: images
            assert (source in ("'self'", "'none'") or source.startswith("'sha256-")
                    or (name == "img-src" and source == "data:")), (name, source)
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert directives["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert page.headers["x-frame-options"] == "DENY"


def test_redoc_is_not_served_and_the_document_is(api: Api) -> None:
    assert api.client.get("/redoc").status_code == 404
    assert api.client.get("/docs/oauth2-redirect").status_code == 404
    spec = api.client.get("/openapi.json")
    assert spec.status_code == 200
    assert "/docs" not in spec.json()["paths"]


def test_the_vendored_swagger_ui_matches_its_lock() -> None:
    locked = {a.target for a in assets.load_lock() if a.package == "swagger-ui-dist"}
    assert {"swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css",
            "swagger-ui/LICENSE", "swagger-ui/NOTICE"} <= locked
    assert assets.check() == []
    groups = assets.by_package(assets.load_lock())
    assert [g[0].package for g in groups] == ["htmx.org", "swagger-ui-dist"]  # one pack each
