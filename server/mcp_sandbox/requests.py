"""Tool arguments as the caller sends them: validated here, decided on in ``policy``."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcp_sandbox.languages import Language

TimeoutArg = Annotated[
    float | None,
    Field(
        gt=0,
        description="wall-clock limit in seconds; the configured default when omitted, "
        "never above the configured maximum",
    ),
]
StdinArg = Annotated[str | None, Field(description="text fed to the program's standard input")]


class RunCodeArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    language: Language = Field(description="which interpreter runs the code")
    code: str = Field(description="the program text")
    timeout_s: TimeoutArg = None
    stdin: StdinArg = None


class ShellArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str = Field(description="a /bin/sh command line")
    timeout_s: TimeoutArg = None
    stdin: StdinArg = None


def describe_bad_arguments(exc: ValidationError, *, supported_languages: tuple[str, ...]) -> str:
    """One line for the caller, naming each bad argument; never echoes its value."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "arguments"
        if err["type"] == "missing":
            parts.append(f"{key} is required")
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown argument {key!r}")
        elif key == "language":
            parts.append(f"unknown language; supported: {', '.join(supported_languages)}")
        else:
            parts.append(f"{key}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)
