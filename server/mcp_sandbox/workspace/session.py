"""One call's workspace: the mounts its sandbox gets, and afterwards what the run changed.

- ``ro``: the root bind-mounted read-only (non-recursive), each masked path overmounted by an
  empty read-only file or directory.
- ``copy`` and ``rw``: a size-capped tmpfs volume, filled from a tar stream the server builds.
  A local tmpfs volume lives only while some container holds it, so a small "keeper"
  container holds it from before the sandbox starts until the copy has been read back after
  the sandbox ended. ``rw`` then writes the allowed changes to the host (``workspace_copy``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.config.workspace import WorkspacePolicy
from mcp_sandbox.constants import ENVIRONMENT_LABEL, LABEL, MIB, OWNER_LABEL, WORKDIR
from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.engine.owners import owner_is_alive, pid_runs
from mcp_sandbox.engine.steps import remove_quietly, step
from mcp_sandbox.errors import RequestRejected, SandboxUnavailable
from mcp_sandbox.output.result import WorkspaceReport
from mcp_sandbox.policy.arguments import Mode
from mcp_sandbox.policy.limits import Limits
from mcp_sandbox.policy.paths import PathRules
from mcp_sandbox.sandbox.spec import ContainerSpec, Mount, with_workspace
from mcp_sandbox.workspace.changes import LISTED_CHARS, Change, diff, listing
from mcp_sandbox.workspace.copy_delta import PreparedCopy, delta
from mcp_sandbox.workspace.copy_scan import Manifest, scan_copy
from mcp_sandbox.workspace.mask_scan import LOCAL_FILESYSTEMS, MaskScanner, MaskSet
from mcp_sandbox.workspace.read_back import Readback, read_back
from mcp_sandbox.workspace.tar_out import tar_stream
from mcp_sandbox.workspace.workdir import filesystem_of, resolve_workdir
from mcp_sandbox.workspace.write_back import apply_changes, workspace_owner

STEP_TIMEOUT_S = 120.0
# What a read-back may exceed the volume by: tar headers, one per entry.
_ARCHIVE_SLACK = 64 * MIB
_FOREIGN_GRACE_S = 600.0

# The keeper only holds the volume: it runs nothing of the caller's and needs next to nothing.
KEEPER_ARGV = ("sleep", "infinity")
KEEPER_LIMITS = Limits(
    memory_mib=32, cpus=1.0, pids=8, nofile=64, nproc=64, fsize_mib=1, tmp_mib=1, workdir_mib=1
)


@dataclass(frozen=True)
class WorkspaceAsk:
    """What a call asked for: a working directory below the root, and maybe a mode."""

    workdir: str = "."
    mode: Mode | None = None


@dataclass(frozen=True)
class WorkspacePlan:
    """A call's checked workspace: decided before any container starts."""

    mode: Mode
    root: Path
    workdir: tuple[str, ...]
    masks: MaskSet | None = None
    manifest: Manifest | None = None

    @property
    def working_dir(self) -> str:
        return "/".join((WORKDIR, *self.workdir))

    @property
    def workdir_text(self) -> str:
        return "/".join(self.workdir) or "."


class Workspace:
    """The server's workspace root and policy; checks each call's request against them."""

    def __init__(self, root: Path | None, policy: WorkspacePolicy) -> None:
        self.root = root
        self.policy = policy
        self._mask = PathRules(policy.mask)
        self._exclude = PathRules(policy.exclude)
        self._masks = MaskScanner(root, self._mask) if root is not None else None

    def plan(self, ask: WorkspaceAsk) -> WorkspacePlan | None:
        """Check ``ask`` and read what the mode needs from the tree. Raises RequestRejected.

        Blocking (it reads the tree): run it in a worker thread.
        """
        p = self.policy
        if self.root is None:
            if ask.mode is not None or ask.workdir.strip("/.") or ask.workdir.startswith("/"):
                raise RequestRejected(
                    "there is no workspace: the server started in / or a home directory; "
                    "start it with --workspace PATH"
                )
            return None
        mode = ask.mode or p.mode
        if mode not in p.modes:
            raise RequestRejected(
                f"workspace mode {mode!r} is not enabled; allowed: {', '.join(p.modes)}"
            )
        workdir = resolve_workdir(self.root, ask.workdir)
        if self._mask.covers(workdir, True):
            raise RequestRejected("workdir is a masked path: no sandbox may see it")
        if mode == "ro":
            assert self._masks is not None
            masks = self._masks.scan(max_entries=p.scan_max_entries)
            return WorkspacePlan(mode, self.root, workdir, masks=masks)
        if self._exclude.covers(workdir, True):
            raise RequestRejected("workdir is excluded from copies (workspace_policy.exclude)")
        manifest = scan_copy(self.root, p, lock_protected=mode == "rw")
        return WorkspacePlan(mode, self.root, workdir, manifest=manifest)


class Session:
    """A prepared workspace: mount it, run, then ``finish`` for the report."""

    def __init__(
        self,
        plan: WorkspacePlan,
        mounts: tuple[Mount, ...],
        finish: Callable[[], Awaitable[WorkspaceReport]] | None = None,
    ) -> None:
        self.plan = plan
        self.mounts = mounts
        self._finish = finish

    async def finish(self) -> WorkspaceReport:
        if self._finish is None:
            return WorkspaceReport(mode=self.plan.mode, workdir=self.plan.workdir_text)
        return await self._finish()


_BLANKS_PREFIX = "mcp-sandbox-mask-"


def sweep_dead_blanks() -> None:
    """Remove the blanks of servers that died without cleaning up (SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_BLANKS_PREFIX}*-*"):
        pid = path.name[len(_BLANKS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not pid_runs(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _blanks() -> tuple[str, str]:
    """An empty read-only file and directory that masks are mounted from.

    One pair per server process, so the same masks always give the same mounts (a warm
    sandbox is used only when its spec equals the call's). Removed at exit.
    """
    sweep_dead_blanks()
    tmp = tempfile.mkdtemp(prefix=f"{_BLANKS_PREFIX}{os.getpid()}-")
    atexit.register(shutil.rmtree, tmp, True)
    empty_file = os.path.join(tmp, "file")
    empty_dir = os.path.join(tmp, "dir")
    with open(empty_file, "x"):
        pass
    os.mkdir(empty_dir)
    os.chmod(empty_file, 0o444)
    os.chmod(empty_dir, 0o555)
    os.chmod(tmp, 0o755)
    return empty_file, empty_dir


def discard_blanks() -> None:
    """Remove the mask blanks now (a server leaving by os._exit runs no atexit hook)."""
    if _blanks.cache_info().currsize:
        shutil.rmtree(os.path.dirname(_blanks()[0]), ignore_errors=True)
        _blanks.cache_clear()


def ro_mounts(plan: WorkspacePlan) -> tuple[Mount, ...]:
    """The read-only bind of the root, and an empty read-only stand-in over each mask."""
    assert plan.masks is not None
    empty_file, empty_dir = _blanks()
    if not (os.path.isfile(empty_file) and os.path.isdir(empty_dir)):
        _blanks.cache_clear()  # something removed them: make them again
        empty_file, empty_dir = _blanks()
    mounts = [Mount("bind", str(plan.root), WORKDIR, read_only=True)]
    mounts += [Mount("bind", empty_file, f"{WORKDIR}/{rel}", True) for rel in plan.masks.files]
    mounts += [Mount("bind", empty_dir, f"{WORKDIR}/{rel}", True) for rel in plan.masks.dirs]
    return tuple(mounts)


@contextlib.contextmanager
def _ro_mounts(plan: WorkspacePlan) -> Iterator[tuple[Mount, ...]]:
    yield ro_mounts(plan)


@contextlib.asynccontextmanager
async def open_session(
    plan: WorkspacePlan,
    *,
    api: Engine,
    threads: CapacityLimiter,
    policy: WorkspacePolicy,
    keeper: ContainerSpec,
    volume: str,
    workdir_mib: int,
    scrub: Callable[[str], str],
    listed_chars: int = LISTED_CHARS,
) -> AsyncIterator[Session]:
    """The workspace of one run, set up before the sandbox and removed after it.

    ``keeper`` is the container that holds a copy's volume (mounted at /workspace); it is
    not used in ``ro``. The report lists changed paths in at most ``listed_chars``
    characters of JSON, each path scrubbed with ``scrub`` before it is cut to fit.
    Raises SandboxUnavailable when the backend fails.
    """
    if plan.mode == "ro":
        with _ro_mounts(plan) as mounts:
            yield Session(plan, mounts)
        return
    manifest = plan.manifest
    assert manifest is not None
    size = copy_room_bytes(manifest, workdir_mib)
    mount = Mount("volume", volume, WORKDIR, read_only=False)
    keeper = with_workspace(keeper, (mount,), WORKDIR)

    async def finish() -> WorkspaceReport:
        back = await step(
            threads,
            "copy the workspace out",
            api.read_archive,
            keeper.name,
            WORKDIR,
            read_back_of(plan, policy, size),
            bound_s=STEP_TIMEOUT_S,
        )
        return await copy_report(plan, back, threads, policy, scrub, listed_chars)

    try:
        labels = dict(keeper.labels)
        await step(
            threads,
            "create the workspace volume",
            _create_volume,
            api,
            volume,
            size,
            labels,
            bound_s=STEP_TIMEOUT_S,
        )
        await step(
            threads,
            "start the workspace keeper",
            api.create,
            keeper.create_kwargs(),
            keeper.host_config_kwargs(),
            bound_s=STEP_TIMEOUT_S,
        )
        await step(
            threads, "start the workspace keeper", api.start, keeper.name, bound_s=STEP_TIMEOUT_S
        )
        await step(
            threads,
            "copy the workspace in",
            api.put_archive,
            keeper.name,
            WORKDIR,
            tar_stream(manifest),
            bound_s=STEP_TIMEOUT_S,
        )
        yield Session(plan, (mount,), finish)
    finally:
        await remove_quietly(api, keeper.name, threads)
        with anyio.move_on_after(20, shield=True):
            try:
                await to_thread.run_sync(
                    api.remove_volume, volume, limiter=threads, abandon_on_cancel=True
                )
            except SandboxUnavailable:
                pass  # in use by a sandbox whose removal failed: the reaper removes it later


def copy_room_bytes(manifest: Manifest, workdir_mib: int) -> int:
    """The size of a copy's tmpfs: the copy, ``workdir_mib`` for writes, a MiB of slack; in
    whole MiB, so a warm sandbox made for the tree still fits it after small edits. Cold and
    warm copies get the same room."""
    return -(-(manifest.tmpfs_bytes + workdir_mib * MIB + MIB) // MIB) * MIB


# Larger copies run cold: in a warm sandbox the copy's pages count against the sandbox's own
# memory (its stub writes them), and beside copying them a keeper costs little.
WARM_COPY_MAX_BYTES = 16 * MIB


def warm_copy_room(plan: WorkspacePlan, workdir_mib: int) -> int | None:
    """The room of a warm sandbox that can serve ``plan``, or None: it runs cold.

    Only `copy` and `rw` of at most ``WARM_COPY_MAX_BYTES``, and not with protected paths in
    an `rw` copy: those are root's inside the copy, which only the daemon can make them.
    """
    manifest = plan.manifest
    if plan.mode == "ro" or manifest is None or manifest.tmpfs_bytes > WARM_COPY_MAX_BYTES:
        return None
    if any(e.locked for e in manifest.entries):
        return None
    return copy_room_bytes(manifest, workdir_mib)


def read_back_of(
    plan: WorkspacePlan, policy: WorkspacePolicy, size: int, *, from_stub: bool = False
) -> Callable[[Iterator[bytes]], Readback]:
    """How the copy's archive is read once the run has ended (its tar stream, in chunks),
    from the daemon (cold) or from a warm sandbox's stub (``from_stub``: files back as they
    were sent come without their bytes): bounded alike."""
    manifest = plan.manifest
    assert manifest is not None
    keep = policy.rw_quota_mib * MIB if plan.mode == "rw" else 0

    def consume(chunks: Iterator[bytes]) -> Readback:
        sent = manifest.sent()
        return read_back(
            chunks,
            sent,
            max_bytes=size + _ARCHIVE_SLACK,
            max_entries=len(sent) + policy.copy_max_files,
            keep_bytes=keep,
            from_stub=from_stub,
        )

    return consume


LOST_NOTE = (
    "the copy could not be read back: the run ended its sandbox's stub, timed out, flooded "
    "its output or left more than the copy's bounds; nothing was written back"
)


async def copy_report(
    plan: WorkspacePlan,
    back: Readback | None,
    threads: CapacityLimiter,
    policy: WorkspacePolicy,
    scrub: Callable[[str], str],
    listed_chars: int = LISTED_CHARS,
) -> WorkspaceReport:
    """What the run changed in its copy (``back``; None: it did not come back), and in
    ``rw`` what of it was written to the host."""
    manifest = plan.manifest
    assert manifest is not None
    if back is None:
        back = Readback(complete=False, note=LOST_NOTE)
    changes = diff(manifest.sent(), back)
    applied: int | None = None
    note = back.note
    if plan.mode == "rw":
        owner = workspace_owner(plan.root)
        applied, note = await step(
            threads,
            "write the changes back",
            _apply,
            changes,
            back,
            policy,
            plan.root,
            owner,
            bound_s=STEP_TIMEOUT_S,
        )
    if note is None and manifest.unreadable:
        note = (
            f"{manifest.unreadable} paths the sandbox's user cannot read on the host were "
            "left out of the copy, as ro hides them; chmod o+r (o+rx for directories) "
            "to include them"
        )
    listed = [c for c in changes if c.kind != "dir"]
    return WorkspaceReport(
        mode=plan.mode,
        workdir=plan.workdir_text,
        changes_total=len(listed),
        changes=listing(listed, most=policy.changes_listed, scrub=scrub, budget=listed_chars),
        applied=applied,
        note=note,
    )


def prepared_copy(plan: WorkspacePlan, scanned_at_ns: int) -> tuple[PreparedCopy, bytes]:
    """The copy of ``plan`` (scanned from ``scanned_at_ns`` on) for a waiting sandbox, and
    its tar stream. Blocking: it reads the tree."""
    assert plan.manifest is not None
    archive = b"".join(tar_stream(plan.manifest))
    local = filesystem_of(plan.root) in LOCAL_FILESYSTEMS
    return PreparedCopy(plan.manifest, scanned_at_ns, trusted=local), archive


def patch_for(prepared: PreparedCopy, plan: WorkspacePlan) -> tuple[tuple[str, ...], bytes]:
    """What a sandbox holding ``prepared`` needs to hold ``plan``'s tree: the paths to
    remove and the patch's tar stream (``copy_delta``). Blocking: it reads what changed."""
    assert plan.manifest is not None
    change = delta(prepared, plan.manifest)
    return change.removed, b"".join(tar_stream(change.patch))


def _create_volume(api: Engine, name: str, size: int, labels: dict[str, str]) -> None:
    api.create_volume(name, size_bytes=size, labels=labels)


def _apply(
    changes: list[Change],
    back: Readback,
    policy: WorkspacePolicy,
    root: Path,
    owner: tuple[int, int] | None,
) -> tuple[int, str | None]:
    return apply_changes(changes, back, policy, root, owner=owner)


async def reap_volumes(api: Engine, threads: CapacityLimiter, *, owner: str, own_too: bool) -> int:
    """Remove labelled volumes whose server is gone (and ours, with ``own_too``)."""
    try:
        found = await to_thread.run_sync(api.labelled_volumes, limiter=threads)
    except SandboxUnavailable:
        return 0
    now = time.time()
    removed = 0
    for v in found:
        if v.labels.get(ENVIRONMENT_LABEL):
            continue  # an environment outlives its builder: ``environment.store`` reaps it
        who = v.labels.get(OWNER_LABEL, "")
        if who == owner:
            doomed = own_too
        else:
            alive = owner_is_alive(who)
            doomed = alive is False or (alive is None and now - v.created_unix > _FOREIGN_GRACE_S)
        if doomed and v.labels.get(LABEL):
            with anyio.move_on_after(20, shield=True):
                try:
                    await to_thread.run_sync(api.remove_volume, v.name, limiter=threads)
                    removed += 1
                except SandboxUnavailable:
                    pass
    return removed
