"""Vendored browser assets: pinned in ``assets.lock.json``, fetched from the npm registry at
build time (``make assets``), never from a CDN at run time.

``python -m stage0.console.assets`` downloads each locked package once with ``npm pack`` (the npm
client and its configured registry), checks the tarball against the lock's ``integrity``
(Subresource-Integrity form, as the registry publishes it), and copies each locked file of it
into ``static/`` (a ``target`` may name a sub-folder: ``swagger-ui/swagger-ui.css``).
``--check`` (and the tests) verify that the committed files still match the lock's ``sha256``
without any network.

Locked: htmx (the console) and swagger-ui-dist (the API's ``/docs`` page, served from
``/docs/static``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "assets.lock.json"
STATIC = HERE / "static"


@dataclass(frozen=True, slots=True)
class LockedAsset:
    package: str
    version: str
    integrity: str
    """The tarball's SRI hash (``sha512-<base64>``), as the registry publishes it."""
    source: str
    """The file inside the tarball (``package/dist/htmx.min.js``)."""
    target: str
    """The file under ``static/``."""
    sha256: str
    """Hex SHA-256 of the vendored file."""


def load_lock(path: Path = LOCK) -> list[LockedAsset]:
    return [LockedAsset(**entry) for entry in json.loads(path.read_text("utf-8"))["assets"]]


def sri_matches(data: bytes, integrity: str) -> bool:
    algorithm, _, expected = integrity.partition("-")
    if algorithm not in ("sha256", "sha384", "sha512"):
        return False
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    return digest == expected


def check(static: Path = STATIC, lock: Path = LOCK) -> list[str]:
    """Problems with the vendored files (empty when each matches the lock)."""
    problems = []
    for asset in load_lock(lock):
        path = static / asset.target
        if not path.is_file():
            problems.append(f"{asset.target}: missing (run `make assets`)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != asset.sha256:
            problems.append(f"{asset.target}: does not match {asset.package}@{asset.version} "
                            "in assets.lock.json")
    return problems


def vendor(assets: Sequence[LockedAsset], static: Path = STATIC) -> None:
    """Fetch the one package of ``assets`` with ``npm pack``, verify the tarball, and copy
    each locked file of it (all or nothing: every file is checked before any is written)."""
    packages = {(a.package, a.version, a.integrity) for a in assets}
    if len(packages) != 1:
        raise SystemExit(f"vendor() takes the files of one package; got {sorted(packages)}")
    ((package, version, integrity),) = packages
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"],
                       cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tarball = next(Path(tmp).glob("*.tgz"))
        if not sri_matches(tarball.read_bytes(), integrity):
            raise SystemExit(f"{tarball.name}: integrity does not match assets.lock.json")
        with tarfile.open(tarball) as archive:
            for asset in assets:
                member = archive.extractfile(asset.source)
                if member is None:
                    raise SystemExit(f"{asset.source} is not a file in {tarball.name}")
                data = member.read()
                if hashlib.sha256(data).hexdigest() != asset.sha256:
                    raise SystemExit(f"{asset.source}: sha256 does not match assets.lock.json")
                files[asset.target] = data
    for target, data in files.items():
        path = static / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def by_package(assets: Sequence[LockedAsset]) -> list[list[LockedAsset]]:
    """The locked files grouped by package and version, in lock order (one ``npm pack`` each)."""
    groups: dict[tuple[str, str], list[LockedAsset]] = {}
    for asset in assets:
        groups.setdefault((asset.package, asset.version), []).append(asset)
    return list(groups.values())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["--check"]:
        for group in by_package(load_lock()):
            vendor(group)
            for asset in group:
                print(f"vendored {asset.package}@{asset.version} -> static/{asset.target}")
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
