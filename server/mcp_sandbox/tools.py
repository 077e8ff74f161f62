"""The MCP surface: ``build_server()`` and thin tool functions over ``SandboxService``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ValidationError

from mcp_sandbox import __version__, languages
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.languages import Language
from mcp_sandbox.requests import (
    RunCodeArgs,
    ShellArgs,
    StdinArg,
    TimeoutArg,
    describe_bad_arguments,
)
from mcp_sandbox.results import RunResult
from mcp_sandbox.service import SandboxService

log = logging.getLogger("mcp_sandbox")

ARGUMENT_MODELS: dict[str, type[BaseModel]] = {"run_code": RunCodeArgs, "shell": ShellArgs}

INSTRUCTIONS = (
    "Runs code in a fresh, throw-away Docker container per call: no network, read-only root, "
    "no host files, limited CPU, memory, processes and time. Nothing persists between calls."
)


_WALLS = (
    "Each call gets a new container that is removed afterwards: no network, read-only root "
    "(/tmp and the working directory are small scratch tmpfs), no host files or credentials, "
    "limited CPU, memory, processes and time. Returns exit_code, timed_out, oom_killed, "
    "truncated, and scrubbed stdout/stderr (long output is cut head+tail)."
)
RUN_CODE_DOC = "Run a snippet of python, javascript (Node.js) or bash in a sandbox. " + _WALLS
SHELL_DOC = "Run `/bin/sh -c command` in a sandbox (Debian, with python3, node, git). " + _WALLS


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


def _tool_result(result: RunResult) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=result.summary())],
        structured_content=result.model_dump(mode="json"),
    )


async def _guarded(action: str, call: Any) -> CallToolResult:
    """Our errors reach the caller as one line; anything else stays in the server log."""
    try:
        return _tool_result(await call)
    except SandboxError as e:
        log.info("%s refused: %s", action, e)
        raise ToolError(str(e)) from None
    except Exception:
        log.exception("%s failed", action)
        raise ToolError("internal error; details are in the server log") from None


def build_server(service: SandboxService) -> MCPServer[None]:
    """The MCP server over ``service``; the lifespan reaps what dead servers left behind."""

    @contextlib.asynccontextmanager
    async def lifespan(_: MCPServer[None]) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            # Never delays the handshake, and a daemon that is down does not stop start-up.
            tg.start_soon(_reap_at_start, service)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await service.reap(own_too=True)

    mcp: MCPServer[None] = MCPServer(
        "mcp-sandbox",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        middleware=[_check_arguments],
    )
    annotations = ToolAnnotations(
        read_only_hint=True,  # nothing outside the throw-away container changes
        destructive_hint=False,
        idempotent_hint=True,  # a call leaves nothing behind, so repeating it adds no effect
        open_world_hint=False,  # no network
    )

    @mcp.tool(title="Run code in a sandbox", annotations=annotations, description=RUN_CODE_DOC)
    async def run_code(
        language: Language,
        code: str,
        timeout_s: TimeoutArg = None,
        stdin: StdinArg = None,
    ) -> Annotated[CallToolResult, RunResult]:
        """Run a snippet of python, javascript (Node.js) or bash in a fresh container."""
        args = RunCodeArgs(language=language, code=code, timeout_s=timeout_s, stdin=stdin)
        return await _guarded("run_code", service.run_code(args))

    @mcp.tool(
        title="Run a shell command in a sandbox", annotations=annotations, description=SHELL_DOC
    )
    async def shell(
        command: str,
        timeout_s: TimeoutArg = None,
        stdin: StdinArg = None,
    ) -> Annotated[CallToolResult, RunResult]:
        """Run `/bin/sh -c command` in a fresh container."""
        args = ShellArgs(command=command, timeout_s=timeout_s, stdin=stdin)
        return await _guarded("shell", service.shell(args))

    return mcp


async def _reap_at_start(service: SandboxService) -> None:
    removed = await service.reap(own_too=False)
    if removed:
        log.info("removed %d sandbox(es) left by servers that died", removed)
