"""What the MCP tools run their calls on: the ``CallRunner`` Protocol.

Two implement it, structurally: ``SandboxService`` (Docker in this process) and
``LauncherClient`` (a launcher holds Docker). ``build_server`` and the HTTP gate take either,
and ask nothing else of them: no type checks, no optional hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.environment.build import BuildReport, Progress
from mcp_sandbox.output.result import RunResult
from mcp_sandbox.policy.arguments import RunCodeArgs, ShellArgs
from mcp_sandbox.sandbox.slots import Load, OnWait


class CallRunner(Protocol):
    """Runs ``run_code`` and ``shell`` calls and ``prepare_env`` builds; says what the
    server's oversight needs."""

    @property
    def settings(self) -> Settings:
        """What decides approvals, the audit and which tools exist."""

    @property
    def workspace_root(self) -> Path | None:
        """The workspace this server's oversight checks workdirs against (None: none)."""

    @property
    def checks_its_own_workspace(self) -> bool:
        """True when the calls run in another process (a launcher) that checks each call's
        workdir and what it enables against its own workspace: oversight here does not."""

    def scrub(self, text: str) -> str:
        """The scrubber every record, question and error text passes before it leaves."""

    @property
    def scrub_margin(self) -> int:
        """Characters the scrubber needs past a cut to be sure no secret is split (0: the
        runner's output is not seen live here, so no progress line is cut)."""

    async def run_code(self, args: RunCodeArgs, *, waiting: OnWait | None = None) -> RunResult:
        """Run one call; ``waiting`` hears of its place while it waits for a slot."""

    async def shell(self, args: ShellArgs, *, waiting: OnWait | None = None) -> RunResult: ...

    async def build_environment(self, progress: Progress) -> BuildReport:
        """Build the workspace's environment, ``progress`` hearing of each step. Raises
        SandboxError (RequestRejected where this runner cannot build one)."""

    async def kept_output(self, run_id: str, stream: str) -> str | None:
        """The full text kept of a cut stream (``sandbox://runs/<run_id>/<stream>``), or
        None when there is none by that name (any more)."""

    def load(self) -> Load | None:
        """The slots' load now, for the metrics; None when it is another process's."""

    async def reap(self, *, own_too: bool) -> int:
        """Remove what dead servers left (and ours, with ``own_too``); how many."""

    async def run_background(self) -> None:
        """What runs beside the calls for the server's life (the warm pool); until cancelled
        or done."""

    async def shutdown(self) -> None:
        """Stop background work and remove everything of this server's."""
