"""Bearer tokens: parsing the tokens file, hashing at rest, constant-time checks."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.errors import ConfigError
from mcp_sandbox.transport import auth
from mcp_sandbox.transport.auth import (
    TokenSet,
    bearer_token,
    hash_entry,
    load_tokens,
    new_token,
    parse_entry,
    parse_lines,
)

PLAIN = "p" * 40


def test_a_new_token_is_long_random_and_in_the_bearer_alphabet() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for t in tokens:
        assert len(t) >= 43 + len(auth.TOKEN_PREFIX)
        assert bearer_token([(b"authorization", f"Bearer {t}".encode())]) == t


def test_a_hashed_entry_accepts_its_token_and_holds_no_secret() -> None:
    token = new_token()
    line = hash_entry("alice", token)
    assert token not in line and line.startswith("alice:sha256:")
    assert TokenSet([parse_entry(line, "x")]).verify(token) == "alice"


def test_plain_and_hashed_entries_both_verify() -> None:
    hashed = hash_entry("alice", "a" * 40)
    tokens = TokenSet(parse_lines([hashed, f"bob:{PLAIN}"], "f"))
    assert tokens.verify("a" * 40) == "alice"
    assert tokens.verify(PLAIN) == "bob"
    assert tokens.any_plain_at_rest


@pytest.mark.parametrize("presented", [None, "", "a" * 39, "A" * 40, "a" * 41, "a" * 600])
def test_anything_but_a_configured_token_is_refused(presented: str | None) -> None:
    tokens = TokenSet([parse_entry(hash_entry("alice", "a" * 40), "x")])
    assert tokens.verify(presented) is None


def test_the_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"# who may call\n\n  {hash_entry('alice', 'a' * 40)}  \nbob:{PLAIN}\n")
    tokens = load_tokens(f, [])
    assert tokens is not None and tokens.names == ("alice", "bob")


def test_file_and_setting_entries_add_up(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(hash_entry("alice", "a" * 40) + "\n")
    tokens = load_tokens(f, [f"bob:{PLAIN}"])
    assert tokens is not None and tokens.names == ("alice", "bob")


def test_no_file_and_no_setting_means_no_tokens() -> None:
    assert load_tokens(None, []) is None


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["alice"], "expected NAME:sha256:HEX"),
        ([":" + PLAIN], "expected NAME"),
        (["al ice:" + PLAIN], "expected NAME"),
        (["alice:sha256:abc"], "64 lowercase hex"),
        (["alice:sha256:" + "A" * 64], "64 lowercase hex"),
        (["alice:short"], "32-512 characters"),
        (["alice:" + "p" * 31], "32-512 characters"),
        (["alice:" + "p" * 513], "32-512 characters"),
        (["alice:" + "p" * 35 + " spaced"], "32-512 characters"),
        (["alice:" + "p" * 35 + "\u00e9"], "32-512 characters"),
        ([f"alice:{PLAIN}", f"alice:{'q' * 40}"], "repeated: alice"),
        ([f"alice:{PLAIN}", f"bob:{PLAIN}"], "configured twice"),
    ],
)
def test_a_bad_entry_names_its_line_and_never_echoes_it(lines: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        TokenSet(parse_lines(lines, "tokens"))
    for line in lines:
        secret = line.partition(":")[2]
        if len(secret) >= 8:
            assert secret not in str(caught.value)


def test_an_empty_tokens_file_is_an_error_not_an_open_door(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(f, [])


def test_an_unreadable_tokens_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read tokens file"):
        load_tokens(tmp_path / "missing", [])


def test_verify_compares_with_every_entry_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Constant time: one compare_digest per entry, on hashes, whether or not one matches."""
    secrets = [chr(ord("a") + i) * 40 for i in range(5)]
    tokens = TokenSet([parse_entry(hash_entry(f"t{i}", s), "x") for i, s in enumerate(secrets)])
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for presented in [secrets[0], secrets[4], "z" * 40, None]:
        calls.clear()
        tokens.verify(presented)
        assert len(calls) == 5
        # Only digests are compared: the presented text never meets a stored value.
        assert all(len(a) == len(b) == 32 for a, b in calls)
    calls.clear()
    tokens.verify(secrets[0])
    assert calls[0][0] == hashlib.sha256(secrets[0].encode()).digest()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"authorization", b"Bearer " + PLAIN.encode())], PLAIN),
        ([(b"Authorization", b"bearer   " + PLAIN.encode())], PLAIN),
        ([(b"authorization", b"Basic " + PLAIN.encode())], None),
        ([(b"authorization", b"Bearer")], None),
        ([(b"authorization", b"Bearer two words")], None),
        ([(b"authorization", b"Bearer \xff\xfe")], None),
        (
            [
                (b"authorization", b"Bearer " + PLAIN.encode()),
                (b"authorization", b"Bearer other-token-value-1234567890"),
            ],
            None,
        ),
        ([(b"x-authorization", b"Bearer " + PLAIN.encode())], None),
        ([], None),
    ],
)
def test_only_one_clear_bearer_header_counts(
    headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert bearer_token(headers) == expected


@given(st.text(max_size=600))
def test_verify_never_accepts_what_was_not_configured(guess: str) -> None:
    tokens = TokenSet([parse_entry(hash_entry("alice", "s" * 48), "x")])
    assert tokens.verify(guess) == ("alice" if guess == "s" * 48 else None)
