"""PURE: find secrets in text that leaves the server and replace them with ``[REDACTED:<kind>]``.

Two kinds of evidence, both listed in docs/secrets.md:

- values the server knows (its own secret-looking env vars, configured secrets) and their
  common encodings: base64 at each byte alignment, URL-encoding, hex, JSON/Python escapes,
  and any of those split across lines by real or JSON-escaped (``\\n``) newlines;
- well-known token formats (``RULES``), written here as data after gitleaks and detect-secrets.

Speed: one Aho-Corasick pass (Rust, via ``ahocorasick_rs``) over the text finds every known
value and every rule's keyword at once; a rule's regex runs only when its keyword is present.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from operator import itemgetter
from types import MappingProxyType
from urllib.parse import quote, quote_plus

import ahocorasick_rs
import regex

from mcp_sandbox.policy.secret_names import looks_secret_name

log = logging.getLogger("mcp_sandbox.secrets")

MIN_KNOWN_LENGTH = 8


"""Known values shorter than this are ignored: short strings occur by chance in ordinary output."""


MIN_KNOWN_DISTINCT = 4


"""Known values with fewer distinct characters are ignored (placeholders such as ``********``)."""


PATTERN_SPAN = 8192


"""Longest stretch a token rule must see whole; a PEM block of a 4096-bit RSA key fits in it."""


_MAX_PASSES = 4
_DFA_MAX_BYTES = 8192
_CI_STEM = 8
_NO_SECRETS: Mapping[str, str] = MappingProxyType({})


# Between any two characters of a known value: real newlines, or JSON/Python-escaped ones.
# `\\[\r\n]*[rn]` also covers a backslash and its `n` pulled apart by a real newline.
_SEP = r"(?:[\r\n]|\\[\r\n]*[rn])*"
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_URLSAFE = str.maketrans("+/", "-_")


@dataclass(frozen=True)
class Rule:
    """One token format. ``regex`` redacts its ``secret`` group if it has one, else the match.

    Every match contains one of ``keywords``; the rule's regex runs only when one is in the
    text. With ``ignore_case`` the regex and keywords are written in lower case, a keyword's
    first letters are looked for in any ASCII case, and the regex runs over the text with its
    ASCII letters lowered (so its literal prefix keeps it fast).
    """

    kind: str
    regex: str
    source: str
    keywords: tuple[str, ...]
    ignore_case: bool = False


def _lead(prefix: str, glued: str = "A-Za-z0-9") -> str:
    """``prefix`` not glued to a preceding ``glued`` character, unless that character ends an
    escape: JSON's ``\\n`` or ``\\u0022``, or URL encoding's ``%20``.

    Besides finding tokens where they start, this keeps a rule linear: from a prefix inside
    a long run of token characters, the scan would cover the rest of the run each time.
    """
    escapes = (r"\\[nrt]", r"\\u[0-9A-Fa-f]{4}", r"%[0-9A-Fa-f]{2}")
    after_escape = "".join(rf"|(?<={e}{prefix})" for e in escapes)
    return rf"{prefix}(?:(?<![{glued}]{prefix}){after_escape})"


_PEM_LABEL = r"-----(?:BEGIN|END)[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----"
# HTTP authentication schemes (IANA registry, and common custom ones), lower case.
_AUTH_SCHEMES = (
    r"(?:bearer|basic|digest|negotiate|ntlm|token|dpop|hoba|mutual|vapid|gssapi|oauth|apikey"
    r"|aws4-hmac-sha256|scram-sha-1|scram-sha-256|privatetoken|concealed)"
)
# A character of an Authorization value (RFC 9110 token68, lower case) that does not start
# another header (the keyword, then `:` or `=`); `svc-authorization-...` is a value.
_AUTH_CHAR = r"(?:(?!authorization(?:\\?[\"'])?[ \t]*[:=])[a-z0-9._~+/=-])"
_AWS_KEY_ID_PREFIX = r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)"

RULES: tuple[Rule, ...] = (
    Rule(
        "private-key",
        # An unterminated block runs to the end: output may have been cut inside the key.
        rf"(?s:{_PEM_LABEL.replace('(?:BEGIN|END)', 'BEGIN')}"
        rf"(?:.*?{_PEM_LABEL.replace('(?:BEGIN|END)', 'END')}|.*))",
        "gitleaks: private-key; detect-secrets: PrivateKeyDetector",
        ("PRIVATE KEY",),
    ),
    Rule(
        "aws-access-key-id",
        _lead(_AWS_KEY_ID_PREFIX) + r"[A-Z2-7]{16}(?![A-Za-z0-9])",
        "gitleaks: aws-access-token",
        ("A3T", "AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Rule(
        "aws-secret-access-key",
        r"secret_?(?:access_?)?key[\"']?[ \t]*(?:=>|[:=])[ \t]*"
        r"[\"']?(?P<secret>[a-z0-9/+]{40}[a-z0-9/+=]*)",
        "detect-secrets: AWSKeyDetector (a 40-character key named as a secret key)",
        ("secret",),
        ignore_case=True,
    ),
    Rule(
        "github-token",
        r"gh[pousr]_[0-9A-Za-z]{36,}",
        "gitleaks: github-pat, github-oauth, github-app-token, github-refresh-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    ),
    Rule(
        "github-fine-grained-pat",
        r"github_pat_[0-9A-Za-z_]{60,}",
        "gitleaks: github-fine-grained-pat (length loosened from 82)",
        ("github_pat_",),
    ),
    Rule(
        "gitlab-token",
        r"glpat-[0-9A-Za-z_-]{20,}(?:\.[0-9a-z]{9})?",
        "gitleaks: gitlab-pat, gitlab-pat-routable",
        ("glpat-",),
    ),
    Rule(
        "slack-token",
        r"xox[abeoprs](?:\.xox[bp])?-[0-9A-Za-z-]{10,}",
        "gitleaks: slack-bot-token, slack-user-token, slack-legacy-*; "
        "detect-secrets: SlackDetector",
        ("xox",),
    ),
    Rule(
        "slack-webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_]{20,}",
        "gitleaks: slack-webhook-url",
        ("hooks.slack.com",),
    ),
    Rule(
        "stripe-key",
        _lead(r"sk_(?:live|test|prod)_") + r"[0-9A-Za-z]{20,}",
        "gitleaks: stripe-access-token; detect-secrets: StripeDetector",
        ("sk_live_", "sk_test_", "sk_prod_"),
    ),
    Rule(
        "stripe-key",
        _lead(r"rk_(?:live|test|prod)_") + r"[0-9A-Za-z]{20,}",
        "gitleaks: stripe-access-token (restricted keys)",
        ("rk_live_", "rk_test_", "rk_prod_"),
    ),
    Rule(
        "anthropic-key",
        r"sk-ant-[A-Za-z0-9_-]{20,}",
        "gitleaks: anthropic-api-key, anthropic-admin-api-key (length loosened)",
        ("sk-ant-",),
    ),
    Rule(
        "openai-key",
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}",
        "gitleaks: openai-api-key (the T3BlbkFJ infix is not required)",
        ("sk-proj-", "sk-svcacct-", "sk-admin-"),
    ),
    Rule(
        "openai-key",
        _lead("sk-") + r"[A-Za-z0-9]{32,}(?![A-Za-z0-9_-])",
        "gitleaks: openai-api-key (legacy); detect-secrets: OpenAIDetector",
        ("sk-",),
    ),
    Rule(
        "google-api-key",
        _lead("AIza") + r"[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",
        "gitleaks: gcp-api-key",
        ("AIza",),
    ),
    Rule(
        "huggingface-token",
        _lead("hf_") + r"[A-Za-z]{34}(?![A-Za-z0-9_])",
        "gitleaks: huggingface-access-token",
        ("hf_",),
    ),
    Rule(
        "npm-token",
        _lead("npm_") + r"[A-Za-z0-9]{36}(?![A-Za-z0-9])",
        "gitleaks: npm-access-token",
        ("npm_",),
    ),
    Rule(
        "pypi-token",
        r"pypi-AgE[A-Za-z0-9_-]{50,}",
        "gitleaks: pypi-upload-token; detect-secrets: PypiTokenDetector (test.pypi too)",
        ("pypi-AgE",),
    ),
    Rule(
        "jwt",
        # Only where a token starts: from every `eyJ` inside a long run (`eyJeyJ...`) the
        # scan would cover the rest of the run, quadratic in its length.
        _lead("eyJ", "A-Za-z0-9_-")
        + r"[A-Za-z0-9_-]{8,}={0,2}\.eyJ[A-Za-z0-9_-]{8,}={0,2}\.[A-Za-z0-9_-]*={0,2}",
        "gitleaks: jwt; detect-secrets: JwtTokenDetector",
        ("eyJ",),
    ),
    Rule(
        "url-password",
        r"://[^\s:/?#\[\]@\"'<>]*:(?P<secret>[^\s/?#\[\]\"'<>]+)@",
        "detect-secrets: BasicAuthDetector (scheme, user and host are kept)",
        ("://",),
    ),
    Rule(
        "http-authorization",
        # A scheme we know stays; any other first word may be part of the credentials. A
        # credential stops where another header starts (``_AUTH_CHAR``): from each
        # `authorization=` of `authorization=authorization=...` the scan would otherwise
        # cover the rest of the run, and a second header on the line would pass as the
        # first one's credential.
        # The last lookahead keeps a second pass off `Negotiate [REDACTED:...]`. Quotes may
        # be JSON-escaped; Go prints headers as `map[K:[V]]`.
        r"authorization(?:\\?[\"'])?[ \t]*[:=][ \t]*(?:\\?[\"']|\[(?!redacted:))?"
        rf"(?:{_AUTH_SCHEMES}[ \t]+)?"
        rf"(?P<secret>(?:{_AUTH_CHAR}+[ \t]+)?{_AUTH_CHAR}{{8,}})"
        r"(?![a-z0-9._~+/=-])(?![ \t]*\[redacted:)",
        "gitleaks: curl-auth-header (any Authorization header, not only curl's); RFC 9110",
        ("authorization",),
        ignore_case=True,
    ),
    Rule(
        "bearer-token",
        r"bearer(?<![a-z0-9_]bearer)[ \t]+(?P<secret>[a-z0-9._~+/-]{20,}=*)",
        "gitleaks: curl-auth-header; RFC 6750 b64token",
        ("bearer",),
        ignore_case=True,
    ),
)


# The rules run on the `regex` engine for two things `re` cannot do: a time limit (a rule
# that turns out quadratic on some text, as two did, must not hold the caller for minutes)
# and matching without the GIL (`concurrent`), so a scrub in a worker thread leaves the
# event loop, and every other call's timeout, running.
_COMPILED = tuple(regex.compile(rule.regex) for rule in RULES)
# What one ``scrub`` may spend matching; past it the whole text is withheld (fails closed).
SCRUB_BUDGET_S = 1.0
TIMEOUT_MARKER = "[REDACTED:scrubber-timeout]"
_RULE_MARKERS = tuple(f"[REDACTED:{rule.kind}]" for rule in RULES)


def _matches_a_rule(text: str) -> bool:
    lowered = text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")
    return any(
        compiled.search(lowered if rule.ignore_case else text)
        for rule, compiled in zip(RULES, _COMPILED, strict=True)
    )


def secret_values_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Name -> value for the variables whose names look secret and whose value is not empty."""
    return {name: value for name, value in environ.items() if value and looks_secret_name(name)}


def _normalized(text: str) -> str:
    """``text`` without real newlines, then without JSON-escaped ``\\n``/``\\r``."""
    if "\r" in text:
        text = text.replace("\r", "")
    text = text.replace("\n", "")
    if "\\" in text:
        text = text.replace("\\n", "").replace("\\r", "")
    return text


def _normalized_bytes(data: bytes) -> bytes:
    """``_normalized`` on UTF-8: every byte it removes is ASCII, so the two agree."""
    if b"\r" in data:
        data = data.replace(b"\r", b"")
    data = data.replace(b"\n", b"")
    if b"\\" in data:
        data = data.replace(b"\\n", b"").replace(b"\\r", b"")
    return data


def _base64_cores(raw: bytes) -> set[str]:
    """The part of base64(``raw``) that is the same wherever ``raw`` sits in a longer stream.

    At byte offset k (mod 3) the characters before ceil(8k/6) and from floor(8(k+n)/6) on
    also carry bits of the neighbouring bytes.
    """
    cores: set[str] = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode("ascii")
        core = encoded[-(-8 * k // 6) : 8 * (k + len(raw)) // 6]
        cores.update((core, core.translate(_URLSAFE)))
    return cores


def _lower_percent(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _encodings(value: str) -> dict[str, bool]:
    """Every form of ``value`` to look for -> whether it is a base64 core."""
    raw = value.encode("utf-8", "surrogatepass")
    forms = {value, raw.hex(), raw.hex().upper(), repr(value)[1:-1]}
    for url in (quote(raw, safe=""), quote(raw), quote_plus(raw, safe="")):
        forms.update((url, _lower_percent(url)))
    for ensure_ascii in (True, False):
        escaped = json.dumps(value, ensure_ascii=ensure_ascii)[1:-1]
        forms.update((escaped, escaped.replace("/", "\\/")))
    found = dict.fromkeys(forms, False)
    found.update(dict.fromkeys(_base64_cores(raw), True))
    return found


@lru_cache(maxsize=1024)
def _split_tolerant(needle: str) -> regex.Pattern[str]:
    return regex.compile(_SEP.join(map(re.escape, needle)))


@dataclass(frozen=True)
class _Needle:
    text: str  # normalized form searched for
    marker: str
    base64: bool


def _sanitized_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:64]


@lru_cache(maxsize=8)
def _automaton(patterns: tuple[bytes, ...], dfa: bool) -> ahocorasick_rs.BytesAhoCorasick:
    """A DFA searches twice as fast, but its build grows quadratically on periodic values."""
    kind = ahocorasick_rs.Implementation.DFA if dfa else ahocorasick_rs.Implementation.ContiguousNFA
    return ahocorasick_rs.BytesAhoCorasick(patterns, implementation=kind)


def _case_variants(word: str) -> list[str]:
    return ["".join(chars) for chars in product(*({c.lower(), c.upper()} for c in word))]


def _windows(text: str) -> set[str]:
    return {text[i : i + MIN_KNOWN_LENGTH] for i in range(len(text) - MIN_KNOWN_LENGTH + 1)}


def _left(deadline: float) -> float:
    """Seconds left until ``deadline``; TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _finditer_spans(text: str, needle: str) -> Iterable[tuple[int, int]]:
    start = text.find(needle)
    while start >= 0:
        yield start, start + len(needle)
        start = text.find(needle, start + 1)


class Scrubber:
    """Replaces known secret values and well-known token formats with ``[REDACTED:<kind>]``.

    ``known`` maps a label (e.g. the env var name) to a secret value; its marker is
    ``[REDACTED:known:<label>]``. Values shorter than ``MIN_KNOWN_LENGTH`` or with fewer than
    ``MIN_KNOWN_DISTINCT`` distinct characters are ignored, as are values that occur inside a
    rule's marker (they could not be told apart from one); a label that shares
    ``MIN_KNOWN_LENGTH`` characters with a value is left out of the marker. ``scrub`` is
    idempotent.
    """

    def __init__(self, known: Mapping[str, str] = _NO_SECRETS) -> None:
        fixed_markers = (*_RULE_MARKERS, "[REDACTED:known]")
        accepted: list[tuple[str, dict[str, bool]]] = []
        markers: dict[str, str] = {}
        for label, value in sorted(known.items()):
            if len(value) < MIN_KNOWN_LENGTH or len(set(value)) < MIN_KNOWN_DISTINCT:
                continue
            needles = {_normalized(form): b64 for form, b64 in _encodings(value).items()}
            needles = {n: b64 for n, b64 in needles.items() if len(n) >= MIN_KNOWN_LENGTH}
            if any(n in marker for n in needles for marker in fixed_markers):
                continue
            clean = _sanitized_label(label)
            markers[label] = f"[REDACTED:known:{clean}]" if clean else "[REDACTED:known]"
            accepted.append((label, needles))
        # A marker shows no part of a value as long as a secret, and no token (a second pass
        # would redact it): such a label is left out.
        windows = {w for _, needles in accepted for n in needles for w in _windows(n)}
        for label, marker in markers.items():
            if windows.intersection(_windows(marker)) or _matches_a_rule(marker):
                markers[label] = "[REDACTED:known]"
        by_needle: dict[str, _Needle] = {}
        for label, needles in accepted:
            for needle, b64 in needles.items():
                by_needle.setdefault(needle, _Needle(needle, markers[label], b64))
        self._needles = tuple(by_needle.values())
        self._init_search()

    def _init_search(self) -> None:
        # Pattern ids: the known needles first, in order, then the rules' keywords (every
        # ASCII case variant of an ignore-case keyword's first letters) not already among them.
        patterns = {n.text.encode("utf-8", "surrogatepass"): i for i, n in enumerate(self._needles)}
        needle_bytes = sum(map(len, patterns))
        self._keyword_rules: dict[int, list[int]] = {}
        for index, rule in enumerate(RULES):
            for keyword in rule.keywords:
                variants = _case_variants(keyword[:_CI_STEM]) if rule.ignore_case else [keyword]
                for variant in variants:
                    pattern_id = patterns.setdefault(variant.encode(), len(patterns))
                    self._keyword_rules.setdefault(pattern_id, []).append(index)
        self._raw_search = _automaton(tuple(patterns), dfa=needle_bytes <= _DFA_MAX_BYTES)
        self._split_search = (
            _automaton(tuple(patterns)[: len(self._needles)], dfa=needle_bytes <= _DFA_MAX_BYTES)
            if self._needles
            else None
        )
        self._recheck = any("[" in n.text or "]" in n.text for n in self._needles)
        longest = max((len(n.text) for n in self._needles), default=0)
        self._max_span = max(PATTERN_SPAN, 3 * longest)

    @property
    def max_span(self) -> int:
        """Longest stretch of text that a rule must see whole to match.

        It is the PEM bound or three times the longest encoded known value (room for the
        separators of a value split across lines), whichever is larger.
        """
        return self._max_span

    def scrub(self, text: str) -> str:
        """``text`` with every secret found replaced by its marker; all of it replaced by
        ``TIMEOUT_MARKER`` when matching takes more than ``SCRUB_BUDGET_S``."""
        deadline = time.monotonic() + SCRUB_BUDGET_S
        try:
            result = self._scrub_once(text, deadline)
            passes = 1
            # Only a known value with a bracket can be completed by a marker's own bracket.
            while self._recheck and result != text and passes < _MAX_PASSES:
                text, result = result, self._scrub_once(result, deadline)
                passes += 1
        except TimeoutError:
            log.warning(
                "the scrubber took over %g s on %d characters: withheld", SCRUB_BUDGET_S, len(text)
            )
            return TIMEOUT_MARKER
        return result

    def _scrub_once(self, text: str, deadline: float) -> str:
        if not text:
            return text
        spans = self._spans(text, deadline)
        if not spans:
            return text
        spans.sort(key=itemgetter(0))
        pieces: list[str] = []
        done = 0
        cur_start, cur_end, cur_marker = spans[0]
        for start, end, marker in spans[1:]:
            if start < cur_end:
                cur_end = max(cur_end, end)
                continue
            pieces += (text[done:cur_start], cur_marker)
            done = cur_end
            cur_start, cur_end, cur_marker = start, end, marker
        pieces += (text[done:cur_start], cur_marker, text[cur_end:])
        return "".join(pieces)

    def _spans(self, text: str, deadline: float) -> list[tuple[int, int, str]]:
        raw = text.encode("utf-8", "surrogatepass")
        raw_counts = Counter(
            map(itemgetter(0), self._raw_search.find_matches_as_indexes(raw, overlapping=True))
        )
        rules: set[int] = set()
        for pattern_id in self._keyword_rules.keys() & raw_counts.keys():
            rules.update(self._keyword_rules[pattern_id])
        spans: list[tuple[int, int, str]] = []
        lowered_text: str | None = None
        for index in sorted(rules):
            compiled, marker = _COMPILED[index], _RULE_MARKERS[index]
            haystack = text
            if RULES[index].ignore_case:
                # Lowering ASCII bytes of UTF-8 moves no character: the spans fit `text`.
                if lowered_text is None:
                    lowered_text = raw.lower().decode("utf-8", "surrogatepass")
                haystack = lowered_text
            group = "secret" if "secret" in compiled.groupindex else 0
            matches = compiled.finditer(haystack, concurrent=True, timeout=_left(deadline))
            spans.extend((*m.span(group), marker) for m in matches)
        if self._split_search is not None:
            spans.extend(self._known_spans(text, raw, raw_counts, deadline))
        return spans

    def _known_spans(
        self, text: str, raw: bytes, raw_counts: Counter[int], deadline: float
    ) -> list[tuple[int, int, str]]:
        assert self._split_search is not None
        split_counts: Counter[int] = Counter()
        normalized = _normalized_bytes(raw)
        if len(normalized) != len(raw):
            hits = self._split_search.find_matches_as_indexes(normalized, overlapping=True)
            split_counts.update(map(itemgetter(0), hits))
        spans: list[tuple[int, int, str]] = []
        for pattern_id in sorted(raw_counts.keys() | split_counts.keys()):
            if pattern_id >= len(self._needles):
                continue
            needle = self._needles[pattern_id]
            found: Iterable[tuple[int, int]]
            # More hits once newlines are gone: some occurrence is split across lines. Removing
            # `\\n` can also eat a backslash or a leading `n`/`r` of the value itself, so the
            # counts would not tell; those values always take the slower regex.
            if (
                "\\" in needle.text
                or needle.text[0] in "nr"
                or split_counts[pattern_id] > raw_counts[pattern_id]
            ):
                pattern = _split_tolerant(needle.text)
                found = (
                    m.span()
                    for m in pattern.finditer(text, concurrent=True, timeout=_left(deadline))
                )
            else:
                found = _finditer_spans(text, needle.text)
            for start, end in found:
                if needle.base64:
                    # The characters on either side still carry a few of the value's bits.
                    start -= start > 0 and text[start - 1] in _B64_CHARS
                    end += end < len(text) and text[end] in _B64_CHARS
                spans.append((start, end, needle.marker))
        return spans
