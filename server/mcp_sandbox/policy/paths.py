"""PURE: path rules (mask, protect, exclude), gitignore-like, compared as the most lenient
host filesystem compares names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase, translate

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
