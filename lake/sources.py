"""Helpers shared by Source plugins: safe media paths and canonical messages.

A Source reads records from a dataset root. Image references inside those records are
untrusted: :func:`resolve_media` turns one into a :class:`~lake.records.MediaRef` or
raises :class:`~lake.errors.RejectedInput` with the reason, and :func:`canonical_messages`
normalises the many chat formats to ``[{"role", "content"}]`` with ``<image>``
placeholders in order.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlparse

from lake.errors import RejectedInput
from lake.records import Location, MediaRef, Reject

T = TypeVar("T")

IMAGE_TOKEN = "<image>"

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class PathPolicy:
    """What image references a source accepts besides paths inside its root."""

    allow_absolute: bool = False
    allow_outside_root: bool = False
    allow_urls: bool = False


def resolve_media(root: Path, ref: object, policy: PathPolicy) -> MediaRef:
    """Turn an image reference from a record into a MediaRef, or raise RejectedInput.

    Accepts paths relative to ``root``, ``file://`` URLs, ``data:`` URLs (inline base64)
    and, only when allowed, absolute paths, paths escaping the root and http(s) URLs.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise RejectedInput(f"image reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref.startswith("data:"):
        return MediaRef(source_uri=f"data:{len(ref)}", data=_decode_data_url(ref))
    parsed = urlparse(ref)
    if parsed.scheme in ("http", "https"):
        if not policy.allow_urls:
            raise RejectedInput(f"URL image references are not allowed (allow_urls=false): {ref}")
        return MediaRef(source_uri=ref, data=_fetch(ref))
    if parsed.scheme == "file":
        ref = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise RejectedInput(f"unsupported image reference scheme {parsed.scheme!r}: {ref}")
    path = Path(ref)
    root = root.resolve()
    if path.is_absolute():
        if not policy.allow_absolute:
            raise RejectedInput(f"absolute image path not allowed (allow_absolute=false): {ref}")
        full = path.resolve()
    else:
        full = (root / path).resolve()
    try:
        rel = full.relative_to(root).as_posix()
    except ValueError:
        if not (policy.allow_outside_root or (path.is_absolute() and policy.allow_absolute)):
            raise RejectedInput(
                f"image path escapes the dataset root (allow_outside_root=false): {ref}"
            ) from None
        rel = full.as_posix()
    if not full.is_file():
        raise RejectedInput(f"image file not found: {ref}")
    return MediaRef(source_uri=rel, path=full)


def _decode_data_url(ref: str) -> bytes:
    header, _, payload = ref.partition(",")
    if not header.endswith(";base64"):
        raise RejectedInput("data: URL images must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RejectedInput(f"invalid base64 in data: URL ({exc})") from None


def _fetch(url: str) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read()
    except OSError as exc:
        raise RejectedInput(f"could not fetch {url}: {exc}") from None


def canonical_role(role: object) -> str:
    """Map a role name from any supported format to user | assistant | system."""
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise RejectedInput(f"unknown message role {role!r}")
    return ROLE_ALIASES[role.lower()]


def canonical_messages(
    turns: Iterable[tuple[object, object]], n_images: int
) -> list[dict[str, str]]:
    """Normalise (role, text) turns and check the ``<image>`` count against ``n_images``.

    Raises RejectedInput for an empty conversation, a non-string content, or a
    placeholder count that does not match the number of images.
    """
    messages: list[dict[str, str]] = []
    for role, content in turns:
        if not isinstance(content, str):
            raise RejectedInput(f"message content must be a string, got {type(content).__name__}")
        messages.append({"role": canonical_role(role), "content": content})
    if not messages or not any(m["content"].strip() for m in messages):
        raise RejectedInput("empty conversation")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
    if placeholders != n_images:
        raise RejectedInput(f"{placeholders} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s)")
    return messages


def image_list(record: dict[str, object]) -> list[object]:
    """The images of a record from an ``image`` (one) or ``images`` (list) field."""
    if "images" in record and record["images"] is not None:
        images = record["images"]
        if not isinstance(images, list):
            raise RejectedInput("'images' must be a list")
        return images
    image = record.get("image")
    if image is None:
        return []
    if isinstance(image, list):
        return image
    return [image]


def iter_json_records(path: Path, root: Path) -> Iterator[tuple[Location, object] | Reject]:
    """Yield (location, parsed object) for every record of a JSON array or JSONL file.

    A malformed JSONL line is yielded as a Reject and reading goes on; a malformed JSON
    array file is one Reject naming the line and column of the error.
    """
    rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            yield Reject(Location(rel, line=line), f"malformed JSON: {exc}")
            return
        for i, obj in enumerate(data):
            yield Location(rel, row=i), obj
        return
    with path.open("r", encoding="utf-8", errors="strict") as fh:
        lineno = 0
        while True:
            lineno += 1
            try:
                line = fh.readline()
            except UnicodeDecodeError as exc:
                yield Reject(Location(rel, line=lineno), f"invalid UTF-8: {exc}")
                return
            if not line:
                return
            if not line.strip():
                continue
            try:
                yield Location(rel, line=lineno), json.loads(line)
            except json.JSONDecodeError as exc:
                yield Reject(Location(rel, line=lineno), f"malformed JSON line: {exc.msg}")


def list_files(root: Path, extensions: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path relative to root, full path) of every non-hidden file with one of the extensions.

    A single file given as ``root`` lists itself.
    """
    if root.is_file():
        return [(root.name, str(root))]
    out: list[tuple[str, str]] = []
    base = str(root.resolve())
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in extensions:
                full = os.path.join(dirpath, fn)
                out.append((os.path.relpath(full, base).replace(os.sep, "/"), full))
    return out


def read_media_file(
    rel: str, full: str, work: Callable[[str], T], rejected: type[Exception]
) -> tuple[str, str, T | None, str | None]:
    """A source worker's step for one file: ``(rel, sha256 of the file, work(full), None)``,
    or ``(rel, "", None, reason)`` when ``work`` raises ``rejected`` or the file cannot
    be read."""
    from lake.ids import file_sha256

    try:
        sha = file_sha256(full)
        return rel, sha, work(full), None
    except rejected as exc:
        return rel, "", None, str(exc)
    except OSError as exc:
        return rel, "", None, f"cannot read: {exc.strerror or exc}"
