"""docs/architecture.md's module tables match the code: every module it names exists, and every
module of the service (``server``, ``console``) and of the writer's store side is named."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "stage0"
TEXT = (REPO / "docs" / "architecture.md").read_text("utf-8")
NAMED = set(re.findall(r"`((?:server|console|store|engine|policy|lifecycle|contract|cli)"
                       r"/[a-z_/]*(?:\.py|/))`", TEXT))


def test_every_module_the_architecture_names_exists() -> None:
    missing = sorted(n for n in NAMED if not (PACKAGE / n).exists())
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    assert (PACKAGE / "app.py").exists()
    assert "`stage0/app.py`" in TEXT


def _named(module: Path) -> bool:
    rel = module.relative_to(PACKAGE)
    dotted = "stage0." + ".".join(rel.with_suffix("").parts)
    folder = f"{rel.parent.as_posix()}/"
    return rel.as_posix() in NAMED or folder in NAMED or f"`{dotted}`" in TEXT


def test_every_module_of_the_service_is_in_the_architecture() -> None:
    modules = [p for folder in ("server", "console") for p in (PACKAGE / folder).rglob("*.py")
               if p.name != "__init__.py"]
    assert modules
    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in modules if not _named(p))
    assert not unnamed, f"not described in docs/architecture.md: {unnamed}"
