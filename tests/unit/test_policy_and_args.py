"""Policy decisions and argument checks: one plain line for each bad input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.arguments import RunCodeArgs, describe_bad_arguments
from mcp_sandbox.policy.languages import SUPPORTED
from mcp_sandbox.policy.limits import (
    MIN_CPUS,
    MIN_TIMEOUT_S,
    CallBounds,
    LimitRequest,
    Limits,
    RunPlan,
    asked_limits,
    plan_run,
)
from mcp_sandbox.sandbox.spec import build_spec

ARGV = ("python3", "-c", "print(1)")


def test_defaults_apply_when_the_call_asks_nothing() -> None:
    plan = plan_run(Limits(), CallBounds(), ARGV, "print(1)", None, LimitRequest())
    assert plan.limits == Limits() and plan.stdin is None


def test_a_call_may_ask_a_timeout_up_to_the_maximum() -> None:
    plan = plan_run(Limits(), CallBounds(max_timeout_s=60), ARGV, "x", None, LimitRequest(60))
    assert plan.limits.timeout_s == 60


@pytest.mark.parametrize(
    ("source", "timeout", "stdin", "needle"),
    [
        ("", None, None, "empty"),
        ("   ", None, None, "empty"),
        ("x" * 101, None, None, "limit is 100"),
        ("a\x00b", None, None, "NUL"),
        ("x", 61, None, "maximum of 60"),
        ("x", None, "y" * 11, "stdin is 11 bytes; the limit is 10"),
    ],
)
def test_rejections_say_what_is_allowed(
    source: str, timeout: float | None, stdin: str | None, needle: str
) -> None:
    bounds = CallBounds(max_code_bytes=100, max_timeout_s=60, max_stdin_bytes=10)
    with pytest.raises(RequestRejected, match=needle):
        plan_run(Limits(timeout_s=10), bounds, ARGV, source, stdin, LimitRequest(timeout))


def test_a_call_may_ask_other_limits_up_to_their_maxima() -> None:
    request = LimitRequest(timeout_s=90, memory_mib=2048, cpus=2, output_bytes=32_000)
    plan = plan_run(Limits(), CallBounds(), ARGV, "x", None, request)
    assert (plan.limits.timeout_s, plan.limits.memory_mib) == (90, 2048)
    assert (plan.limits.cpus, plan.limits.output_bytes) == (2, 32_000)
    with pytest.raises(RequestRejected, match="memory_mib 2049 is above the configured maximum"):
        plan_run(Limits(), CallBounds(), ARGV, "x", None, LimitRequest(memory_mib=2049))


def _bad(args: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        RunCodeArgs.model_validate(args)
    return describe_bad_arguments(info.value, supported_languages=SUPPORTED)


def test_bad_arguments_are_one_line_and_never_echo_values() -> None:
    message = _bad({"language": "ruby", "code": "SECRET-VALUE", "timeout_s": "x", "nope": 1})
    assert "\n" not in message and "SECRET-VALUE" not in message
    assert "supported: python, javascript, bash" in message
    assert "unknown argument 'nope'" in message and "timeout_s" in message


def test_an_unknown_argument_is_named_in_a_few_characters() -> None:
    message = _bad({"language": "python", "code": "1", "k" * 10_000: 1})
    assert message == f"invalid arguments: unknown argument '{'k' * 40}…'"


def test_missing_arguments_are_named() -> None:
    assert _bad({}) == "invalid arguments: language is required; code is required"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # nano_cpus = int(1e-12 * 1e9) = 0: Docker's "no CPU quota at all".
        ({"cpus": 1e-12}, "cpus: Input should be greater than or equal to 0.01"),
        ({"cpus": 0.009}, "cpus: Input should be greater than or equal to 0.01"),
        ({"cpus": 0}, "cpus: Input should be greater than or equal to 0.01"),
        ({"cpus": float("nan")}, "cpus: Input should be a finite number"),
        ({"timeout_s": float("inf")}, "timeout_s: Input should be a finite number"),
        # A JSON number, nothing that converts to one: `true` was 1 core, "1e309" infinite.
        ({"cpus": True}, "cpus: Value error, must be a number"),
        ({"memory_mib": True}, "memory_mib: Value error, must be a number"),
        ({"cpus": "1e309"}, "cpus: Value error, must be a number"),
        ({"output_bytes": "4096"}, "output_bytes: Value error, must be a number"),
        ({"memory_mib": 10**400}, "memory_mib: Value error, must be at most 9007199254740992"),
        ({"timeout_s": 1e-300}, "timeout_s: Input should be greater than or equal to 0.1"),
        ({"timeout_s": 0.05}, "timeout_s: Input should be greater than or equal to 0.1"),
    ],
)
def test_limits_below_their_minimum_are_bad_arguments(args: dict[str, object], needle: str) -> None:
    assert _bad({"language": "python", "code": "1", **args}) == f"invalid arguments: {needle}"


def test_the_minimum_limits_are_valid_arguments() -> None:
    args = RunCodeArgs(language="python", code="1", cpus=MIN_CPUS, timeout_s=MIN_TIMEOUT_S)
    assert (args.cpus, args.timeout_s) == (0.01, 0.1)


@pytest.mark.parametrize(
    ("asked", "needle"),
    [
        (LimitRequest(cpus=1e-12), "cpus 1e-12 is below the minimum of 0.01"),
        (LimitRequest(timeout_s=1e-300), "timeout_s 1e-300 is below the minimum of 0.1"),
        (LimitRequest(memory_mib=8), "memory_mib 8 is below the minimum of 32"),
        (LimitRequest(output_bytes=10), "output_bytes 10 is below the minimum of 1024"),
        (LimitRequest(cpus=float("nan")), "cpus nan is below the minimum of 0.01"),
    ],
)
def test_asked_limits_below_their_minimum_are_refused(asked: LimitRequest, needle: str) -> None:
    """What arrives without the argument models (a profile's values) is checked too."""
    with pytest.raises(RequestRejected, match=needle):
        asked_limits(Limits(), CallBounds(), asked)


@pytest.mark.parametrize("field", ["cpus", "timeout_s"])
def test_config_cannot_set_a_limit_below_its_minimum(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Limits.model_validate({field: 1e-12})
    with pytest.raises(ValidationError, match=f"max_{field}"):
        CallBounds.model_validate({f"max_{field}": 1e-12})


def test_the_smallest_cpus_is_still_a_cpu_quota() -> None:
    """0 NanoCPUs is no quota; runc refuses less than 1 ms of CPU per 100 ms period."""
    plan = RunPlan(argv=ARGV, limits=Limits(cpus=MIN_CPUS), stdin=None)
    spec = build_spec(
        plan, image="i", run_id="r", owner="o", seccomp_json="{}", extra_env={}, runtime=None
    )
    assert spec.host_config_kwargs()["nano_cpus"] == 10_000_000
