"""The docs name every issue code, CLI command and option, pack setting and constraint key;
every relative link in README.md and docs/ resolves."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from stage0.cli.main import cli
from stage0.contract import CODES
from stage0.contract.constraints import CONSTRAINT_KEYS
from stage0.policy import load_policy
from stage0.policy.schema import PackDocument

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _code_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (DOCS / "decisions.md").read_text("utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"`[A-Z_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_builtin_code_is_documented_with_its_severity_and_effect(code: str) -> None:
    rows = _code_rows()
    assert code in rows, f"{code} is not in docs/decisions.md"
    spec = CODES[code]
    _, kind, severity, effect, pro_effect, remediation = rows[code][:6]
    assert (kind, severity, effect, pro_effect) == (
        spec.kind.value, spec.severity, spec.effect, spec.pro_effect)
    assert remediation


def test_default_pack_rule_codes_are_documented() -> None:
    rows = _code_rows()
    for rule in load_policy().rules:
        assert rule.spec.code in rows
        assert rows[rule.spec.code][2:4] == [rule.spec.severity, rule.spec.effect]


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
        else:
            found.append((path, command))
    return found


@pytest.mark.parametrize(
    ("path", "command"), _commands(cli, "stage0"), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_cli_command_and_option_is_documented(path: str, command: click.Command) -> None:
    text = (DOCS / "cli.md").read_text("utf-8")
    assert f"## `{path}" in text, f"no section for `{path}` in docs/cli.md"
    section = text.split(f"## `{path}", 1)[1].split("\n## ", 1)[0]
    for param in command.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                assert f"`{opt}" in section, f"{path}: option {opt} is not documented"


def _settings(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        target = field.annotation
        origin = typing.get_origin(target)
        args = typing.get_args(target)
        if isinstance(target, type) and issubclass(target, BaseModel):
            paths.extend(_settings(target, f"{path}."))
        elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            paths.extend(_settings(args[1], f"{path}.<name>."))
        elif origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            paths.extend(_settings(args[0], f"{path}[]."))
        else:
            paths.append(path)
    return paths


@pytest.mark.parametrize("setting", _settings(PackDocument))
def test_every_pack_setting_is_documented(setting: str) -> None:
    assert f"`{setting}`" in (DOCS / "policy.md").read_text("utf-8")


@pytest.mark.parametrize("key", sorted(CONSTRAINT_KEYS))
def test_every_constraint_key_and_alias_is_documented(key: str) -> None:
    text = (DOCS / "constraints.md").read_text("utf-8")
    row = next((line for line in text.splitlines() if line.startswith(f"| `{key}` |")), None)
    assert row is not None, key
    for alias, (canon, _) in load_policy().aliases.items():
        if canon == key and alias != key:
            assert f"`{alias}`" in row, f"alias {alias} of {key} is not documented"


def test_every_route_is_documented() -> None:
    from stage0.app import create_app  # noqa: PLC0415 - only this test needs it

    text = (DOCS / "http.md").read_text("utf-8")
    for route in create_app().routes:
        path = getattr(route, "path", "")
        if path.startswith("/docs") or path == "/redoc":
            continue
        for method in sorted(getattr(route, "methods", set()) - {"HEAD", "OPTIONS"}):
            assert f"## `{method} {path}`" in text or f"`{method} {path}`" in text, (
                f"{method} {path} is not documented in docs/http.md")


def test_every_environment_variable_is_documented() -> None:
    text = (DOCS / "settings.md").read_text("utf-8")
    source = "\n".join(p.read_text("utf-8") for p in (DOCS.parent / "src").rglob("*.py"))
    names = set(re.findall(r"\b(STAGE0_[A-Z_]+|PROMETHEUS_MULTIPROC_DIR)\b", source))
    assert names
    for name in sorted(names):
        assert f"`{name}`" in text, f"{name} is not documented in docs/settings.md"


def test_changelog_and_readme_exist() -> None:
    root = DOCS.parent
    assert (root / "CHANGELOG.md").read_text("utf-8").startswith("# Changelog")
    readme = (root / "README.md").read_text("utf-8")
    assert "stage0 check" in readme


def test_example_scripts_compile_and_integrations_are_documented() -> None:
    root = DOCS.parent
    for script in (root / "examples").glob("*.py"):
        compile(script.read_text("utf-8"), str(script), "exec")
    text = (DOCS / "integrations.md").read_text("utf-8")
    for heading in ("## MCP gateway", "## OpenAI Agents SDK", "## LangGraph",
                    "STAGE0_API_BASE", "STAGE0_API_KEY"):
        assert heading in text


# -- links ---------------------------------------------------------------------------------------

ROOT = DOCS.parent
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)


def _prose(path: Path) -> str:
    """The page without its fenced code blocks and code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", path.read_text("utf-8")))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, without punctuation, spaces to
    hyphens (code spans and links keep their text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = _FENCE.sub("", path.read_text("utf-8"))
    for m in re.finditer(r"^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", text, re.M):
        slug = github_slug(m[1])
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")  # GitHub numbers repeated headings
    return found


def relative_links(path: Path) -> list[str]:
    text = _prose(path)
    targets = [m[1] for m in _LINK.finditer(text)] + [m[1] for m in _REFERENCE.finditer(text)]
    return [t for t in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:|//", t)]


def test_the_link_checker_sees_links_and_slugs_headings_like_github() -> None:
    assert len([link for page in PAGES for link in relative_links(page)]) > 50
    assert github_slug("`stage0 mcp-proxy`") == "stage0-mcp-proxy"
    assert github_slug("Several versions at once") == "several-versions-at-once"
    assert github_slug("`stage0 check FILE|-`") == "stage0-check-file-"
    assert github_slug("Rows: `decisions` [log](x.md)") == "rows-decisions-log"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        target, _, fragment = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{link}: no heading `#{fragment}` in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
