"""Run inside the compose stack's server container (as an attacker who owns that process
would): try to reach a Docker API and to make it create a privileged container, bind-mount
/, or exec into another container. Prints one JSON object of outcomes; asserts nothing.

    docker exec -i <server> python3 - < server_container_probe.py
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

LAUNCHER = "/run/mcp-sandbox/launcher.sock"
SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/var/run/docker/docker.sock")


def attempt(fn: object) -> str:
    """'ok' if ``fn()`` worked, else the exception's type and first line."""
    assert callable(fn)
    try:
        fn()
    except Exception as e:
        return f"refused: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return "ok"


def launcher_reply(message: dict[str, object]) -> object:
    body = json.dumps(message).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(LAUNCHER)
        s.sendall(struct.pack(">I", len(body)) + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data[4:])


def main() -> None:
    import docker  # the server's own dependency: what an attacker in this process has

    out: dict[str, object] = {
        "uid": os.getuid(),
        "docker_sockets": [p for p in SOCKETS if os.path.exists(p)],
        "docker_host_env": os.environ.get("DOCKER_HOST"),
        "cap_eff": next(
            line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff")
        ),
    }
    out["from_env_ping"] = attempt(lambda: docker.from_env(timeout=5).ping())
    # The launcher's socket is the only way out; speak the Docker API to it.
    api = docker.APIClient(base_url=f"unix://{LAUNCHER}", version="1.41", timeout=10)

    def create_privileged() -> None:
        host = api.create_host_config(privileged=True)
        api.create_container("mcp-sandbox-runtime:0.1", "id", host_config=host)

    def bind_root() -> None:
        host = api.create_host_config(binds=["/:/host:rw"])
        api.create_container("mcp-sandbox-runtime:0.1", "id", host_config=host)

    out["api_create_privileged"] = attempt(create_privileged)
    out["api_bind_root"] = attempt(bind_root)
    out["api_exec"] = attempt(
        lambda: api.exec_create(sys.argv[1] if len(sys.argv) > 1 else "x", "id")
    )
    out["api_list"] = attempt(lambda: api.containers(all=True))
    # And our own protocol, with every field the launcher has no place for.
    args = {"language": "python", "code": "print(1)"}
    out["launcher_privileged"] = launcher_reply(
        {"op": "run_code", "args": args, "privileged": True}
    )
    out["launcher_bind_root"] = launcher_reply(
        {"op": "run_code", "args": {**args, "binds": ["/:/host"]}}
    )
    out["launcher_exec"] = launcher_reply({"op": "exec", "container": "launcher", "cmd": ["sh"]})
    out["launcher_ping"] = launcher_reply({"op": "ping"})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
