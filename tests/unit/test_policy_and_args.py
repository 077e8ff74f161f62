"""Policy decisions and argument checks: one plain line for each bad input."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.languages import SUPPORTED
from mcp_sandbox.policy import CallBounds, Limits, Sizes, decide
from mcp_sandbox.requests import RunCodeArgs, describe_bad_arguments

ARGV = ("python3", "-c", "print(1)")


def test_defaults_apply_when_the_call_asks_nothing() -> None:
    plan = decide(Limits(), CallBounds(), ARGV, "print(1)", None, None)
    assert plan.limits == Limits() and plan.stdin is None


def test_a_call_may_ask_a_timeout_up_to_the_maximum() -> None:
    plan = decide(Limits(), CallBounds(max_timeout_s=60), ARGV, "x", 60, None)
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
        decide(Limits(timeout_s=10), bounds, ARGV, source, timeout, stdin)


def test_a_call_may_ask_other_limits_up_to_their_maxima() -> None:
    sizes = Sizes(memory_mib=2048, cpus=2, output_bytes=32_000)
    plan = decide(Limits(), CallBounds(), ARGV, "x", 90, None, sizes)
    assert (plan.limits.timeout_s, plan.limits.memory_mib) == (90, 2048)
    assert (plan.limits.cpus, plan.limits.output_bytes) == (2, 32_000)
    with pytest.raises(RequestRejected, match="memory_mib 2049 is above the configured maximum"):
        decide(Limits(), CallBounds(), ARGV, "x", None, None, Sizes(memory_mib=2049))


def _bad(args: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as info:
        RunCodeArgs.model_validate(args)
    return describe_bad_arguments(info.value, supported_languages=SUPPORTED)


def test_bad_arguments_are_one_line_and_never_echo_values() -> None:
    message = _bad({"language": "ruby", "code": "SECRET-VALUE", "timeout_s": "x", "nope": 1})
    assert "\n" not in message and "SECRET-VALUE" not in message
    assert "supported: python, javascript, bash" in message
    assert "unknown argument 'nope'" in message and "timeout_s" in message


def test_missing_arguments_are_named() -> None:
    assert _bad({}) == "invalid arguments: language is required; code is required"
