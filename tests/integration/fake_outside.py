"""The fake "outside" of the egress tests: runs in our own containers on our own network.

    python3 -c "$(cat fake_outside.py)" web NAME   HTTP on 80 and TLS on 443 as NAME, plus a
                                                   PEP 503 index serving one wheel (somepkg)
    python3 -c "$(cat fake_outside.py)" api NAME   an API on 80 and 443 (its certificate and key
                                                   in $FAKE_CERT, $FAKE_KEY: a test CA's) that
                                                   logs every header; /echo answers the
                                                   Authorization header back, /echo64 in
                                                   base64
    python3 -c "$(cat fake_outside.py)" dns        a DNS server on 53 (UDP and TCP) that logs
                                                   every query and answers NXDOMAIN

Each line on stdout is an event a test reads with `docker logs`:
``conn <port> <peer>``, ``req <host header> <path>``, ``hdr <port> <name>: <value>``,
``query <name>``.
Standard library only (and the image's openssl, for a self-signed certificate).
"""

import asyncio
import base64
import hashlib
import io
import os
import socket
import ssl
import subprocess
import sys
import zipfile

PKG = "somepkg"
VERSION = "1.0"
WHEEL = f"{PKG}-{VERSION}-py3-none-any.whl"


def say(line: str) -> None:
    print(line, flush=True)


def build_wheel() -> bytes:
    files = {
        f"{PKG}/__init__.py": b'VALUE = "installed through the proxy"\n',
        f"{PKG}-{VERSION}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n"
        ).encode(),
        f"{PKG}-{VERSION}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: fake-outside\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{PKG}-{VERSION}.dist-info/RECORD,,")
    files[f"{PKG}-{VERSION}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def page(name: str, host: str, path: str, wheel: bytes) -> tuple[str, bytes]:
    if path in ("/simple/", "/simple"):
        return "text/html", f'<html><body><a href="/simple/{PKG}/">{PKG}</a></body></html>'.encode()
    if path in (f"/simple/{PKG}/", f"/simple/{PKG}"):
        sha = hashlib.sha256(wheel).hexdigest()
        link = f'<a href="/packages/{WHEEL}#sha256={sha}">{WHEEL}</a>'
        return "text/html", f"<html><body>{link}</body></html>".encode()
    if path == f"/packages/{WHEEL}":
        return "application/octet-stream", wheel
    return "text/plain", f"hello from {name} host={host} path={path}\n".encode()


def make_certificate(name: str) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "/tmp/key.pem",
            "-out", "/tmp/cert.pem", "-days", "1", "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def write_given_certificate() -> None:
    for var, path in (("FAKE_CERT", "/tmp/cert.pem"), ("FAKE_KEY", "/tmp/key.pem")):
        with open(path, "w") as f:
            f.write(os.environ[var])


async def web(name: str, api: bool = False) -> None:
    wheel = build_wheel()
    if api:
        write_given_certificate()
    else:
        make_certificate(name)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain("/tmp/cert.pem", "/tmp/key.pem")

    def handler(port: int):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            say(f"conn {port} {peer[0] if peer else '?'}")
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                host = next(
                    (ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("host:")),
                    "",
                )
                say(f"req {host} {path}")
                for ln in lines[1:]:
                    if ln:
                        say(f"hdr {port} {ln}")
                length = next(
                    (
                        int(ln.split(":", 1)[1])
                        for ln in lines
                        if ln.lower().startswith("content-length:")
                    ),
                    0,
                )
                if length:
                    body_in = await asyncio.wait_for(reader.readexactly(length), 10)
                    say(f"body {port} {body_in.decode('latin-1')}")
                auth = next(
                    (
                        ln.split(":", 1)[1].strip()
                        for ln in lines
                        if ln.lower().startswith("authorization:")
                    ),
                    "",
                )
                if api and path == "/echo":
                    ctype, body = "text/plain", f"you sent {auth}\n".encode()
                elif api and path == "/echo64":  # a reflection no byte match can see
                    ctype, body = "text/plain", base64.b64encode(auth.encode()) + b"\n"
                elif api:
                    ctype, body = "text/plain", f"api {name} {port} path={path}\n".encode()
                else:
                    ctype, body = page(name, host, path, wheel)
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except Exception as e:  # a test server: log and go on
                say(f"error {port} {type(e).__name__}")
            finally:
                writer.close()

        return handle

    plain = await asyncio.start_server(handler(80), "0.0.0.0", 80)
    secure = await asyncio.start_server(handler(443), "0.0.0.0", 443, ssl=tls)
    say("ready")
    async with plain, secure:
        await asyncio.gather(plain.serve_forever(), secure.serve_forever())


def qname(packet: bytes) -> str:
    labels, pos = [], 12
    while pos < len(packet) and packet[pos]:
        n = packet[pos]
        labels.append(packet[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels)


def nxdomain(packet: bytes) -> bytes:
    flags = 0x8183  # response, recursion desired and available, NXDOMAIN
    return packet[:2] + flags.to_bytes(2, "big") + packet[4:6] + b"\0\0\0\0\0\0" + packet[12:]


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        say(f"query {qname(data)} udp {addr[0]}")
        self.transport.sendto(nxdomain(data), addr)  # type: ignore[attr-defined]


async def dns() -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Udp, local_addr=("0.0.0.0", 53), family=socket.AF_INET)

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(size)
            say(f"query {qname(data)} tcp {writer.get_extra_info('peername')[0]}")
            answer = nxdomain(data)
            writer.write(len(answer).to_bytes(2, "big") + answer)
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tcp, "0.0.0.0", 53)
    say("ready")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    role = sys.argv[1]
    asyncio.run(web(sys.argv[2], role == "api") if role in ("web", "api") else dns())
