"""The composed YAML of a pack, and the findings placed in it.

The YAML is composed (not just loaded), so a finding about a YAML path is placed at its key or
its value in the file, or at its deepest parent that exists.
"""

from __future__ import annotations

from typing import Any

import yaml

from stage0.policy.lint.codes import Located, Location, YamlPath, lint_issue

Mark = yaml.Mark | tuple[int, int]
"""A position: a YAML mark, or a 0-based ``(line, column)``."""


class Findings:
    """The findings of one pack, each once (by code and path), placed in :attr:`root`."""

    def __init__(self, source: str, *, strict: bool = False) -> None:
        self.source = source
        self.strict = strict
        self.root: yaml.Node | None = None
        self.issues: list[Located] = []
        self._seen: set[tuple[str, YamlPath]] = set()

    def parse(self, text: str) -> Any:
        """Compose ``text`` into :attr:`root` and construct it; a YAML error is a finding (and
        the result ``None``)."""
        loader = yaml.SafeLoader(text)
        try:
            self.root = loader.get_single_node()
            return loader.construct_document(self.root) if self.root is not None else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            self.add("PACK_BAD_YAML", f"not valid YAML: {problem}",
                     mark=getattr(exc, "problem_mark", None))
            return None
        finally:
            loader.dispose()

    def add(
        self,
        code: str,
        message: str,
        path: YamlPath = (),
        *,
        remediation: str | None = None,
        key: bool = False,
        mark: Mark | None = None,
    ) -> None:
        """Record a finding at ``mark``, else at ``path`` (its key when ``key``, else its value).
        ``remediation`` defaults to the code's."""
        if (code, path) in self._seen:
            return
        self._seen.add((code, path))
        if mark is None:
            node = self.node(path, key=key)
            mark = node.start_mark if node is not None else None
        if isinstance(mark, yaml.Mark):
            mark = (mark.line, mark.column)
        line, column = (mark[0] + 1, mark[1] + 1) if mark is not None else (1, 1)
        issue = lint_issue(code, message, remediation, strict=self.strict)
        self.issues.append(Located(issue, Location(self.source, line, column, path)))

    def add_located(self, found: Located) -> None:
        """Record a finding the loader made (it knows the YAML path, not the position)."""
        issue = found.issue
        self.add(issue.code, issue.message, found.location.path, remediation=issue.remediation)

    def node(self, path: YamlPath, *, key: bool = False) -> yaml.Node | None:
        """The node at ``path`` (the key's node when ``key``), or its deepest parent."""
        node = self.root
        if node is None:
            return None
        for i, part in enumerate(path):
            child = _child(node, part, key=key and i == len(path) - 1)
            if child is None:
                break
            node = child
        return node

    def sorted(self) -> list[Located]:
        """The findings in file order."""
        return sorted(self.issues,
                      key=lambda f: (f.location.line or 0, f.location.column or 0, f.code))


def _child(node: yaml.Node, part: str | int, *, key: bool) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        found: yaml.Node | None = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                found = k if key else v  # the last one, as YAML keeps it
        return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(
        node.value
    ):
        child: yaml.Node = node.value[part]
        return child
    return None


def duplicate_keys(out: Findings, node: yaml.Node | None, path: YamlPath = ()) -> None:
    """``PACK_DUPLICATE_KEY`` for each key that appears twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else None
            if name is not None and name in seen:
                out.add("PACK_DUPLICATE_KEY", f"`{name}` appears twice; the last one wins",
                        (*path, name), mark=k.start_mark,
                        remediation="merge the two entries into one")
            if name is not None:
                seen.add(name)
            duplicate_keys(out, v, (*path, name or "?"))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            duplicate_keys(out, item, (*path, i))


__all__ = ["Findings", "Mark", "duplicate_keys"]
