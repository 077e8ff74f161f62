"""``rw``: the changes written to the host with strict checks: nothing protected, masked or
hidden, no link that leads outside, nothing the host changed during the run."""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mcp_sandbox.config.workspace import WorkspacePolicy
from mcp_sandbox.constants import MIB
from mcp_sandbox.output.shaping import HIDDEN_CHARS
from mcp_sandbox.policy.paths import PathRules
from mcp_sandbox.workspace.changes import Change
from mcp_sandbox.workspace.copy_scan import O_DIR, Entry, open_dir
from mcp_sandbox.workspace.read_back import Readback
from mcp_sandbox.workspace.workdir import mount_points_under


class _Refused(Exception):
    """This change does not reach the host; ``str`` says why."""


@dataclass(frozen=True)
class _Rules:
    root: Path
    mask: PathRules
    protect: PathRules
    exclude: PathRules
    mounts: frozenset[str]


def _inside(path: str, root: Path) -> bool:
    r = str(root).rstrip("/")
    return path == r or path.startswith(r + "/")


# Control characters in a name drive the user's terminal when they list the directory (`ls`
# prints an OSC title); bidi overrides and invisible characters mislead (U+202E shows exe
# as png; a zero-width space makes two names look the same).
_HOSTILE_NAME = re.compile(f"[\x00-\x1f\x7f-\x9f{HIDDEN_CHARS}]")


def _refusal(c: Change, rules: _Rules) -> str | None:
    # A link is a directory to whoever follows it: `.claude -> cfg` is `.claude/` on the host.
    is_dir = c.kind in ("dir", "symlink")
    parts = c.parts  # a property: split once
    if c.change != "deleted" and any(_HOSTILE_NAME.search(p) for p in parts):
        return "name holds control, bidirectional or invisible characters: not applied"
    if rules.protect.covers(parts, is_dir):
        return "protected path: a sandbox never changes it"
    if rules.mask.covers(parts, is_dir):
        return "masked path: the sandbox cannot see what is there"
    if rules.exclude.covers(parts, is_dir):
        return "excluded path: not part of the copy"
    for i in range(1, len(parts) + 1):
        if os.path.join(rules.root, *parts[:i]) in rules.mounts:
            return "on another filesystem mounted inside the workspace"
    after = c.after
    if c.change == "deleted" or after is None:
        return None
    if after.hardlink or (after.kind == "file" and after.data is None):
        return "hard link: not applied (copy the file instead)"
    if after.kind == "other":
        return "special file (fifo or device): not applied"
    if after.kind == "symlink":
        return _link_refusal(parts, after.link, rules)
    return None


_OUTSIDE = "symbolic link points outside the workspace: removed"


_AIMED = "symbolic link points at a protected or masked path: removed"


_CLIMBS = "symbolic link climbs back through a name (like y/..; put .. first): removed"


_REDIRECTS = "symbolic link would send an older link outside or to a protected path: removed"


def _link_refusal(parts: tuple[str, ...], target: str, rules: _Rules) -> str | None:
    """Why a link the sandbox made may not exist on the host; None if it stays inside.

    Inside not only in the tree as it stands: a later call may turn a name the target passes
    through into a link (`y/..` is the root while `y` is missing or a directory, and the
    root's parent once `y -> .`), and an older link is never checked again. So a target is
    relative and climbs (`..`) only first, no higher than the directory holding the link
    (a real directory: writes open each one with O_NOFOLLOW) is deep. Resolving it starts
    in that directory, climbs at most to the root, then only descends, and each name it
    descends through is a directory or a link kept inside by the same rule. A link the user
    made to somewhere outside breaks that last step: see ``_escaped`` for what guards it.
    """
    if not target or "\x00" in target or target.startswith("/"):
        return _OUTSIDE
    stack = list(parts[:-1])
    named = False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if named:
                return _CLIMBS
            if not stack:
                return _OUTSIDE
            stack.pop()
        else:
            named = True
            stack.append(comp)
    if rules.protect.covers(stack, True) or rules.mask.covers(stack, True):
        return _AIMED
    return _resolved_refusal(parts, target, rules)


def _resolved_refusal(parts: tuple[str, ...], target: str, rules: _Rules) -> str | None:
    """Why a link at ``parts`` to ``target`` may not stay, as the host resolves it now:
    through the links already there (`git -> .git` makes `git/hooks` `.git/hooks`)."""
    real = os.path.realpath(os.path.join(rules.root, *parts[:-1], target))
    if not _inside(real, rules.root):
        return _OUTSIDE
    resolved = Path(real).relative_to(rules.root).parts
    if rules.protect.covers(resolved, True) or rules.mask.covers(resolved, True):
        return _AIMED
    return None


def _host_link(root_fd: int, parts: tuple[str, ...]) -> str | None:
    """The target of the link at ``parts``, reached through real directories; else None."""
    try:
        pfd = open_dir(root_fd, parts[:-1])
    except OSError:
        return None
    try:
        return os.readlink(parts[-1], dir_fd=pfd)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _resolving_inside(root_fd: int, rels: Iterable[str], rules: _Rules) -> list[tuple[str, ...]]:
    """Those of the links at ``rels`` that resolve inside, and at no protected path."""
    out = []
    for rel in rels:
        parts = tuple(rel.split("/"))
        target = _host_link(root_fd, parts)
        if target is not None and _resolved_refusal(parts, target, rules) is None:
            out.append(parts)
    return out


def _escaped(root_fd: int, links: list[tuple[str, ...]], rules: _Rules) -> bool:
    """Whether one of ``links`` (each resolving inside before the writes) no longer does.

    The rule of ``_link_refusal`` keeps the sandbox's own links inside whatever later calls
    do, but not through a link of the user's pointing outside (`to_root -> /`): an older
    `leak -> d/to_root/etc/passwd`, checked while `d` was a directory, reaches `/etc/passwd`
    once `d -> .`. Only a new link sends an older one of the sandbox's somewhere else.
    """
    for parts in links:
        target = _host_link(root_fd, parts)
        if target is not None and _resolved_refusal(parts, target, rules):
            return True
    return False


def apply_changes(
    changes: list[Change],
    back: Readback,
    policy: WorkspacePolicy,
    root: Path,
    *,
    owner: tuple[int, int] | None,
) -> tuple[int, str | None]:
    """Write the allowed changes to ``root``; mark each change applied or refused (why).

    All or nothing on the bounds: past the quota, or with an incomplete read-back, nothing
    is written. Returns (changes applied, note).
    """
    rules = _Rules(
        root,
        PathRules(policy.mask),
        PathRules(policy.protect),
        PathRules(policy.exclude),
        mount_points_under(root),
    )
    for c in changes:
        c.applied = False
        c.note = _refusal(c, rules)
    todo = [c for c in changes if c.note is None]
    written = sum(c.size or 0 for c in todo if c.kind == "file" and c.change != "deleted")
    quota = policy.rw_quota_mib * MIB
    stop = None
    if not back.complete:
        stop = f"{back.note}: nothing was written to your files"
    elif back.over_budget or written > quota:
        stop = (
            f"the run changed more than {policy.rw_quota_mib} MiB (rw_quota_mib): "
            "nothing was written to your files"
        )
    elif len(todo) > policy.rw_max_changes:
        stop = (
            f"the run changed {len(todo)} paths, above rw_max_changes "
            f"({policy.rw_max_changes}): nothing was written to your files"
        )
    if stop:
        for c in todo:
            c.note = "not applied: a limit was reached"
        return 0, stop
    root_fd = os.open(root, O_DIR)
    try:
        links = [c for c in todo if c.kind == "symlink" and c.change != "deleted"]
        # The links that stay, as they resolve before any write (see ``_escaped``).
        older = _resolving_inside(root_fd, back.links, rules) if links else []
        deletions = [c for c in todo if c.change == "deleted"]
        # Files and links first, then directories deepest first: each rmdir only empties.
        deletions.sort(key=lambda c: (c.kind == "dir", -len(c.parts)))
        new_dirs = sorted(
            (c for c in todo if c.kind == "dir" and c.change == "created"),
            key=lambda c: len(c.parts),
        )
        files = [c for c in todo if c.kind == "file" and c.change != "deleted"]
        # A directory the sandbox made that was not applied (the host has one it could not
        # see there, say) takes its contents with it: nothing goes into a directory hidden
        # from the sandbox, where a later run could neither see nor re-check it.
        made = {c.rel: c for c in changes if c.kind == "dir" and c.change == "created"}
        for group, op in (
            (deletions, _delete),
            (new_dirs, _make_dir),
            (files, _write_file),
            (links, _make_link),
        ):
            for c in group:
                parent = made.get(c.rel.rpartition("/")[0])
                if parent is not None and not parent.applied:
                    c.note = "its directory was not applied"
                    continue
                try:
                    op(root_fd, c, owner)
                    c.applied = True
                except _Refused as e:
                    c.note = str(e)
                except OSError as e:
                    c.note = f"not applied: {e.strerror or 'error'}"
        # Links were checked against the tree before any write, each alone; check them again
        # now the tree is final. `d -> .` and `leak -> d/to_root/etc` in one call both pass
        # while `d` is missing; together, through the user's `to_root -> /`, they leave.
        for c in links:
            if not c.applied or c.after is None:
                continue
            why = _link_refusal(c.parts, c.after.link, rules)
            if why:
                _remove_quietly(root_fd, c.parts)
                c.applied = False
                c.note = why
        if older and _escaped(root_fd, older, rules):
            for c in links:
                if c.applied:
                    _remove_quietly(root_fd, c.parts)
                    c.applied = False
                    c.note = _REDIRECTS
    finally:
        os.close(root_fd)
    return sum(1 for c in changes if c.applied and c.kind != "dir"), None


def _parent(root_fd: int, parts: tuple[str, ...]) -> int:
    try:
        return open_dir(root_fd, parts[:-1])
    except FileNotFoundError:
        raise _Refused("not applied: its directory is missing") from None
    except OSError:
        raise _Refused("not applied: a parent is not a directory on the host") from None


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _matches_before(st: os.stat_result | None, before: Entry, dir_fd: int, name: str) -> bool:
    """The host path is still what was copied: else someone changed it during the run."""
    if st is None or st.st_ino != before.ino:
        return False
    if before.kind == "file":
        return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (
            before.size,
            before.mtime_ns,
        )
    if before.kind == "symlink":
        return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == before.link
    return stat.S_ISDIR(st.st_mode)


_CONFLICT = "not applied: the path changed on the host during the run"


def _delete(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    assert c.before is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        if not _matches_before(_lstat(pfd, name), c.before, pfd, name):
            raise _Refused(_CONFLICT)
        if c.kind == "dir":
            try:
                os.rmdir(name, dir_fd=pfd)
            except OSError as e:
                if e.errno in (39, 66):  # ENOTEMPTY on Linux, macOS
                    raise _Refused("kept: it holds files the sandbox did not see") from None
                raise
        else:
            os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _chown(fd: int, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.fchown(fd, *owner)


def _make_dir(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    assert c.after is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            raise _Refused(_CONFLICT) from None
        fd = os.open(name, O_DIR, dir_fd=pfd)
        try:
            # Never one the sandbox cannot list (0700, say): what it holds must stay in the
            # next copy, where the links in it are checked again (``_escaped``).
            os.fchmod(fd, (c.after.mode & 0o775) | 0o755)
            _chown(fd, owner)
        finally:
            os.close(fd)
    finally:
        os.close(pfd)


def _write_file(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    after = c.after
    assert after is not None and after.data is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    tmp = f".mcp-sandbox-{secrets.token_hex(6)}.tmp"
    try:
        current = _lstat(pfd, name)
        if c.change == "created" and current is not None:
            raise _Refused(_CONFLICT)
        if c.change == "changed":
            assert c.before is not None
            if not _matches_before(current, c.before, pfd, name):
                raise _Refused(_CONFLICT)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=pfd,
        )
        try:
            view = memoryview(after.data)
            while view:
                view = view[os.write(fd, view) :]
            # No setuid, setgid or sticky bit, and nothing world-writable, reaches the host.
            os.fchmod(fd, after.mode & 0o775)
            _chown(fd, owner)
        finally:
            os.close(fd)
        if after.mode & 0o7000:
            c.note = "setuid/setgid bit removed"
        # rename replaces the directory entry itself: it never follows a link at ``name``.
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except BaseException:
        _unlink_quietly(pfd, tmp)
        raise
    finally:
        os.close(pfd)


def _make_link(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    after = c.after
    assert after is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        current = _lstat(pfd, name)
        if c.change == "changed":
            assert c.before is not None
            if not _matches_before(current, c.before, pfd, name):
                raise _Refused(_CONFLICT)
            os.unlink(name, dir_fd=pfd)
        elif current is not None:
            raise _Refused(_CONFLICT)
        os.symlink(after.link, name, dir_fd=pfd)
        if owner is not None:
            os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _remove_quietly(root_fd: int, parts: tuple[str, ...]) -> None:
    try:
        pfd = open_dir(root_fd, parts[:-1])
    except OSError:
        return
    try:
        st = _lstat(pfd, parts[-1])
        if st is not None and stat.S_ISLNK(st.st_mode):
            _unlink_quietly(pfd, parts[-1])
    finally:
        os.close(pfd)


def workspace_owner(root: Path) -> tuple[int, int] | None:
    """Whom written files belong to: the root's owner, when this process may give files away."""
    if os.geteuid() != 0:
        return None
    st = os.stat(root)
    return st.st_uid, st.st_gid
