"""How long ``Scrubber.scrub`` takes per MB of output, next to a plain ``str.replace``.

Run: ``python benchmarks/scrub.py``. Prints, for each kind of text, the best of several runs
in ms per MB, and its ratio to ``str.replace`` of one known value over the same text. The
target (issue 4) is under 20 ms per MB of typical output; nothing here asserts it.
"""

from __future__ import annotations

import base64
import random
import string
import time
from collections.abc import Callable
from functools import partial

from mcp_sandbox.output.scrubber import Scrubber

SIZE = 1_000_000
ROUNDS = 7
ALNUM = string.ascii_letters + string.digits


def _token(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _known(rng: random.Random) -> dict[str, str]:
    """Secrets a server's environment typically holds."""
    return {
        "GITHUB_TOKEN": "ghp_" + _token(rng, 36),
        "ANTHROPIC_API_KEY": "sk-ant-api03-" + _token(rng, 93) + "AA",
        "AWS_ACCESS_KEY_ID": "AKIA" + _token(rng, 16, string.ascii_uppercase + "234567"),
        "AWS_SECRET_ACCESS_KEY": _token(rng, 40, ALNUM + "/+"),
        "DATABASE_PASSWORD": _token(rng, 20, ALNUM + "!@#%^&*"),
        "SLACK_BOT_TOKEN": f"xoxb-{rng.randrange(10**11)}-{rng.randrange(10**11)}-"
        + _token(rng, 24),
        "NPM_TOKEN": "npm_" + _token(rng, 36),
        "SENTRY_AUTH_TOKEN": _token(rng, 64, "0123456789abcdef"),
    }


def _fill(lines: Callable[[int], str]) -> str:
    out: list[str] = []
    size = 0
    i = 0
    while size < SIZE:
        line = lines(i)
        out.append(line)
        size += len(line) + 1
        i += 1
    return "\n".join(out)[:SIZE]


def log_text(rng: random.Random) -> str:
    def line(i: int) -> str:
        return (
            f"2025-01-{1 + i % 28:02d}T12:{i % 60:02d}:{i % 59:02d}.{i % 997:03d}Z INFO "
            f"worker-{i % 7} GET /api/v1/items/{i}?page={i % 13} status=200 "
            f"request_id={rng.getrandbits(64):016x} took {rng.random():.3f}s"
        )

    return _fill(line)


def pytest_text(rng: random.Random) -> str:
    def line(i: int) -> str:
        if i % 50 == 0:
            return (
                'tests/unit/test_mod.py:42: in test_case\n    assert result == {"a": 1}\n'
                "E   AssertionError: assert {'a': 2} == {'a': 1}\n"
                "E     Differing items:\nE     {'a': 2} != {'a': 1}"
            )
        status = "PASSED" if rng.random() > 0.05 else "FAILED"
        test = f"tests/unit/test_mod_{i % 40}.py::test_case_{i}[param-{i % 9}]"
        return f"{test} {status} [{i % 100:3d}%]"

    return _fill(line)


def base64_text(rng: random.Random) -> str:
    noise = base64.b64encode(rng.randbytes(SIZE * 3 // 4)).decode()
    return "\n".join(noise[i : i + 76] for i in range(0, SIZE, 77))[:SIZE]


def secrets_text(rng: random.Random, known: dict[str, str]) -> str:
    values = list(known.values())
    extra = [
        "ghp_" + _token(rng, 36),
        "AKIA" + _token(rng, 16, string.ascii_uppercase + "234567"),
        "https://admin:" + _token(rng, 12) + "@db.internal:5432/app",
        "Authorization: Bearer " + _token(rng, 40),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0." + _token(rng, 43),
    ]

    def line(i: int) -> str:
        secret = rng.choice(values + extra)
        if i % 3 == 0:
            secret = base64.b64encode(secret.encode()).decode()
        return f"line {i}: value={secret} more text here"

    return _fill(line)


def best_ms(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    rng = random.Random(4)
    known = _known(rng)
    scrubber = Scrubber(known)
    patterns_only = Scrubber()
    one_value = known["GITHUB_TOKEN"]
    texts = {
        "plain ASCII log": log_text(rng),
        "pytest-like output": pytest_text(rng),
        "base64 noise": base64_text(rng),
        "many secrets": secrets_text(rng, known),
    }
    print(f"{'text':20} {'scrub ms/MB':>12} {'rules only':>11} {'str.replace':>12} {'ratio':>7}")
    for name, text in texts.items():
        mb = len(text.encode()) / 1_000_000
        scrub = best_ms(partial(scrubber.scrub, text)) / mb
        rules = best_ms(partial(patterns_only.scrub, text)) / mb
        base = best_ms(partial(text.replace, one_value, "[REDACTED]")) / mb
        print(f"{name:20} {scrub:12.2f} {rules:11.2f} {base:12.3f} {scrub / base:6.0f}x")
    print(f"({len(known)} known values, {ROUNDS} rounds, best shown)")


if __name__ == "__main__":
    main()
