"""PURE: the protocol of a pre-started sandbox: its stub, the request, the end marker.

A warm container runs ``STUB_ARGV`` under tini with stdin attached. A call writes one request
(text and base64 only, so no byte of it can be a Docker detach key), the stub runs the
program, then writes an end marker carrying the call's random nonce and the exit code on
both streams. Output after the marker is discarded; the container is killed and removed
after the reply. A program that forges or suppresses the marker only ends its own call
early or late: the container is still thrown away. Forging needs the nonce, which the program
is never given: the stub reads it only after the fork, and the Python stub is not dumpable,
so the program (the same user) cannot open its /proc/PID/mem or /proc/PID/fd/0. The sh stub
cannot do that; a program under it could take the nonce and end its call early. Its sandbox
then outlives the reply until the removal (``after_reply``: at most half a second, plus the
removal itself), under the same limits and memory admission as any sandbox.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.sandbox.spec import ContainerSpec
from mcp_sandbox.sandbox.usage import (
    FIELDS_PATTERN,
    REPORT_MAX_BYTES,
    USAGE_SH,
    Usage,
    parse_fields,
)

# The sh stub, for an image without python3: no extra processes for small requests. Each
# argument arrives as one line with backslashes doubled and control bytes as \0ooo, which
# printf %b turns back; the "." keeps trailing newlines through the command substitution.
# `read` takes one byte at a time from a pipe, so the nonce stays in the pipe until the
# program's arguments are in; the program gets /dev/null or the decoded rest as stdin.
SH_STUB = (
    USAGE_SH
    + r"""
mounts() {
  m=
  while IFS=' ' read -r _ _ _ _ point _; do m="$m $point"; done </proc/self/mountinfo
  printf %s "$m"
}
oom_kills() {
  for f in /sys/fs/cgroup/memory/memory.oom_control /sys/fs/cgroup/memory.events; do
    [ -r "$f" ] || continue
    while read -r k v; do [ "$k" = oom_kill ] && { echo "$v"; return; }; done <"$f"
  done
  echo -1
}
mounts0=$(mounts)
IFS= read -r size || exit 97
IFS= read -r cwd || exit 97
IFS= read -r has_stdin || exit 97
report=
case $has_stdin in *u) report=1 has_stdin=${has_stdin%u} ;; esac
IFS= read -r n || exit 97
set --
i=0
while [ "$i" -lt "$n" ]; do
  IFS= read -r line || exit 97
  arg=$(printf '%b.' "$line")
  set -- "$@" "${arg%.}"
  i=$((i + 1))
done
IFS= read -r nonce || exit 97
if [ "$(mounts)" != "$mounts0" ]; then
  printf '\000mcp-sandbox-end:%s:999\000' "$nonce"
  printf '\000mcp-sandbox-end:%s:999\000' "$nonce" >&2
  exit 95
fi
if [ "$cwd" != "$PWD" ]; then
  cd -- "$cwd" 2>/dev/null || {
    echo "mcp-sandbox: uid 65534 cannot enter $cwd; chmod o+rx the workspace" >&2
    exit 96
  }
fi
unset PWD OLDPWD
kills=$(oom_kills)
[ -n "$report" ] && before=$(usage_now)
if [ "$has_stdin" = 1 ]; then base64 -d | "$@"; else "$@" </dev/null; fi
code=$?
oom=
[ "$kills" -ge 0 ] && [ "$(oom_kills)" -gt "$kills" ] && oom=:oom
[ -n "$report" ] && oom="$oom:u=$(usage_since "$before")"
printf '\000mcp-sandbox-end:%s:%s%s\000' "$nonce" "$code" "$oom"
printf '\000mcp-sandbox-end:%s:%s%s\000' "$nonce" "$code" "$oom" >&2
exit "$code"
"""
)
# The Python stub (``warm_stub``) when the image has python3: its interpreter has started
# before the call, so a `python3 -c` call skips the start-up. Both speak the same protocol.
PY_STUB = (Path(__file__).parent / "warm_stub.py").read_text(encoding="utf-8")
# sh exports PWD, which a program started by the daemon does not get: it is unset.
_LAUNCH = 'command -v python3 >/dev/null 2>&1 && { unset PWD; exec python3 -c "$1"; }\n' + SH_STUB
STUB_ARGV: tuple[str, ...] = ("/bin/sh", "-c", _LAUNCH, "mcp-sandbox-stub", PY_STUB)
SH_STUB_ARGV: tuple[str, ...] = ("/bin/sh", "-c", SH_STUB, "mcp-sandbox-stub")
# A warm sandbox for `copy` and `rw` takes the copy on stdin and sends it back after the
# program (``warm_copy``): only the Python stub can, so without python3 it ends at once
# (its stream closes, and the call runs cold).
COPY_STUB_ARGV: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    'command -v python3 >/dev/null 2>&1 && { unset PWD; exec python3 -c "$1" copy; }; exit 98',
    "mcp-sandbox-stub",
    PY_STUB,
)

# The code in a marker that says the program never ran: a mount of the sandbox went away
# while it waited (the host replaced a masked file: its overmount goes with the old file).
STALE_CODE = 999
_MARKER = b"\x00mcp-sandbox-end:"
# `:oom` when a process of the program's was killed for memory (the daemon says so of a
# cold sandbox, and a warm one's container lives on after its call).
# `:u=FIELDS` carries what the call used (``usage``), read by the stub once it has ended.
_MARKER_RE = re.compile(
    rb"\x00mcp-sandbox-end:([0-9a-f]{32}):(\d{1,3})(:oom)?(?::u=(" + FIELDS_PATTERN + rb"))?\x00"
)


def _line(arg: str) -> str:
    """``arg`` on one line of printable text: backslashes doubled, control bytes as octal
    escapes (so neither a newline nor a Docker detach key can appear raw)."""
    out = arg.replace("\\", "\\\\")
    return "".join(f"\\0{ord(c):03o}" if ord(c) < 0x20 or c == "\x7f" else c for c in out)


def encode_request(
    nonce: str,
    argv: tuple[str, ...],
    cwd: str,
    stdin_b64: bytes | None,
    *,
    report_usage: bool = False,
) -> bytes:
    """The bytes written to the stub's stdin. ``argv`` holds no NUL (policy refuses it).

    Its byte length, the program block (working directory, whether stdin follows and, with
    a ``u``, that the marker is to carry the call's usage; argv), then the nonce, then
    stdin as base64: a stub starts the program before it reads the nonce.
    """
    mode = ("1" if stdin_b64 is not None else "0") + ("u" if report_usage else "")
    head = [_line(cwd), mode, str(len(argv))]
    block = ("\n".join([*head, *(_line(a) for a in argv)]) + "\n").encode(
        "utf-8", "surrogateescape"
    )
    return b"%d\n%s%s\n%s" % (len(block), block, nonce.encode("ascii"), stdin_b64 or b"")


def encode_copy(archive: bytes) -> bytes:
    """What precedes the request to a copy stub: the copy's tar stream as base64 (so no byte
    of it is a detach key), after a line with that length."""
    b64 = base64.b64encode(archive)
    return b"A%d\n%s" % (len(b64), b64)


def encode_patch(removed: tuple[str, ...], archive: bytes) -> bytes:
    """What precedes the request to a copy stub that holds a copy already: the paths to
    remove (relative, NUL-separated) and the patch's tar stream, both base64, after a line
    with their lengths."""
    names = b"\0".join(rel.encode("utf-8", "surrogateescape") for rel in removed)
    b64_names, b64_tar = base64.b64encode(names), base64.b64encode(archive)
    return b"P%d %d\n%s%s" % (len(b64_names), len(b64_tar), b64_names, b64_tar)


def copy_trailer(nonce: str) -> bytes:
    """What ends the copy a stub sends back after its end marker: it came out whole."""
    return b"\x00mcp-sandbox-copy:%s\x00" % nonce.encode("ascii")


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
    oom: bool = False
    usage: Usage | None = None
    _held: bytes = field(default=b"", repr=False)
    after: bytes = field(default=b"", repr=False)  # what followed the marker in its chunk

    _HOLD = len(_MARKER) + 32 + 1 + 3 + 4 + 3 + REPORT_MAX_BYTES + 1

    def feed(self, chunk: bytes) -> bool:
        """True once the marker has been seen; what follows it is dropped."""
        if self.ended:
            return True
        data = self._held + chunk
        m = _MARKER_RE.search(data)
        while m is not None and m.group(1).decode() != self.nonce:
            # A marker the program printed: plain output. Look again from just past its
            # start, so that one without its closing NUL cannot swallow the real one's opening.
            m = _MARKER_RE.search(data, m.start() + 1)
        if m is not None:
            self.capture.feed(data[: m.start()])
            self.exit_code, self.ended, self._held = int(m.group(2)), True, b""
            self.after = data[m.end() :]
            self.oom = m.group(3) is not None
            self.usage = parse_fields(m.group(4)) if m.group(4) else None
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
