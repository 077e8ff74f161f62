"""PURE: which workspace files say what a project depends on, what they ask, their digest.

Only files at the workspace root count: ``requirements*.txt``, ``pyproject.toml`` (its
``project.dependencies``, its test extras and its test dependency groups), ``package.json``
with ``package-lock.json`` or ``npm-shrinkwrap.json``. The build sees these files and
nothing else of the workspace.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mcp_sandbox.errors import RequestRejected

MAX_MANIFEST_BYTES = 1_000_000
MAX_MANIFESTS = 32
_REQUIREMENTS = re.compile(r"requirements[A-Za-z0-9_.-]{0,64}\.txt\Z")
PYPROJECT = "pyproject.toml"
PACKAGE_JSON = "package.json"
NODE_LOCKFILES = ("npm-shrinkwrap.json", "package-lock.json")
# Extras and dependency groups that hold what a test suite needs, first found wins; "dev"
# only when none of these exists (it tends to carry linters and docs tools too).
TEST_GROUPS = ("test", "tests", "testing")
FALLBACK_GROUP = "dev"
# Where the build finds the requirements this server read out of pyproject.toml.
PYPROJECT_REQUIREMENTS = ".mcp-sandbox-pyproject.txt"


def is_manifest(name: str) -> bool:
    """Whether a file of this name at the workspace root is a dependency manifest."""
    return (
        bool(_REQUIREMENTS.match(name))
        or name in (PYPROJECT, PACKAGE_JSON)
        or name in NODE_LOCKFILES
    )


@dataclass(frozen=True)
class Manifests:
    """The manifests of one workspace, by name (sorted), as their bytes."""

    files: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, files: Mapping[str, bytes]) -> Manifests:
        """Raises RequestRejected when there are too many or one is too large."""
        if len(files) > MAX_MANIFESTS:
            raise RequestRejected(f"more than {MAX_MANIFESTS} dependency manifests")
        for name, data in files.items():
            if not is_manifest(name):
                raise ValueError(f"{name!r} is not a manifest")
            if len(data) > MAX_MANIFEST_BYTES:
                raise RequestRejected(f"{name} is over {MAX_MANIFEST_BYTES} bytes")
        return cls(tuple(sorted(files.items())))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.files)

    def get(self, name: str) -> bytes | None:
        return dict(self.files).get(name)

    @property
    def requirements_files(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if _REQUIREMENTS.match(n))

    @property
    def python(self) -> bool:
        return bool(self.requirements_files) or PYPROJECT in self.names

    @property
    def node(self) -> bool:
        return PACKAGE_JSON in self.names

    @property
    def node_lockfile(self) -> str | None:
        return next((n for n in NODE_LOCKFILES if n in self.names), None)


def manifests_digest(manifests: Manifests, commands: Iterable[str | None] = ()) -> str:
    """Changes whenever a manifest, or a configured install command, changes."""
    h = hashlib.sha256()
    for name, data in manifests.files:
        h.update(b"f\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
    for c in commands:
        h.update(b"c\0" + (c or "").encode() + b"\0")
    return h.hexdigest()[:16]


def pyproject_requirements(text: str) -> tuple[str, ...]:
    """The requirements a test run of this project needs: its dependencies, then its test
    extra and test dependency group (PEP 735, with ``include-group``), each once.

    The project itself is not installed: a ``.pth`` file makes it importable from
    /workspace (or /workspace/src) instead. Raises RequestRejected when the file is not TOML.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RequestRejected(f"pyproject.toml is not valid TOML: {e}") from None
    project = _table(data.get("project"))
    found: list[str] = _strings(project.get("dependencies"))
    extras = _table(project.get("optional-dependencies"))
    groups = _table(data.get("dependency-groups"))
    extra = _pick(extras)
    if extra is not None:
        found += _strings(extras[extra])
    group = _pick(groups)
    if group is not None:
        found += _group(groups, group, ())
    return tuple(dict.fromkeys(r.strip() for r in found if r.strip()))


def _pick(table: Mapping[str, Any]) -> str | None:
    names = {_normal(k): k for k in table}
    for want in (*TEST_GROUPS, FALLBACK_GROUP):
        if want in names:
            return names[want]
    return None


def _group(groups: Mapping[str, Any], name: str, seen: tuple[str, ...]) -> list[str]:
    if name in seen:
        raise RequestRejected(f"pyproject.toml: dependency group {name!r} includes itself")
    out: list[str] = []
    entries = groups.get(name)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("include-group"), str):
            names = {_normal(k): k for k in groups}
            inner = names.get(_normal(entry["include-group"]))
            if inner is not None:
                out += _group(groups, inner, (*seen, name))
    return out


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
