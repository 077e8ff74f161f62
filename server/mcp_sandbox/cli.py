"""The ``mcp-sandbox`` command: serve, images build, env, doctor, runtime install-runsc."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import anyio
from pydantic import ValidationError

from mcp_sandbox import __version__
from mcp_sandbox.app import configure_logging, make_service
from mcp_sandbox.config.http import HttpSettings
from mcp_sandbox.config.settings import (
    Settings,
    describe_validation_error,
    load_settings,
    with_workspace_root,
)
from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import ConfigError, SandboxError
from mcp_sandbox.output.shaping import neutralise
from mcp_sandbox.service import SandboxService, make_scrubber
from mcp_sandbox.transport.call_runner import CallRunner
from mcp_sandbox.transport.launcher import LauncherClient
from mcp_sandbox.undertaker import start_undertaker

log = logging.getLogger("mcp_sandbox")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcp-sandbox", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("--config", type=Path, help="TOML config file (or MCP_SANDBOX_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", help="http: address to listen on (setting http.host)")
    serve.add_argument("--port", type=int, help="http: TCP port (setting http.port)")
    serve.add_argument(
        "--workspace",
        type=Path,
        help="directory mounted at /workspace (setting workspace; default: the current one)",
    )
    images = sub.add_parser("images", help="manage the sandbox images")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    build = images_sub.add_parser("build", help="build every image the server needs, locally")
    build.add_argument(
        "--base",
        help="base image to build from (e.g. debian:bookworm-slim with a registry); "
        "default: a local Debian base made with mmdebstrap",
    )
    build.add_argument("--rebuild-base", action="store_true", help="make the local base again")
    build.add_argument(
        "--server", action="store_true", help="also the server image compose.yaml runs"
    )
    launcher = sub.add_parser("launcher", help="the process that alone holds the Docker API")
    launcher.add_argument("action", choices=["serve", "ping"])
    launcher.add_argument("--socket", type=Path, help="Unix socket (setting launcher_socket)")
    token = sub.add_parser("token", help="make a bearer token for the HTTP transport")
    token.add_argument("action", choices=["new"])
    token.add_argument("name", help="the name logs show for this token")
    token.add_argument("--file", type=Path, help="append its hashed entry to this tokens file")
    ca = sub.add_parser("ca", help="the egress CA that signs certificates for credential hosts")
    ca.add_argument("action", choices=["rotate"], help="rotate: replace it with a new one")
    env = sub.add_parser("env", help="the workspace's project environment (its dependencies)")
    env.add_argument(
        "action",
        choices=["build", "status", "rm"],
        help="build: install the manifests' dependencies once; status; rm: remove it",
    )
    env.add_argument(
        "--workspace", type=Path, help="the project (setting workspace; default: the current one)"
    )
    sub.add_parser("doctor", help="check what a first run needs")
    runtime = sub.add_parser("runtime", help="set up the OCI runtime sandboxes run under")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", required=True)
    install = runtime_sub.add_parser(
        "install-runsc",
        help="register gVisor's runsc in /etc/docker/daemon.json and reload dockerd (root)",
    )
    install.add_argument(
        "--daemon-json", type=Path, default=Path("/etc/docker/daemon.json"), help="its path"
    )
    install.add_argument("--runsc", help="the runsc binary (default: runsc on PATH)")
    audit = sub.add_parser("audit", help="show the audit log's records (setting audit.path)")
    audit.add_argument("-n", "--last", type=int, default=20, help="how many, newest last")
    audit.add_argument("--session", help="only this session's records")
    audit.add_argument(
        "--tool", choices=["run_code", "shell", "prepare_env"], help="only this tool's"
    )
    audit.add_argument("--flag", help="only records with this flag (or its prefix: new_escalation)")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    return p


def _rotate_ca(settings: Settings) -> int:
    from mcp_sandbox.config.egress import default_ca_dir
    from mcp_sandbox.egress import ca

    directory = settings.egress.ca_dir or default_ca_dir()
    try:
        authority = ca.rotate(directory)
    except OSError as e:
        raise ConfigError(f"cannot write the egress CA in {directory} ({e.strerror})") from None
    print(f"new egress CA {authority.fingerprint[:16]} in {directory / ca.CA_CERT}")
    print("restart running servers: until then they serve certificates of the old one")
    return 0


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    import json
    from collections import deque

    from mcp_sandbox.oversight.audit import AuditLog, matches, render_table

    log_file = AuditLog(settings.audit)
    found = (
        r
        for r in log_file.records()
        if matches(r, session=args.session, tool=args.tool, flag=args.flag)
    )
    last = list(deque(found, maxlen=max(args.last, 0)))
    if args.json:
        for r in last:
            print(json.dumps(r))  # ASCII: no C1, bidi or line separator reaches a terminal
    elif last:
        print(render_table(last))
    else:
        print(f"no matching records in {log_file.path}", file=sys.stderr)
    return 0


async def _serve_stdio(settings: Settings) -> None:
    from mcp_sandbox.transport.stdio_replies import run_stdio
    from mcp_sandbox.transport.tools import build_server

    service = _sandboxes(settings)
    server = build_server(service)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for sig in sigs:
                    # The stdio reader blocks in a thread that cancellation cannot reach, so
                    # remove every sandbox of ours here, then leave.
                    log.info("%s: removing this server's sandboxes and exiting", sig.name)
                    with anyio.CancelScope(shield=True):
                        await service.shutdown()  # the warm pool first, if local
                    logging.shutdown()
                    os._exit(0)

        tg.start_soon(stop_on_signal)
        await run_stdio(server)
        tg.cancel_scope.cancel()


def _sandboxes(settings: Settings) -> CallRunner:
    """The launcher, when one holds Docker; else Docker in this process."""
    if settings.launcher_socket is not None:
        return LauncherClient(settings.launcher_socket, settings)
    return _serving_service(settings)


def _serving_service(settings: Settings) -> SandboxService:
    """The service of a long-lived server, with its undertaker: what a SIGKILL of this
    process leaves is removed all the same."""
    service = make_service(settings)
    start_undertaker(service.owner)
    return service


async def _serve_http(settings: Settings, host: str | None, port: int | None) -> None:
    from mcp_sandbox.transport.http_gate import serve_http

    given = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if given:
        try:
            http = HttpSettings.model_validate({**settings.http.model_dump(), **given})
        except ValidationError as e:
            raise ConfigError(f"invalid option: {describe_validation_error(e)}") from None
        settings = settings.model_copy(update={"http": http})
    await serve_http(settings, _sandboxes(settings))


def _launcher(settings: Settings, action: str, socket: Path | None) -> int:
    from mcp_sandbox.transport.launcher import serve_launcher

    path = socket or settings.launcher_socket
    if path is None:
        raise ConfigError("the launcher needs --socket or the launcher_socket setting")
    if action == "ping":
        anyio.run(LauncherClient(path).ping)
        print("ok")
        return 0
    anyio.run(serve_launcher, _serving_service(settings), path)
    return 0


def _new_token(name: str, tokens_file: Path | None) -> int:
    """Print a new token; its hashed entry goes to ``tokens_file`` (or is printed too)."""
    from mcp_sandbox.transport.auth import hash_entry, new_token, parse_entry, parse_lines

    token = new_token()
    entry = hash_entry(name, token)
    parse_entry(entry, "the token name")
    if tokens_file is None:
        print(f"token: {token}\nentry: {entry}")
        return 0
    if tokens_file.exists():
        taken = parse_lines(tokens_file.read_text(encoding="utf-8").splitlines(), str(tokens_file))
        if any(e.name == name for e in taken):
            raise ConfigError(f"{tokens_file} already has a token named {name}")
    # The file holds hashes only, so the server (another uid in compose) may read it.
    fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(entry + "\n")
    print(f"added the hashed entry of {name!r} to {tokens_file}", file=sys.stderr)
    print(token)
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def _env(service: SandboxService, action: str) -> int:
    """``mcp-sandbox env build|status|rm``: progress on stderr, the outcome on stdout."""
    if action == "build":

        async def progress(line: str) -> None:
            _progress(line)

        try:
            report = await service.build_environment(progress)
        finally:
            await service.reap(own_too=True)  # its proxy and networks; not the environment
        env = report.environment
        print(
            f"built {env.id} in {report.duration_ms / 1000:.1f} s: {env.size_mib} MiB, "
            f"{len(report.packages)} package(s), {report.egress_allowed} request(s) to the "
            "index"
        )
        if report.egress_denied:
            refused = ", ".join(neutralise(service.scrub(d)) for d in report.egress_denied)
            print(f"refused: {refused}")
        for name in report.packages:
            print(f"  {name}")
        return 0
    if action == "status":
        found, seen = await service.environment_status()
        if found is None:
            print("none: no environment for this workspace (`mcp-sandbox env build`)")
            return 1
        print(f"{seen.state}: {found.id}, built {found.built_at}, {found.size_mib} MiB")
        if seen.hint:
            print(seen.hint)
        return 0
    removed = await service.remove_environment()
    print(f"removed {len(removed)} environment(s)" + "".join(f"\n  {n}" for n in removed))
    return 0


async def _doctor(settings: Settings) -> int:
    from mcp_sandbox.doctor import render, run_checks

    api = DockerApi()
    checks = await run_checks(make_service(settings, api), api)
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if getattr(args, "workspace", None) is not None:
            settings = with_workspace_root(settings, args.workspace)
        scrub = make_scrubber(settings).scrub
    except ConfigError as e:
        print(f"mcp-sandbox: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, scrub)
    try:
        if args.command == "serve":
            if args.transport == "http":
                anyio.run(_serve_http, settings, args.host, args.port)
            else:
                anyio.run(_serve_stdio, settings)
            return 0
        if args.command == "launcher":
            return _launcher(settings, args.action, args.socket)
        if args.command == "token":
            return _new_token(args.name, args.file)
        if args.command == "audit":
            return _audit(settings, args)
        if args.command == "ca":
            return _rotate_ca(settings)
        if args.command == "runtime":
            from mcp_sandbox.runsc_setup import install_runsc

            install_runsc(DockerApi(), daemon_json=args.daemon_json, runsc_path=args.runsc)
            return 0
        if args.command == "env":
            return anyio.run(_env, _serving_service(settings), args.action)
        if args.command == "images":
            from mcp_sandbox.images.build import build_images

            build_images(
                DockerApi(),
                settings.image,
                _progress,
                base=args.base,
                rebuild_base=args.rebuild_base,
                proxy_image=settings.egress.proxy_image,
            )
            if args.server:
                from mcp_sandbox.images.server_image import build_server_image

                build_server_image(DockerApi(), _progress)
            return 0
        return anyio.run(_doctor, settings)
    except SandboxError as e:
        print(f"mcp-sandbox: {e}", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"mcp-sandbox: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
