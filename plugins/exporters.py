"""Exporter plugins: LLaVA JSON, ShareGPT, OpenAI / Qwen2-VL messages and CLIP pairs.

Each writes the records in exactly the shape its matching source plugin reads
(``llava``, ``sharegpt``, ``messages``, ``clip_pairs``), with image paths relative to
the export folder (the runner, ``lake/export.py``, writes the images once under
``images/``). Exporting a split and ingesting the export with the matching source gives
the same ``media_ids`` (the bytes are written unchanged) and the same canonical content,
hence the same ``sample_id``, for samples whose content the format carries:

- ``llava`` and ``sharegpt`` carry messages (every role, system turns included, in
  order) and preference pairs (``chosen`` / ``rejected``);
- ``messages`` carries messages only;
- ``clip_pairs_*`` carry one image, a caption and a label.

A sample with more content than its format carries (a caption or label in a conversation
format, a preference pair in ``messages``, a conversation in a pairs format) is still
exported when the format can express its main content, but gets a new ``sample_id``
when ingested back; so does every ``image_folder`` sample whatever the format, because
that source adds the image's relative path as a ``key`` to the id (byte-identical copies
stay separate samples there) and no other source has a key. The runner counts these
samples (``changed_ids``) from :meth:`~lake.export.Exporter.readback`. Samples a format
cannot express at all are skipped with a reason (a conversation format without a
conversation, unless ``caption_prompt`` turns captions into one; a pair without exactly
one image or without a caption).
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
from abc import abstractmethod
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TextIO

from lake.errors import ConfigError
from lake.plugin import Exporter, ExportMedia
from lake.schema import IMAGE_TOKEN, PLACEHOLDER_RE, PLACEHOLDERS, placeholder_kinds
from lake.sources import JSON_SUFFIXES, ShareGPTLayout  # what the JSON sources read back

KTO_TAG = "label"  # the field KTO feedback is written to (the sources' kto_tag default)
DATASET_INFO = "dataset_info.json"  # LLaMA-Factory's dataset registry, beside the data file


def _check_file(file: str, suffixes: tuple[str, ...]) -> str:
    """A plain, visible file name with one of ``suffixes`` (what the sources read)."""
    name = PurePosixPath(file)
    if name.name != file or file.startswith(".") or name.suffix.lower() not in suffixes:
        raise ConfigError(
            f"export file {file!r} must be a plain visible file name ending in "
            f"{' or '.join(suffixes)} (the source reads the export folder's top-level files)"
        )
    return file


def media_by_kind(messages: list[dict[str, str]], paths: list[str]) -> dict[str, list[str]]:
    """A sample's media paths split by the kind of the placeholder each fills, in order
    (``image`` / ``video`` / ``audio``): the inverse of the sources' interleaving."""
    out: dict[str, list[str]] = {kind: [] for kind in PLACEHOLDERS}
    kinds = [k for m in messages for k in placeholder_kinds(m["content"])]
    if len(kinds) != len(paths):  # no placeholders to follow: all are images
        kinds = ["image"] * len(paths)
    for kind, path in zip(kinds, paths, strict=True):
        out[kind].append(path)
    return out


def media_columns(messages: list[dict[str, str]], paths: list[str]) -> dict[str, list[str]]:
    """``images`` / ``videos`` / ``audios`` lists of a record, the non-empty ones only."""
    return {f"{kind}s": found for kind, found in media_by_kind(messages, paths).items() if found}


def _pair(row: dict[str, Any]) -> tuple[str, str] | None:
    """The preference pair when both answers are non-blank strings (as the sources need)."""
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if (
        isinstance(chosen, str)
        and isinstance(rejected, str)
        and chosen.strip()
        and rejected.strip()
    ):
        return chosen, rejected
    return None


class _TextFile:
    """The one text data file an exporter streams into: closing and aborting it."""

    file: str
    _fh: TextIO | None = None

    def _close_file(self) -> list[str]:
        assert self._fh is not None, "open() first"
        self._fh.close()
        self._fh = None
        return [self.file]

    def abort(self) -> None:
        """Close the file without finishing it (a failing flush, e.g. a full disk, is
        ignored: the runner is already reporting the error and deletes the file)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            with contextlib.suppress(OSError):
                fh.close()


class JsonExporter(_TextFile, Exporter):
    """Base of the conversation formats: one JSON object per sample.

    ``file`` is the data file's name: ``.json`` writes a JSON array (streamed), ``.jsonl``
    one object per line. ``caption_prompt`` (null: off) turns a sample with images and a
    caption but no conversation into one: user ``<image>...\\n{caption_prompt}``,
    assistant = the caption (as in LLaVA's caption pretraining data); such samples get
    a new ``sample_id`` when ingested back.
    """

    carries_pairs: ClassVar[bool] = False  # the matching source reads chosen / rejected
    media_kinds: ClassVar[tuple[str, ...]] = ("image", "frame", "video", "audio")
    # the matching source keeps a record's ``id`` (samples.record_id): written back first
    carries_id: ClassVar[bool] = False
    carries_feedback: bool = False  # the matching source reads KTO feedback (``label``)

    def __init__(self, file: str, caption_prompt: str | None = None) -> None:
        self.file = _check_file(file, JSON_SUFFIXES)
        self.jsonl = self.file.lower().endswith(".jsonl")
        self.caption_prompt = caption_prompt or None
        self._fh: TextIO | None = None
        self._count = 0

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {"file": self.file, "caption_prompt": self.caption_prompt}

    def conversation(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The sample's canonical messages, or the caption-prompt conversation, or []."""
        if row["messages"]:
            return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        caption = row.get("caption")
        if self.caption_prompt and row["media_ids"] and isinstance(caption, str) and caption:
            images = IMAGE_TOKEN * len(row["media_ids"])
            return [
                {"role": "user", "content": f"{images}\n{self.caption_prompt}"},
                {"role": "assistant", "content": caption},
            ]
        return []

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        """Samples without a conversation (and none made from a caption) are skipped."""
        if self.conversation(row):
            return None
        if row.get("caption") and not self.caption_prompt:
            return "no conversation (caption_prompt=null: captions are not turned into one)"
        return "no conversation"

    def readback(self, row: dict[str, Any]) -> dict[str, Any]:
        """Messages (and the pair, for formats that carry it); no caption or label."""
        pair = _pair(row) if self.carries_pairs else None
        return {
            "messages": self.conversation(row),
            "caption": None,
            "label": None,
            "chosen": pair[0] if pair else None,
            "rejected": pair[1] if pair else None,
            "feedback": row.get("feedback") if self.carries_feedback else None,
        }

    def losses(self, row: dict[str, Any]) -> list[str]:
        """A pair, feedback or rejected answer's media this format does not carry."""
        out = []
        if _pair(row) and not self.carries_pairs:
            out.append(f"preference pair (chosen / rejected) not carried by {self.layout()}")
        if row.get("feedback") is not None and not self.carries_feedback:
            out.append(f"KTO feedback not carried by {self.layout()}")
        if row.get("rejected_media_ids"):
            out.append(f"the rejected answer's own media not carried by {self.layout()}")
        return out

    def layout(self) -> str:
        """The format's name in loss reasons."""
        return f"export={self.name}"

    @abstractmethod
    def record(self, row: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """The JSON object of one sample; ``paths`` are its images, relative, in order."""

    def open(self, folder: Path) -> None:
        """Create the data file (and open the JSON array)."""
        self._fh = (folder / self.file).open("w", encoding="utf-8", newline="\n")
        self._count = 0
        if not self.jsonl:
            self._fh.write("[")

    def write(self, rows: list[dict[str, Any]], media: list[list[ExportMedia]]) -> None:
        """Append one object per row."""
        assert self._fh is not None, "open() first"
        parts = []
        for row, items in zip(rows, media, strict=True):
            obj = self.record(row, [m.path or "" for m in items])
            if self.carries_id and row.get("record_id") is not None:
                obj = {"id": row["record_id"], **{k: v for k, v in obj.items() if k != "id"}}
            text = json.dumps(obj, ensure_ascii=False)
            if self.jsonl:
                parts.append(text + "\n")
            else:
                parts.append(("\n" if self._count == 0 else ",\n") + text)
            self._count += 1
        self._fh.write("".join(parts))

    def close(self) -> list[str]:
        """Close the JSON array and the file."""
        assert self._fh is not None, "open() first"
        if not self.jsonl:
            self._fh.write("\n]\n")
        return self._close_file()


class ShareGPTExporter(JsonExporter):
    """ShareGPT: ``{conversations: [{from, value}], images: [...], chosen?, rejected?}``.

    The keys and tags are those of the ``sharegpt`` source and must match its options
    when ingesting back. System messages stay turns (with ``system_tag``) in place, so a
    whitespace-only system prompt survives too. A preference pair is written as turn
    objects ``{from: assistant_tag, value: ...}`` (LLaMA-Factory's layout).
    """

    name = "sharegpt"
    version = "0.1.0"
    source: ClassVar[str] = "sharegpt"
    carries_pairs: ClassVar[bool] = True
    carries_id: ClassVar[bool] = True
    carries_feedback: bool = True

    def __init__(
        self, file: str = "sharegpt.json", caption_prompt: str | None = None, **layout: str
    ) -> None:
        super().__init__(file, caption_prompt)
        # messages_key, role_key, ... system_tag: lake.sources.ShareGPTLayout (TypeError on others)
        self.layout = ShareGPTLayout(**layout)

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {**super().params(), **self.source_options()}

    def source_options(self) -> dict[str, Any]:
        """The ``sharegpt`` source options that read these keys and tags."""
        return self.layout.options()

    def turns(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The conversation as ``{role_key: tag, content_key: text}`` turns."""
        layout = self.layout
        return [
            {layout.role_key: layout.tag(m["role"]), layout.content_key: m["content"]}
            for m in self.conversation(row)
        ]

    def record(self, row: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """One ShareGPT object."""
        layout = self.layout
        obj: dict[str, Any] = {layout.messages_key: self.turns(row)}
        obj |= media_columns(self.conversation(row), paths)
        pair = _pair(row)
        if pair:
            tag = layout.assistant_tag
            obj["chosen"] = {layout.role_key: tag, layout.content_key: pair[0]}
            obj["rejected"] = {layout.role_key: tag, layout.content_key: pair[1]}
        return self._feedback(obj, row)

    def _feedback(self, obj: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        """KTO feedback as ``label`` (the source's and LLaMA-Factory's ``kto_tag``)."""
        self._seen["all"] += 1
        if _pair(row):
            self._seen["pairs"] += 1
        if row.get("feedback") is not None:
            obj[KTO_TAG] = bool(row["feedback"])
            self._seen["feedback"] += 1
        for kind in ("images", "videos", "audios", "image", "video", "audio"):
            if kind in obj:
                self._seen[kind] += 1
        return obj

    def open(self, folder: Path) -> None:
        """Create the data file; count what is written for ``dataset_info.json``."""
        self._folder = folder
        self._seen: Counter[str] = Counter()
        super().open(folder)

    def close(self) -> list[str]:
        """Close the data file and write LLaMA-Factory's ``dataset_info.json`` beside it."""
        files = super().close()
        (self._folder / DATASET_INFO).write_text(
            json.dumps({PurePosixPath(self.file).stem: self.dataset_info()}, indent=2) + "\n"
        )
        return [*files, DATASET_INFO]

    def dataset_info(self) -> dict[str, Any]:
        """The ``dataset_info.json`` entry that makes LLaMA-Factory read the file as it is:
        columns for the media, pairs (``ranking``, when every sample is a pair) and KTO
        feedback (``kto_tag``), tags for the role and content keys."""
        seen = self._seen
        layout = self.layout
        columns: dict[str, str] = {"messages": layout.messages_key}
        for kind in ("images", "videos", "audios"):
            key = kind if seen[kind] else kind[:-1] if seen[kind[:-1]] else None
            if key:
                columns[kind] = key
        entry: dict[str, Any] = {"file_name": self.file, "formatting": "sharegpt"}
        if seen["pairs"] and seen["pairs"] == seen["all"]:
            entry["ranking"] = True
            columns |= {"chosen": "chosen", "rejected": "rejected"}
        if seen["feedback"]:
            columns["kto_tag"] = KTO_TAG
        entry["columns"] = columns
        entry["tags"] = {
            "role_tag": layout.role_key,
            "content_tag": layout.content_key,
            "user_tag": layout.user_tag,
            "assistant_tag": layout.assistant_tag,
            "system_tag": layout.system_tag,
        }
        return entry


class LlavaExporter(ShareGPTExporter):
    """LLaVA: ``{id, image, conversations: [{from: human|gpt|system, value}]}``.

    ``id`` is the record's own id when it had one, else the sample_id; ``image`` is one
    path, or a list for multi-image samples (LLaVA-OneVision / interleave style);
    text-only samples have no ``image``. A preference pair is written as ``chosen`` /
    ``rejected`` strings (the ``llava`` source reads them like ``sharegpt``). The default
    ``file`` is a JSON array, like LLaVA's own data files.
    """

    name = "llava"
    version = "0.1.0"
    source: ClassVar[str] = "llava"

    def __init__(self, file: str = "llava.json", caption_prompt: str | None = None) -> None:
        super().__init__(file, caption_prompt=caption_prompt)

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {"file": self.file, "caption_prompt": self.caption_prompt}

    def source_options(self) -> dict[str, Any]:
        """The ``llava`` source needs no options."""
        return {}

    def record(self, row: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """One LLaVA object."""
        obj: dict[str, Any] = {"id": row["sample_id"]}
        for kind, found in media_by_kind(self.conversation(row), paths).items():
            if found:
                obj[kind] = found[0] if len(found) == 1 else found
        obj["conversations"] = self.turns(row)
        pair = _pair(row)
        if pair:
            obj["chosen"], obj["rejected"] = pair
        return self._feedback(obj, row)


class MessagesExporter(JsonExporter):
    """OpenAI / Qwen2-VL ``messages`` JSONL; ``style`` picks the image layout.

    - ``qwen``: a message holding ``<image>`` becomes a list of parts, each
      ``<image>`` a ``{"type": "image", "image": PATH}`` part and the text between them
      ``{"type": "text", "text": ...}`` parts (empty ones dropped: the ``messages``
      source's inverse flattening rule, so the canonical string comes back exactly);
    - ``openai``: the same with ``{"type": "image_url", "image_url": {"url": PATH}}``;
    - ``text``: string contents with ``<image>`` placeholders and a top-level ``images``
      list (LLaMA-Factory).

    In the part styles, messages without an image keep a plain string content. Only
    messages are carried (no caption, label or preference pair).
    """

    name = "messages"
    version = "0.1.0"
    source: ClassVar[str] = "messages"
    carries_id: ClassVar[bool] = True
    STYLES: ClassVar[tuple[str, ...]] = ("qwen", "openai", "text", "trl", "swift")

    def __init__(
        self,
        file: str = "messages.jsonl",
        style: str = "qwen",
        messages_key: str = "messages",
        caption_prompt: str | None = None,
    ) -> None:
        super().__init__(file, caption_prompt)
        if style not in self.STYLES:
            raise ConfigError(f"messages style must be one of {', '.join(self.STYLES)}: {style!r}")
        self.style = style
        self.messages_key = messages_key
        # trl and swift carry pairs and feedback; trl is read back by the trl source
        self.carries_pairs = self.carries_feedback = style in ("trl", "swift")
        self.source = "trl" if style == "trl" else "messages"

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {**super().params(), "style": self.style, "messages_key": self.messages_key}

    def source_options(self) -> dict[str, Any]:
        """The ``messages`` source option naming the conversation field."""
        return {} if self.style == "trl" else {"messages_key": self.messages_key}

    def layout(self) -> str:
        """The format's name in loss reasons."""
        return f"export=messages style={self.style}"

    def open(self, folder: Path) -> None:
        """Create the data file; remember the folder (``openai`` inlines audio from it)."""
        self._folder = folder
        super().open(folder)

    def image_part(self, path: str) -> dict[str, Any]:
        """One image content part in the configured style."""
        if self.style == "openai":
            return {"type": "image_url", "image_url": {"url": path}}
        return {"type": "image", "image": path}

    def media_part(self, kind: str, path: str) -> dict[str, Any]:
        """One content part of ``kind`` (image | video | audio) in the configured style:
        ``openai`` writes audio inline as ``input_audio`` (base64 of the stored bytes),
        videos as ``{"type": "video", "video": PATH}`` (OpenAI has no video part)."""
        if kind == "image":
            return self.image_part(path)
        if kind == "audio" and self.style == "openai":
            data = base64.b64encode((self._folder / path).read_bytes()).decode("ascii")
            fmt = PurePosixPath(path).suffix.lstrip(".")
            return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}
        return {"type": kind, kind: path}

    def parts(self, content: str, paths: list[str]) -> list[dict[str, Any]]:
        """Split ``content`` on its placeholders, taking media from the front of ``paths``."""
        out: list[dict[str, Any]] = []
        texts = PLACEHOLDER_RE.split(content)
        kinds = [None, *placeholder_kinds(content)]
        for text, kind in zip(texts, kinds, strict=True):
            if kind is not None:
                out.append(self.media_part(kind, paths.pop(0)))
            if text:
                out.append({"type": "text", "text": text})
        return out

    def record(self, row: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """One messages object."""
        messages = self.conversation(row)
        if self.style == "trl":
            return self._trl(row, messages, paths)
        if self.style == "swift":
            return self._swift(row, messages, paths)
        if self.style == "text":
            obj: dict[str, Any] = {self.messages_key: messages}
            obj |= media_columns(messages, paths)
            return obj
        left = list(paths)
        out = [
            {
                "role": m["role"],
                "content": self.parts(m["content"], left)
                if placeholder_kinds(m["content"])
                else m["content"],
            }
            for m in messages
        ]
        return {self.messages_key: out}

    def _swift(
        self, row: dict[str, Any], messages: list[dict[str, str]], paths: list[str]
    ) -> dict[str, Any]:
        """ms-swift: the chosen answer as the last assistant turn, ``rejected_response``,
        ``label`` for KTO feedback; ``<image>`` strings with an ``images`` list."""
        pair = _pair(row)
        if pair:
            messages = [*messages, {"role": "assistant", "content": pair[0]}]
        obj: dict[str, Any] = {self.messages_key: messages}
        obj |= media_columns(messages, paths)
        if pair:
            obj["rejected_response"] = pair[1]
        if row.get("feedback") is not None:
            obj[KTO_TAG] = bool(row["feedback"])
        return obj

    def _trl(
        self, row: dict[str, Any], messages: list[dict[str, str]], paths: list[str]
    ) -> dict[str, Any]:
        """TRL: ``images`` + every content a list of parts with ``{"type": "image"}``;
        ``prompt`` / ``chosen`` / ``rejected`` for a pair, ``prompt`` / ``completion`` /
        ``label`` for KTO feedback, else ``messages`` (vision SFT)."""

        def conv(msgs: list[dict[str, str]]) -> list[dict[str, Any]]:
            out = []
            for m in msgs:
                texts = m["content"].split(IMAGE_TOKEN)
                parts: list[dict[str, Any]] = []
                for i, text in enumerate(texts):
                    if i:
                        parts.append({"type": "image"})
                    if text:
                        parts.append({"type": "text", "text": text})
                out.append({"role": m["role"], "content": parts})
            return out

        obj: dict[str, Any] = {"images": list(paths)} if paths else {}
        pair = _pair(row)
        if pair:
            obj["prompt"] = conv(messages)
            obj["chosen"] = conv([{"role": "assistant", "content": pair[0]}])
            obj["rejected"] = conv([{"role": "assistant", "content": pair[1]}])
        elif row.get("feedback") is not None:
            obj["prompt"] = conv(messages[:-1])
            obj["completion"] = conv(messages[-1:])
            obj[KTO_TAG] = bool(row["feedback"])
        else:
            obj["messages"] = conv(messages)
        return obj


class ClipPairsExporter(Exporter):
    """Base of the image-caption pair formats: one row (image, caption[, label]) per sample.

    Column names are those of the ``clip_pairs`` source (``label_column: null`` leaves
    labels out). A sample needs exactly one image and a non-blank caption, else it is
    skipped; its messages and preference pair are not carried.
    """

    source: ClassVar[str] = "clip_pairs"
    suffix: ClassVar[str]

    def __init__(
        self,
        file: str,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = "label",
    ) -> None:
        self.file = _check_file(file, (self.suffix,))
        self.image_column = image_column
        self.caption_column = caption_column
        self.label_column = label_column or None
        names = [image_column, caption_column, *([self.label_column] if self.label_column else [])]
        if len(set(names)) != len(names):
            raise ConfigError(f"clip pairs columns must differ: {names}")

    @property
    def header(self) -> list[str]:
        """The column names, in order."""
        cols = [self.image_column, self.caption_column]
        return [*cols, self.label_column] if self.label_column else cols

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {"file": self.file, **self.source_options()}

    def source_options(self) -> dict[str, Any]:
        """The ``clip_pairs`` source options naming these columns."""
        return {
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "label_column": self.label_column,
        }

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        """Pairs need exactly one image and a non-blank caption."""
        if len(row["media_ids"]) != 1:
            return f"not exactly one image ({len(row['media_ids'])})"
        caption = row.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            return "no caption"
        return None

    def label(self, row: dict[str, Any]) -> str | None:
        """The label as the source reads it back (blank = none)."""
        label = row.get("label") if self.label_column else None
        return str(label) if label is not None and str(label).strip() else None

    def losses(self, row: dict[str, Any]) -> list[str]:
        """Pairs carry no conversation, preference pair or feedback."""
        out = []
        if _pair(row):
            out.append(f"preference pair (chosen / rejected) not carried by export={self.name}")
        if row.get("feedback") is not None:
            out.append(f"KTO feedback not carried by export={self.name}")
        return out

    def readback(self, row: dict[str, Any]) -> dict[str, Any]:
        """Caption and label; no messages and no preference pair."""
        return {
            "messages": [],
            "caption": row["caption"],
            "label": self.label(row),
            "chosen": None,
            "rejected": None,
        }


class ClipPairsCsvExporter(_TextFile, ClipPairsExporter):
    """CSV pairs (header line, RFC 4180 quoting, so captions may hold commas, quotes and
    newlines); the image cell is the relative path."""

    name = "clip_pairs_csv"
    version = "0.1.0"
    suffix: ClassVar[str] = ".csv"

    def __init__(
        self,
        file: str = "pairs.csv",
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = "label",
    ) -> None:
        super().__init__(file, image_column, caption_column, label_column)
        self._fh: TextIO | None = None
        self._csv: Any = None

    def open(self, folder: Path) -> None:
        """Create the file and write the header."""
        self._fh = (folder / self.file).open("w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(self.header)

    def write(self, rows: list[dict[str, Any]], media: list[list[ExportMedia]]) -> None:
        """One CSV row per sample."""
        for row, (item,) in zip(rows, media, strict=True):
            cells = [item.path, row["caption"]]
            if self.label_column:
                cells.append(self.label(row) or "")
            self._csv.writerow(cells)

    def close(self) -> list[str]:
        """Close the file."""
        return self._close_file()


class ClipPairsParquetExporter(ClipPairsExporter):
    """Parquet pairs, written one row group per batch. The image column holds the relative
    path (string), or with ``inline: true`` the image bytes themselves (binary; no
    ``images/`` folder is written)."""

    name = "clip_pairs_parquet"
    version = "0.1.0"
    suffix: ClassVar[str] = ".parquet"

    def __init__(
        self,
        file: str = "pairs.parquet",
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = "label",
        inline: bool = False,
    ) -> None:
        super().__init__(file, image_column, caption_column, label_column)
        self.inline = bool(inline)
        self.inline_media = self.inline  # the runner passes bytes instead of writing files
        self._writer: Any = None

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {**super().params(), "inline": self.inline}

    def _schema(self) -> Any:
        import pyarrow as pa

        image = pa.binary() if self.inline else pa.string()
        fields = [pa.field(self.image_column, image), pa.field(self.caption_column, pa.string())]
        if self.label_column:
            fields.append(pa.field(self.label_column, pa.string()))
        return pa.schema(fields)

    def open(self, folder: Path) -> None:
        """Create the Parquet writer."""
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(folder / self.file, self._schema())

    def write(self, rows: list[dict[str, Any]], media: list[list[ExportMedia]]) -> None:
        """One row group per batch."""
        import pyarrow as pa

        images = [item.data if self.inline else item.path for (item,) in media]
        cols: dict[str, list[Any]] = {
            self.image_column: images,
            self.caption_column: [row["caption"] for row in rows],
        }
        if self.label_column:
            cols[self.label_column] = [self.label(row) for row in rows]
        self._writer.write_table(pa.table(cols, schema=self._schema()))

    def close(self) -> list[str]:
        """Write the footer."""
        self._writer.close()
        self._writer = None
        return [self.file]

    def abort(self) -> None:
        """Close the writer (the runner deletes the half-written file)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(OSError):
                writer.close()
