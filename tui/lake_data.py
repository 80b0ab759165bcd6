"""Read-only, paged access to a lake for the TUI (no Textual imports; thread-safe reads).

A :class:`LakeView` pins the ``samples`` and ``media`` tables at one version, so what the
user pages through never shifts under them; :meth:`LakeView.changed` tells when a newer
version exists and :meth:`LakeView.refresh` re-pins. Nothing reads a whole table for a
page: a :class:`RowSet` without filter and sort reads each page with one offset/limit
scan; with a filter and/or a sort it first scans only the row ids (and the sort column)
of the matching rows, then reads each page with one ``take`` of its row ids. Pages are
kept in an LRU cache.

Page rows hold (unless ``columns=`` picks sample columns): ``sample_id``, ``dataset``,
``label``, ``split``, ``caption`` (its first 200 characters; without a caption the first
user and assistant texts), ``n_media``, ``media_id`` (the first media), ``flags``,
``clip_score`` and every ``check_<name>_score`` column. Reads use pylance directly:
LanceDB (a 3 s import) is loaded only for vector search.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake.schema import MEDIA, PLACEHOLDER_RE, SAMPLES
from lake.sql import in_list, quote
from lake.storage import is_remote, join_uri, redact_text

CAPTION_CHARS = 200
DERIVED = {"n_media": ["media_ids"], "media_id": ["media_ids"], "caption": ["caption", "messages"]}
BASE_COLUMNS = ["sample_id", "dataset", "label", "split", "caption", "n_media", "media_id",
                "flags", "clip_score"]  # fmt: skip
NO_VALUE = "<none>"
MEDIA_FIELDS = ["media_id", "kind", "mime", "width", "height", "bytes", "thumb", "source_uri",
                "provenance", "parent_id", "t_start", "t_end", "scene", "transcript"]  # fmt: skip
CHECK_SCORE = re.compile(r"^check_(.+)_score$")
# Lance appends the Rust source location to its messages: ", /path/file.rs:12:3"
_RUST_LOCATION = re.compile(r",?\s*/\S+\.rs:\d+:\d+\s*$")
_MAX_ROWID_MEMO = 200_000


class LakeUnavailable(Exception):
    """The lake cannot be opened; the message is meant for people as is."""


@dataclass
class DatasetSummary:
    """Sample counts of one dataset."""

    name: str
    samples: int
    by_label: dict[str, int] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    by_flag: dict[str, int] = field(default_factory=dict)


def readable_error(exc: BaseException) -> str:
    """Lance's error text without its prefix and Rust source location."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _RUST_LOCATION.sub("", text)
    for prefix in ("Invalid user input: ", "LanceError(IO): ", "Schema error: "):
        text = text.removeprefix(prefix)
    text = text.strip()
    return text if text.endswith((".", "?", "!", ")")) else text + "."


def _first_text(messages: list[dict[str, Any]] | None) -> str | None:
    """The first user and first assistant texts of a conversation, placeholders removed."""
    parts = {}
    for m in messages or []:
        role = m.get("role")
        if role in ("user", "assistant") and role not in parts and m.get("content"):
            parts[role] = " ".join(PLACEHOLDER_RE.sub(" ", m["content"]).split())
    text = " / ".join(parts[r] for r in ("user", "assistant") if r in parts)
    return text or None


def page_rows(table: pa.Table, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of ``columns`` (sample columns or derived ones) from a table of a page."""
    out: dict[str, list[Any]] = {}
    n = table.num_rows
    for name in columns:
        if name == "n_media":
            lengths = pc.list_value_length(table.column("media_ids"))
            out[name] = pc.fill_null(lengths, 0).to_pylist()
        elif name == "media_id":
            out[name] = [m[0] if m else None for m in table.column("media_ids").to_pylist()]
        elif name == "caption":
            caps = pc.utf8_slice_codeunits(table.column("caption"), 0, CAPTION_CHARS).to_pylist()
            missing = [i for i, c in enumerate(caps) if not c]
            if missing and "messages" in table.column_names:
                msgs = table.column("messages").take(pa.array(missing)).to_pylist()
                for i, m in zip(missing, msgs, strict=True):
                    text = _first_text(m)
                    caps[i] = text[:CAPTION_CHARS] if text else caps[i]
            out[name] = caps
        else:
            out[name] = table.column(name).to_pylist()
    return [{k: out[k][i] for k in columns} for i in range(n)]


class RowSet:
    """The rows selected by ``where`` in ``sort`` order at the view's pinned version."""

    def __init__(
        self,
        view: LakeView,
        where: str | None,
        sort: str | None,
        descending: bool,
        columns: list[str],
        page_cache: int,
    ) -> None:
        self.where, self.sort, self.descending = where, sort, descending
        self.columns = columns
        self.version = view.version
        self._view, self._ds = view, view._samples
        self._physical = view._physical(columns)
        self._pages: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()
        self._cache_size = max(1, page_cache)
        self._lock = threading.Lock()
        self._ids: pa.UInt64Array | None = None
        if where or sort:
            self._ids = self._select()
            self._len = len(self._ids)
        else:
            self._len = self._ds.count_rows()

    def _select(self) -> pa.UInt64Array:
        """Row ids of the matching rows, in order (one scan of the sort column at most)."""
        cols = [self.sort] if self.sort else []
        try:
            found = self._ds.to_table(columns=cols, filter=self.where, with_row_id=True)
        except (ValueError, OSError) as exc:
            raise ValueError(f"invalid filter {self.where!r}: {readable_error(exc)}") from None
        ids = found.column("_rowid")
        if self.sort:
            order = "descending" if self.descending else "ascending"
            idx = pc.sort_indices(found, sort_keys=[(self.sort, order, "at_end")])
            ids = ids.take(idx)
        return ids.combine_chunks()

    def __len__(self) -> int:
        return self._len

    def pages(self, size: int) -> int:
        """Number of pages of ``size`` rows (at least 1)."""
        return max(1, -(-self._len // size))

    def page(self, index: int, size: int) -> list[dict[str, Any]]:
        """Rows ``index*size`` .. ``(index+1)*size`` (fewer on the last page, [] beyond)."""
        if size <= 0 or index < 0:
            raise ValueError(f"bad page {index} of size {size}")
        key = (index, size)
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
                return self._pages[key]
        start = index * size
        if start >= self._len:
            return []
        if self._ids is None:
            table = self._ds.to_table(
                columns=self._physical, offset=start, limit=size, with_row_id=True
            )
            ids = table.column("_rowid").to_pylist()
        else:
            ids_arr = self._ids.slice(start, size)
            table = self._ds._take_rows(ids_arr, columns=self._physical)
            ids = ids_arr.to_pylist()
        rows = page_rows(table, self.columns)
        if "sample_id" in table.column_names:
            self._view._remember(table.column("sample_id").to_pylist(), ids)
        with self._lock:
            self._pages[key] = rows
            while len(self._pages) > self._cache_size:
                self._pages.popitem(last=False)
        return rows


class LakeView:
    """A lake opened for browsing, pinned at the current versions of its tables."""

    def __init__(
        self,
        lake_uri: str | Path,
        page_cache: int = 64,
        model: dict[str, Any] | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        """``model``: options of the CLIP model for text search (e.g. ``pretrained``);
        ``storage_options``: those of a lake on object storage (see :mod:`lake.storage`)."""
        import lance

        self.uri = str(lake_uri)
        self.page_cache = page_cache
        self.model = {"device": "cpu", **(model or {})}
        self.storage_options = dict(storage_options or {})
        if not is_remote(self.uri) and not (Path(self.uri) / f"{SAMPLES}.lance").is_dir():
            raise LakeUnavailable(self._no_lake())
        self._lance = lance
        self._lock = threading.Lock()
        self._embedder: Any = None
        self._lake: Any = None
        self._pin()

    # -- versions -------------------------------------------------------------------------
    def _no_lake(self) -> str:
        return f"no lake at {self.uri}: create one with `lakeloom demo` or pass lake.uri=..."

    def _open(self, table: str) -> Any:
        """The pylance dataset of ``table`` at its latest version (None: no such table)."""
        uri = join_uri(self.uri, f"{table}.lance")
        if not is_remote(self.uri) and not Path(uri).is_dir():
            return None
        try:
            return self._lance.dataset(uri, storage_options=self.storage_options or None)
        except (ValueError, OSError) as exc:
            if is_remote(self.uri) and "not found" in str(exc).lower():
                return None  # object storage has no folders to look for first
            raise

    def _pin(self) -> None:
        try:
            samples = self._open(SAMPLES)
        except (ValueError, OSError) as exc:
            # a library's message may echo the storage options: never show their secrets
            reason = redact_text(readable_error(exc), self.storage_options)
            raise LakeUnavailable(f"cannot open the lake at {self.uri}: {reason}") from None
        if samples is None:
            raise LakeUnavailable(self._no_lake())
        self._samples = samples
        self._media = self._open(MEDIA)
        self.version: int = int(self._samples.version)
        self.columns: list[str] = list(self._samples.schema.names)
        self._rowids: OrderedDict[str, int] = OrderedDict()
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()

    def changed(self) -> bool:
        """Whether the samples or media table has a newer version than the pinned one."""
        if self._samples.latest_version != self.version:
            return True
        return self._media is not None and self._media.latest_version != self._media.version

    def refresh(self) -> None:
        """Re-pin the latest versions (RowSets made before keep their version)."""
        with self._lock:
            self._pin()

    # -- helpers --------------------------------------------------------------------------
    def _physical(self, columns: list[str]) -> list[str]:
        """Stored columns needed to build ``columns``."""
        need: list[str] = []
        for name in columns:
            if name in DERIVED and (name not in self.columns or name == "caption"):
                need += [c for c in DERIVED[name] if c in self.columns]
            elif name in self.columns:
                need.append(name)
            else:
                raise ValueError(f"samples have no column {name!r}")
        return list(dict.fromkeys(need))

    def _remember(self, sample_ids: list[str], row_ids: list[int]) -> None:
        """Memo of row ids seen on pages, so :meth:`sample` needs no scan for them."""
        with self._lock:
            for s, r in zip(sample_ids, row_ids, strict=True):
                self._rowids[s] = r
                self._rowids.move_to_end(s)
            while len(self._rowids) > _MAX_ROWID_MEMO:
                self._rowids.popitem(last=False)

    def _scan(self, ds: Any, columns: list[str], where: str | None = None) -> pa.Table:
        try:
            return ds.to_table(columns=columns, filter=where)
        except (ValueError, OSError) as exc:
            raise ValueError(f"invalid filter {where!r}: {readable_error(exc)}") from None

    def default_columns(self) -> list[str]:
        """Columns of page rows by default."""
        checks = [c for c in self.columns if CHECK_SCORE.match(c)]
        base = [c for c in BASE_COLUMNS if c in self.columns or c in DERIVED]
        return base + checks

    # -- rows -----------------------------------------------------------------------------
    def rows(
        self,
        where: str | None = None,
        sort: str | None = None,
        descending: bool = False,
        columns: list[str] | None = None,
    ) -> RowSet:
        """The samples matching ``where`` (SQL), ordered by ``sort`` (nulls last).

        ValueError, with a readable message, for bad SQL or an unknown sort column.
        """
        where = where.strip() if where and where.strip() else None
        if sort is not None:
            if sort not in self.columns:
                raise ValueError(f"cannot sort: samples have no column {sort!r}")
            kind = self._samples.schema.field(sort).type
            if pa.types.is_nested(kind) or pa.types.is_binary(kind):
                raise ValueError(f"cannot sort by {sort!r}: it holds {kind}")
        cols = list(columns) if columns else self.default_columns()
        return RowSet(self, where, sort, descending, cols, self.page_cache)

    def flagged(self, check: str) -> RowSet:
        """Samples whose flags contain ``check``, worst (highest score) first."""
        score = f"check_{check}_score"
        sort = score if score in self.columns else None
        return self.rows(f"array_has(flags, {quote(check)})", sort=sort, descending=True)

    def checks(self) -> list[str]:
        """Names of the checks with a ``check_<name>_score`` column."""
        return [m.group(1) for c in self.columns if (m := CHECK_SCORE.match(c))]

    def datasets(self) -> list[DatasetSummary]:
        """Counts per label, split and flag of every dataset (reads only those columns)."""
        cols = [c for c in ("dataset", "label", "split", "flags") if c in self.columns]
        table = self._samples.to_table(columns=cols)
        out: dict[str, DatasetSummary] = {}
        for row in table.group_by("dataset").aggregate([("dataset", "count")]).to_pylist():
            out[row["dataset"]] = DatasetSummary(row["dataset"], int(row["dataset_count"]))
        for col, attr in (("label", "by_label"), ("split", "by_split")):
            if col not in cols:
                continue
            counts = table.group_by(["dataset", col]).aggregate([("dataset", "count")])
            for row in counts.to_pylist():
                key = NO_VALUE if row[col] is None else str(row[col])
                getattr(out[row["dataset"]], attr)[key] = int(row["dataset_count"])
        if "flags" in cols:
            flags = table.column("flags").combine_chunks()
            parents = pc.list_parent_indices(flags)
            pairs = pa.table(
                {"dataset": table.column("dataset").take(parents), "flag": pc.list_flatten(flags)}
            )
            counts = pairs.group_by(["dataset", "flag"]).aggregate([("flag", "count")])
            for row in counts.to_pylist():
                out[row["dataset"]].by_flag[str(row["flag"])] = int(row["flag_count"])
        for s in out.values():
            for attr in ("by_label", "by_split", "by_flag"):
                counts = getattr(s, attr)
                setattr(s, attr, dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))))
        return sorted(out.values(), key=lambda s: s.name)

    # -- one sample -----------------------------------------------------------------------
    def sample(self, sample_id: str) -> dict[str, Any]:
        """Every column of one sample plus ``media``: its media rows (without vectors).

        KeyError when no sample has that id at the pinned version.
        """
        row_id = self._rowids.get(sample_id)
        table = None
        if row_id is not None:
            table = self._samples._take_rows(pa.array([row_id], pa.uint64()))
            if table.num_rows != 1 or table.column("sample_id")[0].as_py() != sample_id:
                table = None
        if table is None:
            table = self._scan(self._samples, self.columns, f"sample_id = {quote(sample_id)}")
        if table.num_rows == 0:
            raise KeyError(sample_id)
        row = table.slice(0, 1).to_pylist()[0]
        row["media"] = self._media_rows(row.get("media_ids") or [])
        return row

    def lineage(self, row_id: str, runs_dir: str | None = None) -> dict[str, Any]:
        """:func:`lake.lineage.lineage` of a sample or media at the pinned versions."""
        from lake.lineage import Tables, lineage

        tables = Tables(self.uri, self.storage_options, self._samples, self._media)
        return lineage(tables, row_id, runs_dir=runs_dir)

    def _media_rows(self, media_ids: list[str]) -> list[dict[str, Any]]:
        if not media_ids or self._media is None:
            return []
        have = set(self._media.schema.names)
        cols = [c for c in MEDIA_FIELDS if c in have]
        where = f"media_id IN {in_list(dict.fromkeys(media_ids))}"
        found = {r["media_id"]: r for r in self._scan(self._media, cols, where).to_pylist()}
        out = []
        for m in media_ids:
            if m in found:
                r = {k: found[m].get(k) for k in MEDIA_FIELDS}
                r["size"] = len(r["bytes"]) if r["bytes"] is not None else None
                out.append(r)
        return out

    def thumbnails(self, media_ids: list[str]) -> dict[str, bytes]:
        """Thumbnail JPEG bytes by media id (ids without a thumbnail are left out)."""
        with self._lock:
            out = {m: self._thumbs[m] for m in media_ids if m in self._thumbs}
        todo = [m for m in dict.fromkeys(media_ids) if m not in out]
        if todo and self._media is not None:
            where = f"media_id IN {in_list(todo)}"
            found = self._scan(self._media, ["media_id", "thumb"], where).to_pylist()
            with self._lock:
                for r in found:
                    if r["thumb"] is not None:
                        out[r["media_id"]] = self._thumbs[r["media_id"]] = r["thumb"]
                while len(self._thumbs) > 4096:
                    self._thumbs.popitem(last=False)
        return out

    def duplicate_group(self, sample_id: str) -> list[str]:
        """The sample's duplicate group (representative first, then by score); [] if none."""
        col, score = "check_duplicates_group", "check_duplicates_score"
        if col not in self.columns:
            return []
        mine = self._scan(self._samples, [col], f"sample_id = {quote(sample_id)}")
        group = mine.column(col)[0].as_py() if mine.num_rows else None
        if not group:
            return []
        cols = ["sample_id"] + ([score] if score in self.columns else [])
        rows = self._scan(self._samples, cols, f"{col} = {quote(group)}").to_pylist()
        rows.sort(key=lambda r: (r["sample_id"] != group, -(r.get(score) or 0.0), r["sample_id"]))
        return [r["sample_id"] for r in rows]

    # -- vector search --------------------------------------------------------------------
    def has_embeddings(self) -> bool:
        """Whether any media has a CLIP image vector."""
        if self._media is None or "clip_image" not in self._media.schema.names:
            return False
        return self._media.count_rows(filter="clip_image IS NOT NULL") > 0

    def _store(self) -> Any:
        if self._lake is None:
            from lake.store import Lake

            self._lake = Lake(self.uri, self.storage_options)
        return self._lake

    def search_text(
        self, text: str, k: int = 50, where: str | None = None
    ) -> list[tuple[str, float]]:
        """Samples whose image is nearest to ``text`` (CLIP), best first: (sample_id, cosine).

        [] when the lake has no embeddings; ValueError when the model cannot be loaded.
        """
        if not text.strip() or not self.has_embeddings():
            return []
        from lake.errors import LakeloomError
        from lake.query import load_embedder

        try:
            with self._lock:
                if self._embedder is None:
                    self._embedder = load_embedder(self._store(), **self.model)
            vector = self._embedder.embed_texts([text])[0]
        except (LakeloomError, OSError) as exc:
            raise ValueError(f"cannot embed the query: {exc}") from None
        return self._search(vector, k, where)

    def _search(
        self, vector: Any, k: int, where: str | None, skip: str | None = None
    ) -> list[tuple[str, float]]:
        from lake.query import search

        try:
            hits = search(self._store(), vector, k=k, where=where)
        except (ValueError, OSError) as exc:
            raise ValueError(f"search failed: {readable_error(exc)}") from None
        best: dict[str, float] = {}
        for h in hits:
            if h.sample_id and h.sample_id != skip and h.sample_id not in best:
                best[h.sample_id] = h.score
        return list(best.items())[:k]

    def neighbours(self, sample_id: str, k: int = 8) -> list[tuple[str, float]]:
        """Samples whose first image is nearest to this sample's first image (cosine)."""
        if not self.has_embeddings():
            return []
        mine = self._scan(self._samples, ["media_ids"], f"sample_id = {quote(sample_id)}")
        media = mine.column("media_ids")[0].as_py() if mine.num_rows else None
        if not media:
            return []
        vec = self._scan(self._media, ["clip_image"], f"media_id = {quote(media[0])}")
        if vec.num_rows == 0 or vec.column("clip_image")[0].as_py() is None:
            return []
        return self._search(vec.column("clip_image")[0].as_py(), k + 1, None, skip=sample_id)[:k]
