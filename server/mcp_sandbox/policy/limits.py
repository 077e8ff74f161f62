"""What a run may do: frozen pydantic models. Each safe default lives here, once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from pydantic import BaseModel, ConfigDict, Field

from mcp_sandbox.errors import RequestRejected

# The smallest limits a call, a profile or the config may set. Below MIN_CPUS Docker's
# NanoCPUs round to 0, which means no CPU quota at all (and runc refuses a quota under
# 1 ms per 100 ms period). A timeout far below MIN_TIMEOUT_S ends before anything runs
# (at 1e-300 s even an idle host's wait for a slot ran out, reported as "host busy").
MIN_TIMEOUT_S = 0.1
MIN_MEMORY_MIB = 32
MIN_CPUS = 0.01
MIN_OUTPUT_BYTES = 1_024


class Limits(BaseModel):
    """Resource limits of one sandbox. Units are in the names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(
        30, ge=MIN_TIMEOUT_S, le=3600, description="wall-clock limit of a call"
    )
    memory_mib: int = Field(
        512, ge=MIN_MEMORY_MIB, le=65536, description="RAM; swap is the same, so none"
    )
    cpus: float = Field(1.0, ge=MIN_CPUS, le=64, description="CPU quota, in cores")
    pids: int = Field(256, ge=8, le=8192, description="processes and threads in the container")
    nofile: int = Field(1024, ge=64, le=65536, description="open files per process")
    nproc: int = Field(
        4096,
        ge=64,
        le=65536,
        description="per-uid process ulimit; the kernel counts it across containers, "
        "so `pids` is the real per-sandbox bound",
    )
    fsize_mib: int = Field(64, ge=1, le=65536, description="largest file a process may write")
    tmp_mib: int = Field(64, ge=1, le=65536, description="size of the /tmp tmpfs")
    workdir_mib: int = Field(64, ge=1, le=65536, description="size of the working-directory tmpfs")
    output_bytes: int = Field(
        24_000,
        ge=MIN_OUTPUT_BYTES,
        le=1_000_000,
        description="stdout+stderr kept in a result, after scrubbing; the rest is cut head+tail",
    )


class CallBounds(BaseModel):
    """What one call may send and ask for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_timeout_s: float = Field(
        120, ge=MIN_TIMEOUT_S, le=3600, description="largest timeout_s a call may ask"
    )
    max_code_bytes: int = Field(
        100_000,
        ge=1,
        le=120_000,
        description="largest code or command: it travels as one argv string, 128 KiB at most",
    )
    max_stdin_bytes: int = Field(1_000_000, ge=0, le=16_000_000, description="largest stdin")
    max_memory_mib: int = Field(
        2048, ge=MIN_MEMORY_MIB, le=65536, description="largest memory_mib a call may ask"
    )
    max_cpus: float = Field(2.0, ge=MIN_CPUS, le=64, description="largest cpus a call may ask")
    max_output_bytes: int = Field(
        32_000, ge=MIN_OUTPUT_BYTES, le=1_000_000, description="largest output_bytes a call may ask"
    )
    queue_timeout_s: float = Field(
        120,
        ge=MIN_TIMEOUT_S,
        le=3600,
        description="how long a call may wait for a free sandbox slot, apart from its run "
        "time; then it fails as host busy",
    )


@dataclass(frozen=True)
class LimitRequest:
    """The limits a call asks for; None keeps the configured default."""

    timeout_s: float | None = None
    memory_mib: int | None = None
    cpus: float | None = None
    output_bytes: int | None = None

    @classmethod
    def of(cls, source: BaseModel) -> LimitRequest:
        """What ``source`` asks: a call's arguments, or a profile (both name these four)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    def filled_from(self, profile: LimitRequest) -> LimitRequest:
        """This request, with ``profile``'s values where it asks nothing itself."""
        theirs = asdict(profile)
        return LimitRequest(**{k: theirs[k] if v is None else v for k, v in asdict(self).items()})


@dataclass(frozen=True)
class RunPlan:
    """What policy decided a call runs: everything ``spec`` needs besides identity."""

    argv: tuple[str, ...]
    limits: Limits
    stdin: bytes | None


def asked_limits(limits: Limits, bounds: CallBounds, request: LimitRequest) -> Limits:
    """``limits`` with what the call asks, each between its minimum and configured maximum.

    Raises RequestRejected naming the bound. (A profile's values come here too, and
    ``model_copy`` validates nothing: the minima are checked here, not only in the models.)
    """
    checks = (
        ("timeout_s", request.timeout_s, MIN_TIMEOUT_S, bounds.max_timeout_s),
        ("memory_mib", request.memory_mib, MIN_MEMORY_MIB, bounds.max_memory_mib),
        ("cpus", request.cpus, MIN_CPUS, bounds.max_cpus),
        ("output_bytes", request.output_bytes, MIN_OUTPUT_BYTES, bounds.max_output_bytes),
    )
    update: dict[str, float] = {}
    for name, value, least, most in checks:
        if value is None:
            continue
        if not value >= least:  # NaN too
            raise RequestRejected(f"{name} {value:g} is below the minimum of {least:g}")
        if value > most:
            raise RequestRejected(f"{name} {value:g} is above the configured maximum of {most:g}")
        update[name] = value
    return limits.model_copy(update=update) if update else limits


def plan_run(
    limits: Limits,
    bounds: CallBounds,
    argv: tuple[str, ...],
    source: str,
    stdin: str | None,
    request: LimitRequest,
) -> RunPlan:
    """Check one call against the configured bounds. Raises RequestRejected."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if not source.strip():
        raise RequestRejected("the code or command is empty")
    if size > bounds.max_code_bytes:
        raise RequestRejected(
            f"the code or command is {size} bytes; the limit is {bounds.max_code_bytes}"
        )
    if "\x00" in source:
        raise RequestRejected("the code or command holds a NUL byte, which no argv can carry")
    stdin_bytes = None
    if stdin is not None:
        stdin_bytes = stdin.encode("utf-8", "surrogatepass")
        if len(stdin_bytes) > bounds.max_stdin_bytes:
            raise RequestRejected(
                f"stdin is {len(stdin_bytes)} bytes; the limit is {bounds.max_stdin_bytes}"
            )
    limits = asked_limits(limits, bounds, request)
    return RunPlan(argv=argv, limits=limits, stdin=stdin_bytes)
