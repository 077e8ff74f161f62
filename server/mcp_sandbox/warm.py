"""PURE: the protocol of a pre-started sandbox: its stub, the request, the end marker.

A warm container runs ``STUB`` under tini with stdin attached. A call writes one request
(text and base64 only, so no byte of it can be a Docker detach key), the stub runs the
program, then writes an end marker carrying the call's random nonce and the exit code on
both streams. Output after the marker is discarded; the container is killed and removed
after the reply. A program that forges or suppresses the marker only ends its own call
early or late: the container is still thrown away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from mcp_sandbox.output import StreamCapture
from mcp_sandbox.spec import ContainerSpec

# dash, no extra processes for small requests: each argument arrives as one line with
# backslashes doubled and control bytes as \0ooo, which printf %b turns back; the "." keeps
# trailing newlines through the command substitution.
STUB = r"""
IFS= read -r nonce || exit 97
IFS= read -r cwd || exit 97
IFS= read -r has_stdin || exit 97
IFS= read -r n || exit 97
set --
i=0
while [ "$i" -lt "$n" ]; do
  IFS= read -r line || exit 97
  arg=$(printf '%b.' "$line")
  set -- "$@" "${arg%.}"
  i=$((i + 1))
done
if [ "$cwd" != "$PWD" ]; then
  cd -- "$cwd" 2>/dev/null || {
    echo "mcp-sandbox: uid 65534 cannot enter $cwd; chmod o+rx the workspace" >&2
    exit 96
  }
  unset OLDPWD
fi
if [ "$has_stdin" = 1 ]; then base64 -d | "$@"; else "$@" </dev/null; fi
code=$?
printf '\000mcp-sandbox-end:%s:%s\000' "$nonce" "$code"
printf '\000mcp-sandbox-end:%s:%s\000' "$nonce" "$code" >&2
exit "$code"
"""
STUB_ARGV: tuple[str, ...] = ("/bin/sh", "-c", STUB, "mcp-sandbox-stub")

_MARKER = b"\x00mcp-sandbox-end:"
_MARKER_RE = re.compile(rb"\x00mcp-sandbox-end:([0-9a-f]{32}):(\d{1,3})\x00")


def _line(arg: str) -> str:
    """``arg`` on one line of printable text: backslashes doubled, control bytes as octal
    escapes (so neither a newline nor a Docker detach key can appear raw)."""
    out = arg.replace("\\", "\\\\")
    return "".join(f"\\0{ord(c):03o}" if ord(c) < 0x20 or c == "\x7f" else c for c in out)


def encode_request(nonce: str, argv: tuple[str, ...], cwd: str, stdin_b64: bytes | None) -> bytes:
    """The bytes written to the stub's stdin. ``argv`` holds no NUL (policy refuses it)."""
    head = [nonce, _line(cwd), "1" if stdin_b64 is not None else "0", str(len(argv))]
    text = "\n".join([*head, *(_line(a) for a in argv)]) + "\n"
    return text.encode("utf-8", "surrogateescape") + (stdin_b64 or b"")


def shape_of(spec: ContainerSpec) -> ContainerSpec:
    """What must match for a warm container to stand in for a cold one: all but identity."""
    # The timeout is the server's to enforce and the working directory is the stub's `cd`:
    # neither is part of what the daemon was asked to build.
    limits = spec.limits.model_copy(update={"timeout_s": 1.0})
    return replace(spec, name="", argv=(), stdin=False, labels=(), limits=limits, working_dir="")


@dataclass
class EndWatch:
    """Feeds a stream into its capture up to the end marker of ``nonce``."""

    nonce: str
    capture: StreamCapture
    exit_code: int | None = None
    ended: bool = False
    _held: bytes = field(default=b"", repr=False)

    _HOLD = len(_MARKER) + 32 + 1 + 3 + 1

    def feed(self, chunk: bytes) -> bool:
        """True once the marker has been seen; what follows it is dropped."""
        if self.ended:
            return True
        data = self._held + chunk
        m = _MARKER_RE.search(data)
        while m is not None and m.group(1).decode() != self.nonce:
            m = _MARKER_RE.search(data, m.end())  # a marker the program printed: plain output
        if m is not None:
            self.capture.feed(data[: m.start()])
            self.exit_code, self.ended, self._held = int(m.group(2)), True, b""
            return True
        # Keep back what could be the start of a marker split across chunks.
        cut = data.rfind(_MARKER[:1], max(len(data) - self._HOLD, 0))
        if cut == -1:
            self.capture.feed(data)
            self._held = b""
        else:
            self.capture.feed(data[:cut])
            self._held = data[cut:]
        return False

    def flush(self) -> None:
        """The stream ended without a marker: what was held back is output too."""
        if self._held:
            self.capture.feed(self._held)
            self._held = b""
