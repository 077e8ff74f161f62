"""Files out, through the real tools in both protocol eras: what a run leaves in /tmp/outputs."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ImageContent, ResourceLink

from sandbox_client import MODES, PLANTED_VALUE, connect


def _png(width: int, height: int) -> bytes:
    """A valid RGB PNG, made with zlib and struct only (what the sandbox's program does)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes([x % 256, y % 256, 128]) * width for y in range(height) for x in [y]
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# The program writes the same PNG with the same code, and a text file with a secret in it,
# a symlink to /etc/passwd, a name that looks like a path, and a text file past the cap.
PROGRAM = (
    "import os, struct, zlib\n"
    "def chunk(kind, data):\n"
    "    body = kind + data\n"
    "    return struct.pack('>I', len(data)) + body + struct.pack('>I', zlib.crc32(body))\n"
    "def png(width, height):\n"
    "    rows = b''.join(b'\\x00' + bytes([x % 256, y % 256, 128]) * width"
    " for y in range(height) for x in [y])\n"
    "    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)\n"
    "    return (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', header)"
    " + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))\n"
    "d = '/tmp/outputs'\n"
    "open(d + '/plot.png', 'wb').write(png(32, 24))\n"
    f"open(d + '/notes.txt', 'w').write('token {PLANTED_VALUE}\\nsecond line\\n')\n"
    "os.symlink('/etc/passwd', d + '/passwd')\n"
    "open(d + '/..%2F..%2Fx', 'w').write('odd name\\n')\n"
    "open(d + '/....', 'w').write('dots\\n')\n"
    "open(d + '/big.log', 'w').write('y' * 400000)\n"
    "try:\n"
    "    open(d + '/../../x', 'w').write('escape')\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
    "print('done')\n"
)
IMAGES_ON = {"MCP_SANDBOX_OUTPUTS__IMAGES": "true"}


def _wire_chars(result: CallToolResult) -> int:
    """The result as JSON, its image blocks aside (they are sent outside the budget)."""
    bare = result.model_copy(
        update={"content": [c for c in result.content if not isinstance(c, ImageContent)]}
    )
    return len(bare.model_dump_json(by_alias=True, exclude_none=True))


@pytest.mark.parametrize("mode", MODES)
async def test_a_png_comes_back_as_an_image_and_text_as_a_scrubbed_resource(mode: str) -> None:
    async with connect(mode, env=IMAGES_ON) as c:
        full = await c.call_tool(
            "run_code", {"language": "python", "code": PROGRAM, "outputs": True}
        )
        assert not full.is_error, full.content
        result = full.structured_content
        assert result is not None and result["exit_code"] == 0, result
        assert result["pooled"] is False and result["stdout"].endswith("done\n")
        files = {f["name"]: f for f in result["files"]}
        run_id = result["run_id"]

        images = [b for b in full.content if isinstance(b, ImageContent)]
        assert [(i.mime_type, base64.b64decode(i.data)) for i in images] == [
            ("image/png", _png(32, 24))
        ]
        assert files["plot.png"]["content"] == "image" and files["plot.png"]["kind"] == "image"

        notes = files["notes.txt"]
        assert notes["kind"] == "text" and notes["content"] == "resource"
        assert notes["uri"] == f"sandbox://runs/{run_id}/files/notes.txt"
        links = [b for b in full.content if isinstance(b, ResourceLink)]
        assert notes["uri"] in [str(link.uri) for link in links]
        read = await c.read_resource(notes["uri"])
        text = read.contents[0].text  # type: ignore[union-attr]
        assert text.endswith("second line\n") and text.startswith("token ")
        assert PLANTED_VALUE not in text
        assert PLANTED_VALUE not in full.model_dump_json()

        link = files["passwd"]
        assert link["kind"] == "symlink" and link["uri"] is None and link["content"] is None
        assert "root:" not in full.model_dump_json()

        for name in ("..%2F..%2Fx", "...."):
            odd = files[name]
            key = odd["uri"].rsplit("/", 1)[1]
            assert "/" not in key and ".." not in key and not key.startswith(".")
            assert (await c.read_resource(odd["uri"])).contents[0].text  # type: ignore[union-attr]
        for bad in (f"sandbox://runs/{run_id}/files/..", f"sandbox://runs/{run_id}/files/nope"):
            with pytest.raises(MCPError):
                await c.read_resource(bad)

        big = files["big.log"]
        assert big["size"] == 400_000 and "cut to its first" in big["note"]
        kept = (await c.read_resource(big["uri"])).contents[0].text  # type: ignore[union-attr]
        assert 200_000 < len(kept) <= 256 * 1024
    assert _wire_chars(full) < 40_000


@pytest.mark.parametrize("mode", MODES)
async def test_images_stay_off_by_default_and_the_caps_hold(mode: str) -> None:
    code = (
        PROGRAM
        + "for i in range(30):\n"
        + "    open(f'/tmp/outputs/z{i:02d}.txt', 'w').write('z' * 100000)\n"
    )
    async with connect(mode) as c:
        full = await c.call_tool("run_code", {"language": "python", "code": code, "outputs": True})
        result = full.structured_content
        assert result is not None and result["exit_code"] == 0, full.content
        assert not [b for b in full.content if isinstance(b, ImageContent)]
        files = result["files"]
        assert len(files) == 16 and result["files_note"] == "only the first 16 entries come back"
        assert any(f["kind"] == "file" and "cap" in f["note"] for f in files)
        png = next(f for f in files if f["name"] == "plot.png")
        assert png["content"] is None and "outputs.images" in png["note"]
        kept = 0
        for f in files:
            if f["uri"] is not None:
                text = (await c.read_resource(f["uri"])).contents[0].text  # type: ignore[union-attr]
                kept += len(text.encode())
        assert kept <= 1024 * 1024
    assert _wire_chars(full) < 40_000


async def test_without_outputs_nothing_is_shipped() -> None:
    async with connect("auto") as c:
        full = await c.call_tool(
            "run_code", {"language": "python", "code": PROGRAM.replace("/tmp/outputs", "/tmp")}
        )
    result = full.structured_content
    assert result is not None and result["files"] == [] and result["exit_code"] == 0
