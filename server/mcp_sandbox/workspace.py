"""The workspace: the host directory a sandbox sees at /workspace, and what it never sees.

Path rules (mask, protect, exclude) are pure. Resolving a call's ``workdir`` and finding the
masked paths read the host tree, but never follow a symbolic link out of it.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase, translate
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_sandbox.errors import RequestRejected

Mode = Literal["ro", "copy", "rw"]
MODES: tuple[Mode, ...] = get_args(Mode)

# Secrets a project commonly holds. Hidden in every mode: never copied, overmounted in `ro`.
DEFAULT_MASK: tuple[str, ...] = (
    ".env",
    ".env.*",
    ".env~",  # an editor's backup
    ".envrc",  # direnv: usually `export SOME_SECRET=...`
    "*.pem",
    "*.key",
    "id_rsa*",
    "id_ed25519*",
    "id_ecdsa*",
    "id_dsa*",
    "*.p12",
    "*.pfx",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "pip.conf",  # an index-url may carry a password
    ".yarnrc",
    ".yarnrc.yml",  # npmAuthToken
    ".git-credentials",
    ".pgpass",
    "*.tfstate",  # Terraform state holds every secret its resources were given
    "*.tfstate.backup",
    ".aws/",
    ".ssh/",
    ".gnupg/",
    ".docker/config.json",
    ".kube/",
    # A remote URL may carry a token (https://user:token@host/...); git works without it.
    ".git/config",
    ".git/config.worktree",
    ".hg/hgrc",  # Mercurial's paths may carry a password too
    ".git/worktrees/*/config.worktree",
    "*.git/config",  # a bare repository (`foo.git/`)
    # A submodule's remote URL: its name is its path (`vendor/github.com/org/repo`) unless
    # set, and a nested submodule's config sits under its parent's `modules/`. Rules have no
    # `**`: names up to six components deep are covered, deeper ones are not.
    ".git/modules/*/config",
    ".git/modules/*/*/config",
    ".git/modules/*/*/*/config",
    ".git/modules/*/*/*/*/config",
    ".git/modules/*/*/*/*/*/config",
    ".git/modules/*/*/*/*/*/*/config",
    "modules/*/modules/*/config",
)

# Paths where a write turns into code run on the host (hooks, shell start-up files, tool and
# agent config). A sandbox never changes them, even in `rw`.
DEFAULT_PROTECT: tuple[str, ...] = (
    ".git",
    ".gitmodules",
    ".gitattributes",
    ".hg/",  # hgrc hooks
    ".husky/",
    ".pre-commit-config.yaml",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".envrc",
    ".direnv/",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pnpmfile.cjs",
    ".pypirc",
    "pip.conf",
    ".gitconfig",
    ".mcp.json",
    ".claude/",
    "CLAUDE.md",
    "CLAUDE.local.md",
    "AGENTS.md",
    ".gemini/",
    ".cursor/",
    ".vscode/",
    ".idea/",
    ".zed/",
    ".devcontainer/",
    # Tool config the host runs code from: cargo's rustc-wrapper, Gradle's and Maven's
    # wrappers (scripts, a jar, a download URL), pylint's init-hook, bazel's flags, mise's
    # hooks and the tool versions mise and asdf install and run.
    ".cargo/",
    "gradlew",
    "gradlew.bat",
    "mvnw",
    "mvnw.cmd",
    "gradle/wrapper/",
    ".mvn/",
    ".pylintrc",
    "pylintrc",
    ".bazelrc",
    "mise.toml",
    ".mise.toml",
    ".tool-versions",
    # CI that runs on push.
    ".github/",
    ".gitlab-ci.yml",
)

# Large trees that tests rarely need and copies should not pay for.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".git/objects/",
    "node_modules/",
    ".venv/",
    "venv/",
    ".tox/",
    ".nox/",
    "__pycache__/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".hypothesis/",
)

_MIB = 1024 * 1024
# Mounts a run gets for masks in `ro`; each costs the daemon a bind at start.
MAX_MASKS = 256


def fold(name: str) -> str:
    """A name as the most lenient host filesystem compares it.

    macOS and Windows match names case- and normalisation-insensitively (U+212A KELVIN SIGN
    is `k`; `.GIT` is `.git`) and Windows drops trailing dots and spaces, so rules compare
    folded names: a sandbox cannot write `.GIT/hooks` past a `.git` rule.
    """
    return unicodedata.normalize("NFKD", name).casefold().rstrip(". ")


@dataclass(frozen=True)
class PathPattern:
    """One rule, gitignore-like: `name` matches at any depth, `a/b` matches the last two
    components, a leading `/` anchors at the root, a trailing `/` matches directories only."""

    parts: tuple[str, ...]
    anchored: bool
    dir_only: bool

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Raises ValueError naming what is wrong."""
        anchored = text.startswith("/")
        dir_only = text.endswith("/")
        raw = text.strip("/").split("/")
        if not text.strip("/") or "\x00" in text:
            raise ValueError(f"pattern {text!r} is empty")
        if any(p in ("", ".", "..") for p in raw):
            raise ValueError(f"pattern {text!r} has an empty, '.' or '..' component")
        if any("**" in p for p in raw):
            raise ValueError(
                f"pattern {text!r}: '**' is not supported; a name matches at any depth"
            )
        return cls(tuple(fold(p) for p in raw), anchored, dir_only)

    def matches(self, folded: Sequence[str], is_dir: bool) -> bool:
        """Whether the path whose folded components are ``folded`` matches."""
        if self.dir_only and not is_dir:
            return False
        n = len(self.parts)
        if len(folded) < n or (self.anchored and len(folded) != n):
            return False
        tail = folded[len(folded) - n :]
        return all(fnmatchcase(name, pat) for name, pat in zip(tail, self.parts, strict=True))


class PathRules:
    """A set of patterns, asked about one path at a time.

    Most patterns are one name (`.env`, `*.pem`): those are joined into one regex per kind,
    so a walk over a large tree pays one match per entry.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(PathPattern.parse(p) for p in patterns)
        singles = [p for p in self.patterns if len(p.parts) == 1 and not p.anchored]
        self._any = _joined(p.parts[0] for p in singles if not p.dir_only)
        self._dirs = _joined(p.parts[0] for p in singles if p.dir_only)
        self._rest = tuple(p for p in self.patterns if p not in singles)

    def matches(self, parts: Sequence[str], is_dir: bool) -> bool:
        """The path itself matches (its ancestors are not asked)."""
        if not parts:
            return False
        name = fold(parts[-1])
        if self._any is not None and self._any.match(name):
            return True
        if is_dir and self._dirs is not None and self._dirs.match(name):
            return True
        rest = [p for p in self._rest if fnmatchcase(name, p.parts[-1])]
        if not rest:
            return False
        folded = [fold(p) for p in parts]
        return any(p.matches(folded, is_dir) for p in rest)

    def covers(self, parts: Sequence[str], is_dir: bool) -> bool:
        """The path or one of its ancestors matches."""
        return any(
            self.matches(parts[:i], i < len(parts) or is_dir) for i in range(1, len(parts) + 1)
        )


def _joined(globs: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = [translate(g) for g in globs]
    return re.compile("|".join(f"(?:{a})" for a in alternatives)) if alternatives else None


class WorkspacePolicy(BaseModel):
    """How the workspace reaches a sandbox. The safe value is the default: read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field("ro", description="mode of a call that asks for none")
    modes: tuple[Mode, ...] = Field(
        ("ro", "copy"),
        description="modes a call may ask for; add `rw` to let sandboxes change your files",
    )
    mask: tuple[str, ...] = Field(DEFAULT_MASK, description="paths hidden from every sandbox")
    protect: tuple[str, ...] = Field(
        DEFAULT_PROTECT, description="paths a sandbox never changes, even in `rw`"
    )
    exclude: tuple[str, ...] = Field(
        DEFAULT_EXCLUDE, description="paths left out of `copy` and `rw` copies"
    )
    copy_max_mib: int = Field(
        256, ge=1, le=16_384, description="largest workspace `copy` and `rw` copy, in MiB"
    )
    copy_max_files: int = Field(
        50_000, ge=1, le=1_000_000, description="most files and links in a copy"
    )
    scan_max_entries: int = Field(
        200_000,
        ge=100,
        le=5_000_000,
        description="most entries a call reads from the workspace tree (to find masked files)",
    )
    rw_quota_mib: int = Field(
        64, ge=1, le=4096, description="most bytes one `rw` run may write back, in MiB"
    )
    rw_max_changes: int = Field(
        2_000, ge=1, le=100_000, description="most paths one `rw` run may change"
    )
    changes_listed: int = Field(
        100, ge=0, le=10_000, description="changed paths listed in a result; the rest counted"
    )

    @field_validator("mask", "protect", "exclude")
    @classmethod
    def _valid_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            PathPattern.parse(text)
        return value

    @model_validator(mode="after")
    def _mode_is_allowed(self) -> WorkspacePolicy:
        if not self.modes:
            raise ValueError("modes must allow at least one mode")
        if self.mode not in self.modes:
            raise ValueError(f"mode {self.mode!r} is not in modes {list(self.modes)}")
        return self


# --- what a result says -------------------------------------------------------------------


class FileChange(BaseModel):
    """One path a run created, changed or deleted in its copy of the workspace."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="relative to the workspace root")
    change: Literal["created", "changed", "deleted"]
    kind: Literal["file", "symlink", "dir", "other"]
    size: int | None = Field(None, description="bytes: the new size, or the old one if deleted")
    applied: bool | None = Field(None, description="rw only: whether it reached your files")
    note: str | None = Field(None, description="why it was refused, or what was adjusted")


class WorkspaceReport(BaseModel):
    """What the run saw of the workspace and, in `copy` and `rw`, what it changed there."""

    model_config = ConfigDict(frozen=True)

    mode: Mode
    workdir: str = Field(description="the working directory, relative to the workspace root")
    changes_total: int = Field(0, description="paths created, changed or deleted")
    changes: list[FileChange] = Field(default_factory=list, description="the first few, by path")
    applied: int | None = Field(None, description="rw only: changes written to your files")
    note: str | None = Field(None, description="a limit that was reached, if any")


# --- the root -------------------------------------------------------------------------------


def unsafe_root_reason(path: Path) -> str | None:
    """Why ``path`` must not be a workspace, or None. ``/`` and the home directory hold
    far more than a project: every credential a user keeps."""
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return "it is the filesystem root"
    try:
        home = Path(os.path.realpath(Path.home()))
    except RuntimeError:
        return None
    if real == home or real in home.parents:
        return "it is your home directory or holds it"
    return None


def check_root(path: Path) -> Path:
    """A configured workspace, resolved. Raises ValueError saying why it cannot be one."""
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        raise ValueError(f"{path} is not a directory")
    reason = unsafe_root_reason(real)
    if reason:
        raise ValueError(f"{path} cannot be the workspace: {reason}; pass a project directory")
    return real


def default_root(configured: Path | None) -> Path | None:
    """The configured workspace, else the server's working directory unless that is ``/``
    or the home directory (a client that starts servers there gets no workspace)."""
    if configured is not None:
        return check_root(configured)
    cwd = Path.cwd()
    if unsafe_root_reason(cwd):
        return None
    return Path(os.path.realpath(cwd))


_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each mount this process sees, in mount order."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(b" ")
        try:
            dash = fields.index(b"-", 6)  # after the optional fields: type, source, options
        except ValueError:
            continue
        point = _MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        fstype = fields[dash + 1] if dash + 1 < len(fields) else b""
        found.append((os.fsdecode(point), os.fsdecode(fstype)))
    return found


def mount_points_under(root: Path) -> frozenset[str]:
    """Real paths of the mounts strictly inside ``root``: a read-only bind of the root does not
    reach into them, so neither do masks, copies nor write-backs."""
    prefix = str(root).rstrip("/") + "/"
    return frozenset(point for point, _ in _mounts() if point.startswith(prefix))


def filesystem_of(root: Path) -> str:
    """The type of the filesystem ``root`` is on ("" if unknown): of the deepest mount at or
    above it, the last mounted."""
    path = str(root).rstrip("/") or "/"
    best, fstype = -1, ""
    for point, kind in _mounts():
        covers = path == point or path.startswith(point.rstrip("/") + "/")
        if covers and len(point) >= best:
            best, fstype = len(point), kind
    return fstype


# --- a call's working directory -------------------------------------------------------------

MAX_WORKDIR_CHARS = 4096


def resolve_workdir(root: Path, workdir: str) -> tuple[str, ...]:
    """``workdir`` as components below ``root``, every symbolic link resolved on the host.

    Raises RequestRejected, never echoing the value: the caller wrote it.
    """
    if "\x00" in workdir:
        raise RequestRejected("workdir holds a NUL byte")
    if len(workdir) > MAX_WORKDIR_CHARS:
        raise RequestRejected(f"workdir is longer than {MAX_WORKDIR_CHARS} characters")
    if workdir.startswith("/") or workdir.startswith("~"):
        raise RequestRejected("workdir must be a path relative to the workspace root, not absolute")
    parts = [p for p in workdir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RequestRejected("workdir may not contain '..': it must stay inside the workspace")
    real = os.path.realpath(os.path.join(root, *parts))
    if real != str(root) and not real.startswith(str(root).rstrip("/") + "/"):
        raise RequestRejected(
            "workdir resolves outside the workspace (through a symbolic link); refused"
        )
    try:
        st = os.stat(real)
    except OSError:
        raise RequestRejected("workdir does not exist in the workspace") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RequestRejected("workdir is not a directory")
    rel = Path(real).relative_to(root).parts
    for mount in mount_points_under(root):
        if real == mount or real.startswith(mount + "/"):
            raise RequestRejected("workdir is on another filesystem mounted inside the workspace")
    return rel
