"""Container health probes for compose.yaml. Standard library only: a probe every few
seconds costs milliseconds, where the full CLI costs most of a second of CPU.

    python3 -m mcp_sandbox.transport.healthcheck launcher /run/mcp-sandbox/launcher.sock
    python3 -m mcp_sandbox.transport.healthcheck http http://127.0.0.1:8000/healthz

Exit 0 when healthy. The launcher probe sends ``ping`` (the launcher then pings Docker), in
the launcher's wire format: a 4-byte big-endian length, then JSON.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import urllib.request

TIMEOUT_S = 5.0


def launcher_ok(path: str) -> bool:
    body = b'{"op":"ping"}'
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect(path)
            s.sendall(struct.pack(">I", len(body)) + body)
            data = b""
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    return False
                data += chunk
        reply = json.loads(data[4:])
    except (OSError, ValueError):
        return False
    return isinstance(reply, dict) and reply.get("pong") is True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return int(response.status) == 200
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("launcher", "http"):
        print(__doc__, file=sys.stderr)
        return 2
    ok = launcher_ok(argv[1]) if argv[0] == "launcher" else http_ok(argv[1])
    return 0 if ok else 1
