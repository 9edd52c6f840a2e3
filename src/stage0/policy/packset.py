"""Several pack versions served at once: one active, the others held for pinned requests.

``stage0 serve --policy DIR`` loads every ``*.yaml``/``*.yml`` in DIR. The active pack decides
every request that does not pin a version; a request whose ``policy_pack_version`` names a held
version (``name@version``, or the bare ``version`` when only one pack has it) is decided by that
version, and a pin to anything else is denied with ``POLICY_VERSION_UNKNOWN``. That is how an
operator promotes a new version while runtimes pinned to the previous one keep their behaviour
until they move.

The active pack is ``pack.yaml`` when the directory has one, else the highest semantic version
(SemVer 2.0 precedence, so ``2.0.0-rc.1`` is below ``2.0.0``). Every file must load; one bad file
refuses the whole set (and a hot reload keeps the last good set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import semver

from stage0.policy.compiled import CompiledPolicy
from stage0.policy.loader import PolicyError, load_policy, preset_path

ACTIVE_FILE = "pack.yaml"


@dataclass(frozen=True, slots=True)
class PackSet:
    active: CompiledPolicy
    held: tuple[CompiledPolicy, ...] = ()
    """The other versions, newest first; never the active one."""

    def find(self, pin: str) -> CompiledPolicy | None:
        """The pack a ``policy_pack_version`` pin names, if this set holds exactly one."""
        found = self.matches(pin)
        return found[0] if len(found) == 1 else None

    def matches(self, pin: str) -> list[CompiledPolicy]:
        """Every held pack a pin names: ``name@version`` names one; a bare version may name
        several packs (then the pin is ambiguous and decides nothing)."""
        pin = pin.strip()
        every = (self.active, *self.held)
        exact = [p for p in every if p.policy_version == pin]
        return exact or [p for p in every if p.version == pin]

    @property
    def versions(self) -> list[str]:
        return [p.policy_version for p in (self.active, *self.held)]

    @property
    def held_versions(self) -> list[str]:
        """The versions held for pinned requests (all but the active one)."""
        return self.versions[1:]


def pack_files(path: str | Path) -> list[Path]:
    """The pack files of ``path``: the file itself, or every YAML file of the directory; for
    a preset name (``strict``), the shipped file."""
    preset = preset_path(path)
    if preset is not None:
        return [preset]
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted([*p.glob("*.yaml"), *p.glob("*.yml")])


def _precedence(policy: CompiledPolicy) -> semver.Version:
    try:
        return semver.Version.parse(policy.version)
    except ValueError as exc:  # the schema admits only SemVer 2.0; this is defence in depth
        raise PolicyError(policy.policy_version, [f"version: {exc}"]) from None


def load_pack_set(path: str | Path) -> PackSet:
    """Load a pack file, or every pack of a directory (see the module's documentation)."""
    files = pack_files(path)
    if not files:
        raise PolicyError(str(path), ["the directory holds no pack (`*.yaml` or `*.yml`)"])
    loaded: list[tuple[Path, CompiledPolicy]] = []
    problems: list[str] = []
    for file in files:
        try:
            loaded.append((file, load_policy(file)))
        except PolicyError as exc:
            problems.extend(f"{file.name}: {p}" for p in exc.problems)
    by_version: dict[str, tuple[Path, CompiledPolicy]] = {}
    for file, policy in loaded:
        seen = by_version.get(policy.policy_version)
        if seen is not None and seen[1].sha256 != policy.sha256:
            problems.append(f"{file.name}: `{policy.policy_version}` is also in {seen[0].name} "
                            "with different content; bump one version")
        by_version.setdefault(policy.policy_version, (file, policy))
    if problems:
        raise PolicyError(str(path), problems)
    chosen = [pol for file, pol in loaded if file.name == ACTIVE_FILE]
    ordered = sorted((pol for _, pol in by_version.values()), key=_precedence, reverse=True)
    if chosen:
        active = chosen[0]
    else:
        top = [p for p in ordered if _precedence(p) == _precedence(ordered[0])]
        if len(top) > 1:
            raise PolicyError(str(path), [
                "several packs share the highest version " + ", ".join(
                    p.policy_version for p in top) + f"; name the active one `{ACTIVE_FILE}`"])
        active = ordered[0]
    held = tuple(p for p in ordered if p.policy_version != active.policy_version)
    return PackSet(active, held)
