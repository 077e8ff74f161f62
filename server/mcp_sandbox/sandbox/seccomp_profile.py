"""PURE: turn seccomp/profile.toml (groups of syscalls, each with a reason) into Docker's JSON.

``python -m mcp_sandbox.sandbox.seccomp_profile`` rewrites seccomp/default.json; ``--check`` exits 1
when the committed file differs from what the source generates.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mcp_sandbox.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
SOURCE_PATH = REPO_ROOT / "seccomp" / "profile.toml"
PROFILE_PATH = REPO_ROOT / "seccomp" / "default.json"

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
_OPS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
_SECTIONS = ("profile", "allowed", "conditional", "errno", "refused")


def load_source(path: Path | str = SOURCE_PATH) -> dict[str, Any]:
    """Parse the TOML source; raises ConfigError when it is not valid TOML."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"seccomp source {path} is not valid TOML: {e}") from e


def generate(source: dict[str, Any]) -> dict[str, Any]:
    """The Docker seccomp profile for ``source``; raises ConfigError when the source is unsound.

    Unsound means: an unknown section or key, a group without reason or syscalls, a syscall
    in two groups, or a refused syscall that some other section lets through.
    """
    unknown = set(source) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"seccomp source: unknown sections {sorted(unknown)}")
    head = _table(source, "profile")
    _only_keys("profile", head, {"default_action", "default_errno", "architectures"})

    owner: dict[str, str] = {}
    rules: list[dict[str, Any]] = []
    for section in ("allowed", "conditional", "errno"):
        for name, group in _table(source, section).items():
            label = f"{section}.{name}"
            names = _group_syscalls(label, group, section)
            for syscall in names:
                if syscall in owner:
                    raise ConfigError(
                        f"seccomp source: {syscall!r} is in both {owner[syscall]} and {label}"
                    )
                owner[syscall] = label
            rules.extend(_rules_for(section, label, group, names))

    for name, group in _table(source, "refused").items():
        label = f"refused.{name}"
        for syscall in _group_syscalls(label, group, "refused"):
            if syscall in owner:
                raise ConfigError(
                    f"seccomp source: {syscall!r} is refused in {label} "
                    f"but let through by {owner[syscall]}"
                )

    profile: dict[str, Any] = {
        "defaultAction": _str(head, "default_action", "profile"),
        "archMap": [
            {"architecture": _str(a, "seccomp", "profile.architectures"), "subArchitectures": []}
            for a in _list_of_tables(head, "architectures", "profile")
        ],
        "syscalls": rules,
    }
    if "default_errno" in head:
        profile["defaultErrnoRet"] = _int(head, "default_errno", "profile")
    return profile


def render(profile: dict[str, Any]) -> str:
    """Stable JSON text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(profile, indent=2, sort_keys=True) + "\n"


def allowed_syscalls(source: dict[str, Any]) -> set[str]:
    """Every syscall name the source lets through, with or without argument conditions."""
    return {
        syscall
        for section in ("allowed", "conditional")
        for group in _table(source, section).values()
        for syscall in group.get("syscalls", [])
    }


def refused_syscalls(source: dict[str, Any]) -> set[str]:
    """Every syscall name listed in a [refused] group."""
    return {s for group in _table(source, "refused").values() for s in group.get("syscalls", [])}


def main(argv: Sequence[str] | None = None) -> int:
    """Write PROFILE_PATH from SOURCE_PATH, or with --check report whether it is stale."""
    parser = argparse.ArgumentParser(prog="python -m mcp_sandbox.sandbox.seccomp_profile")
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    parser.add_argument("--source", type=Path, default=SOURCE_PATH)
    parser.add_argument("--output", type=Path, default=PROFILE_PATH)
    args = parser.parse_args(argv)
    text = render(generate(load_source(args.source)))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale; run python -m mcp_sandbox.sandbox.seccomp_profile")
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


def _rules_for(
    section: str, label: str, group: dict[str, Any], names: list[str]
) -> Iterable[dict[str, Any]]:
    base: dict[str, Any] = {"names": names, "comment": f"{label}: {_str(group, 'reason', label)}"}
    if "arches" in group:
        base["includes"] = {"arches": _str_list(group, "arches", label)}
    if section == "allowed":
        yield {**base, "action": ALLOW}
    elif section == "errno":
        yield {**base, "action": ERRNO, "errnoRet": _int(group, "errno", label)}
    else:
        # One Docker rule per alternative: seccomp ANDs the args inside a rule and ORs rules.
        alternatives = group.get("rules")
        if not isinstance(alternatives, list) or not alternatives:
            raise ConfigError(f"seccomp source: {label} needs a non-empty list of rules")
        for alternative in alternatives:
            if not isinstance(alternative, list) or not alternative:
                raise ConfigError(f"seccomp source: each rule of {label} is a list of comparisons")
            yield {**base, "action": ALLOW, "args": [_arg(label, a) for a in alternative]}


def _arg(label: str, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"seccomp source: {label} has a comparison that is not a table")
    _only_keys(label, raw, {"index", "op", "value", "value_two"})
    op = _str(raw, "op", label)
    if op not in _OPS:
        raise ConfigError(f"seccomp source: {label} uses unknown op {op!r}")
    index = _int(raw, "index", label)
    if not 0 <= index <= 5:
        raise ConfigError(f"seccomp source: {label} compares argument {index}; 0-5 exist")
    return {
        "index": index,
        "op": op,
        "value": _int(raw, "value", label),
        "valueTwo": _int(raw, "value_two", label) if "value_two" in raw else 0,
    }


def _group_syscalls(label: str, group: object, section: str) -> list[str]:
    if not isinstance(group, dict):
        raise ConfigError(f"seccomp source: {label} is not a table")
    keys = {"reason", "syscalls", "arches"}
    keys |= {"rules"} if section == "conditional" else set()
    keys |= {"errno"} if section == "errno" else set()
    _only_keys(label, group, keys)
    if not _str(group, "reason", label).strip():
        raise ConfigError(f"seccomp source: {label} has an empty reason")
    names = _str_list(group, "syscalls", label)
    if not names:
        raise ConfigError(f"seccomp source: {label} lists no syscalls")
    if len(set(names)) != len(names):
        raise ConfigError(f"seccomp source: {label} lists a syscall twice")
    return sorted(names)


def _table(source: dict[str, Any], key: str) -> dict[str, Any]:
    value = source.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"seccomp source: [{key}] is not a table")
    return value


def _only_keys(label: str, table: dict[str, Any], allowed: set[str]) -> None:
    extra = set(table) - allowed
    if extra:
        raise ConfigError(f"seccomp source: {label} has unknown keys {sorted(extra)}")


def _str(table: dict[str, Any], key: str, label: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"seccomp source: {label}.{key} must be a string")
    return value


def _int(table: dict[str, Any], key: str, label: str) -> int:
    value = table.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"seccomp source: {label}.{key} must be a non-negative integer")
    return value


def _str_list(table: dict[str, Any], key: str, label: str) -> list[str]:
    value = table.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"seccomp source: {label}.{key} must be a list of strings")
    return list(value)


def _list_of_tables(table: dict[str, Any], key: str, label: str) -> list[dict[str, Any]]:
    value = table.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"seccomp source: {label}.{key} must be a non-empty list of tables")
    return list(value)
