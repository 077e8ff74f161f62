"""One environment build: a hardened sandbox installs the manifests' dependencies into a
fresh volume, egress only to ``environment.indexes``; sealed only if it ended within bounds.

The build container has the walls of any call (our seccomp profile, no capabilities, uid
65534, read-only root, limits, a tmpfs /tmp); the volume at /env is its only other
writable place. Its network is a call network of a second egress proxy whose allowlist is
``environment.indexes`` alone: the call proxy's rules, and its credentials, are not the
build's. Install scripts of packages run there and nowhere else.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.constants import ENVIRONMENT_DIR, SANDBOX_USER
from mcp_sandbox.egress.proxy import EgressProxy, EgressTally
from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.engine.steps import remove_quietly, step
from mcp_sandbox.environment.commands import INVENTORY_SCRIPT, build_script, stdin_tar
from mcp_sandbox.environment.manifests import Manifests, manifests_digest
from mcp_sandbox.environment.mount import environment_mount
from mcp_sandbox.environment.project_files import read_manifests
from mcp_sandbox.environment.store import remove_superseded, remove_volumes
from mcp_sandbox.environment.volumes import (
    Environment,
    data_labels,
    data_volume,
    environment_key,
    seal_labels,
    seal_volume,
)
from mcp_sandbox.errors import RequestRejected, SandboxUnavailable
from mcp_sandbox.output.shaping import StreamCapture, neutralise
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.policy.paths import PathRules
from mcp_sandbox.sandbox.runner import RawRun, run_once
from mcp_sandbox.sandbox.runtime import Runtime
from mcp_sandbox.sandbox.spec import ContainerSpec, Mount, build_spec, with_egress

log = logging.getLogger("mcp_sandbox.environment")

Progress = Callable[[str], Awaitable[None]]
# How often the build's size is measured, and a progress line sent.
POLL_S = 2.0
OUTPUT_BYTES = 64_000
# What a build's own steps (the volume's owner, the inventory) may take.
SMALL = Limits(timeout_s=120, memory_mib=64, pids=16, fsize_mib=1, tmp_mib=1, workdir_mib=1)


class BuildFailed(RequestRejected):
    """The build ran and did not finish within its bounds, or its install failed."""


@dataclass(frozen=True)
class BuildReport:
    environment: Environment
    packages: tuple[str, ...]
    duration_ms: int
    egress_allowed: int
    egress_denied: tuple[str, ...]


@dataclass(frozen=True)
class BuildContext:
    """What a build needs of the server that runs it."""

    settings: Settings
    api: Engine
    threads: CapacityLimiter
    owner: str
    seccomp_json: str
    scrub: Callable[[str], str]
    runtime: Runtime  # the server's, never gVisor (the install needs egress)


def manifests_of(settings: Settings, root: Path) -> Manifests:
    """Blocking: the workspace's manifests, masks applied. Raises RequestRejected."""
    return read_manifests(root, PathRules(settings.workspace_policy.mask))


def digest_of(settings: Settings, manifests: Manifests) -> str:
    env = settings.environment
    return manifests_digest(manifests, (env.python, env.node))


def build_limits(settings: Settings) -> Limits:
    env = settings.environment
    return Limits(
        timeout_s=env.timeout_s,
        memory_mib=env.memory_mib,
        cpus=settings.limits.cpus,
        pids=512,
        nofile=4096,
        fsize_mib=env.max_mib,
        tmp_mib=min(1024, max(64, env.max_mib // 2)),
        workdir_mib=1,
        output_bytes=OUTPUT_BYTES,
    )


async def build_environment(ctx: BuildContext, root: Path, progress: Progress) -> BuildReport:
    """Build the environment of the workspace at ``root``; on success older ones go.

    Raises RequestRejected (nothing to install), BuildFailed (the install failed, timed out
    or outgrew ``environment.max_mib``: nothing of it is left), SandboxUnavailable.
    """
    s, env = ctx.settings, ctx.settings.environment
    manifests = await to_thread.run_sync(manifests_of, s, root, limiter=ctx.threads)
    if not (manifests.python or manifests.node or env.python or env.node):
        raise RequestRejected(
            "no dependency manifest at the workspace root (requirements*.txt, "
            "pyproject.toml, package.json) and no environment.python or environment.node"
        )
    digest = digest_of(s, manifests)
    key = environment_key(str(root), s.image)
    build_id = secrets.token_hex(6)
    data = data_volume(key, build_id)
    labels = data_labels(
        key=key, digest=digest, workspace=str(root), image=s.image, owner=ctx.owner,
        extra=s.labels,
    )  # fmt: skip
    started = time.monotonic()
    await progress(f"building the environment of {root} from {', '.join(manifests.names)}")
    await step(ctx.threads, "create the environment volume", _create, ctx.api, data, labels)
    sealed_ok = False
    try:
        await _own_volume(ctx, data, build_id)
        tally = await _install(ctx, manifests, data, build_id, progress)
        await progress("measuring the environment")
        size_mib, packages = await _inventory(ctx, data, build_id)
        if size_mib > env.max_mib:
            raise BuildFailed(_too_big(size_mib, env.max_mib))
        built = time.time()
        seal = seal_labels(
            labels, data=data, built_unix=built, size_mib=size_mib, packages=len(packages)
        )
        await step(ctx.threads, "seal the environment", _create, ctx.api, seal_volume(data), seal)
        sealed_ok = True
    finally:
        if not sealed_ok:
            await remove_volumes(ctx.api, ctx.threads, [seal_volume(data), data])
    await remove_superseded(ctx.api, ctx.threads, key, keep=data)
    environment = Environment(
        id=data, key=key, digest=digest, workspace=str(root), image=s.image,
        built_unix=int(built), size_mib=size_mib, packages=len(packages),
    )  # fmt: skip
    duration_ms = int((time.monotonic() - started) * 1000)
    log.info("environment %s built in %d ms: %d MiB", data, duration_ms, size_mib)
    return BuildReport(environment, packages, duration_ms, tally.allowed, tally.denied)


def _create(api: Engine, name: str, labels: dict[str, str]) -> None:
    api.create_local_volume(name, labels=labels)


def _spec(
    ctx: BuildContext,
    argv: tuple[str, ...],
    limits: Limits,
    name: str,
    stdin: bytes | None = None,
    *,
    networked: bool = False,
) -> ContainerSpec:
    plan = RunPlan(argv=argv, limits=limits, stdin=stdin)
    return build_spec(
        plan,
        image=ctx.settings.image,
        run_id=name,
        owner=ctx.owner,
        seccomp_json=ctx.seccomp_json,
        extra_env={},
        runtime=ctx.runtime.entry(networked=networked),
        extra_labels=ctx.settings.labels,
    )


async def _own_volume(ctx: BuildContext, data: str, build_id: str) -> None:
    """A new volume's root belongs to root: hand it to the sandbox user. The one step as
    uid 0, with CHOWN alone, running only this fixed chown before anything of the build."""
    argv = ("chown", SANDBOX_USER, ENVIRONMENT_DIR)
    spec = _spec(ctx, argv, SMALL, f"{build_id}-own")
    spec = replace(spec, mounts=(Mount("volume", data, ENVIRONMENT_DIR, read_only=False),))
    create = spec.create_kwargs() | {"user": "0:0", "stdin_open": False}
    host = spec.host_config_kwargs() | {"cap_add": ["CHOWN"]}
    try:
        await step(ctx.threads, "create the environment's first step", ctx.api.create, create, host)
        await step(ctx.threads, "start the environment's first step", ctx.api.start, spec.name)
        state = await step(ctx.threads, "wait for the environment's first step", ctx.api.wait,
                           spec.name)  # fmt: skip
    finally:
        await remove_quietly(ctx.api, spec.name, ctx.threads)
    if state.exit_code != 0:
        raise SandboxUnavailable("could not give the environment volume to the sandbox user")


async def _install(
    ctx: BuildContext, manifests: Manifests, data: str, build_id: str, progress: Progress
) -> EgressTally:
    s, env = ctx.settings, ctx.settings.environment
    limits = build_limits(s)
    script = build_script(manifests, env)
    tar = stdin_tar(manifests)
    spec = _spec(ctx, ("/bin/sh", "-c", script), limits, build_id, tar, networked=True)
    spec = replace(spec, mounts=(Mount("volume", data, ENVIRONMENT_DIR, read_only=False),))
    # The build's own proxy: the allowlist is the indexes and nothing else, and it holds
    # none of the call proxy's credentials.
    rules = s.egress.model_copy(update={"enabled": True, "allow": env.indexes, "credentials": ()})
    proxy = EgressProxy(
        rules, ctx.api, owner=ctx.owner, seccomp_json=lambda: ctx.seccomp_json,
        extra_labels=s.labels, credentials=(), role="egress-env",
    )  # fmt: skip
    over: list[int] = []
    raw: RawRun | None = None
    try:
        async with proxy.attached(build_id, limits.timeout_s, ctx.threads) as call:
            spec = with_egress(spec, call.link)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch, ctx, spec.name, env.max_mib, over, progress)
                raw = await run_once(ctx.api, spec, tar, OUTPUT_BYTES, ctx.threads)
                tg.cancel_scope.cancel()
    finally:
        await proxy.close(ctx.threads)
    tally = call.tally or EgressTally(0, ())
    assert raw is not None
    denied = f"; the proxy refused: {', '.join(tally.denied)}" if tally.denied else ""
    if over:
        raise BuildFailed(_too_big(over[0], env.max_mib) + denied)
    if raw.timed_out:
        raise BuildFailed(
            f"the build passed environment.timeout_s ({env.timeout_s:g} s) and was stopped; "
            f"nothing of it was kept{denied}"
        )
    if raw.oom_killed:
        raise BuildFailed(
            f"the build passed environment.memory_mib ({env.memory_mib} MiB) and was stopped; "
            f"nothing of it was kept{denied}"
        )
    if raw.exit_code != 0:
        tail = _tail(ctx.scrub(_text(raw.stderr) + _text(raw.stdout)))
        raise BuildFailed(f"the install failed (exit {raw.exit_code}): {tail}{denied}")
    return tally


async def _watch(
    ctx: BuildContext, name: str, max_mib: int, over: list[int], progress: Progress
) -> None:
    """Measure /env every ``POLL_S``; past ``max_mib``, kill the build. A hostile build
    can at most slow ``du`` down: the trusted inventory after the build measures again."""
    started = time.monotonic()
    while True:
        await anyio.sleep(POLL_S)
        try:
            _, out = await to_thread.run_sync(
                ctx.api.exec_output, name, ["du", "-sxm", ENVIRONMENT_DIR], SANDBOX_USER,
                limiter=ctx.threads, abandon_on_cancel=True,
            )  # fmt: skip
        except SandboxUnavailable:
            continue  # not started yet, or ending
        mib = _first_int(out)
        if mib is None:
            continue
        if mib > max_mib:
            over.append(mib)
            await step(ctx.threads, "stop the build", ctx.api.kill, name)
            return
        await progress(f"installing: {mib} MiB after {time.monotonic() - started:.0f} s")


async def _inventory(ctx: BuildContext, data: str, build_id: str) -> tuple[int, tuple[str, ...]]:
    """The size and contents of a finished environment, looked at by a fresh sandbox
    (no network, the volume read-only): no process of the build is left to lie."""
    spec = _spec(ctx, ("/bin/sh", "-c", INVENTORY_SCRIPT), SMALL, f"{build_id}-look")
    spec = replace(spec, mounts=(environment_mount(data),))
    raw = await run_once(ctx.api, spec, None, OUTPUT_BYTES, ctx.threads)
    lines = _text(raw.stdout).splitlines()
    size = _first_int(lines[0].encode()) if lines else None
    if raw.exit_code != 0 or size is None:
        raise SandboxUnavailable("could not measure the environment after its build")
    names = tuple(ctx.scrub(n)[:200] for n in lines[1:] if n.strip())
    return size, names


def _text(capture: StreamCapture) -> str:
    """The end of a stream (where an install's error is), control characters neutralised."""
    data = capture.whole() if capture.complete else capture.tail
    return neutralise(data.decode("utf-8", "replace"))


def _first_int(out: bytes) -> int | None:
    head = out.decode("ascii", "replace").split(maxsplit=1)
    return int(head[0]) if head and head[0].isdigit() else None


def _too_big(mib: int, max_mib: int) -> str:
    return (
        f"the environment grew past environment.max_mib ({mib} MiB > {max_mib} MiB) and was removed"
    )


def _tail(text: str, lines: int = 6, chars: int = 1_500) -> str:
    last = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(last)[-chars:]
