"""Docker's attach protocol: the hijacked connection of one container, and its frames.

Stdin goes out on the socket; stdout and stderr come back multiplexed, each frame an 8-byte
header (stream, size) and a body. Every method but ``pump_on_loop`` blocks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import anyio

_READ_CHUNK = 65_536


class _Frames:
    """Docker's multiplexed attach stream, parsed from chunks however they are cut: frames
    of an 8-byte header (stream, size) and a body, whose pieces go to ``sink`` as they come."""

    def __init__(self, sink: Callable[[int, bytes], bool | None]) -> None:
        self._sink = sink
        self._header = b""
        self._stream = 0
        self._left = 0

    def feed(self, data: bytes) -> bool:
        """True once ``sink`` has said stop."""
        i = 0
        while i < len(data):
            if self._left == 0:  # a header, perhaps split across reads
                need = 8 - len(self._header)
                self._header, i = self._header + data[i : i + need], i + need
                if len(self._header) == 8:
                    self._stream, self._left = struct.unpack(">BxxxL", self._header)
                    self._header = b""
                continue
            take = min(self._left, len(data) - i)
            self._left -= take
            if self._sink(self._stream, data[i : i + take]):
                return True
            i += take
        return False


class AttachedStreams:
    """The hijacked attach connection of one container: stdin out, stdout/stderr in."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sock: socket.socket = getattr(raw, "_sock", raw)

    def send(self, data: bytes) -> None:
        """Write all of ``data``; more may follow. Raises OSError when the stream is gone."""
        self._sock.sendall(data)

    def send_stdin(self, data: bytes) -> None:
        """Write all of ``data``, then half-close so the program sees end of input."""
        with contextlib.suppress(OSError):
            self._sock.sendall(data)
            self._sock.shutdown(socket.SHUT_WR)

    def pump(self, sink: Callable[[int, bytes], bool | None]) -> None:
        """Feed ``(stream, chunk)`` to ``sink`` until the streams end or ``sink`` says stop.

        Stream 1 is stdout, 2 is stderr. Reads in bounded chunks, so a huge frame never
        sits in memory whole.
        """
        frames = _Frames(sink)
        try:
            while (data := self._sock.recv(_READ_CHUNK)) and not frames.feed(data):
                pass
        except OSError:
            return

    @property
    def on_loop(self) -> bool:
        """Whether ``pump_on_loop`` can read it: a plain socket (not TLS)."""
        return type(self._sock) is socket.socket

    async def pump_on_loop(self, sink: Callable[[int, bytes], bool | None]) -> None:
        """``pump`` without a thread: the socket turns non-blocking and the event loop waits
        on it. Cancellable; write stdin first (``send_stdin``), while it still blocks."""
        sock = self._sock
        sock.setblocking(False)
        frames = _Frames(sink)
        while True:
            await anyio.wait_readable(sock)
            try:
                data = sock.recv(_READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data or frames.feed(data):
                return

    def is_open(self) -> bool:
        """Whether the container is still there with nothing said yet: no end of stream, no
        byte waiting (a stub writes nothing before its request)."""
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except ValueError:  # TLS: no peeking; the call finds out
            return True
        except OSError:
            return False
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._raw.close()
