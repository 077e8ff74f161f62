"""A ``CallRunner`` for tests of the MCP surface: records each call, runs nothing."""

from __future__ import annotations

from pathlib import Path

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.config.workspace import default_root
from mcp_sandbox.environment.build import BuildReport, Progress
from mcp_sandbox.environment.volumes import Environment
from mcp_sandbox.output.result import RunResult
from mcp_sandbox.policy.arguments import RunCodeArgs, ShellArgs
from mcp_sandbox.sandbox.slots import OnWait
from mcp_sandbox.service import make_scrubber


class FakeRunner:
    """Stands in for ``SandboxService``: each call returns a result whose stdout is
    ``stdout``; ``ran`` holds what it was asked to run, ``shut_down`` whether it was told to
    stop."""

    def __init__(self, settings: Settings | None = None, *, stdout: str = "") -> None:
        self.settings = settings or Settings()
        self.stdout = stdout
        self.ran: list[RunCodeArgs | ShellArgs] = []
        self.reaped: list[bool] = []
        self.builds = 0  # prepare_env builds asked for
        self.shut_down = False
        self._scrubber = make_scrubber(self.settings)

    @property
    def workspace_root(self) -> Path | None:
        return default_root(self.settings.workspace)

    @property
    def checks_its_own_workspace(self) -> bool:
        return False

    def scrub(self, text: str) -> str:
        return self._scrubber.scrub(text)

    @property
    def scrub_margin(self) -> int:
        return 0

    async def kept_output(self, run_id: str, stream: str) -> str | None:
        return None

    def load(self) -> None:
        return None

    async def run_code(self, args: RunCodeArgs, *, waiting: OnWait | None = None) -> RunResult:
        return self._result(args)

    async def shell(self, args: ShellArgs, *, waiting: OnWait | None = None) -> RunResult:
        return self._result(args)

    async def build_environment(self, progress: Progress) -> BuildReport:
        """A build that installs nothing: one progress line, then a ready environment."""
        self.builds += 1
        await progress("building the environment")
        root = str(self.workspace_root)
        env = Environment(
            id="mcp-sandbox-env-fake",
            key="fake",
            digest="0" * 64,
            workspace=root,
            image=self.settings.image,
            built_unix=0,
            size_mib=1,
            packages=0,
        )
        return BuildReport(env, (), 0, 0, ())

    async def reap(self, *, own_too: bool) -> int:
        self.reaped.append(own_too)
        return 0

    async def run_background(self) -> None:
        pass

    async def shutdown(self) -> None:
        self.shut_down = True

    def _result(self, args: RunCodeArgs | ShellArgs) -> RunResult:
        self.ran.append(args)
        return RunResult(
            exit_code=0,
            timed_out=False,
            oom_killed=False,
            truncated=False,
            duration_ms=5,
            pooled=False,
            stdout_bytes=0,
            stderr_bytes=0,
            image="mcp-sandbox-runtime:0.1",
            run_id=f"run{len(self.ran)}",
            sandbox=f"mcp-sandbox-run{len(self.ran)}",
            stdout=self.stdout,
            stderr="",
        )
