"""Helpers shared by Source plugins: safe media paths and canonical messages.

A Source reads records from a dataset root. Image references inside those records are
untrusted: :func:`resolve_media` turns one into a :class:`~lake.records.MediaRef` or
raises :class:`~lake.errors.RejectedInput` with the reason, and :func:`canonical_messages`
normalises the many chat formats to ``[{"role", "content"}]`` with ``<image>`` /
``<video>`` / ``<audio>`` placeholders (owned by :mod:`lake.schema`) in order.

Every file a source reads (media, sidecars) goes through :func:`checked_file` first:
symlinks are resolved and must stay inside the dataset root, only regular files are
accepted (a FIFO is never opened: opening one blocks) and sizes are bounded. Text files
are read line by line with a bound (:func:`bounded_lines`), so one over-long, undecodable
or too deeply nested line is one reject at its own line number.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlparse

from lake.errors import RejectedInput
from lake.ids import media_id
from lake.records import Location, MediaMeta, MediaRef, Reject
from lake.schema import IMAGE_TOKEN as IMAGE_TOKEN  # owned by lake.schema; re-exported
from lake.schema import PLACEHOLDERS, placeholder_kinds

T = TypeVar("T")
BOM = b"\xef\xbb\xbf"
_SKIP_CHUNK = 1 << 20  # bytes read at a time while skipping the rest of an over-long line

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
    "developer": "system",  # OpenAI's name for system instructions (o1 and later)
}


@dataclass(frozen=True)
class PathPolicy:
    """What image references a source accepts besides paths inside its root."""

    allow_absolute: bool = False
    allow_outside_root: bool = False
    allow_urls: bool = False
    max_media_bytes: int | None = None  # None: no limit
    max_line_bytes: int | None = None  # None: no limit


def too_big(size: int, limit: int, key: str) -> str:
    """The reject reason for ``size`` bytes over ``limit`` (``key`` names the setting)."""
    return f"{size} bytes, over the {limit}-byte limit ({key})"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def checked_file(path: str | Path, root: str | Path | None, limit: int | None = None) -> str:
    """The resolved path of a file a source is about to read, or RejectedInput.

    Symlinks are resolved; the result must lie inside ``root`` (None: anywhere), be a
    regular file (a FIFO, device or socket is refused without being opened) and hold at
    most ``limit`` bytes (``max_media_bytes``; None: no limit). A symlink loop, a NUL
    byte, an over-long name or any other error resolving the path is a RejectedInput too.
    """
    try:
        real = os.path.realpath(path, strict=True)
        st = os.stat(real)
    except FileNotFoundError:
        raise RejectedInput("file not found") from None
    except OSError as exc:
        raise RejectedInput(f"cannot resolve path: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise RejectedInput(f"invalid path: {exc}") from None
    if root is not None:
        root_real = os.path.realpath(root)
        if not _within(real, root_real):
            root_abs = os.path.abspath(root)
            textual = os.path.normpath(os.path.join(root_abs, path))
            inside = _within(textual, root_abs) or _within(textual, root_real)
            what = "symlink" if inside else "path"
            raise RejectedInput(f"{what} escapes the dataset root (allow_outside_root=false)")
    if not stat.S_ISREG(st.st_mode):
        raise RejectedInput(f"not a regular file ({_file_type(st.st_mode)})")
    if limit is not None and st.st_size > limit:
        raise RejectedInput(f"file is {too_big(st.st_size, limit, 'max_media_bytes')}")
    return real


def confined_root(root: Path, policy: PathPolicy) -> str | None:
    """The root that :func:`checked_file` confines a source's files to (None: anywhere)."""
    return None if policy.allow_outside_root else os.path.realpath(root)


def _file_type(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((name for test, name in kinds if test(mode)), "special file")


def read_text_file(path: str | Path, root: str | Path | None, limit: int | None) -> str:
    """A small text file (a caption sidecar) after :func:`checked_file`, BOM stripped.

    ``limit`` is ``max_line_bytes``; invalid UTF-8 or a larger file is a RejectedInput.
    """
    real = checked_file(path, root)
    with open(real, "rb") as fh:
        data = fh.read(limit + 1) if limit is not None else fh.read()
    if limit is not None and len(data) > limit:
        size = max(len(data), os.stat(real).st_size)
        raise RejectedInput(f"text file is {too_big(size, limit, 'max_line_bytes')}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RejectedInput(f"invalid UTF-8: {exc}") from None


def resolve_media(root: Path, ref: object, policy: PathPolicy, what: str = "image") -> MediaRef:
    """Turn a media reference from a record into a MediaRef, or raise RejectedInput.

    Accepts paths relative to ``root``, ``file://`` URLs (no host, or ``localhost``),
    ``data:`` URLs (inline base64) and, only when allowed, absolute paths, paths escaping
    the root and http(s) URLs. Paths go through :func:`checked_file` (symlinks resolved
    and confined, regular files only, ``max_media_bytes``). ``what`` (image | video |
    audio) names the media in reject reasons.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise RejectedInput(f"{what} reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    limit = policy.max_media_bytes
    if ref.startswith("data:"):
        return MediaRef(source_uri=f"data:{len(ref)}", data=_decode_data_url(ref, limit))
    try:
        parsed = urlparse(ref)
    except ValueError as exc:
        raise RejectedInput(f"invalid image reference ({exc}): {ref[:200]}") from None
    if parsed.scheme in ("http", "https"):
        if not policy.allow_urls:
            raise RejectedInput(f"URL image references are not allowed (allow_urls=false): {ref}")
        return MediaRef(source_uri=ref, data=_fetch(ref, limit))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RejectedInput(f"file:// URL names a remote host {parsed.netloc!r}: {ref}")
        ref = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise RejectedInput(f"unsupported image reference scheme {parsed.scheme!r}: {ref}")
    absolute = os.path.isabs(ref)
    if absolute and not policy.allow_absolute:
        raise RejectedInput(f"absolute image path not allowed (allow_absolute=false): {ref}")
    root_real = os.path.realpath(root)
    outside_ok = policy.allow_outside_root or (absolute and policy.allow_absolute)
    try:
        full = checked_file(os.path.join(root_real, ref), None if outside_ok else root_real, limit)
    except RejectedInput as exc:
        raise RejectedInput(f"{what} {exc.reason}: {ref[:200]}") from None
    rel = Path(os.path.relpath(full, root_real)).as_posix() if _within(full, root_real) else full
    return MediaRef(source_uri=rel, path=Path(full))


def _decode_data_url(ref: str, limit: int | None) -> bytes:
    header, _, payload = ref.partition(",")
    if not header.endswith(";base64"):
        raise RejectedInput("data: URL images must be base64-encoded")
    if limit is not None and len(payload) // 4 * 3 > limit:
        size = len(payload) // 4 * 3
        raise RejectedInput(f"data: URL image is about {too_big(size, limit, 'max_media_bytes')}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RejectedInput(f"invalid base64 in data: URL ({exc})") from None
    if limit is not None and len(data) > limit:
        raise RejectedInput(f"data: URL image is {too_big(len(data), limit, 'max_media_bytes')}")
    return data


def _fetch(url: str, limit: int | None) -> bytes:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            data = resp.read(limit + 1) if limit is not None else resp.read()
    except (OSError, ValueError) as exc:
        raise RejectedInput(f"could not fetch {url}: {exc}") from None
    if limit is not None and len(data) > limit:
        raise RejectedInput(f"{url}: more than {too_big(len(data), limit, 'max_media_bytes')}")
    return data


def canonical_role(role: object) -> str:
    """Map a role name from any supported format to user | assistant | system."""
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise RejectedInput(f"unknown message role {role!r}")
    return ROLE_ALIASES[role.lower()]


@dataclass(frozen=True)
class ShareGPTLayout:
    """The keys and role tags of a ShareGPT file: what the ``sharegpt`` source reads and the
    ``sharegpt`` exporter writes, defined once so that a file written is read back.

    The defaults are ShareGPT's (and LLaVA's) standard layout, the values of
    ``conf/source/sharegpt.yaml`` and ``conf/export/sharegpt.yaml`` (a test pins them).
    """

    messages_key: str = "conversations"
    role_key: str = "from"
    content_key: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    system_tag: str = "system"

    @classmethod
    def take(cls, options: dict[str, Any]) -> ShareGPTLayout:
        """The layout named by the layout keys of ``options``, removing them from it."""
        keys = [f for f in cls.__dataclass_fields__ if f in options]
        return cls(**{k: options.pop(k) for k in keys})

    def options(self) -> dict[str, str]:
        """The layout as the source's / exporter's config keys."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def tag(self, role: str) -> str:
        """The tag written for a canonical role (user | assistant | system)."""
        return {"user": self.user_tag, "assistant": self.assistant_tag, "system": self.system_tag}[
            role
        ]

    def role(self, tag: object) -> str:
        """Canonical role of a turn's tag: a configured tag first, then the standard aliases."""
        tags = {self.user_tag: "user", self.assistant_tag: "assistant", self.system_tag: "system"}
        if isinstance(tag, str) and tag in tags:
            return tags[tag]
        return canonical_role(tag)


def canonical_messages(
    turns: Iterable[tuple[object, object]], n_images: int, n_videos: int = 0, n_audios: int = 0
) -> list[dict[str, str]]:
    """Normalise (role, text) turns and check each placeholder count against its media.

    ``<image>`` / ``<video>`` / ``<audio>`` placeholders must number ``n_images`` /
    ``n_videos`` / ``n_audios``: a record whose text holds a placeholder it has no media
    for is rejected, never landed as literal text. Raises RejectedInput for an empty
    conversation, a non-string content, or a count that does not match (naming the kind).
    """
    messages: list[dict[str, str]] = []
    for role, content in turns:
        if not isinstance(content, str):
            raise RejectedInput(f"message content must be a string, got {type(content).__name__}")
        messages.append({"role": canonical_role(role), "content": content})
    if not messages or not any(m["content"].strip() for m in messages):
        raise RejectedInput("empty conversation")
    wanted = {"image": n_images, "video": n_videos, "audio": n_audios}
    for kind, n in wanted.items():
        token = PLACEHOLDERS[kind]
        placeholders = sum(m["content"].count(token) for m in messages)
        if placeholders != n:
            raise RejectedInput(f"{placeholders} {token} placeholder(s) but {n} {kind}(s)")
    return messages


def image_list(record: dict[str, object]) -> list[object]:
    """The images of a record from an ``image`` (one) or ``images`` (list) field."""
    return media_list(record, "image")


def media_list(record: dict[str, object], kind: str) -> list[object]:
    """The references of one media ``kind`` of a record: from ``<kind>s`` (a list) or
    ``<kind>`` (one, or a list): ``images`` / ``image``, ``videos`` / ``video``,
    ``audios`` / ``audio``."""
    plural = f"{kind}s"
    if plural in record and record[plural] is not None:
        refs = record[plural]
        if not isinstance(refs, list):
            raise RejectedInput(f"{plural!r} must be a list")
        return refs
    one = record.get(kind)
    if one is None:
        return []
    if isinstance(one, list):
        return one
    return [one]


def in_placeholder_order(
    messages: Iterable[dict[str, str]], refs: dict[str, list[T]]
) -> list[tuple[str, T]]:
    """``(kind, ref)`` pairs in the order their placeholders appear across ``messages``.

    ``refs`` holds each kind's references in their own order (LLaMA-Factory's separate
    ``images`` / ``videos`` / ``audios`` lists); the i-th ``<video>`` takes the i-th
    video, and so on. Counts must already match (:func:`canonical_messages`).
    """
    left = {kind: list(items) for kind, items in refs.items()}
    out: list[tuple[str, T]] = []
    for m in messages:
        for kind in placeholder_kinds(m["content"]):
            out.append((kind, left[kind].pop(0)))
    return out


def bounded_lines(fh: BinaryIO, limit: int | None) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, bytes, size)`` of every line of a binary file, numbered from 1.

    A line longer than ``limit`` bytes (its line ending not counted; None: no limit) is
    never held in memory: it comes as ``(number, None, size)`` and the rest of it is
    skipped in chunks, so the lines after it keep their numbers.
    """
    lineno = 0
    while True:
        raw = fh.readline() if limit is None else fh.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if limit is None or len(raw) <= limit or raw.endswith(b"\n"):
            yield lineno, raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = fh.readline(_SKIP_CHUNK)
            if not raw:
                break
            size += len(raw)
        yield lineno, None, size - raw.endswith(b"\n")


def iter_json_records(
    path: Path, root: Path, max_line_bytes: int | None = None
) -> Iterator[tuple[Location, object] | Reject]:
    """Yield (location, parsed object) for every record of a JSON array or JSONL file.

    A UTF-8 BOM is accepted. Each JSONL line is read with the ``max_line_bytes`` bound and
    decoded on its own: an over-long, undecodable, malformed or too deeply nested line is
    a Reject at its line number and reading goes on. A JSON array is parsed whole (a
    malformed one is one Reject naming the line of the error); a too deeply nested element
    is a Reject at its row and the other elements still come.
    """
    rel = relative_name(path, root)
    with path.open("rb") as fh:
        head = fh.read(4096).removeprefix(BOM).lstrip()
    if head.startswith(b"["):
        yield from _json_array(path, rel)
        return
    if head.startswith(b"{") and _one_object_over_lines(path, head):
        yield Reject(
            Location(rel, line=1),
            "expected an array of records or JSON lines, found one JSON object over several "
            "lines (wrap it in [ ] or write one record per line)",
        )
        return
    with path.open("rb") as fh:
        for lineno, raw, size in bounded_lines(fh, max_line_bytes):
            location = Location(rel, line=lineno)
            if raw is None:
                assert max_line_bytes is not None
                yield Reject(location, f"line is {too_big(size, max_line_bytes, 'max_line_bytes')}")
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield Reject(location, f"invalid UTF-8: {exc}")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Reject(location, f"malformed JSON line: {exc.msg}")
            except RecursionError:
                yield Reject(location, "malformed JSON line: nested too deeply")
            else:
                yield location, obj


FIRST_LINE_BYTES = 1 << 20


def _one_object_over_lines(path: Path, head: bytes) -> bool:
    """Whether the file is one pretty-printed JSON object (not JSON lines): its first line
    is no JSON value, and the whole file, spanning several lines, is one object."""
    if b"\n" in head.strip():
        first = head.split(b"\n", 1)[0]
    else:  # a first line longer than the head: read that line (bounded), not the file
        with path.open("rb") as fh:
            first = fh.readline(FIRST_LINE_BYTES).removeprefix(BOM)
        if len(first) >= FIRST_LINE_BYTES:
            return False  # a pretty-printed object does not open with a 1 MiB line
    try:
        json.loads(first)
        return False  # JSON lines
    except (ValueError, RecursionError):
        pass
    data = path.read_bytes().removeprefix(BOM).strip()
    if b"\n" not in data:
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


def _json_array(path: Path, rel: str) -> Iterator[tuple[Location, object] | Reject]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield Reject(Location(rel, line=line), f"malformed JSON: invalid UTF-8: {exc}")
        return
    del data
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Reject(Location(rel, line=exc.lineno), f"malformed JSON: {exc}")
        return
    except RecursionError:
        # Some element nests too deeply for the parser: parse element by element.
        yield from _array_elements(text, rel)
        return
    if not isinstance(items, list):
        yield Reject(Location(rel), "malformed JSON: expected an array of records")
        return
    for i, obj in enumerate(items):
        yield Location(rel, row=i), obj


def _array_elements(text: str, rel: str) -> Iterator[tuple[Location, object] | Reject]:
    """The elements of a JSON array one by one; a too deeply nested one is a Reject."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws)) + 1  # after the opening bracket
    row = 0
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if text.startswith("]", i) and row == 0:
            return
        try:
            obj, i = decoder.raw_decode(text, i)
            yield Location(rel, row=row), obj
        except RecursionError:
            yield Reject(Location(rel, row=row), "malformed JSON: nested too deeply")
            i = _skip_value(text, i)
        except json.JSONDecodeError as exc:
            yield Reject(Location(rel, line=exc.lineno), f"malformed JSON: {exc}")
            return
        while i < len(text) and text[i] in ws:
            i += 1
        if text.startswith(",", i):
            i, row = i + 1, row + 1
            continue
        if not text.startswith("]", i):
            line = text.count("\n", 0, i) + 1
            yield Reject(Location(rel, line=line), "malformed JSON: expected ',' or ']'")
        return


def _skip_value(text: str, i: int) -> int:
    """Index just past the JSON array or object starting at ``i`` (strings skipped)."""
    depth, in_string, escaped = 0, False, False
    for j in range(i, len(text)):
        c = text[j]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


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
    rel: str,
    full: str,
    work: Callable[[str], T],
    rejected: type[Exception],
    root: str | None = None,
    limit: int | None = None,
) -> tuple[str, str, T | None, str | None]:
    """A source worker's step for one file: ``(rel, sha256 of the file, work(full), None)``,
    or ``(rel, "", None, reason)`` when the file fails :func:`checked_file` (against
    ``root``, None: anywhere; at most ``limit`` bytes), ``work`` raises ``rejected`` or
    the file cannot be read."""
    from lake.ids import file_sha256

    try:
        real = checked_file(full, root, limit)
        sha = file_sha256(real)
        return rel, sha, work(real), None
    except RejectedInput as exc:
        return rel, "", None, exc.reason
    except rejected as exc:
        return rel, "", None, str(exc)
    except OSError as exc:
        return rel, "", None, f"cannot read: {exc.strerror or exc}"
    except ValueError as exc:
        return rel, "", None, f"cannot read: {exc}"


# ------------------------------------------- shared by the JSON sources (sharegpt, llava, ...)


JSON_SUFFIXES = (".json", ".jsonl")


def dataset_files(path: Path, suffixes: Sequence[str]) -> list[Path]:
    """``path`` itself when it is a file, else its top-level files ending in ``suffixes``.

    Files are sorted by name; hidden files and LLaMA-Factory's ``dataset_info.json``
    registry (written beside a sharegpt / llava export) are skipped.
    """
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.name != "dataset_info.json"
        and p.suffix.lower() in suffixes
    )


def relative_name(file: Path, root: Path) -> str:
    """``file`` relative to ``root`` (POSIX), or its full path when outside it."""
    return file.relative_to(root).as_posix() if file.is_relative_to(root) else file.as_posix()


def json_type(value: object) -> str:
    """JSON name of a parsed value's type, for reject reasons."""
    names = {dict: "object", list: "array", str: "string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# What reading one record may raise besides RejectedInput (a path with a NUL byte, an
# over-long name, a symlink loop, a deeply nested value): each rejects that record only.
RECORD_ERRORS = (RejectedInput, OSError, ValueError, RecursionError)


def record_error(exc: BaseException) -> str:
    """The reject reason for one of :data:`RECORD_ERRORS` raised while reading a record."""
    if isinstance(exc, RejectedInput):
        return exc.reason
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror or exc}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"invalid value: {exc}"


def record_id(obj: dict[str, object]) -> str | None:
    """A record's own ``id`` (a string or an integer, kept as text), else None."""
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


# Top-level keys that carry media, conversation or preference content in the layouts of
# LLaVA, LLaMA-Factory, ms-swift, TRL and 2U1: a source that does not read one of these
# (with a value) rejects the record instead of dropping it; any other unread key is
# counted in the run's summary. Where another source reads it, the reason says which.
KNOWN_KEYS: dict[str, str] = {
    "conversations": "",
    "messages": "",
    "system": "",
    "image": "",
    "images": "",
    "video": "video turns",
    "videos": "video turns",
    "audio": "audio turns",
    "audios": "audio turns",
    "chosen": "preference pairs: source=sharegpt or source=trl",
    "rejected": "preference pairs: source=sharegpt or source=trl",
    "prompt": "prompt / chosen / rejected / completion rows: source=trl",
    "completion": "prompt / completion rows: source=trl",
    "rejected_response": "ms-swift preference pairs: source=messages",
    "rejected_images": "ms-swift preference pairs: source=messages",
    "label": "KTO feedback: the source's kto_tag option",
    "kto_tag": "KTO feedback: the source's kto_tag option",
}


class ReadKeys(dict):  # type: ignore[type-arg]
    """A parsed JSON record that remembers which top-level keys its parser looked at."""

    def __init__(self, obj: dict[str, object]) -> None:
        super().__init__(obj)
        self.read: set[object] = set()

    def __getitem__(self, key: object) -> object:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: object, default: object = None) -> object:
        """``dict.get``, noting the key as read."""
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def unread(self) -> list[str]:
        """Keys nobody looked at, in record order."""
        return [k for k in self.keys() if k not in self.read]


def _has_value(value: object) -> bool:
    return value is not None and value != [] and value != "" and value != {}


def unread_keys(obj: ReadKeys, source: str) -> tuple[str, ...]:
    """The keys ``obj``'s parser did not read; RejectedInput when one of them is a
    :data:`KNOWN_KEYS` key with a value (its content would be lost)."""
    unread = obj.unread()
    for key in unread:
        if key in KNOWN_KEYS and _has_value(dict.__getitem__(obj, key)):
            hint = KNOWN_KEYS[key]
            raise RejectedInput(
                f"field {key!r} is not read by the {source} source"
                + (f" ({hint})" if hint else "")
                + ": rejected rather than dropped"
            )
    return tuple(unread)


def feedback_value(obj: dict[str, object], key: str | None) -> bool | None:
    """KTO feedback from ``obj[key]``: true (desirable), false (undesirable) or None."""
    if not key:
        return None
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise RejectedInput(f"{key!r} (KTO feedback) must be true or false, got {value!r}")
    return value


def check_feedback(messages: list[dict[str, str]], feedback: bool | None, pair: bool) -> None:
    """KTO feedback judges the last assistant turn; a record is a pair or has feedback."""
    if feedback is None:
        return
    if pair:
        raise RejectedInput("a record is either a preference pair or KTO feedback, not both")
    if not messages or messages[-1]["role"] != "assistant":
        raise RejectedInput("KTO feedback needs the conversation to end with the answer it judges")


def require(obj: dict[str, object], key: str) -> object:
    """``obj[key]``, or RejectedInput naming the missing field."""
    if obj.get(key) is None:
        raise RejectedInput(f"missing field {key!r}")
    return obj[key]


IMAGE_PART_KEYS = ("image", "path", "url")


def flatten_parts(
    parts: list[object],
    images: list[object],
    index: int = 0,
    videos: list[object] | None = None,
    audios: list[object] | None = None,
) -> str:
    """Flatten content parts to one string (the canonical rule), appending media refs.

    Image parts append to ``images``, video parts (``video``, ``video_url``) to ``videos``
    and audio parts (``audio``, ``audio_url``, OpenAI's inline ``input_audio``, as a
    ``data:`` URL) to ``audios``; with ``videos`` / ``audios`` None such a part is a
    reject. Raises RejectedInput for a malformed or unknown part, or a text part holding
    a literal placeholder. ``index`` is the message's position, for the reason.
    """
    out: list[str] = []
    for j, part in enumerate(parts):
        where = f"message {index} part {j}"
        if not isinstance(part, dict):
            raise RejectedInput(f"{where} must be an object, got {json_type(part)}")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RejectedInput(f"{where}: text part needs a string 'text'")
            for token in PLACEHOLDERS.values():
                if token in text:
                    raise RejectedInput(f"{where}: text part contains a literal {token}")
            out.append(text)
        elif kind == "image":
            key = next((k for k in IMAGE_PART_KEYS if part.get(k) is not None), None)
            # no reference: TRL's layout, the part takes the next top-level image
            images.append(part[key] if key is not None else None)
            out.append(IMAGE_TOKEN)
        elif kind == "image_url":
            value = part.get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if url is None:
                raise RejectedInput(f"{where}: image_url part needs 'image_url': {{'url': ...}}")
            images.append(url)
            out.append(IMAGE_TOKEN)
        elif kind in AV_PARTS:
            media_kind = AV_PARTS[kind]
            refs = videos if media_kind == "video" else audios
            if refs is None:
                raise RejectedInput(f"{where}: {kind} parts are not read by this source")
            refs.append(_av_ref(part, kind, where))
            out.append(PLACEHOLDERS[media_kind])
        else:
            raise RejectedInput(f"{where}: unknown content part type {kind!r}")
    return "".join(out)


# content part type -> the media kind it holds
AV_PARTS = {
    "video": "video",
    "video_url": "video",
    "audio": "audio",
    "audio_url": "audio",
    "input_audio": "audio",
}


def _av_ref(part: dict[str, object], kind: str, where: str) -> object:
    """The reference of a video or audio part (``input_audio``: a ``data:`` URL)."""
    if kind in ("video_url", "audio_url", "input_audio"):
        value = part.get(kind)
        if kind == "input_audio":
            if not isinstance(value, dict) or not isinstance(value.get("data"), str):
                raise RejectedInput(f"{where}: input_audio part needs {{'data': BASE64, 'format'}}")
            fmt = value.get("format") or "wav"
            return f"data:audio/{fmt};base64,{value['data']}"
        url = value.get("url") if isinstance(value, dict) else value
        if url is None:
            raise RejectedInput(f"{where}: {kind} part needs '{kind}': {{'url': ...}}")
        return url
    key = next((k for k in (kind, "path", "url") if part.get(k) is not None), None)
    if key is None:
        raise RejectedInput(f"{where}: {kind} part needs one of '{kind}', 'path', 'url'")
    if isinstance(part[key], list):
        raise RejectedInput(f"{where}: a {kind} given as a list of frames is not read; use a file")
    return part[key]


# ------------------------------------------- time-based media, shared by every source reading them


def analyse_file(
    rel: str, full: str, settings: Any, root: str | None = None, limit: int | None = None
) -> tuple[str, str, Any, str | None]:
    """Analyse one video file: ``(rel, sha256 of the file, VideoAnalysis, None)`` or
    ``(rel, "", None, reason)`` (:func:`lake.sources.read_media_file`); a video whose
    frames all fail to decode is rejected too."""
    from lake.video import VideoRejected, analyze_video

    out = read_media_file(
        rel, full, lambda f: analyze_video(f, settings), VideoRejected, root, limit
    )
    if out[3] is None and not out[2].frames:
        return rel, "", None, "no frame could be decoded"
    return out


def video_media(
    rel: str, full: str, video_id: str, analysis: Any, store_video: bool
) -> tuple[MediaRef, list[MediaRef], list[MediaRef]]:
    """The media of one analysed video: ``(video, [audio track] or [], frames)``.

    The video row is blob-stored (``store_video``) or referenced by ``source_uri`` +
    sha256; its audio track and kept frames carry ``parent_id`` = ``video_id``, their
    times, scenes and processing steps. Shared by every source that reads videos.
    """
    probe = analysis.probe
    steps = tuple(analysis.steps)
    first_thumb = analysis.frames[0].thumb if analysis.frames else None
    video = MediaRef(
        source_uri=rel,
        path=full,
        kind="video",
        media_id=video_id,
        meta=MediaMeta(
            mime=probe.mime,
            width=probe.width,
            height=probe.height,
            duration_s=probe.duration_s,
            thumb=first_thumb,
            t_start=0.0,
            t_end=probe.duration_s,
            steps=(("probe", probe.as_dict()),),
            store="blob" if store_video else "reference",
        ),
    )
    attached: list[MediaRef] = []
    if analysis.audio is not None:
        audio = analysis.audio
        audio_steps = [s for s in steps if s[0] in ("decode", "audio_extract")]
        attached.append(
            MediaRef(
                source_uri=f"{rel}#audio",
                data=audio.data,
                media_id=media_id(audio.data),  # hashed once, not once per record
                kind="audio",
                meta=MediaMeta(
                    mime=audio.mime,
                    duration_s=audio.duration_s,
                    parent_id=video_id,
                    t_start=0.0,
                    t_end=audio.duration_s,
                    steps=(("probe", probe.as_dict()), *audio_steps),
                ),
            )
        )
    frame_dt = 1.0 / probe.fps if probe.fps else 0.0
    frame_steps = tuple(s for s in steps if s[0] != "audio_extract")
    refs = []
    for f in analysis.frames:
        refs.append(
            MediaRef(
                source_uri=f"{rel}#t={f.t:.3f}",
                data=f.jpeg,
                media_id=media_id(f.jpeg),
                kind="frame",
                meta=MediaMeta(
                    mime="image/jpeg",
                    width=f.width,
                    height=f.height,
                    phash=f.phash,
                    thumb=f.thumb,
                    parent_id=video_id,
                    t_start=f.t,
                    t_end=f.t + frame_dt,
                    scene=f.scene,
                    steps=(
                        *frame_steps,
                        (
                            "frame",
                            {
                                "video": rel,
                                "index": f.index,
                                "t": round(f.t, 6),
                                "scene": f.scene,
                                "reason": f.reason,
                                "motion": round(float(f.motion), 6),
                            },
                        ),
                    ),
                ),
            )
        )
    return video, attached, refs


def load_file(
    rel: str,
    full: str,
    rate: int,
    fmt: str,
    max_duration_s: float | None = None,
    root: str | None = None,
    limit: int | None = None,
) -> tuple[str, str, Any, str | None]:
    """Decode and resample one audio file: ``(rel, sha256 of the original, AudioTrack,
    None)`` or ``(rel, "", None, reason)`` (:func:`read_media_file`). The file must
    resolve inside ``root`` (None: anywhere), be a regular file and hold at most ``limit``
    bytes (:func:`checked_file`)."""
    from lake.audio import AudioRejected, load_audio

    return read_media_file(
        rel, full, lambda f: load_audio(f, rate, fmt, max_duration_s), AudioRejected, root, limit
    )


def audio_media(rel: str, sha: str, track: Any, fmt: str) -> MediaRef:
    """The ``audio`` media of a decoded file (``track``, mono at its rate, ``fmt``), with
    the original's sha256, codec, rate and channels in its steps. Shared by every source
    that reads audio files."""
    decode = {
        "source_sha256": sha,
        "codec": track.source_codec,
        "rate": track.source_rate,
        "channels": track.source_channels,
    }
    convert = {"rate": track.sample_rate, "channels": track.channels, "format": fmt}
    return MediaRef(
        source_uri=rel,
        data=track.data,
        kind="audio",
        meta=MediaMeta(
            mime=track.mime,
            duration_s=track.duration_s,
            t_start=0.0,
            t_end=track.duration_s,
            steps=(("decode", decode), ("resample_encode", convert)),
        ),
    )
