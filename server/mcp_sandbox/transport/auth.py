"""PURE: who may call over HTTP. Bearer tokens, hashed at rest, checked in constant time.

A tokens file (or the ``http.tokens`` setting) holds one entry a line:

    NAME:sha256:HEX     the SHA-256 of the token (preferred: the file then holds no secret)
    NAME:TOKEN          the token itself, 32-512 characters of the RFC 6750 token alphabet

Tokens are random (``mcp-sandbox token new``: 256 bits), so a plain SHA-256 is enough at rest:
a slow password hash only helps secrets that can be guessed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mcp_sandbox.errors import ConfigError

TOKEN_PREFIX = "msb_"
MIN_TOKEN_CHARS = 32
MAX_TOKEN_CHARS = 512
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# RFC 6750 b64token: the only characters a bearer token may have.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_HASHED = re.compile(r"sha256:([0-9a-f]{64})")
_ENTRY_HELP = "expected NAME:sha256:HEX or NAME:TOKEN (NAME is 1-64 of A-Z a-z 0-9 _ . -)"


@dataclass(frozen=True)
class TokenEntry:
    """One accepted token: its name (what logs show) and the SHA-256 of its value."""

    name: str
    digest: bytes = field(repr=False)
    plain_at_rest: bool = False


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_entry(name: str, token: str) -> str:
    """The tokens-file line that accepts ``token`` under ``name``."""
    return f"{name}:sha256:{hashlib.sha256(token.encode('ascii')).hexdigest()}"


def parse_entry(text: str, where: str) -> TokenEntry:
    """One ``NAME:sha256:HEX`` or ``NAME:TOKEN`` entry. Raises ConfigError naming ``where``.

    Messages never repeat the entry: it may be a secret.
    """
    name, sep, rest = text.strip().partition(":")
    if not sep or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: {_ENTRY_HELP}")
    hashed = _HASHED.fullmatch(rest)
    if hashed:
        return TokenEntry(name, bytes.fromhex(hashed.group(1)))
    if rest.startswith("sha256:"):
        raise ConfigError(f"{where}: a sha256 entry needs exactly 64 lowercase hex digits")
    if not MIN_TOKEN_CHARS <= len(rest) <= MAX_TOKEN_CHARS or not _B64TOKEN.fullmatch(rest):
        raise ConfigError(
            f"{where}: a plain token must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} characters of "
            "A-Z a-z 0-9 - . _ ~ + / (then = padding); make one with `mcp-sandbox token new`"
        )
    return TokenEntry(name, hashlib.sha256(rest.encode("ascii")).digest(), plain_at_rest=True)


def parse_lines(lines: Iterable[str], source: str) -> list[TokenEntry]:
    """Entries of a tokens file; blank lines and ``#`` comments are skipped."""
    entries = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text and not text.startswith("#"):
            entries.append(parse_entry(text, f"{source} line {number}"))
    return entries


class TokenSet:
    """The tokens the server accepts. ``verify`` costs the same whichever entry matches."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        if not entries:
            raise ConfigError("no bearer tokens configured: the tokens file or setting is empty")
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"token names must be unique; repeated: {', '.join(dup)}")
        if len({e.digest for e in entries}) != len(entries):
            raise ConfigError("the same token is configured twice under different names")
        self._entries = tuple(entries)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self._entries)

    @property
    def any_plain_at_rest(self) -> bool:
        return any(e.plain_at_rest for e in self._entries)

    def verify(self, presented: str | None) -> str | None:
        """The name of the presented token, or None.

        The presented value is hashed, then compared with every entry by
        ``hmac.compare_digest``, without stopping at a match: neither the time nor the
        order of entries tells an attacker how close a guess was.
        """
        usable = presented is not None and 0 < len(presented) <= MAX_TOKEN_CHARS
        text = presented if usable and presented is not None else ""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for entry in self._entries:
            matched = hmac.compare_digest(digest, entry.digest)
            if matched and found is None:
                found = entry.name
        return found if usable else None


def load_tokens(tokens_file: Path | None, inline: Iterable[str]) -> TokenSet | None:
    """Tokens from the file and the setting, or None when neither names any.

    Raises ConfigError when the file is unreadable or an entry is malformed.
    """
    entries: list[TokenEntry] = []
    if tokens_file is not None:
        try:
            text = tokens_file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read tokens file {tokens_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"tokens file {tokens_file} is not UTF-8 text") from None
        entries += parse_lines(text.splitlines(), str(tokens_file))
        if not entries:
            raise ConfigError(f"tokens file {tokens_file} holds no token")
    entries += [parse_entry(t, f"http.tokens[{i}]") for i, t in enumerate(inline)]
    return TokenSet(entries) if entries else None


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of the one ``Authorization: Bearer`` header, or None.

    Two Authorization headers, another scheme, or characters outside the token alphabet
    give None: an ambiguous credential is no credential.
    """
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return None
    try:
        text = values[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(token):
        return None
    return token
