"""The package as a stranger installs it: every runtime import declared, and the built wheel, in a
clean virtualenv with no extras, runs ``stage0 --help``, ``stage0 check``, ``stage0 serve`` and
``stage0.Client``.

The wheel test builds the wheel from this checkout and installs it with pip from the package
index (pip's cache makes later runs quick); the server it starts listens on 127.0.0.1 only.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import stage0

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "stage0"
DIST = "stage0-authz"
OPTIONAL = PACKAGE / "integrations"
"""The adapters for third-party agent frameworks: their imports come from the extras."""
LAZY_EXTRAS = {PACKAGE / "server" / "tracing.py": "otel"}
"""Modules that import an extra's packages only when used (lazily, with a clear error when the
extra is missing): their imports come from that extra."""
EXTRAS_ONLY = {"pytest", "hypothesis", "mcp", "openai-agents", "langgraph", "langchain-core",
               "playwright", "schemathesis", "httpx2", "mypy", "ruff", "nats-py"}


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))


def _runtime_requirements() -> set[str]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "stage0"}


def test_every_module_the_package_imports_is_a_declared_runtime_dependency() -> None:
    declared = _runtime_requirements()
    owners = metadata.packages_distributions()
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    missing: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if OPTIONAL in path.parents:
            continue
        allowed = declared | {canonicalize_name(Requirement(r).name)
                              for r in extras[LAZY_EXTRAS[path]]} if path in LAZY_EXTRAS \
            else declared
        for module in _imports(path):
            dists = {canonicalize_name(d) for d in owners.get(module, [module])}
            if not dists & allowed:
                missing.setdefault(module, []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported but not in [project] dependencies: {missing}"


def test_the_distribution_name_license_and_version() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert project["name"] == DIST  # `stage0` on the package index is someone else's
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text("utf-8")
    assert project["license-files"] == ["LICENSE"]
    assert metadata.version(DIST) == stage0.__version__
    assert str(Version(stage0.__version__)) == stage0.__version__  # PEP 440, normalised
    changelog = (REPO / "CHANGELOG.md").read_text("utf-8")
    released = re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.MULTILINE)
    # the version in the package is the next one to release: above every released heading
    assert all(Version(v) < Version(stage0.__version__) for v in released), released
    assert "## [Unreleased]" in changelog


def _run(*args: str | Path, cwd: Path, timeout: float = 300, check: bool = True,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False, env=env)
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding the wheel built from this checkout and its runtime dependencies
    only (``pip install <wheel>``, no extras)."""
    root = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", root / "dist", REPO,
         cwd=root)
    (wheel,) = (root / "dist").glob("stage0_authz-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=root)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel, cwd=root,
         timeout=600)
    return venv


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment without this checkout's virtualenv or sources on any path."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "STAGE0_DATABASE_URL", "STAGE0_POLICY",
                        "STAGE0_API_KEY", "STAGE0_API_BASE"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    return env


def test_the_wheel_installs_without_extras(clean_venv: Path, tmp_path: Path) -> None:
    listed = _run(clean_venv / "bin" / "python", "-m", "pip", "list", "--format", "json",
                  cwd=tmp_path, env=_clean_env(clean_venv))
    names = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    assert DIST in names
    assert not names & {canonicalize_name(n) for n in EXTRAS_ONLY}, names & EXTRAS_ONLY
    # the installed package is the wheel's, not this checkout's sources
    where = _run(clean_venv / "bin" / "python", "-c", "import stage0; print(stage0.__file__)",
                 cwd=tmp_path, env=_clean_env(clean_venv))
    assert str(clean_venv) in where.stdout


def test_the_wheel_runs_help_and_check(clean_venv: Path, tmp_path: Path) -> None:
    env = _clean_env(clean_venv)
    stage0_bin = clean_venv / "bin" / "stage0"
    helped = _run(stage0_bin, "--help", cwd=tmp_path, env=env)
    assert "serve" in helped.stdout
    assert "check" in helped.stdout
    example = REPO / "examples" / "deferred-deployment.json"
    decided = _run(stage0_bin, "check", example, cwd=tmp_path, env=env, check=False)
    assert decided.returncode == 10, decided.stderr  # DEFER
    assert json.loads(decided.stdout)["verdict"] == "DEFER"


def test_the_wheel_serves_and_its_client_checks(clean_venv: Path, tmp_path: Path) -> None:
    env = _clean_env(clean_venv)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(clean_venv / "bin" / "stage0"), "serve", "--port", "0", "--db",
             f"sqlite:///{tmp_path / 'stage0.db'}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base, secret = "", ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (base and secret):
            text = log.read_text("utf-8", "replace")
            assert server.poll() is None, text
            if found := re.search(r"serving\s+(http://127\.0\.0\.1:\d+)", text):
                base = found.group(1)
            if found := re.search(r"^\s+(s0_\S+)$", text, re.MULTILINE):
                secret = found.group(1)
            time.sleep(0.1)
        assert base, log.read_text("utf-8", "replace")
        assert secret, log.read_text("utf-8", "replace")
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        script = (
            "import json, sys, stage0\n"
            "client = stage0.Client(sys.argv[1], sys.argv[2])\n"
            "result = client.check('Refund order 1042 to the customer',"
            " tools=['payments.refund'], side_effects=['money movement'],"
            " constraints=['approval required'])\n"
            "print(json.dumps({'verdict': result.verdict, 'codes': result.issue_codes}))\n"
        )
        asked = _run(clean_venv / "bin" / "python", "-c", script, base, secret, cwd=tmp_path,
                     env=env)
        answer = json.loads(asked.stdout)
        assert answer["verdict"] == "DEFER"
        assert "APPROVAL_REQUIRED_PENDING" in answer["codes"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    # a clean stop: uvicorn shuts down, then ends by the signal it was sent
    assert server.returncode in (0, -signal.SIGTERM), log.read_text("utf-8", "replace")
    assert "Application shutdown complete" in log.read_text("utf-8", "replace")


def test_the_docs_install_this_distribution_never_the_other_stage0() -> None:
    """`pip install stage0` fetches an unrelated project from the package index."""
    wrong = re.compile(r"""pip install\s+['"]?stage0(?![-\w])""")
    texts = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "examples").glob("*.py")), *sorted(PACKAGE.rglob("*.py"))]
    offenders = [str(p.relative_to(REPO)) for p in texts if wrong.search(p.read_text("utf-8"))]
    assert not offenders, f"say `pip install stage0-authz`: {offenders}"
