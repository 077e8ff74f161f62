"""The ``mcp-sandbox`` command: serve, images build, doctor."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import anyio

from mcp_sandbox import __version__
from mcp_sandbox.app import configure_logging, make_service
from mcp_sandbox.docker_api import DockerApi
from mcp_sandbox.errors import ConfigError, SandboxError
from mcp_sandbox.settings import Settings, load_settings

log = logging.getLogger("mcp_sandbox")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-sandbox", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("--config", type=Path, help="TOML config file (or MCP_SANDBOX_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio"], default="stdio")
    images = sub.add_parser("images", help="manage the sandbox images")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build every image the server needs, locally")
    build.add_argument(
        "--base",
        help="base image to build from (e.g. debian:bookworm-slim with a registry); "
        "default: a local Debian base made with mmdebstrap",
    )
    build.add_argument("--rebuild-base", action="store_true", help="make the local base again")
    sub.add_parser("doctor", help="check what a first run needs")
    return p


async def _serve_stdio(settings: Settings) -> None:
    from mcp_sandbox.tools import build_server

    service = make_service(settings)
    server = build_server(service)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for sig in sigs:
                    # The stdio reader blocks in a thread that cancellation cannot reach, so
                    # remove every sandbox of ours here, then leave.
                    log.info("%s: removing this server's sandboxes and exiting", sig.name)
                    with anyio.CancelScope(shield=True):
                        await service.reap(own_too=True)
                    logging.shutdown()
                    os._exit(0)

        tg.start_soon(stop_on_signal)
        await server.run_stdio_async()
        tg.cancel_scope.cancel()


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _doctor(settings: Settings) -> int:
    from mcp_sandbox.doctor import render, run_checks

    checks = await run_checks(make_service(settings))
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"mcp-sandbox: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            anyio.run(_serve_stdio, settings)
            return 0
        if args.command == "images":
            from mcp_sandbox.images import build_images

            build_images(
                DockerApi(),
                settings.image,
                _progress,
                base=args.base,
                rebuild_base=args.rebuild_base,
            )
            return 0
        return anyio.run(_doctor, settings)
    except SandboxError as e:
        print(f"mcp-sandbox: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
