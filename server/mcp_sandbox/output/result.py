"""The structured result of a call, and what it says of the workspace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from mcp_sandbox.output.shaping import fit, json_chars
from mcp_sandbox.policy.arguments import Mode


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


class EnvironmentReport(BaseModel):
    """The project environment the run had at /env (``mcp-sandbox env build``)."""

    model_config = ConfigDict(frozen=True)

    id: str | None = Field(None, description="the environment's volume; null without one")
    state: Literal["ready", "stale", "none"] = Field(
        "none", description="stale: a manifest changed since it was built (it still ran)"
    )
    built_at: str | None = Field(None, description="when it was built, UTC")
    hint: str | None = Field(None, description="what to do when it is stale")


NO_ENVIRONMENT = EnvironmentReport()


class EnvironmentBuilt(BaseModel):
    """prepare_env's result: the environment later calls of this workspace mount."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="the environment's volume")
    state: Literal["ready"] = "ready"
    built_at: str = Field(description="when it was built, UTC")
    size_mib: int = Field(description="its size, measured after the build")
    duration_ms: int = Field(description="how long the build took")
    egress_allowed: int = Field(description="requests the build's proxy let through")
    egress_denied: list[str] = Field(
        default_factory=list, description='what the proxy refused, as "host:port (reason)"'
    )
    packages: list[str] = Field(default_factory=list, description="what it holds, by name")

    def summary(self) -> str:
        refused = f"; refused: {', '.join(self.egress_denied)}" if self.egress_denied else ""
        return (
            f"environment {self.id} ready ({self.size_mib} MiB, {len(self.packages)} "
            f"package(s), built in {self.duration_ms / 1000:.1f} s){refused}; later calls "
            "of this workspace have it at /env"
        )


class Resources(BaseModel):
    """What a run used, read from its cgroup inside the sandbox as it ended.

    A figure is null when the sandbox could not report it: a run that timed out or was
    stopped for its output is killed before it can. The sandbox reports these itself, so
    a program can misstate its own (never another run's).
    """

    model_config = ConfigDict(frozen=True)

    wall_ms: int = Field(description="wall time from start to exit")
    cpu_user_ms: int | None = Field(None, description="CPU time in user mode")
    cpu_system_ms: int | None = Field(None, description="CPU time in the kernel")
    peak_memory_mib: float | None = Field(
        None, description="the sandbox's peak memory (its memory cgroup's high-water mark)"
    )
    memory_limit_mib: int = Field(description="the memory limit the run had")
    oom_kills: int | None = Field(None, description="processes of the run the memory limit killed")
    peak_processes: int | None = Field(None, description="the most processes at once")
    processes_limit: int = Field(description="the process limit the run had")
    tmp_bytes_added: int | None = Field(None, description="bytes the run left in /tmp")
    workdir_bytes_added: int | None = Field(
        None,
        description="bytes the run left in its working directory (null for a read-only "
        "workspace, which is the host's disk)",
    )

    def line(self) -> str:
        """One line for the text block: CPU, and how close memory came to its limit."""
        parts = []
        if self.cpu_user_ms is not None and self.cpu_system_ms is not None:
            parts.append(f"CPU {(self.cpu_user_ms + self.cpu_system_ms) / 1000:.2f} s")
        if self.peak_memory_mib is not None:
            parts.append(f"peak memory {self.peak_memory_mib:.1f} of {self.memory_limit_mib} MiB")
        if self.peak_processes is not None:
            parts.append(f"{self.peak_processes} of {self.processes_limit} processes")
        return "resources: " + (", ".join(parts) if parts else "not reported")


class FailingTest(BaseModel):
    """A test that failed or erred: its id and the first lines of what the runner said."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description='as the runner names it: "path::Class::test", or its title')
    outcome: Literal["failed", "error"]
    text: str = Field(description="the first lines of its failure: scrubbed, cut")


class SuiteSummary(BaseModel):
    """A test run's counts and failures, from the report its runner wrote in the sandbox."""

    model_config = ConfigDict(frozen=True)

    reports: list[str] = Field(description='which reports were read: "pytest.xml", "node.tap"')
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = Field(0, description="tests that erred outside their assertions")
    failing: list[FailingTest] = Field(
        default_factory=list, description="the first failing tests, as many as fit"
    )
    note: str | None = Field(None, description="why there are no counts, or what was left out")


@dataclass(frozen=True)
class Image:
    """An image file of a run, to send as MCP image content: its bytes as written."""

    mime_type: str
    data: bytes


class OutputFile(BaseModel):
    """A file the run left under /tmp/outputs (asked with ``outputs=true``)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="as the program named it: scrubbed, neutralised, cut")
    size: int = Field(description="its size in bytes, as the sandbox reported it")
    kind: Literal["text", "image", "binary", "symlink", "other", "file"] = Field(
        description='"file": a regular file past the total cap (or unreadable), so not read'
    )
    mime_type: str | None = None
    content: Literal["image", "resource"] | None = Field(
        None,
        description='how it came back: "image", as image content in this result; '
        '"resource", as a resource to read at `uri`; null: not returned (see note)',
    )
    uri: str | None = Field(
        None, description='a text file\'s scrubbed contents: "sandbox://runs/<run_id>/files/<key>"'
    )
    note: str | None = Field(None, description="why it was not returned, or what was cut")


# Characters of each stream the text block repeats, at most.
PREVIEW_CHARS = 2_000


# A whole result, as JSON on the wire, stays under this many characters (README, "Tools"):
# Claude Code replaces results over about 50,000 with a preview.
RESULT_CHARS = 40_000


class RunResult(BaseModel):
    """One finished run. A failing, timed-out or OOM-killed program is a result, not an error.

    Field order is the JSON order: Claude Code shows the model compact JSON and cuts long
    results, so the verdict comes before the output.
    """

    model_config = ConfigDict(frozen=True)
    # Sent as image content beside the structured result, never in it (nor over a launcher).
    _images: tuple[Image, ...] = PrivateAttr(default=())

    exit_code: int | None = Field(description="the program's exit status; null if killed first")
    timed_out: bool = Field(description="the wall-clock limit ended the run")
    oom_killed: bool = Field(description="the memory limit ended a process of the run")
    truncated: bool = Field(description="stdout or stderr was cut to fit the output budget")
    duration_ms: int = Field(description="wall time from start to exit")
    pooled: bool = Field(description="ran in a pre-started sandbox (still fresh: one call each)")
    stdout_bytes: int = Field(description="bytes the program wrote to stdout, before any cut")
    stderr_bytes: int = Field(description="bytes the program wrote to stderr, before any cut")
    image: str = Field(description="the image the sandbox ran")
    run_id: str = Field(description="this run's id, as in the server's log")
    sandbox: str = Field(description="the container it ran in, removed since")
    egress_allowed: int = Field(
        0, description='network="egress": requests the proxy let through (0 without a network)'
    )
    egress_denied: list[str] = Field(
        default_factory=list,
        description='network="egress": what the proxy refused, as "host:port (reason)"',
    )
    egress_credentials: list[str] = Field(
        default_factory=list,
        description='network="egress": names of the configured credentials the proxy put in '
        "requests of this call (never their values)",
    )
    workspace: WorkspaceReport | None = Field(
        None, description="the workspace mode and, for copy and rw, the files the run changed"
    )
    runtime: str | None = Field(
        None, description="the OCI runtime the sandbox ran under: runc, or runsc (gVisor)"
    )
    queued_ms: int | None = Field(
        None, description="time the call waited for a free sandbox slot before it started"
    )
    environment: EnvironmentReport = Field(
        NO_ENVIRONMENT, description="the project environment mounted at /env, if any"
    )
    resources: Resources | None = Field(
        None, description="what the run used: CPU, peak memory and processes, bytes written"
    )
    tests: SuiteSummary | None = Field(
        None, description="a test run's counts and failing tests, from its runner's report"
    )
    full_output: list[str] = Field(
        default_factory=list,
        description="a cut stream's full text (its first 2 MiB, scrubbed), as resources to "
        'read: "sandbox://runs/<run_id>/stdout" and .../stderr',
    )
    files: list[OutputFile] = Field(
        default_factory=list,
        description="outputs=true: the files the run left under /tmp/outputs, the first few",
    )
    files_note: str | None = Field(None, description="outputs=true: a cap that was reached, if any")
    stdout: str = Field(description="standard output: scrubbed, control characters neutralised")
    stderr: str = Field(description="standard error: scrubbed, control characters neutralised")

    @property
    def images(self) -> tuple[Image, ...]:
        """The run's image files to send as image content (``outputs``)."""
        return self._images

    def with_images(self, images: tuple[Image, ...]) -> RunResult:
        """This result, with ``images`` to send beside it."""
        self._images = images
        return self

    def summary(self, room: int | None = None, preview_chars: int = PREVIEW_CHARS) -> str:
        """A short text block for clients that ignore structured content.

        It repeats the output's first ``preview_chars`` characters per stream. As JSON
        (``json_chars``) it weighs at most ``room`` (but for the verdict line, always
        there): the structured content comes first, and this takes what it leaves of the
        result's size.
        """
        if self.timed_out:
            verdict = "timed out"
        elif self.oom_killed:
            verdict = f"killed by the memory limit (exit {self.exit_code})"
        else:
            verdict = f"exit {self.exit_code}"
        lines = [
            f"{verdict} in {self.duration_ms} ms" + (" (output cut)" if self.truncated else "")
        ]
        if self.resources is not None:
            lines.append(self.resources.line())
        if self.full_output:
            lines.append("full output: " + ", ".join(self.full_output))
        if self.files or self.files_note:
            lines.append(
                "files: "
                + ", ".join(
                    f"{f.name} ({f.uri or f.content or 'not returned'})" for f in self.files
                )
                + (f" ({self.files_note})" if self.files_note else "")
            )
        if self.tests is not None:
            t = self.tests
            lines.append(
                f"tests: {t.passed} passed, {t.failed} failed, {t.skipped} skipped, "
                f"{t.errors} errors"
                + "".join(f"\n  {f.outcome.upper()} {f.id}" for f in t.failing)
                + (f" ({t.note})" if t.note else "")
            )
        if self.egress_allowed or self.egress_denied:
            lines.append(
                f"egress: {self.egress_allowed} allowed"
                + (f"; refused: {', '.join(self.egress_denied)}" if self.egress_denied else "")
            )
        if self.workspace is not None and self.workspace.mode != "ro":
            ws = self.workspace
            lines.append(
                f"workspace {ws.mode}: {ws.changes_total} path(s) changed"
                + (f", {ws.applied} written back" if ws.applied is not None else "")
                + (f" ({ws.note})" if ws.note else "")
            )
        if self.environment.hint:
            lines.append(self.environment.hint)
        if room is None:
            room = 1 << 62  # no limit but the previews' own
        # The verdict always; what follows it as far as the room goes.
        text = lines[0]
        text += fit(
            "".join("\n" + line for line in lines[1:]), room - json_chars(text), weight=json_chars
        )
        left = room - json_chars(text)
        streams = [(n, out) for n, out in (("stdout", self.stdout), ("stderr", self.stderr)) if out]
        for i, (name, out) in enumerate(streams):
            label = f"\n--- {name} ---\n"
            # An even share of what is left, less the label and a "…".
            share = (left - json_chars(label) - 1) // (len(streams) - i)
            if share < 1:
                continue
            part = fit(out[:preview_chars], share, weight=json_chars)
            piece = label + part + ("…" if len(part) < len(out) else "")
            text += piece
            left -= json_chars(piece)
        return text
