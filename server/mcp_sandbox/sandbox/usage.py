"""PURE: what a run used, read from its own cgroup inside the sandbox as it ends.

runc removes a container's cgroup with its last process, so nothing outside can read a
peak once the program has exited. The reading is taken in the sandbox instead, after the
program ends and before the container does: by the usage wrapper of a cold run
(``USAGE_ARGV``), or by the warm stub (it puts the same figures in its end marker). A cold
run's wrapper kills whatever the program left behind first, then writes one report, last
thing on stderr: ``NUL mcp-sandbox-usage: FIELDS NUL``, which the server strips
(``RunTail``). A program can forge its own report (as it can choose its own exit code),
never another call's; every figure is parsed strictly and bounded.

The fields, in order, -1 when the kernel does not offer one: CPU time in user and system
mode (ns), the memory cgroup's peak (bytes) and the processes its limit killed, the pids
cgroup's peak, and the bytes the run added to /tmp and to the working directory's
filesystem (statvfs, before and after).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from mcp_sandbox.constants import MIB
from mcp_sandbox.output.output_files import (
    FILE_FRAME,
    FILE_MAX_BYTES,
    FILE_OPENER,
    FILES_MAX,
    FILES_TAIL_BYTES,
    FILES_TOTAL_BYTES,
    OUTPUTS_DIR,
)
from mcp_sandbox.output.result import Resources
from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.output.test_report import REPORT_SHIPPED_BYTES
from mcp_sandbox.policy.limits import Limits

# Shell functions both the cold wrapper and the warm sh stub use. `usage_now` prints the
# seven fields, with cpu and filesystem figures absolute; `usage_since BEFORE` the same with
# those taken relative to BEFORE (an earlier `usage_now`). Built-ins only, but one `stat`.
USAGE_SH = r"""
usage_file() {
  v=-1
  [ -r "$1" ] || { echo -1; return; }
  if [ -z "$2" ]; then read -r v _ <"$1" || v=-1; echo "$v"; return; fi
  while read -r k n; do [ "$k" = "$2" ] && { echo "$n"; return; }; done <"$1"
  echo -1
}
usage_now() {
  c=/sys/fs/cgroup
  cu=$(usage_file $c/cpuacct/cpuacct.usage_user)
  cs=$(usage_file $c/cpuacct/cpuacct.usage_sys)
  if [ "$cu" = -1 ]; then
    cu=$(usage_file $c/cpu.stat user_usec); [ "$cu" = -1 ] || cu=$((cu * 1000))
    cs=$(usage_file $c/cpu.stat system_usec); [ "$cs" = -1 ] || cs=$((cs * 1000))
  fi
  mp=$(usage_file $c/memory/memory.max_usage_in_bytes)
  mk=$(usage_file $c/memory/memory.oom_control oom_kill)
  [ "$mp" = -1 ] && { mp=$(usage_file $c/memory.peak); mk=$(usage_file $c/memory.events oom_kill); }
  pp=$(usage_file $c/pids/pids.peak)
  [ "$pp" = -1 ] && pp=$(usage_file $c/pids.peak)
  t=-1 w=-1
  set -- $(stat -f -c '%b %f %S' /tmp . 2>/dev/null)
  [ "$#" = 6 ] && t=$((($1 - $2) * $3)) && w=$((($4 - $5) * $6))
  echo "$cu,$cs,$mp,$mk,$pp,$t,$w"
}
usage_since() {
  now=$(usage_now)
  old_ifs=$IFS; IFS=,
  set -- $1 $now
  IFS=$old_ifs
  d() { if [ "$1" = -1 ] || [ "$2" = -1 ]; then echo -1; else echo $(($2 - $1)); fi; }
  echo "$(d "$1" "$8"),$(d "$2" "$9"),${10},${11},${12},$(d "$6" "${13}"),$(d "$7" "${14}")"
}
"""

# Where a test runner writes its report when one is wanted (``report_env``), and the files
# of it the wrapper ships out: the first REPORT_SHIPPED_BYTES of each.
REPORTS_DIR = "/tmp/.mcp-sandbox-report"
REPORT_NAMES = ("pytest.xml", "node.tap")
REPORT_FILE_MAX_BYTES = REPORT_SHIPPED_BYTES

# The cold wrapper: the program runs as its child; what it leaves behind is killed (tini
# would end it anyway as the program exits), then the report is the last write on stderr.
# `kill -1` spares the sender and pid 1 (tini), and takes everything else of the sandbox
# (of its pid namespace and uid): never run this outside one.
# sh exports PWD, which a program started by the daemon does not get: it is unset.
# The shell's own stderr is /dev/null while the program runs (the program has the real one
# as fd 2, moved to 3 and back): dash would say "Killed" there when a signal ends it.
_WRAPPER = (
    (
        USAGE_SH
        + r"""
ship_outputs() {
  [ -d "$1" ] && [ ! -L "$1" ] || return 0
  n=0 left=@TOTAL@
  for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    [ "$n" -lt @FILES@ ] || break
    n=$((n + 1)) s=0 m=0
    if [ -L "$f" ]; then k=l
    elif [ -f "$f" ]; then
      k=f
      s=$(stat -c %s -- "$f" 2>/dev/null) || s=0
      case $s in ''|*[!0-9]*) s=0 ;; esac
      m=$s
      [ "$m" -gt @FILEMAX@ ] && m=@FILEMAX@
      [ "$m" -gt "$left" ] && m=$left
      left=$((left - m))
    else k=o
    fi
    printf '\000mcp-sandbox-file:%s:%s:%s:' "$(printf %s "${f##*/}" | base64 -w0)" "$k" "$s" >&3
    [ "$m" -gt 0 ] && head -c "$m" -- "$f" 2>/dev/null | base64 -w0 >&3
    printf '\000' >&3
  done
}
before=$(usage_now)
[ -n "$MCP_SANDBOX_REPORTS" ] && mkdir -p "$MCP_SANDBOX_REPORTS"
unset PWD OLDPWD
[ -n "$MCP_SANDBOX_OUTPUTS" ] && mkdir -p "$MCP_SANDBOX_OUTPUTS"
exec 3>&2 2>/dev/null
( exec "$@" 2>&3 3>&- )
code=$?
kill -9 -1
if [ -n "$MCP_SANDBOX_REPORTS" ]; then
  for name in @NAMES@; do
    f=$MCP_SANDBOX_REPORTS/$name
    [ -f "$f" ] || continue
    printf '\000mcp-sandbox-report:%s:' "$name" >&3
    head -c @MAX@ "$f" | base64 -w0 >&3
    printf '\000' >&3
  done
fi
if [ -n "$MCP_SANDBOX_OUTPUTS" ]; then ship_outputs "$MCP_SANDBOX_OUTPUTS"; fi
printf '\000mcp-sandbox-usage:%s\000' "$(usage_since "$before")" >&3
exit "$code"
"""
    )
    .replace("@NAMES@", " ".join(REPORT_NAMES))
    .replace("@MAX@", str(REPORT_FILE_MAX_BYTES))
    .replace("@TOTAL@", str(FILES_TOTAL_BYTES))
    .replace("@FILES@", str(FILES_MAX))
    .replace("@FILEMAX@", str(FILE_MAX_BYTES))
)
USAGE_ARGV: tuple[str, ...] = ("/bin/sh", "-c", _WRAPPER, "mcp-sandbox-usage")

REPORT_PREFIX = b"\x00mcp-sandbox-usage:"
# Seven integers, -1 or up to 20 digits each.
FIELDS_PATTERN = rb"-?\d{1,20}(?:,-?\d{1,20}){6}"
REPORT_MAX_BYTES = len(REPORT_PREFIX) + 7 * 21 + 1
# Nothing of a sandbox can honestly exceed this (2**53: exact as a JSON number).
_CEILING = 1 << 53


@dataclass(frozen=True)
class Usage:
    """One run's figures as the sandbox reported them; None where it could not tell."""

    cpu_user_ns: int | None
    cpu_system_ns: int | None
    peak_memory_bytes: int | None
    oom_kills: int | None
    peak_pids: int | None
    tmp_bytes_added: int | None
    workdir_bytes_added: int | None


def report_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a sandbox's ``env`` gains when a test report is wanted: the runners write one
    into ``REPORTS_DIR`` (pytest JUnit XML, node TAP), besides their usual output."""
    node = (
        f"--test-reporter=tap --test-reporter-destination=stdout "
        f"--test-reporter=tap --test-reporter-destination={REPORTS_DIR}/node.tap"
    )
    return {
        "MCP_SANDBOX_REPORTS": REPORTS_DIR,
        "PYTEST_ADDOPTS": f"{env.get('PYTEST_ADDOPTS', '')} --junitxml={REPORTS_DIR}/pytest.xml",
        "NODE_OPTIONS": f"{env.get('NODE_OPTIONS', '')} {node}".strip(),
    }


def outputs_env() -> dict[str, str]:
    """What a sandbox's ``env`` gains when its files are wanted back: the wrapper makes
    ``OUTPUTS_DIR`` before the program starts and ships what it holds after it ends."""
    return {"MCP_SANDBOX_OUTPUTS": OUTPUTS_DIR}


def with_usage(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` run under the usage wrapper (a cold run)."""
    return (*USAGE_ARGV, *argv)


def parse_fields(fields: bytes) -> Usage | None:
    """The seven comma-separated figures of a report, or None when they are malformed."""
    if re.fullmatch(FIELDS_PATTERN, fields) is None:
        return None
    values = [int(v) for v in fields.split(b",")]

    def bounded(v: int) -> int | None:
        return None if v < 0 or v > _CEILING else v

    cpu_user, cpu_sys, peak, hits, pids, tmp, work = values
    return Usage(
        cpu_user_ns=bounded(cpu_user),
        cpu_system_ns=bounded(cpu_sys),
        peak_memory_bytes=bounded(peak),
        oom_kills=bounded(hits),
        peak_pids=bounded(pids),
        # Net: a run that deleted what was there added nothing.
        tmp_bytes_added=None if tmp == -1 else bounded(max(tmp, 0)),
        workdir_bytes_added=None if work == -1 else bounded(max(work, 0)),
    )


# A report frame: its opener names the report, then its bytes as base64, then a NUL.
_REPORT_OPENER = b"\x00mcp-sandbox-report:"
_REPORT_BODY_MAX = (REPORT_FILE_MAX_BYTES + 2) // 3 * 4
_REPORT_FRAME = re.compile(
    re.escape(_REPORT_OPENER)
    + rb"("
    + b"|".join(re.escape(n.encode()) for n in REPORT_NAMES)
    + rb"):([A-Za-z0-9+/=]{0,%d})\x00" % _REPORT_BODY_MAX
)
# The most the frames that end a stream weigh: one report frame per name, then the usage.
TAIL_MAX_BYTES = (
    sum(len(_REPORT_OPENER) + len(n) + 1 + _REPORT_BODY_MAX + 1 for n in REPORT_NAMES)
    + REPORT_MAX_BYTES
)


def tail_bytes(env: tuple[tuple[str, str], ...]) -> int:
    """What ``RunTail`` holds back of a sandbox with ``env``: room for the report frames
    only when the wrapper ships reports (``report_env``), else the usage frame alone (the
    rest reaches the capture, and a call's progress, at once)."""
    wants = any(k == "MCP_SANDBOX_REPORTS" for k, _ in env)
    hold = TAIL_MAX_BYTES if wants else REPORT_MAX_BYTES
    return hold + (FILES_TAIL_BYTES if ships_files(env) else 0)


def ships_files(env: tuple[tuple[str, str], ...]) -> bool:
    """Whether the wrapper of a sandbox with ``env`` ships ``/tmp/outputs`` (``outputs_env``):
    only then are file frames at the end of its stderr taken for files."""
    return any(k == "MCP_SANDBOX_OUTPUTS" for k, _ in env)


class RunTail:
    """Feeds stderr into its capture, holding back the last bytes, which may be its frames.

    The cold wrapper ends stderr with its frames: a report file's, then the usage figures.
    Only frames that end the stream count; any elsewhere are the program's output, and go
    to the capture byte for byte. What is held back is bounded (``hold_bytes``); every byte
    is handled by C code (a copy, ``rfind``, one regex match per frame at the end), so a
    stream of NULs costs what any other does.
    """

    def __init__(
        self, capture: StreamCapture, hold_bytes: int = TAIL_MAX_BYTES, *, files: bool = False
    ) -> None:
        self.capture = capture
        self._take_files = files
        self.usage: Usage | None = None
        self.reports: dict[str, bytes] = {}
        self.files: list[tuple[bytes, bytes, bytes, bytes]] = []  # ``FILE_FRAME`` groups
        self._hold = hold_bytes
        self._held = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._held += chunk
        over = len(self._held) - self._hold
        if over > 0:
            self.capture.feed(bytes(self._held[:over]))
            del self._held[:over]  # from the front: CPython moves no bytes for it

    def finish(self) -> None:
        """The stream has ended: frames that end it are taken; the rest is output."""
        held = bytes(self._held)
        self._held.clear()
        start = _frames_start(held, files=self._take_files)
        self.capture.feed(held[:start])
        if start == len(held):
            return
        end = held.rfind(REPORT_PREFIX)
        self.usage = parse_fields(held[end + len(REPORT_PREFIX) : -1])
        for m in _REPORT_FRAME.finditer(held, start, end):
            self.reports[m.group(1).decode()] = m.group(2)
        for f in FILE_FRAME.finditer(held, start, end):
            self.files.append((f.group(1), f.group(2), f.group(3), f.group(4)))


def _frames_start(data: bytes, *, files: bool) -> int:
    """Where the frames that end ``data`` start: a usage frame last, before it up to one
    report frame per name, and before those (with ``files``) up to ``FILES_MAX`` file frames
    (more are the program's output); ``len(data)`` when none."""
    usage_at = data.rfind(REPORT_PREFIX)
    if (
        usage_at < 0
        or re.fullmatch(FIELDS_PATTERN + rb"\x00", data[usage_at + len(REPORT_PREFIX) :]) is None
    ):
        return len(data)
    start = usage_at
    for _ in REPORT_NAMES:
        # A frame holds no NUL but its first and last byte, and its opener only once.
        at = data.rfind(_REPORT_OPENER, 0, start)
        if at < 0 or _REPORT_FRAME.fullmatch(data, at, start) is None:
            break
        start = at
    for _ in range(FILES_MAX if files else 0):
        at = data.rfind(FILE_OPENER, 0, start)
        if at < 0 or FILE_FRAME.fullmatch(data, at, start) is None:
            break
        start = at
    return start


def resources(
    usage: Usage | None, *, wall_ms: int, limits: Limits, workdir_is_scratch: bool
) -> Resources:
    """The result's ``resources`` from a run's report (None: it made none)."""
    u = usage or Usage(None, None, None, None, None, None, None)

    def ms(ns: int | None) -> int | None:
        return None if ns is None else ns // 1_000_000

    peak = u.peak_memory_bytes
    return Resources(
        wall_ms=wall_ms,
        cpu_user_ms=ms(u.cpu_user_ns),
        cpu_system_ms=ms(u.cpu_system_ns),
        # A cgroup never holds more than its limit: a larger figure is a forged one.
        peak_memory_mib=None
        if peak is None
        else round(min(peak, limits.memory_mib * MIB) / MIB, 1),
        memory_limit_mib=limits.memory_mib,
        oom_kills=u.oom_kills,
        peak_processes=None if u.peak_pids is None else min(u.peak_pids, limits.pids),
        processes_limit=limits.pids,
        tmp_bytes_added=u.tmp_bytes_added,
        workdir_bytes_added=u.workdir_bytes_added if workdir_is_scratch else None,
    )
