"""Base classes of the sources that read JSON records (``sharegpt``, ``llava``, ``messages``,
``trl``): :class:`JsonRecordsSource` iterates the records of a source's files with their
locations, resolves media under the path policy (with the ``image_folder`` prefix) and
turns a :class:`~lake.errors.RejectedInput` raised while parsing one record into a Reject
at that record's location, so reading goes on; :class:`ConversationSource` reads
ShareGPT-style ``{from, value}`` conversations with configurable keys and tags.

Plugins subclass these (they import ``lake``, never each other); the helpers they share
live in :mod:`lake.sources`. Kept apart from :mod:`lake.sources` because they build on
:class:`lake.plugin.Source`, which itself imports :mod:`lake.sources`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import urlparse

from lake.errors import RejectedInput
from lake.plugin import Source
from lake.records import Location, MediaRef, Reject, SourceRecord
from lake.sources import (
    JSON_SUFFIXES,
    RECORD_ERRORS,
    ReadKeys,
    ShareGPTLayout,
    analyse_file,
    audio_media,
    canonical_messages,
    check_feedback,
    checked_file,
    confined_root,
    dataset_files,
    feedback_value,
    in_placeholder_order,
    iter_json_records,
    json_type,
    load_file,
    media_list,
    record_error,
    record_id,
    relative_name,
    require,
    resolve_media,
    unread_keys,
    video_media,
)


class JsonRecordsSource(Source):
    """Base of sources reading JSON objects from one file or every JSON(L) file of a folder.

    ``path`` is a ``.json`` (array) or ``.jsonl`` file, or a folder whose top-level
    ``*.json`` / ``*.jsonl`` files are all read in name order. ``image_folder`` is a prefix
    (relative to the dataset root, like LLaVA's ``--image_folder``) joined to every plain
    relative image path. Subclasses implement :meth:`parse` for one record.

    Videos and audio that ``<video>`` / ``<audio>`` placeholders refer to (resolved by
    :meth:`media_in_order`) go through the analysis of the ``video`` and ``audio``
    sources: a video becomes its ``video`` media row (blob-stored when ``store_video``,
    else referenced), with its kept frames and 16 kHz mono audio track attached
    (``parent_id`` = the video; ``video_analysis`` overrides ``analysis:`` of
    ``conf/source/video.yaml``);
    an audio file becomes an ``audio`` row, mono at ``audio_rate`` Hz in ``audio_format``.
    """

    step: ClassVar[str]
    kto_tag: str | None = None  # the field of KTO feedback (set by sources that read it)
    AV_CACHE: ClassVar[int] = 8  # analysed videos / audio kept for records that repeat them

    def __init__(
        self,
        path: str | Path,
        image_folder: str | None = None,
        store_video: bool = True,
        video_analysis: dict[str, Any] | None = None,
        audio_rate: int = 16000,
        audio_format: str = "flac",
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.image_folder = image_folder or None
        from lake.audio import check_format
        from lake.video import conf_settings

        self.store_video = bool(store_video)
        self.video_settings = conf_settings("video_analysis", **dict(video_analysis or {}))
        self.audio_rate = int(audio_rate)
        self.audio_format = audio_format
        check_format(audio_format)
        self._av_cache: OrderedDict[tuple[str, str], tuple[MediaRef, list[MediaRef]]] = (
            OrderedDict()
        )

    def files(self) -> list[Path]:
        """The JSON(L) files to read, in order."""
        return dataset_files(self.path, JSON_SUFFIXES)

    def validate(self) -> None:
        """The path must exist; a folder must hold at least one JSON(L) file."""
        super().validate()
        if not self.files():
            raise FileNotFoundError(f"{self.name} source: no *.json or *.jsonl in {self.path}")

    def count(self) -> None:
        """Unknown without parsing the files (a JSON array must be read whole)."""
        return None

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        from dataclasses import asdict

        return {
            **super().params(),
            "image_folder": self.image_folder,
            "store_video": self.store_video,
            "video_analysis": asdict(self.video_settings),
            "audio_rate": self.audio_rate,
            "audio_format": self.audio_format,
        }

    def records(self) -> Iterator[SourceRecord | Reject]:
        """Parse every record of every file; a bad record becomes a Reject at its location.

        Any error while parsing one record or resolving its media (an OSError, a
        ValueError, a RecursionError) rejects that record only. A dataset file must itself
        be a regular file inside the root (symlinks resolved).
        """
        root = self.root
        # a file named as source.path was chosen by the user: only the folder's are confined
        confine = None if self.path.is_file() else confined_root(root, self.policy)
        for file in self.files():
            try:
                checked_file(file, confine)
            except RejectedInput as exc:
                yield Reject(Location(relative_name(file, root)), f"dataset file: {exc.reason}")
                continue
            try:
                for item in iter_json_records(file, root, self.policy.max_line_bytes):
                    if isinstance(item, Reject):
                        yield item
                        continue
                    location, obj = item
                    try:
                        if not isinstance(obj, dict):
                            raise RejectedInput(
                                f"record must be a JSON object, got {json_type(obj)}"
                            )
                        obj = ReadKeys(obj)
                        rec = self.parse(obj, location)
                        if isinstance(rec, SourceRecord) and rec.record_id is None:
                            rec.record_id = record_id(obj)
                        if isinstance(rec, SourceRecord):
                            rec.ignored_keys = unread_keys(obj, self.name)
                        yield rec
                    except RECORD_ERRORS as exc:
                        yield Reject(location, record_error(exc))
            except OSError as exc:
                yield Reject(
                    Location(relative_name(file, root)), f"cannot read file: {exc.strerror or exc}"
                )

    @abstractmethod
    def parse(self, obj: dict[str, object], location: Location) -> SourceRecord:
        """Turn one JSON object into a record, or raise RejectedInput with the reason."""

    def media(self, refs: Iterable[object]) -> list[MediaRef]:
        """Resolve image references (with the ``image_folder`` prefix) under the policy."""
        return [resolve_media(self.root, self._prefixed(ref), self.policy) for ref in refs]

    def media_in_order(
        self, messages: list[dict[str, str]], refs: dict[str, list[object]]
    ) -> tuple[list[MediaRef], list[MediaRef]]:
        """``(media, attached)`` of a record: one media per placeholder of ``messages`` in
        order of appearance (``refs`` holds each kind's references in their own order;
        counts already checked by :func:`~lake.sources.canonical_messages`), and the
        frames and audio tracks of its videos, attached."""
        media: list[MediaRef] = []
        attached: list[MediaRef] = []
        for kind, ref in in_placeholder_order(messages, refs):
            if kind == "image":
                media.extend(self.media([ref]))
                continue
            main, extra = self._analysed(kind, ref)
            media.append(main)
            known = {a.media_id for a in attached}
            attached.extend(a for a in extra if a.media_id not in known)
        return media, attached

    def conversation_record(
        self,
        obj: dict[str, object],
        location: Location,
        messages: list[dict[str, str]],
        refs: dict[str, list[object]],
        pair: tuple[str | None, str | None],
        rejected_media: list[MediaRef] | None = None,
        **details: str,
    ) -> SourceRecord:
        """The record of a conversation: its media in placeholder order, the preference
        ``pair`` (chosen, rejected) and the KTO feedback of ``kto_tag`` (checked against
        the pair); ``details`` go into the parse step's parameters."""
        media, attached = self.media_in_order(messages, refs)
        feedback = feedback_value(obj, self.kto_tag)
        check_feedback(messages, feedback, pair[0] is not None)
        return SourceRecord(
            location=location,
            media=media,
            attached=attached,
            messages=messages,
            chosen=pair[0],
            rejected=pair[1],
            rejected_media=rejected_media,
            feedback=feedback,
            steps=[(self.step, {"format": self.name, **details})],
        )

    def _analysed(self, kind: str, ref: object) -> tuple[MediaRef, list[MediaRef]]:
        """A video or audio reference resolved and analysed (cached by resolved file)."""
        m = resolve_media(self.root, self._prefixed(ref), self.policy, kind)
        key = (
            kind,
            str(m.path) if m.path is not None else hashlib.sha256(m.data or b"").hexdigest(),
        )
        hit = self._av_cache.get(key)
        if hit is not None:
            self._av_cache.move_to_end(key)
            return hit
        out = self._video(m) if kind == "video" else self._audio(m)
        self._av_cache[key] = out
        if len(self._av_cache) > self.AV_CACHE:
            self._av_cache.popitem(last=False)
        return out

    def _video(self, m: MediaRef) -> tuple[MediaRef, list[MediaRef]]:
        if m.path is None:
            # the video row is stored from its file (blob) or referenced by it
            raise RejectedInput(
                f"video {m.source_uri[:200]}: only video files are read (no data: or URL videos)"
            )
        rel, sha, analysis, reason = analyse_file(m.source_uri, str(m.path), self.video_settings)
        if reason is not None:
            raise RejectedInput(f"video {rel}: {reason}")
        video, audio, frames = video_media(rel, str(m.path), sha, analysis, self.store_video)
        return video, [*audio, *frames]

    def _audio(self, m: MediaRef) -> tuple[MediaRef, list[MediaRef]]:
        if m.path is not None:
            out = load_file(m.source_uri, str(m.path), self.audio_rate, self.audio_format)
        else:
            fd, tmp = tempfile.mkstemp(prefix=".lakeloom-audio-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(m.data or b"")
                out = load_file(m.source_uri, tmp, self.audio_rate, self.audio_format)
            finally:
                os.unlink(tmp)
        rel, sha, track, reason = out
        if reason is not None:
            raise RejectedInput(f"audio {rel}: {reason}")
        return audio_media(rel, sha, track, self.audio_format), []

    def _prefixed(self, ref: object) -> object:
        """Prefix plain relative paths with ``image_folder``; leave anything else alone."""
        if not self.image_folder or not isinstance(ref, str):
            return ref
        ref = ref.strip()
        if ref.startswith("data:") or len(urlparse(ref).scheme) > 1 or Path(ref).is_absolute():
            return ref
        return (PurePosixPath(self.image_folder) / ref).as_posix()


class ConversationSource(JsonRecordsSource):
    """ShareGPT conversations: ``conversations`` = ``[{"from", "value"}, ...]``.

    The conversation, role and content keys and the user / assistant / system tags are
    configurable; the standard aliases (``human``, ``gpt``, ``user``, ``assistant``,
    ``system``, ...) are accepted as well, any other role is a reject. Images come from
    ``image`` (one) or ``images`` (a list) and pair in order with the ``<image>``
    placeholders; videos from ``video`` / ``videos`` with ``<video>``, audio from
    ``audio`` / ``audios`` with ``<audio>`` (LLaMA-Factory, ms-swift, 2U1); a count
    mismatch of any kind is a reject naming it. A top-level string ``system`` field
    becomes a leading system message.
    A record with ``chosen`` and ``rejected`` (each a string or a turn object) is a
    preference pair; one without the other is a reject. ``kto_tag`` names the field holding
    KTO feedback (LLaMA-Factory's ``kto_tag`` column: true / false on the last assistant
    turn, stored as the sample's ``feedback``; null: not read).
    """

    def __init__(
        self,
        path: str | Path,
        image_folder: str | None = None,
        kto_tag: str | None = "label",
        **kwargs: Any,
    ) -> None:
        # the layout keys (messages_key, role_key, ... system_tag: lake.sources.ShareGPTLayout)
        self.layout = ShareGPTLayout.take(kwargs)
        super().__init__(path, image_folder=image_folder, **kwargs)
        self.kto_tag = kto_tag or None

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {**super().params(), **self.layout.options(), "kto_tag": self.kto_tag}

    def parse(self, obj: dict[str, object], location: Location) -> SourceRecord:
        """One ShareGPT record -> canonical messages, media and preference pair."""
        layout = self.layout
        conv = require(obj, layout.messages_key)
        if not isinstance(conv, list):
            raise RejectedInput(f"{layout.messages_key!r} must be a list, got {json_type(conv)}")
        turns: list[tuple[object, object]] = []
        system = obj.get("system")
        if system is not None and not isinstance(system, str):
            raise RejectedInput(f"'system' must be a string, got {json_type(system)}")
        if system and system.strip():
            turns.append(("system", system))
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict):
                raise RejectedInput(f"turn {i} must be an object, got {json_type(turn)}")
            for key in (layout.role_key, layout.content_key):
                if key not in turn:
                    raise RejectedInput(f"turn {i}: missing field {key!r}")
            turns.append((layout.role(turn[layout.role_key]), turn[layout.content_key]))
        refs = {kind: media_list(obj, kind) for kind in ("image", "video", "audio")}
        messages = canonical_messages(
            turns, len(refs["image"]), len(refs["video"]), len(refs["audio"])
        )
        return self.conversation_record(obj, location, messages, refs, self._preference(obj))

    def _preference(self, obj: dict[str, object]) -> tuple[str | None, str | None]:
        has = [k for k in ("chosen", "rejected") if obj.get(k) is not None]
        if not has:
            return None, None
        if len(has) == 1:
            other = "rejected" if has[0] == "chosen" else "chosen"
            raise RejectedInput(f"{has[0]!r} without {other!r}: a preference pair needs both")
        return self._answer(obj["chosen"], "chosen"), self._answer(obj["rejected"], "rejected")

    def _answer(self, value: object, key: str) -> str:
        layout = self.layout
        if isinstance(value, dict):
            if layout.content_key not in value:
                raise RejectedInput(f"{key!r}: missing field {layout.content_key!r}")
            if layout.role_key in value:
                layout.role(value[layout.role_key])
            value = value[layout.content_key]
        if not isinstance(value, str) or not value.strip():
            raise RejectedInput(f"{key!r} must be a non-empty string or turn object")
        return value
