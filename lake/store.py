"""The lake: an embedded LanceDB database holding the ``media``, ``samples`` and ``runs`` tables.

All writes go through :meth:`Lake.insert_new` (merge-insert on the table's key, inserting
only keys not yet present) or :meth:`Lake.upsert`; each is one atomic Lance commit, so a
crash between two writes leaves a consistent lake and a re-run converges.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake.errors import ConfigError, LakeNotFoundError
from lake.schema import KEYS, MEDIA, RUNS, SAMPLES, SCHEMAS

DEFAULT_URI = "data/lake"


class Lake:
    """Handle on a lake directory; tables are opened lazily and created on first write."""

    def __init__(self, uri: str | Path = DEFAULT_URI) -> None:
        import lancedb  # ~3 s import: keep `lakeloom --help` fast

        self.uri = str(uri)
        self.db = lancedb.connect(self.uri)

    # -- tables -------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        """Names of the tables that exist."""
        return list(self.db.list_tables().tables)

    def exists(self, name: str) -> bool:
        """Whether table ``name`` exists."""
        return name in self.table_names()

    def table(self, name: str, version: int | str | None = None) -> Any:
        """Open a table, optionally at an earlier version number or tag."""
        if not self.exists(name):
            raise LakeNotFoundError(f"table {name!r} does not exist in lake {self.uri}")
        tbl = self.db.open_table(name)
        if version is not None:
            tbl.checkout(version)
        return tbl

    def ensure(self, name: str) -> Any:
        """Open a table, creating it empty with its schema when missing.

        A table written by an older lakeloom gets the columns added since (all nullable),
        except blob columns, which Lance can only create with the table.
        """
        if not self.exists(name):
            return self.db.create_table(name, schema=SCHEMAS[name], exist_ok=True)
        tbl = self.db.open_table(name)
        have = set(tbl.schema.names)
        missing = [f for f in SCHEMAS[name] if f.name not in have and not _is_blob(f)]
        if missing:
            tbl.add_columns(pa.schema(missing))
        return tbl

    def has_blobs(self, name: str) -> bool:
        """Whether table ``name`` exists with a blob column (lakes made before videos lack it)."""
        return self.exists(name) and any(_is_blob(f) for f in self.table(name).schema)

    def open_blob(self, name: str, key: str, column: str = "blob") -> Any:
        """A read-only file object over one row's blob (None when the row has none).

        Only the bytes that are read are fetched, so a video can be probed or decoded
        from the lake without loading it whole.
        """
        ds = self.dataset(name)
        quoted = key.replace("'", "''")
        rows = ds.to_table(
            columns=[KEYS[name]], with_row_id=True, filter=f"{KEYS[name]} = '{quoted}'"
        )
        if rows.num_rows == 0:
            raise KeyError(f"{name}: no row with {KEYS[name]} = {key!r}")
        return ds.take_blobs(column, ids=[rows.column("_rowid")[0].as_py()])[0]

    def dataset(self, name: str, version: int | str | None = None) -> Any:
        """The pylance dataset behind a table (for scans with projection and filters)."""
        return self.table(name, version).to_lance()

    # -- reads ----------------------------------------------------------------------------
    def keys(self, name: str) -> set[str]:
        """Every key currently in table ``name`` (empty when the table does not exist)."""
        if not self.exists(name):
            return set()
        key = KEYS[name]
        col = self.dataset(name).to_table(columns=[key]).column(key)
        return set(col.to_pylist())

    def count(self, name: str, where: str | None = None) -> int:
        """Row count of a table (0 when missing), optionally filtered."""
        if not self.exists(name):
            return 0
        return self.table(name).count_rows(where)

    def value_counts(self, name: str, column: str) -> dict[str, int]:
        """Rows per distinct value of ``column``, reading only that column."""
        if not self.exists(name):
            return {}
        col = self.dataset(name).to_table(columns=[column]).column(column)
        counts = pc.value_counts(col).to_pylist()
        return {str(c["values"]): int(c["counts"]) for c in counts}

    # -- writes ---------------------------------------------------------------------------
    def insert_new(self, name: str, rows: pa.Table) -> int:
        """Merge-insert rows whose key is not yet in the table; return how many were new.

        Rows are cast to the table's schema first, so a wrong column fails loudly before
        anything is written.
        """
        if rows.num_rows == 0:
            return 0
        tbl = self.ensure(name)
        rows = _conform(rows, tbl.schema)
        # new rows have no embeddings yet: their vector columns are null, which lancedb
        # rejects by default once an enricher has added such a column
        merge = tbl.merge_insert(KEYS[name]).when_not_matched_insert_all()
        result = merge.execute(rows, on_bad_vectors="null")
        return int(result.num_inserted_rows)

    def upsert(self, name: str, rows: pa.Table) -> None:
        """Insert rows, replacing rows with the same key."""
        if rows.num_rows == 0:
            return
        tbl = self.ensure(name)
        rows = _conform(rows, tbl.schema)
        (
            tbl.merge_insert(KEYS[name])
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows, on_bad_vectors="null")  # see insert_new
        )

    def update_columns(self, name: str, rows: pa.Table) -> int:
        """Set some columns of existing rows (``rows`` = key + those columns); no inserts."""
        if rows.num_rows == 0:
            return 0
        tbl = self.table(name)
        schema = tbl.schema
        rows = pa.Table.from_arrays(
            [rows.column(c).cast(schema.field(c).type) for c in rows.column_names],
            schema=pa.schema([schema.field(c) for c in rows.column_names]),
        )
        # on_bad_vectors="null": lancedb rejects null vectors by default, but an enricher
        # may have no output for a row (e.g. a sample without text); the enricher must
        # not produce NaN vectors itself (lancedb would null those too)
        merge = tbl.merge_insert(KEYS[name]).when_matched_update_all()
        result = merge.execute(rows, on_bad_vectors="null")
        return int(result.num_updated_rows)

    def add_columns(self, name: str, fields: list[pa.Field]) -> list[str]:
        """Add missing nullable columns (schema evolution); return the names added.

        A column that exists with another type is an error: a model with another output
        width needs a new column or an explicit drop, never a silent overwrite.
        """
        tbl = self.table(name)
        have = {f.name: f for f in tbl.schema}
        missing = []
        for field in fields:
            if field.name not in have:
                missing.append(field)
            elif have[field.name].type != field.type:
                raise ConfigError(
                    f"{name}.{field.name} holds {have[field.name].type}, the new output is "
                    f"{field.type}: write to another column or drop this one first"
                )
        if missing:
            tbl.add_columns(pa.schema(missing))
        return [f.name for f in missing]

    # -- versions -------------------------------------------------------------------------
    def versions(self, name: str) -> list[dict[str, Any]]:
        """Versions of a table, oldest first, with their timestamp, row count and tags."""
        tbl = self.table(name)
        tags: dict[int, list[str]] = {}
        for tag, info in tbl.tags.list().items():
            tags.setdefault(int(info["version"]), []).append(tag)
        out = []
        for v in tbl.list_versions():
            meta = v.get("metadata", {})
            out.append(
                {
                    "version": int(v["version"]),
                    "timestamp": v["timestamp"],
                    "rows": int(meta.get("total_rows", 0)),
                    "tags": sorted(tags.get(int(v["version"]), [])),
                }
            )
        return out

    def tag(self, tag: str, tables: Iterable[str] = (MEDIA, SAMPLES)) -> dict[str, int]:
        """Tag the current version of each existing table with ``tag``; return the versions."""
        tagged = {}
        for name in tables:
            if not self.exists(name):
                continue
            tbl = self.table(name)
            tbl.tags.create(tag, tbl.version)
            tagged[name] = int(tbl.version)
        return tagged

    def current_versions(self) -> dict[str, int]:
        """Current version of every data table."""
        return {n: int(self.table(n).version) for n in (MEDIA, SAMPLES) if self.exists(n)}

    # -- runs -----------------------------------------------------------------------------
    def record_run(self, run: dict[str, Any]) -> None:
        """Write (or update) the run's record in the ``runs`` table."""
        row = {f.name: run.get(f.name) for f in SCHEMAS[RUNS]}
        for key in ("inputs", "counts", "versions"):
            if row[key] is not None and not isinstance(row[key], str):
                row[key] = json.dumps(row[key], sort_keys=True, default=str)
        self.upsert(RUNS, pa.Table.from_pylist([row], schema=SCHEMAS[RUNS]))

    def runs(self) -> list[dict[str, Any]]:
        """Every run record, oldest first."""
        if not self.exists(RUNS):
            return []
        rows = self.dataset(RUNS).to_table().to_pylist()
        return sorted(rows, key=lambda r: r["started_at"])


BLOB_FIELD_METADATA = {b"lance-encoding:blob": b"true"}


def _is_blob(field: pa.Field) -> bool:
    # Once lance registers its extension types the table reports an ExtensionType;
    # before that, the same column comes back as a struct carrying the extension name.
    if isinstance(field.type, pa.ExtensionType):
        return field.type.extension_name.startswith("lance.blob")
    meta = field.metadata or {}
    return meta.get(b"lance-encoding:blob") == b"true" or meta.get(
        b"ARROW:extension:name", b""
    ).startswith(b"lance.blob")


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast ``rows`` to ``schema``; columns missing from rows become nulls.

    Blob columns are written as plain large binaries with the blob encoding marker (the
    table reports them as Lance's blob extension type, which is not a cast target).
    """
    cols, fields = [], []
    for field in schema:
        if _is_blob(field):
            field = pa.field(field.name, pa.large_binary(), metadata=BLOB_FIELD_METADATA)
        if field.name in rows.column_names:
            cols.append(rows.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(rows.num_rows, field.type))
        fields.append(field)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
