"""Tool arguments as the caller sends them: validated here, once per call, into the one
object (``RunCodeArgs``, ``ShellArgs`` or ``PrepareEnvArgs``) that oversight, policy and the
service all read. Decided on in ``policy.limits``."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from mcp_sandbox.policy import languages
from mcp_sandbox.policy.languages import Language
from mcp_sandbox.policy.limits import MIN_CPUS, MIN_MEMORY_MIB, MIN_OUTPUT_BYTES, MIN_TIMEOUT_S

Mode = Literal["ro", "copy", "rw"]
Tool = Literal["run_code", "shell", "prepare_env"]
MODES: tuple[Mode, ...] = get_args(Mode)


MAX_WORKDIR_CHARS = 4096


_LARGEST = 2**53  # the largest integer a JSON number holds exactly


def _json_number(value: object) -> object:
    """A limit is a JSON number: `true` is not 1 core, and "1e309" is not a number."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError("must be a number")
    if isinstance(value, int) and abs(value) > _LARGEST:  # past a float, `:g` overflows
        raise ValueError(f"must be at most {_LARGEST}")
    return value


JsonNumber = BeforeValidator(_json_number)

TimeoutArg = Annotated[
    float | None,
    Field(
        ge=MIN_TIMEOUT_S,
        allow_inf_nan=False,
        description="wall-clock limit in seconds; the configured default when omitted, "
        f"at least {MIN_TIMEOUT_S:g}, never above the configured maximum",
    ),
    JsonNumber,
]
StdinArg = Annotated[str | None, Field(description="text fed to the program's standard input")]
NetworkArg = Annotated[
    Literal["none", "egress"],
    Field(
        description='"none": no network at all. "egress": out only through the server\'s proxy, '
        "to its allowlisted host names (when the server enables it)",
    ),
]

MemoryArg = Annotated[
    int | None,
    Field(
        ge=MIN_MEMORY_MIB,
        description="memory limit in MiB; the configured default when omitted, never above the "
        "configured maximum",
    ),
    JsonNumber,
]
CpusArg = Annotated[
    float | None,
    Field(
        ge=MIN_CPUS,
        allow_inf_nan=False,
        description="CPU quota in cores; the configured default when omitted, "
        f"at least {MIN_CPUS:g}, never above the configured maximum",
    ),
    JsonNumber,
]
OutputArg = Annotated[
    int | None,
    Field(
        ge=MIN_OUTPUT_BYTES,
        description="stdout+stderr bytes kept in the result; the configured default when omitted",
    ),
    JsonNumber,
]
ProfileArg = Annotated[
    str | None,
    Field(
        max_length=64,
        description="a named shape of work the server's config defines (limits, workspace mode, "
        "network), which its operator may have pre-approved",
    ),
]

WorkdirArg = Annotated[
    str,
    Field(
        max_length=MAX_WORKDIR_CHARS,
        description="working directory, relative to the workspace root (mounted at /workspace); "
        "it must exist and stay inside the root",
    ),
]
WorkspaceArg = Annotated[
    Mode | None,
    Field(
        description='how the workspace is mounted: "ro" read-only; "copy" a throw-away '
        'writable copy (the result lists what changed); "rw" changes are written back to '
        "your files (only if the server enables it). Omitted: the server's default (ro)",
    ),
]

ReportArg = Annotated[
    Literal["tests"] | None,
    Field(
        description='"tests": the program is a test run (pytest, node --test); the result '
        "gets `tests` (counts, failing ids, first lines of each failure) from the runner's "
        "own report. Omitted: asked for when the command starts pytest or node --test",
    ),
]
OutputsArg = Annotated[
    bool,
    Field(
        description="true: the files the program writes under /tmp/outputs come back (at most "
        "16, 256 KiB each, 1 MiB in all): text files as resources named in `files` "
        "(scrubbed), PNG, JPEG and SVG images as image content where the server allows",
    ),
]


class _SandboxArgs(BaseModel):
    """What both tools take besides the program itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: TimeoutArg = None
    stdin: StdinArg = None
    network: NetworkArg = "none"
    workdir: WorkdirArg = "."
    workspace: WorkspaceArg = None
    profile: ProfileArg = None
    memory_mib: MemoryArg = None
    cpus: CpusArg = None
    output_bytes: OutputArg = None
    report: ReportArg = None
    outputs: OutputsArg = False


class RunCodeArgs(_SandboxArgs):
    tool: ClassVar[Tool] = "run_code"

    language: Language = Field(description="which interpreter runs the code")
    code: str = Field(description="the program text")

    @property
    def source(self) -> str:
        """What the caller wrote: what the bounds measure and the audit records."""
        return self.code

    @property
    def argv(self) -> tuple[str, ...]:
        """The command that runs it. KeyError for a language we do not have."""
        return languages.argv_for(self.language, self.code)


class ShellArgs(_SandboxArgs):
    tool: ClassVar[Tool] = "shell"

    command: str = Field(description="a /bin/sh command line")

    @property
    def source(self) -> str:
        return self.command

    @property
    def argv(self) -> tuple[str, ...]:
        return (*languages.SHELL_PREFIX, self.command)


CallArgs = RunCodeArgs | ShellArgs  # one sandbox call's arguments, validated


class PrepareEnvArgs(BaseModel):
    """prepare_env's: only a profile (one may pre-approve the build). The build runs none of
    the caller's code, at the workspace root, its network the configured package indexes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tool: ClassVar[Tool] = "prepare_env"

    profile: ProfileArg = None

    @property
    def source(self) -> str:
        """No code of the caller's: the build's commands come from config and manifests."""
        return ""

    @property
    def workdir(self) -> str:
        return "."


ToolArgs = CallArgs | PrepareEnvArgs  # any tool's arguments: what oversight screens and records


def _flat_parameters(model: type[ToolArgs]) -> list[inspect.Parameter]:
    """``model``'s fields as keyword parameters, the required ones first, each typed as its
    field is declared (constraints and description included, a ``Field()`` default not):
    what a function's signature must say for the SDK to offer them as flat tool arguments."""
    hints = typing.get_type_hints(model, include_extras=True)
    empty = inspect.Parameter.empty
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=hints[name],
            default=empty if info.is_required() else info.default,
        )
        for name, info in model.model_fields.items()
    ]
    return sorted(params, key=lambda p: p.default is not empty)


F = TypeVar("F", bound=Callable[..., Any])


def takes_arguments_of(model: type[ToolArgs]) -> Callable[[F], F]:
    """Give a tool or a resolver ``model``'s fields as parameters, before its own keyword-only
    ones (it takes them as ``**``): the SDK reads a tool's flat input schema, and the
    arguments a resolver takes by name, off the signature."""

    def give(fn: F) -> F:
        own = inspect.signature(fn, eval_str=True)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = own.replace(parameters=[*_flat_parameters(model), *kept])  # type: ignore[attr-defined]
        return fn

    return give


_SHOWN_KEY = 40


def describe_bad_arguments(exc: ValidationError, *, supported_languages: tuple[str, ...]) -> str:
    """One line for the caller, naming each bad argument; never echoes its value."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "arguments"
        if len(key) > _SHOWN_KEY:  # the caller wrote it: a few characters name it enough
            key = key[:_SHOWN_KEY] + "…"
        if err["type"] == "missing":
            parts.append(f"{key} is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown argument {key!r}")
        elif key == "language":
            parts.append(f"unknown language; supported: {', '.join(supported_languages)}")
        else:
            parts.append(f"{key}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)
