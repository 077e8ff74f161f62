"""A server that lost the daemon removes, once it answers again, what the outage left."""

from __future__ import annotations

from pathlib import Path

import anyio

from fake_engine import FakeEngine
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.constants import LABEL, OWNER_LABEL
from mcp_sandbox.engine.owners import process_identity
from mcp_sandbox.errors import SandboxUnavailable


class FlakyEngine(FakeEngine):
    """A daemon that is gone for its first ``down`` pings, and holds one exited container of
    ``owner`` (a call's, left when its removal failed) and one running one (a warm one)."""

    def __init__(self, owner: str, down: int) -> None:
        super().__init__()
        self.down = down
        labels = {LABEL: "1", OWNER_LABEL: owner}
        self.put_container("left", running=False, labels=labels)
        self.put_container("warm", running=True, labels=labels)

    def ping(self) -> None:
        if self.down > 0:
            self.down -= 1
            raise SandboxUnavailable("container backend failed to answer a ping")


async def test_after_the_daemon_comes_back_what_the_outage_left_is_removed(
    tmp_path: Path,
) -> None:
    (tmp_path / "ws").mkdir()
    api = FlakyEngine(process_identity(), down=3)
    settings = Settings(pool={"enabled": False}, audit={"path": tmp_path / "a.jsonl"})
    service = make_service(settings, api)
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.run_background)
        service._daemon_failed.set()  # as a call that failed as unavailable does
        with anyio.fail_after(10):
            while "left" not in api.removed:  # noqa: ASYNC110  # the fake records from threads
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert api.removed.count("warm") == 0 and service.outages == 1
