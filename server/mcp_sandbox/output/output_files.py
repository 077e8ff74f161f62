"""PURE: the files a run left under ``/tmp/outputs``, as the sandbox ships them, made safe.

/tmp is a tmpfs that goes with the container, so the cold usage wrapper (``sandbox/usage``)
ships the directory out on stderr once the program and all it started have ended: one
frame per entry, ``NUL mcp-sandbox-file:NAME:KIND:SIZE:BODY NUL``, NAME and BODY base64,
KIND ``f`` (a regular file; BODY its first bytes), ``l`` (a symbolic link, never followed)
or ``o`` (anything else: a directory, a FIFO, a device), SIZE its full size in bytes.

A program can write such frames itself, as it can write the files: nothing of the framing
is trusted. Every frame is matched whole by a bounded pattern; count, per-file and total
bytes are capped again here; a name is the program's choice (scrubbed and neutralised to
be shown, reduced to ``[A-Za-z0-9._-]`` to be part of a URI, so no ``/`` and no ``..``);
a text file's contents are scrubbed and neutralised like output. An image's bytes cannot
be scrubbed, so images come back only where the operator allows (``outputs.images``).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from mcp_sandbox.output.result import Image, OutputFile
from mcp_sandbox.output.shaping import fit, json_chars, neutralise, safe_head

OUTPUTS_DIR = "/tmp/outputs"
# What one run ships at most: entries, bytes of each file, bytes of all files together.
FILES_MAX = 16
FILE_MAX_BYTES = 256 * 1024
FILES_TOTAL_BYTES = 1024 * 1024
NAME_MAX_BYTES = 255  # the longest file name Linux allows
# Characters of a name as shown (scrubbed first), and of one in a URI.
SHOWN_NAME_CHARS = 100
KEY_CHARS = 64

FILE_OPENER = b"\x00mcp-sandbox-file:"
_NAME64_MAX = (NAME_MAX_BYTES + 2) // 3 * 4
_BODY64_MAX = (FILE_MAX_BYTES + 2) // 3 * 4
FILE_FRAME = re.compile(
    re.escape(FILE_OPENER)
    + rb"([A-Za-z0-9+/=]{1,%d}):([flo]):(\d{1,20}):([A-Za-z0-9+/=]{0,%d})\x00"
    % (_NAME64_MAX, _BODY64_MAX)
)
_FRAME_OVERHEAD = len(FILE_OPENER) + _NAME64_MAX + 3 + 21 + 1
# The most the file frames of one run weigh: every frame's overhead, the total in base64,
# and each body's padding.
FILES_TAIL_BYTES = FILES_MAX * (_FRAME_OVERHEAD + 4) + (FILES_TOTAL_BYTES + 2) // 3 * 4

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_SIZE_CEILING = 1 << 53


@dataclass(frozen=True)
class ShippedFile:
    """One entry as a frame said it: the name's bytes, its kind, size, and first bytes."""

    name: bytes
    kind: str  # "f", "l" or "o"
    size: int
    body: bytes


@dataclass(frozen=True)
class ShapedFiles:
    """What a run's files become: the result's list, the text kept to be read as a
    resource (by key), and the images to send."""

    listed: list[OutputFile]
    texts: dict[str, str]
    images: list[Image]
    note: str | None = None


def parse_frames(frames: list[tuple[bytes, bytes, bytes, bytes]]) -> list[ShippedFile]:
    """The files of ``frames`` (a ``FILE_FRAME`` match's groups each), in order, capped:
    the first ``FILES_MAX``, names unique, each body at most ``FILE_MAX_BYTES`` and its
    size, all bodies together at most ``FILES_TOTAL_BYTES`` (later ones lose theirs).
    A frame that does not decode is dropped."""
    files: list[ShippedFile] = []
    seen: set[bytes] = set()
    left = FILES_TOTAL_BYTES
    for name64, kind, size_text, body64 in frames:
        if len(files) >= FILES_MAX:
            break
        try:
            name = binascii.a2b_base64(name64, strict_mode=True)
            body = binascii.a2b_base64(body64, strict_mode=True) if body64 else b""
        except binascii.Error:
            continue
        size = int(size_text)
        if (
            not name
            or len(name) > NAME_MAX_BYTES
            or b"/" in name
            or b"\x00" in name
            or name in seen
            or size > _SIZE_CEILING
        ):
            continue
        seen.add(name)
        kind_s = kind.decode()
        if kind_s != "f" or len(body) > min(size, FILE_MAX_BYTES, left):
            body = b""  # a link or device has no body; an oversized one is a forged one
        left -= len(body)
        files.append(ShippedFile(name, kind_s, size, body))
    return files


def uri_key(name: str, taken: set[str]) -> str:
    """A key for ``name`` that is safe in a URI and as a path segment: ``[A-Za-z0-9._-]``
    only, no leading dot, no ``..``, unique among ``taken`` (which it joins)."""
    key = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    key = re.sub(r"\.{2,}", ".", key).lstrip(".")[:KEY_CHARS] or "file"
    unique, n = key, 1
    while unique in taken:
        n += 1
        unique = f"{n}-{key}"
    taken.add(unique)
    return unique


def file_uri(run_id: str, key: str) -> str:
    """Where a kept text file of ``run_id`` is read (an MCP resource)."""
    return f"sandbox://runs/{run_id}/files/{key}"


def _as_text(body: bytes, cut: bool) -> str | None:
    """``body`` as UTF-8 text, or None when it is not (a NUL says binary); a cut body may
    end mid-character."""
    if b"\x00" in body:
        return None
    for drop in range(4 if cut else 1):
        try:
            return body[: len(body) - drop].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _image_type(name: str, body: bytes, text: str | None) -> str | None:
    if body.startswith(_PNG):
        return "image/png"
    if body.startswith(_JPEG):
        return "image/jpeg"
    if text is not None and name.lower().endswith(".svg") and "<svg" in text:
        return "image/svg+xml"
    return None


def shape_files(
    shipped: list[ShippedFile],
    *,
    run_id: str,
    scrub: Callable[[str], str],
    margin: int,
    images: bool,
    room: int,
) -> ShapedFiles:
    """The result's ``files`` (as JSON at most ``room`` characters), the texts to keep and
    the images to send. ``images``: whether PNG, JPEG and SVG files come back as images
    (their bytes unscrubbed); an SVG is text, so it is kept scrubbed as a resource too."""
    listed: list[OutputFile] = []
    texts: dict[str, str] = {}
    sent: list[Image] = []
    taken: set[str] = set()
    used = 2  # the list's brackets
    for f in shipped:
        shown = fit(neutralise(scrub(f.name.decode("utf-8", "replace"))), SHOWN_NAME_CHARS)
        entry, text, image = _shape_one(f, shown, run_id, scrub, margin, images, taken)
        weight = json_chars(entry.model_dump_json()) + 1
        if used + weight > room:
            return ShapedFiles(listed, texts, sent, f"{len(shipped) - len(listed)} not listed")
        used += weight
        listed.append(entry)
        if text is not None and entry.uri is not None:
            texts[entry.uri.rsplit("/", 1)[1]] = text
        if image is not None:
            sent.append(image)
    # The wrapper stops at the cap: there may have been more.
    full = f"only the first {FILES_MAX} entries come back" if len(shipped) >= FILES_MAX else None
    return ShapedFiles(listed, texts, sent, full)


def _shape_one(
    f: ShippedFile,
    shown: str,
    run_id: str,
    scrub: Callable[[str], str],
    margin: int,
    images: bool,
    taken: set[str],
) -> tuple[OutputFile, str | None, Image | None]:
    def entry(kind: str, **more: object) -> OutputFile:
        return OutputFile.model_validate({"name": shown, "size": f.size, "kind": kind, **more})

    if f.kind == "l":
        return entry("symlink", note="not returned: a symbolic link is never followed"), None, None
    if f.kind == "o":
        return entry("other", note="not returned: not a regular file"), None, None
    cut = len(f.body) < f.size
    if cut and not f.body:
        past = (
            f"not returned: past the {FILES_TOTAL_BYTES}-byte cap of all files together, "
            "or unreadable"
        )
        return entry("file", note=past), None, None
    text = _as_text(f.body, cut)
    mime = _image_type(shown, f.body, text)
    if mime is not None and mime != "image/svg+xml":  # bytes no scrubber can read
        if not images:
            off = "not returned: images are off on this server (outputs.images)"
            return entry("image", mime_type=mime, note=off), None, None
        if cut:
            big = f"not returned: larger than the {FILE_MAX_BYTES}-byte cap of a file"
            return entry("image", mime_type=mime, note=big), None, None
        return entry("image", mime_type=mime, content="image"), None, Image(mime, f.body)
    if text is None:
        binary = "not returned: binary, which the scrubber cannot read"
        return entry("binary", note=binary), None, None
    note: str | None = None
    if cut:
        kept = safe_head(text, scrub, margin)
        note = f"cut to its first {len(kept.encode('utf-8'))} bytes"
    else:
        kept = scrub(text)
    kept = neutralise(kept)
    uri = file_uri(run_id, uri_key(shown, taken))
    if mime is not None:  # an SVG: text, scrubbed, and an image where images are on
        image = Image(mime, kept.encode("utf-8")) if images and not cut else None
        content = "image" if image is not None else "resource"
        return (
            entry("image", mime_type=mime, uri=uri, content=content, note=note),
            kept,
            image,
        )
    return entry("text", mime_type="text/plain", uri=uri, content="resource", note=note), kept, None
