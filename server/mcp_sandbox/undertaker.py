"""The undertaker: a small process that outlives its server and removes what the server left.

A server removes its sandboxes when it stops, but a SIGKILL runs no code of ours: the OOM
killer, a crash, or a client that stops waiting (the MCP SDK kills a stdio server's process
group 4 s after it closes the server's stdin, however many removals are still under way). So
each server that holds the Docker API starts one undertaker, in a session of its own (a signal
to the server's process group does not reach it), on a pipe whose write end the server alone
holds: the pipe's end is the server's death, however it came. The undertaker then waits until
the server no longer runs and removes every container, network and volume of ours whose
server is gone (the rule a server's own start-up reaper applies), twice, a few seconds apart
(a create the daemon had under way when the server died shows up late), a build's
half-built environment, and the dead servers' mask blanks. While it waits it has loaded the
standard library alone.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time

log = logging.getLogger(__name__)

# A create the daemon had under way when its server died is there by then.
SETTLE_S = 3.0
# The server's write end, held for the server's life (closed by the kernel at its death).
_watched: list[subprocess.Popen[bytes]] = []


def start_undertaker(owner: str) -> None:
    """Start the undertaker of the server whose identity is ``owner`` (this process)."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_sandbox.undertaker", owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # never a client's pipe: its EOF is the server's end
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        log.warning("no undertaker (%s): a SIGKILL would leave sandboxes until the next start", e)
        return
    _watched.append(proc)


def _wait_for_death(owner: str) -> None:
    while os.read(0, 4096):  # nothing is ever written: EOF is the server's end
        pass
    from mcp_sandbox.engine.owners import owner_is_alive

    while owner_is_alive(owner):  # it closed its end while exiting; wait until it has
        time.sleep(0.1)


async def _bury() -> None:
    import anyio

    from mcp_sandbox.engine.docker_api import DockerApi
    from mcp_sandbox.engine.owners import process_identity
    from mcp_sandbox.environment.store import reap_environments
    from mcp_sandbox.service import reap_orphans
    from mcp_sandbox.workspace.session import sweep_dead_blanks

    api = DockerApi()
    threads = anyio.CapacityLimiter(8)
    me = process_identity()  # owns nothing: only the dead servers' objects go
    await reap_orphans(api, me, threads, own_too=False)
    await anyio.sleep(SETTLE_S)
    await reap_orphans(api, me, threads, own_too=False)
    # A build the server had under way: its half-built environment (none is ever marked
    # ready). Old ones are the next server's to judge, by its own environment.max_age_days.
    await reap_environments(api, threads, max_age_s=math.inf)
    sweep_dead_blanks()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mcp_sandbox.undertaker OWNER", file=sys.stderr)
        return 2
    _wait_for_death(argv[0])
    import anyio

    try:
        anyio.run(_bury)
    except Exception:  # nobody reads us; the next server's reaper is the net
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
