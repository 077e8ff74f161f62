"""The MCP surface: ``build_server()`` and thin tool functions over a ``CallRunner``."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Resolve
from mcp_types import (
    CallToolResult,
    ContentBlock,
    ImageContent,
    ResourceLink,
    TextContent,
    ToolAnnotations,
)
from pydantic import BaseModel, ValidationError

from mcp_sandbox import __version__
from mcp_sandbox.environment.build import BuildReport
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.output.result import RESULT_CHARS, EnvironmentBuilt, RunResult
from mcp_sandbox.output.shaping import neutralise
from mcp_sandbox.oversight.approval import Outcome, can_allow
from mcp_sandbox.oversight.calls import (
    Oversight,
    ask_prepare_env,
    ask_run_code,
    ask_shell,
    prepare_env_args,
    run_code_args,
    shell_args,
)
from mcp_sandbox.oversight.metrics import CallMetrics
from mcp_sandbox.policy import languages
from mcp_sandbox.policy.arguments import (
    PrepareEnvArgs,
    RunCodeArgs,
    ShellArgs,
    describe_bad_arguments,
    takes_arguments_of,
)
from mcp_sandbox.sandbox.slots import OnWait
from mcp_sandbox.transport.call_runner import CallRunner
from mcp_sandbox.transport.progress import with_progress

log = logging.getLogger("mcp_sandbox")

ARGUMENT_MODELS: dict[str, type[BaseModel]] = {
    "run_code": RunCodeArgs,
    "shell": ShellArgs,
    "prepare_env": PrepareEnvArgs,
}

INSTRUCTIONS = (
    "Runs code in a fresh, throw-away Docker container per call: no network, read-only root, "
    "only the project's workspace (read-only by default, secret files hidden), limited CPU, "
    "memory, processes and time. Nothing persists between calls."
)


_WALLS = (
    "Each call gets a new container that is removed afterwards: no network (unless "
    'network="egress" and the server allows it: then only its allowlisted hosts, through a '
    "proxy; refusals are listed in egress_denied), read-only root "
    "(/tmp is a small scratch tmpfs). The workspace (the project) is at /workspace and is the "
    'working directory (workdir: a path inside it): read-only by default; workspace="copy" '
    "gives a throw-away writable copy and lists the files the run changed. Secret files "
    "(.env, keys...) are hidden; no other host files or credentials, "
    "limited CPU, memory, processes and time. Returns exit_code, timed_out, oom_killed, "
    "truncated, and scrubbed stdout/stderr (long output is cut head+tail)."
)
RUN_CODE_DOC = "Run a snippet of python, javascript (Node.js) or bash in a sandbox. " + _WALLS
SHELL_DOC = "Run `/bin/sh -c command` in a sandbox (Debian, with python3, node, git). " + _WALLS


PREPARE_ENV_DOC = (
    "Install the project's dependencies once, into an environment that every later run_code "
    "and shell call of this workspace has read-only at /env (python and pytest from its venv "
    "come first on PATH; node finds its node_modules through NODE_PATH). It reads only the "
    "dependency manifests at the workspace root (requirements*.txt, pyproject.toml, "
    "package.json with its lockfile) and installs them in a sandbox whose only network is "
    "the server's package indexes. Needs approval. Call it again when a result's "
    "environment is stale."
)
# A result lists this many of the environment's packages at most.
_LISTED_PACKAGES = 200


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


async def _check_arguments(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Validate our tools' raw arguments first, so a bad one gets one plain line back."""
    if ctx.method == "tools/call" and ctx.params is not None:
        model = ARGUMENT_MODELS.get(str(ctx.params.get("name")))
        if model is not None:
            try:
                model.model_validate(ctx.params.get("arguments") or {})
            except ValidationError as e:
                return _error(describe_bad_arguments(e, supported_languages=languages.SUPPORTED))
    return await call_next(ctx)


# The JSON-RPC message around a result gets this much of RESULT_CHARS.
_ENVELOPE_CHARS = 100


def result_chars(result: CallToolResult) -> int:
    """Characters ``result`` takes as JSON on the wire."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


def _tool_result(result: RunResult | EnvironmentBuilt) -> CallToolResult:
    """The structured result and a text block that takes what it leaves of the size."""
    structured = result.model_dump(mode="json")
    if isinstance(result, EnvironmentBuilt):  # small: its package list is bounded
        return CallToolResult(
            content=[TextContent(type="text", text=result.summary())],
            structured_content=structured,
        )
    # A link per file to read, inside RESULT_CHARS; images after it, outside (their own
    # blocks, sent only where the server allows: see README, "Files out").
    links: list[ContentBlock] = [
        ResourceLink(
            type="resource_link", name=f.name, uri=f.uri, mime_type=f.mime_type, size=f.size
        )
        for f in result.files
        if f.uri is not None
    ]
    bare = CallToolResult(
        content=[TextContent(type="text", text=""), *links], structured_content=structured
    )
    room = RESULT_CHARS - _ENVELOPE_CHARS - result_chars(bare)
    images: list[ContentBlock] = [
        ImageContent(
            type="image", data=base64.b64encode(i.data).decode("ascii"), mime_type=i.mime_type
        )
        for i in result.images
    ]
    return CallToolResult(
        content=[TextContent(type="text", text=result.summary(room)), *links, *images],
        structured_content=structured,
    )


async def _guarded(scrub: Callable[[str], str], action: str, call: Any) -> CallToolResult:
    """Our errors reach the caller as one scrubbed line; anything else stays in the log."""
    try:
        return _tool_result(await call)
    except SandboxError as e:
        log.info("%s refused: %s", action, e)
        raise ToolError(scrub(str(e))) from None
    except Exception:
        log.exception("%s failed", action)
        raise ToolError("internal error; details are in the server log") from None


def build_server(runner: CallRunner, metrics: CallMetrics | None = None) -> MCPServer[None]:
    """The MCP server over ``runner``; the lifespan reaps what dead servers left behind.

    ``runner.settings`` decide approvals and the audit; ``metrics``, if given, count the calls.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[None]) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            # Never delays the handshake, and a daemon that is down does not stop start-up.
            tg.start_soon(_reap_at_start, runner)
            tg.start_soon(runner.run_background)  # the warm pool, if local
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await runner.shutdown()  # the pool first, if local
                tg.cancel_scope.cancel()

    mcp: MCPServer[None] = MCPServer(
        "mcp-sandbox",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        middleware=[_check_arguments],
    )
    settings = runner.settings
    scrub = runner.scrub
    margin = runner.scrub_margin
    oversight = Oversight(
        settings,
        scrub,
        runner.workspace_root,
        local=not runner.checks_its_own_workspace,
        metrics=metrics,
    )
    oversight.attach(mcp)
    # When a call may be granted `rw`, it may write the user's files; otherwise nothing
    # outside the throw-away container changes, and repeating a call adds no effect.
    writes = can_allow(settings, "rw")
    annotations = ToolAnnotations(
        read_only_hint=not writes,
        destructive_hint=writes,
        idempotent_hint=not writes,
        open_world_hint=can_allow(settings, "egress"),
    )

    # Each tool's parameters are its arguments' fields, one by one (``takes_arguments_of``):
    # that is its flat input schema. The body reads them as one object, ``args``.
    @mcp.tool(title="Run code in a sandbox", annotations=annotations, description=RUN_CODE_DOC)
    @takes_arguments_of(RunCodeArgs)
    async def run_code(
        *,
        ctx: Context[Any, Any],
        args: Annotated[RunCodeArgs, Resolve(run_code_args)],
        approval: Annotated[Outcome, Resolve(ask_run_code)],
        **_: object,
    ) -> Annotated[CallToolResult, RunResult]:
        """Run a snippet of python, javascript (Node.js) or bash in a fresh container."""

        async def call(on_wait: OnWait) -> RunResult:
            run = functools.partial(runner.run_code, waiting=on_wait)
            return await oversight.run(args, approval, ctx, run)

        return await _guarded(scrub, "run_code", with_progress(ctx, scrub, margin, call))

    @mcp.tool(
        title="Run a shell command in a sandbox", annotations=annotations, description=SHELL_DOC
    )
    @takes_arguments_of(ShellArgs)
    async def shell(
        *,
        ctx: Context[Any, Any],
        args: Annotated[ShellArgs, Resolve(shell_args)],
        approval: Annotated[Outcome, Resolve(ask_shell)],
        **_: object,
    ) -> Annotated[CallToolResult, RunResult]:
        """Run `/bin/sh -c command` in a fresh container."""

        async def call(on_wait: OnWait) -> RunResult:
            run = functools.partial(runner.shell, waiting=on_wait)
            return await oversight.run(args, approval, ctx, run)

        return await _guarded(scrub, "shell", with_progress(ctx, scrub, margin, call))

    @mcp.tool(
        title="Prepare the project's environment",
        annotations=ToolAnnotations(
            read_only_hint=False,
            destructive_hint=False,
            idempotent_hint=True,
            open_world_hint=True,
        ),
        description=PREPARE_ENV_DOC,
    )
    @takes_arguments_of(PrepareEnvArgs)
    async def prepare_env(
        *,
        ctx: Context[Any, Any],
        args: Annotated[PrepareEnvArgs, Resolve(prepare_env_args)],
        approval: Annotated[Outcome, Resolve(ask_prepare_env)],
        **_: object,
    ) -> Annotated[CallToolResult, EnvironmentBuilt]:
        """Build the workspace's environment, reporting progress while it runs."""
        steps = 0

        async def progress(line: str) -> None:
            nonlocal steps
            steps += 1
            await ctx.report_progress(steps, None, scrub(line))

        async def build(_: PrepareEnvArgs) -> EnvironmentBuilt:
            return _built(await runner.build_environment(progress), scrub)

        return await _guarded(scrub, "prepare_env", oversight.run(args, approval, ctx, build))

    @mcp.resource(
        "sandbox://audit/session",
        name="audit-session",
        title="This session's recent sandbox calls",
        description="The audit records of this session's recent calls (newest last), scrubbed",
        mime_type="application/json",
    )
    def audit_session() -> str:
        return json.dumps(oversight.recent(), ensure_ascii=False)

    @mcp.resource(
        "sandbox://runs/{run_id}/{stream}",
        name="run-output",
        title="A cut stream's full text",
        description="The full stdout or stderr of a recent run whose result was cut (its first "
        "2 MiB), scrubbed; named in the result's full_output",
        mime_type="text/plain",
    )
    async def run_output(run_id: str, stream: str) -> str:
        text = await runner.kept_output(run_id, stream)
        if text is None:
            raise SandboxError(
                "no kept output by that name: only a cut stream is kept, and only a while"
            )
        return text

    @mcp.resource(
        "sandbox://runs/{run_id}/files/{key}",
        name="run-file",
        title="A text file a run left under /tmp/outputs",
        description="A text file of a recent run called with outputs=true (its first 256 KiB), "
        "scrubbed; named in the result's files",
        mime_type="text/plain",
    )
    async def run_file(run_id: str, key: str) -> str:
        text = await runner.kept_output(run_id, f"files/{key}")
        if text is None:
            raise SandboxError("no kept file by that name: only text files are kept, a while")
        return text

    if not settings.tools.run_code.enabled:
        mcp.remove_tool("run_code")
    if not settings.tools.shell.enabled:
        mcp.remove_tool("shell")
    if settings.approval.environment == "deny":
        mcp.remove_tool("prepare_env")
    return mcp


def _built(report: BuildReport, scrub: Callable[[str], str]) -> EnvironmentBuilt:
    """prepare_env's result: what the build made, its names scrubbed and its list bounded."""
    env = report.environment
    return EnvironmentBuilt(
        id=env.id,
        built_at=env.built_at,
        size_mib=env.size_mib,
        duration_ms=report.duration_ms,
        egress_allowed=report.egress_allowed,
        # The build's install scripts pick these names, as a call's code picks a call's.
        egress_denied=[neutralise(scrub(d)) for d in report.egress_denied],
        packages=[scrub(p)[:100] for p in report.packages[:_LISTED_PACKAGES]],
    )


async def _reap_at_start(runner: CallRunner) -> None:
    removed = await runner.reap(own_too=False)
    if removed:
        log.info("removed %d sandbox(es) left by servers that died", removed)
