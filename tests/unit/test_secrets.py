"""The scrubber (issue 4): planted secrets never survive, ordinary output is left alone."""

from __future__ import annotations

import base64
import json
import random
import re
import string
import time
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mcp_sandbox.output.scrubber import (
    MIN_KNOWN_LENGTH,
    PATTERN_SPAN,
    RULES,
    Rule,
    Scrubber,
    secret_values_from_env,
)
from mcp_sandbox.policy.secret_names import looks_secret_name

ALNUM = string.ascii_letters + string.digits
MARKER = re.compile(r"\[REDACTED:[^\]]*\]")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "secrets.md"

# ---------------------------------------------------------------- fixed, ordinary corpora

PYTEST_RUN = """\
============================= test session starts ==============================
platform linux -- Python 3.11.7, pytest-8.4.1, pluggy-1.6.0
rootdir: /work/main
configfile: pyproject.toml
plugins: anyio-4.11.0, hypothesis-6.135.0
collected 57 items

tests/unit/test_spec.py ........                                         [ 14%]
tests/unit/test_output.py ..F......                                      [ 29%]
tests/unit/test_policy.py::test_limits_reject_typos[memory_mb] PASSED    [ 31%]
tests/unit/test_settings.py::test_env_overrides_file SKIPPED (no docker) [ 33%]

=================================== FAILURES ===================================
___________________________ test_shape_fits_budget ____________________________

raw = b'\\x00\\x01', limit = 64

    @given(raw=st.binary(max_size=20_000), limit=st.integers(64, 4_096))
    def test_shape_fits_budget(raw: bytes, limit: int) -> None:
        out = shape(raw, limit_bytes=limit)
>       assert len(out.text.encode()) <= limit
E       AssertionError: assert 65 <= 64
E        +  where 65 = len(b'...')

tests/unit/test_output.py:31: AssertionError
---------------------------------- Hypothesis ----------------------------------
Falsifying example: test_shape_fits_budget(
    raw=b'\\x00\\x01', limit=64,
)
=========================== short test summary info ============================
FAILED tests/unit/test_output.py::test_shape_fits_budget - AssertionError: assert 65 <= 64
=================== 1 failed, 55 passed, 1 skipped in 2.31s ====================
"""

PIP_LIST = """\
Package                   Version
------------------------- ----------------
annotated-types           0.7.0
anyio                     4.11.0
certifi                   2025.8.3
charset-normalizer        3.4.3
docker                    7.1.0
hypothesis                6.135.0
keyring                   25.6.0
mcp                       1.13.1
pydantic                  2.11.7
pydantic_core             2.33.2
python-dotenv             1.1.1
secretstorage             3.3.3
scikit-learn              1.7.1
sk-video                  1.1.10
task-runner               0.4.0
tokenizers                0.21.4
"""

TRACEBACK = """\
Traceback (most recent call last):
  File "/usr/lib/python3.11/runpy.py", line 198, in _run_module_as_main
    return _run_code(code, main_globals, None,
  File "/home/user/project/app/main.py", line 42, in <module>
    token = os.environ["AWS_SECRET_ACCESS_KEY"]
  File "<frozen os>", line 679, in __getitem__
KeyError: 'AWS_SECRET_ACCESS_KEY'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/home/user/project/app/auth.py", line 17, in get_bearer
    raise PermissionError("missing Authorization header; the token bearer must log in")
PermissionError: missing Authorization header; the token bearer must log in
"""

JSON_DOC = json.dumps(
    {
        "id": "3f1c2b7e-9a4d-4e8b-b1f2-0c9d8e7f6a5b",
        "sha": "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "url": "https://api.github.com/repos/octo/hello/commits/9fceb02",
        "html_url": "https://github.com/octo/hello/pull/1347",
        "author": {"login": "octocat", "email": "octocat@github.com"},
        "created_at": "2011-04-14T16:00:49Z",
        "labels": ["bug", "disk-usage", "task-queue"],
        "secret": False,
        "token_count": 1234,
        "api_key_name": "prod-readonly",
        "password_hint": None,
    },
    indent=2,
)

GIT_LOG = """\
commit 9fceb02d0ae598e95dc970b74767f19372d61af8 (HEAD -> main, origin/main)
Author: Octo Cat <octocat@github.com>
Date:   Mon Apr 14 16:00:49 2025 +0000

    Fix the task-runner key rotation (refs #42)

commit 7638417db6d59f3c431d3e1f261cc637155684cd
Merge: 1d3a5b9 4c2f8e0
Author: Mona Lisa <mona@example.com>
Date:   Sun Apr 13 09:12:03 2025 +0000

    Merge pull request #41 from octo/sk-learn-upgrade
"""

PATHS = """\
total 48
drwxr-xr-x  5 user user 4096 Apr 14 16:00 .
-rw-r--r--  1 user user  220 Apr 14 16:00 .bash_logout
-rw-------  1 user user 2602 Apr 14 16:00 .ssh/id_ed25519
-rw-r--r--  1 user user  578 Apr 14 16:00 .ssh/id_ed25519.pub
/usr/local/lib/python3.11/site-packages/keyring/backends/SecretService.py
/home/user/.cache/pip/http-v2/a/1/b/2/9/a1b29c3e5f7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f
/tmp/pytest-of-user/pytest-12/test_token_refresh0/secrets.json
C:\\Users\\user\\AppData\\Local\\Temp\\tmp8x9k2n3q\\new_file.txt
"""

LOG = """\
2025-04-14T16:00:49.123Z INFO  http GET https://pypi.org/simple/anyio/ 200 OK (12 ms)
2025-04-14T16:00:49.456Z DEBUG Downloading https://files.pythonhosted.org/packages/a1/b2/anyio-4.11.0-py3-none-any.whl
2025-04-14T16:00:50.001Z WARN  retrying postgres://db.internal:5432/app in 2s
2025-04-14T16:00:50.002Z INFO  connected to redis://cache:6379/0 as user=app
2025-04-14T16:00:51.789Z INFO  request_id=4bf92f3577b34da6a3ce929d0e0e4736 trace_id=00f067aa0ba902b7
2025-04-14T16:00:52.000Z INFO  set header Authorization: <redacted by client>
PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 PYTHONHASHSEED=0
"""


def _fixed_random_corpus() -> dict[str, str]:
    rng = random.Random(20250414)
    return {
        "base64": base64.b64encode(rng.randbytes(3000)).decode(),
        "base64 wrapped": base64.encodebytes(rng.randbytes(3000)).decode(),
        "urlsafe base64": base64.urlsafe_b64encode(rng.randbytes(3000)).decode(),
        "uuids": "\n".join(str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(200)),
        "git shas": "\n".join(f"{rng.getrandbits(160):040x}" for _ in range(200)),
        "hex": rng.randbytes(2000).hex(),
    }


CORPORA = {
    "pytest run": PYTEST_RUN,
    "pip list": PIP_LIST,
    "traceback": TRACEBACK,
    "json": JSON_DOC,
    "git log": GIT_LOG,
    "paths": PATHS,
    "log": LOG,
    **_fixed_random_corpus(),
}
ORDINARY_LINES = [line for text in CORPORA.values() for line in text.splitlines() if line]

# ---------------------------------------------------------------- strategies


def _chars(alphabet: str, n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=n, max_size=n)


def _token(prefix: str, alphabet: str, n: int) -> st.SearchStrategy[str]:
    return _chars(alphabet, n).map(lambda body: prefix + body)


def _b64url(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n, max_size=n).map(
        lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
    )


def _jwt() -> st.SearchStrategy[str]:
    header = st.sampled_from([{"alg": "HS256", "typ": "JWT"}, {"alg": "RS256", "kid": "k1"}])
    claims = st.fixed_dictionaries(
        {"sub": st.text(ALNUM, min_size=1, max_size=12), "iat": st.integers(0, 2**31)}
    )

    def encode(part: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")

    return st.builds(
        lambda h, c, sig: f"{encode(h)}.{encode(c)}.{sig}", header, claims, _b64url(32)
    )


def _pem(terminated: bool) -> st.SearchStrategy[tuple[str, list[str]]]:
    def build(label: str, body: bytes) -> tuple[str, list[str]]:
        lines = base64.encodebytes(body).decode().split()
        text = f"-----BEGIN {label}-----\n" + "\n".join(lines) + "\n"
        if terminated:
            text += f"-----END {label}-----\n"
        return text, lines

    labels = st.sampled_from(
        ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"]
    )
    return st.builds(build, labels, st.binary(min_size=48, max_size=600))


B32 = string.ascii_uppercase + "234567"
B64URL = ALNUM + "_-"
PASSWORD = ALNUM + "!$&()*+,;=%-._~"

# kind -> strategy of (text to plant, the parts that must not survive)
TOKENS: dict[str, st.SearchStrategy[tuple[str, list[str]]]] = {
    "github-token": st.builds(
        lambda p, b: (p + b, [p + b]),
        st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]),
        _chars(ALNUM, 36),
    ),
    "github-fine-grained-pat": st.builds(
        lambda a, b: (f"github_pat_{a}_{b}", [f"github_pat_{a}_{b}"]),
        _chars(ALNUM, 22),
        _chars(ALNUM, 59),
    ),
    "gitlab-token": _token("glpat-", B64URL, 20).map(lambda t: (t, [t])),
    "slack-token": st.builds(
        lambda kind, a, b, c: (f"xox{kind}-{a}-{b}-{c}", [f"xox{kind}-{a}-{b}-{c}"]),
        st.sampled_from("abposr"),
        st.integers(10**9, 10**12),
        st.integers(10**9, 10**12),
        _chars(ALNUM, 24),
    ),
    "stripe-key": st.builds(
        lambda p, b: (p + b, [p + b]),
        st.sampled_from(["sk_live_", "rk_live_", "sk_test_"]),
        _chars(ALNUM, 24),
    ),
    "openai-key": st.one_of(
        _token("sk-proj-", B64URL, 156),
        st.builds(lambda a, b: f"sk-{a}T3BlbkFJ{b}", _chars(ALNUM, 20), _chars(ALNUM, 20)),
    ).map(lambda t: (t, [t])),
    "anthropic-key": _chars(B64URL, 93)
    .map(lambda b: (f"sk-ant-api03-{b}AA",) * 2)
    .map(lambda pair: (pair[0], [pair[1]])),
    "google-api-key": _token("AIza", B64URL, 35).map(lambda t: (t, [t])),
    "huggingface-token": _token("hf_", string.ascii_letters, 34).map(lambda t: (t, [t])),
    "npm-token": _token("npm_", ALNUM, 36).map(lambda t: (t, [t])),
    "pypi-token": _b64url(120).map(lambda b: f"pypi-AgEIcHlwaS5vcmc{b}").map(lambda t: (t, [t])),
    "aws-access-key-id": st.builds(
        lambda p, b: (p + b, [p + b]), st.sampled_from(["AKIA", "ASIA"]), _chars(B32, 16)
    ),
    "aws-secret-access-key": st.builds(
        lambda name, sep, key: (f"{name}{sep}{key}", [key]),
        st.sampled_from(
            ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", "SecretAccessKey", "secret_key"]
        ),
        st.sampled_from([" = ", "=", ": ", '": "', " => '"]),
        _chars(ALNUM + "/+", 40),
    ),
    "jwt": _jwt().map(lambda t: (t, [t])),
    "private-key": st.one_of(_pem(terminated=True), _pem(terminated=False)),
    "url-password": st.builds(
        lambda scheme, user, pw, host: (f"{scheme}://{user}:{pw}@{host}/db", [pw]),
        st.sampled_from(["https", "postgres", "redis", "git+https"]),
        st.sampled_from(["", "admin", "deploy", "git"]),
        st.text(PASSWORD, min_size=8, max_size=24).filter(lambda p: len(set(p)) > 3),
        st.sampled_from(["db.internal:5432", "example.com", "10.0.0.7"]),
    ),
    "http-authorization": st.builds(
        lambda name, scheme, cred: (f"{name}: {scheme}{cred}", [cred]),
        st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]),
        st.sampled_from(["Bearer ", "Basic ", "Token ", "Negotiate ", ""]),
        st.text(ALNUM + "._~+/-", min_size=12, max_size=80).filter(lambda c: len(set(c)) > 3),
    ),
    "bearer-token": _chars(ALNUM + "._~+/-", 32).map(lambda c: (f"-H 'bearer {c}'", [c])),
}

DELIMITERS = st.sampled_from([" ", "\n", "=", ": ", '"', "'", "\\n", "(", ", ", "\t", "\r\n"])

surroundings = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(ORDINARY_LINES), max_size=6).map("\n".join),
    st.binary(max_size=90).map(lambda b: base64.b64encode(b).decode()),
)

known_values = st.one_of(
    st.text(ALNUM, min_size=MIN_KNOWN_LENGTH, max_size=48),
    st.text(string.printable.strip(), min_size=MIN_KNOWN_LENGTH, max_size=48),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=MIN_KNOWN_LENGTH, max_size=32),
).filter(lambda v: len(set(v)) >= 4)


def _separators_removed(text: str) -> str:
    return text.replace("\r", "").replace("\n", "").replace("\\n", "").replace("\\r", "")


def _base64_reveals(text: str, secret: bytes) -> bool:
    """Whether any base64 run in ``text``, decoded at any of its four alignments, has ``secret``."""
    runs = [*re.findall(r"[A-Za-z0-9+/]+", text), *re.findall(r"[A-Za-z0-9_-]+", text)]
    for run in runs:
        for shift in range(4):
            chunk = run[shift:]
            chunk = chunk[: len(chunk) // 4 * 4]
            if secret in base64.b64decode(chunk.replace("-", "+").replace("_", "/")):
                return True
    return False


SKELETON = "[REDACTED:known:]" + "".join(f"[REDACTED:{rule.kind}]" for rule in RULES)


def _assume_clear_of_markers(value: str) -> None:
    assume(not any(value[i : i + 8] in SKELETON for i in range(len(value) - 7)))


# ---------------------------------------------------------------- known values


ENCODINGS = ["plain", "b64-0", "b64-1", "b64-2", "urlsafe-b64", "url", "hex", "HEX"]
SPLITS = ["json-split", "newline-split", "escaped-split"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=known_values,
    before=surroundings,
    after=surroundings,
    encoding=st.sampled_from(ENCODINGS + SPLITS),
    pad=st.binary(max_size=40),
    cut=st.integers(1, 1000),
)
def test_planted_known_value_never_survives(
    value: str, before: str, after: str, encoding: str, pad: bytes, cut: int
) -> None:
    _assume_clear_of_markers(value)
    raw = value.encode("utf-8", "surrogatepass")
    cut = 1 + cut % (len(value) - 1)
    if encoding.startswith("b64") or encoding == "urlsafe-b64":
        align = int(encoding[-1]) if encoding[-1].isdigit() else len(pad) % 3
        lead = (pad + bytes(3))[: 3 * (len(pad) // 6) + align]
        stream = lead + raw + pad
        encoded = base64.b64encode(stream).decode()
        if encoding == "urlsafe-b64":
            encoded = base64.urlsafe_b64encode(stream).decode()
        planted = encoded
    elif encoding == "url":
        planted = quote(raw, safe="")
    elif encoding in ("hex", "HEX"):
        planted = raw.hex() if encoding == "hex" else raw.hex().upper()
    elif encoding == "json-split":
        planted = json.dumps(value[:cut] + "\n" + value[cut:])[1:-1]
    elif encoding == "newline-split":
        planted = value[:cut] + "\n" + value[cut:]
    elif encoding == "escaped-split":
        planted = value[:cut] + "\\n" + value[cut:]
    else:
        planted = value
    scrubber = Scrubber({"PLANTED_SECRET": value})
    out = scrubber.scrub(before + planted + after)

    assert value not in out
    assert _separators_removed(value) not in _separators_removed(out)
    assert json.dumps(value)[1:-1] not in _separators_removed(out)
    assert raw.hex() not in out.lower()
    assert value not in unquote(out)
    if encoding.startswith("b64") or encoding == "urlsafe-b64":
        assert not _base64_reveals(out, raw)
    assert MARKER.search(out)
    assert scrubber.scrub(out) == out


@pytest.mark.parametrize(
    ("value", "text"),
    [
        # Dropping a JSON-escaped newline must not eat the value's own leading `n`...
        ("nopqrstuvw", "x\\nopqrstuvw and nopq\\nrstuvw"),
        # ... nor its trailing backslash.
        ("abcdefg\\", "abcdefg\\nxyz and abc\ndefg\\ end"),
        # A multi-line value (a key in an env var) printed as JSON.
        ("line-one\nline-two", json.dumps({"key": "line-one\nline-two"})),
        ("line-one\nline-two", "line-oneline-two"),
        ('quote"slash/', json.dumps({"v": 'quote"slash/'}).replace("/", "\\/")),
        ("caf\u00e9-secret", json.dumps("caf\u00e9-secret")),
    ],
)
def test_tricky_known_values_are_redacted(value: str, text: str) -> None:
    out = Scrubber({"V": value}).scrub(text)
    assert _separators_removed(value) not in _separators_removed(out)
    assert json.dumps(value)[1:-1] not in _separators_removed(out)
    assert "[REDACTED:known:V]" in out


@settings(max_examples=100, deadline=None)
@given(value=known_values, text=st.text(max_size=200), label=st.text(max_size=30))
def test_markers_show_no_part_of_the_value(value: str, text: str, label: str) -> None:
    _assume_clear_of_markers(value)
    # Labels that contain the value, or a long part of it, are the interesting ones.
    for name in (label, label + value, value[: MIN_KNOWN_LENGTH + 2] + label):
        scrubber = Scrubber({name: value})
        out = scrubber.scrub(text + value + text)
        markers = MARKER.findall(out)
        assert markers
        for marker in markers:
            assert not any(value[i : i + 8] in marker for i in range(len(value) - 7))
        assert scrubber.scrub(out) == out


# ---------------------------------------------------------------- token formats


@pytest.mark.parametrize("kind", sorted(TOKENS))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_planted_token_never_survives(kind: str, data: st.DataObject) -> None:
    planted, secrets = data.draw(TOKENS[kind])
    before = data.draw(surroundings) + data.draw(DELIMITERS)
    after = data.draw(DELIMITERS) + data.draw(surroundings)
    assume(not any(secret in before + after + SKELETON for secret in secrets))
    scrubber = Scrubber()
    out = scrubber.scrub(before + planted + after)
    for secret in secrets:
        assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert scrubber.scrub(out) == out


@pytest.mark.parametrize("kind", sorted(TOKENS))
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_every_rule_match_holds_one_of_its_keywords(kind: str, data: st.DataObject) -> None:
    """The keyword prefilter may skip a rule only when the rule cannot match."""
    planted, _ = data.draw(TOKENS[kind])
    text = data.draw(surroundings) + " " + planted + " " + data.draw(surroundings)
    for rule in RULES:
        haystack = text.lower() if rule.ignore_case else text
        for match in re.finditer(rule.regex, haystack):
            assert any(k in match.group() for k in rule.keywords), rule.kind


def test_unterminated_private_key_is_redacted_to_the_end() -> None:
    text = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nmore of the key"
    assert Scrubber().scrub(text) == "key:\n[REDACTED:private-key]"


def test_url_password_keeps_scheme_user_and_host() -> None:
    out = Scrubber().scrub("cloning https://deploy:hunter2hunter2@git.example.com/r.git")
    assert out == "cloning https://deploy:[REDACTED:url-password]@git.example.com/r.git"


def test_authorization_header_keeps_its_scheme() -> None:
    out = Scrubber().scrub("Authorization: Basic dXNlcjpwYXNzd29yZA==\n")
    assert out == "Authorization: Basic [REDACTED:http-authorization]\n"


# ---------------------------------------------------------------- ordinary output


def _realistic_known() -> dict[str, str]:
    rng = random.Random(7)
    return {
        "GITHUB_TOKEN": "ghp_" + "".join(rng.choices(ALNUM, k=36)),
        "AWS_SECRET_ACCESS_KEY": "".join(rng.choices(ALNUM + "/+", k=40)),
        "DATABASE_PASSWORD": "".join(rng.choices(ALNUM + "!#%&*", k=20)),
    }


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_ordinary_output_is_left_untouched(name: str) -> None:
    assert Scrubber(_realistic_known()).scrub(CORPORA[name]) == CORPORA[name]


WORDS = (
    "the a of request token key secret disk task worker user session cache build test passed "
    "failed error warning module import path file line value config auth bearer api sk pk "
    "github aws slack npm pypi docker container image run exit code status"
).split()


def _ordinary_sample(rng: random.Random) -> str:
    def piece() -> str:
        kind = rng.randrange(11)
        if kind == 0:
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == 1:
            return f"commit {rng.getrandbits(160):040x}"
        if kind == 2:
            return base64.b64encode(rng.randbytes(rng.randrange(1, 300))).decode()
        if kind == 3:
            return base64.urlsafe_b64encode(rng.randbytes(rng.randrange(1, 300))).decode()
        if kind == 4:
            parts = rng.choices([*WORDS, "src", "lib", "tmp", "home"], k=rng.randrange(1, 6))
            return "/" + "/".join(parts) + rng.choice([".py", ".txt", "", ".json"])
        if kind == 5:
            return json.dumps({rng.choice(WORDS): "".join(rng.choices(ALNUM, k=rng.randrange(30)))})
        if kind == 6:
            return (
                f"{rng.choice(WORDS)}-{rng.choice(WORDS)}  {rng.randrange(10)}.{rng.randrange(40)}"
            )
        if kind == 7:
            return rng.choice(ORDINARY_LINES)
        if kind == 8:
            host, path = rng.choice(WORDS), rng.choice(WORDS)
            return f"https://{host}.example.com:{rng.randrange(1, 65535)}/{path}"
        if kind == 9:
            return rng.randbytes(rng.randrange(4, 40)).hex()
        return " ".join(rng.choices(WORDS, k=rng.randrange(3, 15)))

    return "\n".join(piece() for _ in range(rng.randrange(3, 20)))


def test_false_positive_rate_on_generated_ordinary_output_is_at_most_one_percent() -> None:
    rng = random.Random(4)
    scrubber = Scrubber(_realistic_known())
    samples = [_ordinary_sample(rng) for _ in range(500)]
    changed = [s for s in samples if scrubber.scrub(s) != s]
    assert len(changed) <= 5, changed[:3]


# ---------------------------------------------------------------- idempotence and API


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), value=known_values)
def test_scrub_is_idempotent(text: str, value: str) -> None:
    for scrubber in (Scrubber(), Scrubber({"V": value})):
        once = scrubber.scrub(text + value + text)
        assert scrubber.scrub(once) == once


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(st.text(max_size=40), DELIMITERS), max_size=12), data=st.data())
def test_scrub_is_idempotent_on_mixed_secrets(parts: list[str], data: st.DataObject) -> None:
    for kind in data.draw(st.lists(st.sampled_from(sorted(TOKENS)), max_size=4)):
        parts.insert(data.draw(st.integers(0, len(parts))), data.draw(TOKENS[kind])[0])
    scrubber = Scrubber({"ONE": "correct-horse-battery", "TWO": "x]y[REDACTED"})
    once = scrubber.scrub(" ".join(parts))
    assert scrubber.scrub(once) == once


def test_short_and_placeholder_values_are_ignored() -> None:
    scrubber = Scrubber({"SHORT": "abc123", "STARS": "********", "EMPTY": ""})
    text = "abc123 ******** plain"
    assert scrubber.scrub(text) == text


def test_a_value_that_sits_inside_a_marker_is_ignored() -> None:
    scrubber = Scrubber({"ODD": "REDACTED:jwt"})
    assert scrubber.scrub("a REDACTED:jwt b") == "a REDACTED:jwt b"


def test_max_span_covers_patterns_and_the_longest_known_value() -> None:
    assert Scrubber().max_span >= PATTERN_SPAN
    assert Scrubber({"BIG": "x1y2z3" * 2000}).max_span >= len(("x1y2z3" * 2000).encode().hex())


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("GITHUB_TOKEN", True),
        ("db_password", True),
        ("OPENAI_API_KEY", True),
        ("AWS_REGION", True),
        ("GOOGLE_APPLICATION_CREDENTIALS", True),
        ("NPM_AUTH", True),
        ("MY_CLIENT_SECRET", True),
        ("PATH", False),
        ("HOME", False),
        ("PWD", False),
        ("LANG", False),
        ("MCP_SANDBOX_IMAGE", False),
    ],
)
def test_looks_secret_name(name: str, secret: bool) -> None:
    assert looks_secret_name(name) is secret


def test_secret_values_from_env_keeps_secret_names_only() -> None:
    env = {"PATH": "/usr/bin", "GITHUB_TOKEN": "ghp_x", "API_KEY": "", "HOME": "/root"}
    assert secret_values_from_env(env) == {"GITHUB_TOKEN": "ghp_x"}


def test_docs_list_every_rule_and_its_source() -> None:
    docs = DOCS.read_text()
    for rule in RULES:
        assert f"`{rule.kind}`" in docs
        assert rule.source in docs


# Inputs made to make a rule re-scan or backtrack: its keyword repeated, glued into a long run
# of token characters, or followed by one with no valid end. A quadratic rule spends minutes
# on these (the JWT rule once took 4 s at 32 KB, on the server's event loop, and the
# Authorization rule 15 s on `authorization=` repeated, then ` [redacted:`); linear ones
# take milliseconds, so the generous bound below is about hangs, not speed.
_RUNS = ("a", "A0", "-", "_", "=", " ", "\t", ":", "a:", ".", "ey", "/+")
_TAILS = ("", "!", ".", "@", " [redacted:x]")


def _hostile(keyword: str, size: int) -> list[str]:
    texts = [keyword * (size // len(keyword))]
    for run in _RUNS:
        repeated = (keyword + run) * (size // (len(keyword) + len(run)))
        texts += [repeated + tail for tail in _TAILS]
        texts += [keyword + run * (size // len(run)) + tail for tail in _TAILS]
    return texts


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind)
def test_no_rule_is_quadratic_on_hostile_text(rule: Rule) -> None:
    scrubber = Scrubber({})
    for keyword in rule.keywords:
        for text in _hostile(keyword, 200_000):
            started = time.perf_counter()
            scrubber.scrub(text)
            took = time.perf_counter() - started
            assert took < 2.0, f"{rule.kind}: {took:.1f} s on {text[:40]!r}..."


JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghij"


@pytest.mark.parametrize("before", ["Bearer%20", "token%3D", "%22", "\\u0022", "\\n", "=", " "])
def test_a_token_after_an_escape_is_still_found(before: str) -> None:
    """A prefixed rule starts where a token starts, and that includes right after a URL or
    JSON escape, whose last character is a letter or digit."""
    scrubber = Scrubber({})
    assert scrubber.scrub(before + JWT) == before + "[REDACTED:jwt]"
    aws = before + "AKIA" + "ABCDEFGHIJKLMNOP"
    assert scrubber.scrub(aws) == before + "[REDACTED:aws-access-key-id]"


@pytest.mark.parametrize(
    "text",
    [
        '{\\"Authorization\\": \\"Basic YWxhZGRpbjpvcGVuc2VzYW1l\\"}',  # JSON in JSON
        "map[Authorization:[Basic YWxhZGRpbjpvcGVuc2VzYW1l]]",  # Go's print of a header map
        "=Authorization: Bearer 000000000123",
        "Authorization: Bearer abcdefghijkl, Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Authorization: Bearer abcdefghijkl Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
    ],
)
def test_every_authorization_credential_on_a_line_is_redacted(text: str) -> None:
    out = Scrubber().scrub(text)
    for secret in ("YWxhZGRpbjpvcGVuc2VzYW1l", "abcdefghijkl", "000000000123"):
        assert secret not in out, out
    assert "[REDACTED:http-authorization]" in out


def test_a_credential_may_hold_the_keyword_when_no_header_starts_there() -> None:
    out = Scrubber().scrub("Authorization: Token svc-authorization-0123456789abcdef")
    assert out == "Authorization: Token [REDACTED:http-authorization]"
