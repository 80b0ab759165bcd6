"""The lake: an embedded LanceDB database holding the ``media``, ``samples`` and ``runs`` tables.

All writes go through :meth:`Lake.insert_new` (merge-insert on the table's key, inserting
only keys not yet present) or :meth:`Lake.upsert`; each is one atomic Lance commit, so a
crash between two writes leaves a consistent lake and a re-run converges.

Concurrent writers: every write here holds the lake's writer lock (:mod:`lake.lock`) from
opening the table at its latest version to the commit, so the key check of one
merge-insert cannot race another writer's insert of the same key. Each table key is also
declared a Lance unenforced primary key, so Lance itself detects (and retries) such a race
where no lock exists (object storage).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake import runs as runs_mod
from lake.errors import (
    ConfigError,
    FileProblem,
    LakeloomError,
    LakeNotFoundError,
    is_lance_error,
    lance_cause,
)
from lake.lock import local_path, writer_lock
from lake.schema import KEYS, MEDIA, RUNS, SAMPLES, SCHEMAS
from lake.sql import quote
from lake.storage import filesystem, guard_metadata_service, is_s3, join
from lake.storage import storage_options as configured_storage_options

DEFAULT_URI = "data/lake"

# Lance checks concurrent merge-inserts for inserts of the same new key only on columns
# carrying this field metadata (an unenforced primary key; the column must be non-null).
PRIMARY_KEY_METADATA = {b"lance-schema:unenforced-primary-key": b"true"}


class Lake:
    """Handle on a lake directory; tables are opened lazily and created on first write.

    Opening a handle creates nothing: a local lake's folder appears with its first write,
    so a job that fails on a missing lake leaves no empty lake behind.
    """

    def __init__(
        self, uri: str | Path = DEFAULT_URI, storage_options: dict[str, str] | None = None
    ) -> None:
        self.uri = str(uri)
        # object storage settings (endpoint, keys, ...): passed to every open of the lake
        self.storage_options: dict[str, str] = dict(storage_options or {})
        self._db: Any = None
        guard_metadata_service(self.uri)

    @classmethod
    def from_config(cls, lake_cfg: Any) -> Lake:
        """The lake of a job's ``lake`` config group: ``uri`` and ``storage_options``
        (over the AWS environment variables for ``s3://``, see :mod:`lake.storage`)."""
        return cls(lake_cfg.uri, configured_storage_options(lake_cfg))

    @property
    def db(self) -> Any:
        """The LanceDB connection, opened on first use (it creates a local lake's folder)."""
        if self._db is None:
            import lancedb  # ~3 s import: keep `lakeloom --help` fast

            if is_s3(self.uri):  # no keys: fail here, never ask the metadata service
                configured_storage_options(
                    {"uri": self.uri, "storage_options": self.storage_options}
                )
            self._db = lancedb.connect(self.uri, storage_options=self.storage_options or None)
        return self._db

    def _missing_folder(self) -> bool:
        """Whether this is a local lake whose folder does not exist (object storage: False)."""
        folder = local_path(self.uri)
        return folder is not None and not folder.expanduser().exists()

    # -- tables -------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        """Names of the tables that exist (the lake's ``<name>.lance`` folders).

        Listed with pyarrow rather than asked of LanceDB, whose import (~2 s) light
        readers such as ``lakeloom stats`` never pay; finding out creates nothing.
        """
        import pyarrow.fs as pafs

        if self._missing_folder():
            return []
        fs, base = filesystem(self._local_or_uri(), self.storage_options)
        found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = [
            i.base_name.removesuffix(".lance")
            for i in found
            if i.type == pafs.FileType.Directory and i.base_name.endswith(".lance")
        ]
        return sorted(names)

    def _local_or_uri(self) -> str:
        local = local_path(self.uri)
        return str(local.expanduser()) if local is not None else self.uri

    def _table_uri(self, name: str) -> str:
        """Where table ``name``'s Lance dataset lives."""
        return join(self._local_or_uri(), f"{name}.lance")

    def present(self) -> bool:
        """Whether the lake exists, i.e. holds a table (finding out creates nothing)."""
        return bool(self.table_names())

    def exists(self, name: str) -> bool:
        """Whether table ``name`` exists."""
        return name in self.table_names()

    def lock(self) -> Any:
        """The lake's writer lock (a context manager, re-entrant; see :mod:`lake.lock`)."""
        return writer_lock(self.uri)

    def table(self, name: str, version: int | str | None = None) -> Any:
        """Open a table, optionally at an earlier version number or tag."""
        tbl = self._open(name, lambda: self.db.open_table(name))
        if version is not None:
            tbl.checkout(version)
        return tbl

    def _open(self, name: str, opener: Callable[[], Any]) -> Any:
        """``opener()`` for an existing table; an unreadable table is a FileProblem naming
        its newest manifest."""
        if not self.exists(name):
            raise LakeNotFoundError(f"table {name!r} does not exist in lake {self.uri}")
        try:
            return opener()
        except (RuntimeError, OSError, ValueError) as exc:
            if not is_lance_error(exc):
                raise
            raise FileProblem(
                self._newest_manifest(name), f"table {name} cannot be read: {lance_cause(exc)}"
            ) from exc

    def _newest_manifest(self, name: str) -> str:
        """The table's newest manifest file (what opening it reads), else its folder."""
        import pyarrow.fs as pafs

        local = local_path(self.uri)
        folder = join(str(local) if local is not None else self.uri, f"{name}.lance")
        try:  # one listing, on local disk or object storage alike
            fs, base = filesystem(join(folder, "_versions"), self.storage_options)
            found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except (OSError, LakeloomError):
            return folder
        manifests = [i for i in found if i.base_name.endswith(".manifest")]
        if not manifests:
            return folder
        newest = max(manifests, key=lambda i: i.mtime_ns or 0)
        return join(folder, "_versions", newest.base_name)

    def ensure(self, name: str) -> Any:
        """Open a table, creating it empty with its schema when missing.

        A table written by an older lakeloom gets the columns added since (all nullable),
        except blob columns, which Lance can only create with the table.
        """
        with self.lock():
            if not self.exists(name):
                return self.db.create_table(name, schema=_with_primary_key(name), exist_ok=True)
            tbl = self.db.open_table(name)
            key = tbl.schema.field(KEYS[name])
            if not key.nullable and not (key.metadata or {}).get(next(iter(PRIMARY_KEY_METADATA))):
                # a table made before keys were declared: declare it (metadata only; Lance
                # refuses a nullable primary key, such a table relies on the lock alone)
                tbl.to_lance().update_field_metadata({KEYS[name]: _str_dict(PRIMARY_KEY_METADATA)})
                tbl = self.db.open_table(name)
            have = set(tbl.schema.names)
            missing = [f for f in SCHEMAS[name] if f.name not in have and not is_blob(f)]
            if missing:
                tbl.add_columns(pa.schema(missing))
            return tbl

    def has_blobs(self, name: str) -> bool:
        """Whether table ``name`` exists with a blob column (lakes made before videos lack it)."""
        return self.exists(name) and any(is_blob(f) for f in self.table(name).schema)

    def open_blob(self, name: str, key: str, column: str = "blob") -> Any:
        """A read-only file object over one row's blob (None when the row has none).

        Only the bytes that are read are fetched, so a video can be probed or decoded
        from the lake without loading it whole.
        """
        ds = self.dataset(name)
        rows = ds.to_table(
            columns=[KEYS[name]], with_row_id=True, filter=f"{KEYS[name]} = {quote(key)}"
        )
        if rows.num_rows == 0:
            raise KeyError(f"{name}: no row with {KEYS[name]} = {key!r}")
        return ds.take_blobs(column, ids=[rows.column("_rowid")[0].as_py()])[0]

    def dataset(self, name: str, version: int | str | None = None, session: Any = None) -> Any:
        """The pylance dataset behind a table (for scans with projection and filters),
        optionally at an earlier version number or tag.

        Opened with pylance directly (the light read path: no LanceDB import), with the
        lake's storage options; the same errors as :meth:`table`. A ``lance.Session``
        shared between openings keeps the loaded indexes (repeated searches: lake.query).
        """
        import lance

        uri, options = self._table_uri(name), self.storage_options or None
        ds = self._open(name, lambda: lance.dataset(uri, storage_options=options, session=session))
        return ds if version is None else ds.checkout_version(version)

    # -- reads ----------------------------------------------------------------------------
    def keys(self, name: str) -> set[str]:
        """Every key currently in table ``name`` (empty when the table does not exist)."""
        if not self.exists(name):
            return set()
        key = KEYS[name]
        col = self.dataset(name).to_table(columns=[key]).column(key)
        return set(col.to_pylist())

    def keys_at(self, name: str) -> tuple[set[str], int]:
        """:meth:`keys` and the table version they were read at (0: no table)."""
        if not self.exists(name):
            return set(), 0
        ds = self.dataset(name)
        col = ds.to_table(columns=[KEYS[name]]).column(KEYS[name])
        return set(col.to_pylist()), int(ds.version)

    def count(self, name: str, where: str | None = None) -> int:
        """Row count of a table (0 when missing), optionally filtered."""
        if not self.exists(name):
            return 0
        return int(self.dataset(name).count_rows(filter=where))

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
        with self.lock():
            tbl = self.ensure(name)
            rows = _conform(rows, tbl.schema)
            # new rows have no embeddings yet: their vector columns are null, which lancedb
            # rejects by default once an enricher has added such a column
            merge = tbl.merge_insert(KEYS[name]).when_not_matched_insert_all()
            result = merge.execute(rows, on_bad_vectors="null")
        return int(result.num_inserted_rows)

    def append_new(self, name: str, rows: pa.Table, version: int) -> int | None:
        """Append ``rows``, whose keys the caller knows are not in the table at ``version``
        (0: no table), when no write came since; return the version written.

        None, nothing written: the table moved on, or the lake has no writer lock to make
        the check and the append one step; the caller merge-inserts (:meth:`insert_new`).
        An append skips the merge-insert's join against every key already in the table.
        """
        if local_path(self.uri) is None:
            return None
        with self.lock():
            current = int(self.dataset(name).version) if self.exists(name) else 0
            if current != version:
                return None
            if rows.num_rows == 0:
                return version
            tbl = self.ensure(name)
            tbl.add(_conform(rows, tbl.schema), on_bad_vectors="null")  # see insert_new
            return int(tbl.version)

    def upsert(self, name: str, rows: pa.Table) -> None:
        """Insert rows, replacing rows with the same key."""
        if rows.num_rows == 0:
            return
        with self.lock():
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
        with self.lock():
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

    def delete(self, name: str, where: str) -> int:
        """Delete the rows of ``name`` matching SQL ``where`` in one commit; return how many."""
        with self.lock():
            tbl = self.table(name)
            before = tbl.count_rows()
            tbl.delete(where)
            return before - int(self.table(name).count_rows())

    def add_columns(self, name: str, fields: list[pa.Field]) -> list[str]:
        """Add missing nullable columns (schema evolution); return the names added.

        A column that exists with another type is an error: a model with another output
        width needs a new column or an explicit drop, never a silent overwrite.
        """
        with self.lock():
            tbl = self.table(name)
            have = {f.name: f for f in tbl.schema}
            missing = []
            for field in fields:
                if field.name not in have:
                    missing.append(field)
                elif have[field.name].type != field.type:
                    raise ConfigError(
                        f"{name}.{field.name} holds {have[field.name].type}, the new output "
                        f"is {field.type}: write to another column or drop this one first"
                    )
            if missing:
                tbl.add_columns(pa.schema(missing))
        return [f.name for f in missing]

    def drop_columns(self, name: str, columns: Iterable[str]) -> list[str]:
        """Drop those of ``columns`` that ``name`` has (one commit, metadata only: the
        older versions keep them); return the names dropped."""
        with self.lock():
            tbl = self.table(name)
            present = [c for c in columns if c in tbl.schema.names]
            if present:
                tbl.drop_columns(present)
        return present

    # -- versions -------------------------------------------------------------------------
    def versions(self, name: str) -> list[dict[str, Any]]:
        """Versions of a table, oldest first, with their timestamp, row count and tags."""
        ds = self.dataset(name)
        tags: dict[int, list[str]] = {}
        for tag, info in ds.tags.list().items():
            tags.setdefault(int(info["version"]), []).append(tag)
        out = []
        for v in ds.versions():
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
        with self.lock():
            for name in tables:
                if not self.exists(name):
                    continue
                tbl = self.table(name)
                tbl.tags.create(tag, tbl.version)
                tagged[name] = int(tbl.version)
        return tagged

    def current_versions(self) -> dict[str, int]:
        """Current version of every data table."""
        return {n: int(self.dataset(n).version) for n in (MEDIA, SAMPLES) if self.exists(n)}

    # -- runs -----------------------------------------------------------------------------
    def record_run(self, run: dict[str, Any]) -> None:
        """Write (or update) the run's record in the ``runs`` table.

        A run that starts (status ``running``) also records as ``killed`` the runs still
        ``running`` whose process is gone (see :mod:`lake.runs`). That read and the write
        hold the writer lock together, so a row another job finished in between is never
        written back as ``killed``.
        """
        with self.lock():
            rows = [run]
            if run.get("status") == runs_mod.RUNNING:
                rows += [
                    {**r, "status": runs_mod.KILLED}
                    for r in self._stored_runs()
                    if r["run_id"] != run.get("run_id")
                    and runs_mod.effective_status(r) == runs_mod.KILLED
                ]
            table = []
            for r in rows:
                row = {f.name: r.get(f.name) for f in SCHEMAS[RUNS]}
                for key in ("inputs", "counts", "versions"):
                    if row[key] is not None and not isinstance(row[key], str):
                        row[key] = json.dumps(row[key], sort_keys=True, default=str)
                table.append(row)
            self.upsert(RUNS, pa.Table.from_pylist(table, schema=SCHEMAS[RUNS]))

    def runs(self) -> list[dict[str, Any]]:
        """Every run record, oldest first (``killed`` for a ``running`` one whose process
        is gone)."""
        rows = [{**r, "status": runs_mod.effective_status(r)} for r in self._stored_runs()]
        return sorted(rows, key=lambda r: r["started_at"])

    def _stored_runs(self) -> list[dict[str, Any]]:
        if not self.exists(RUNS):
            return []
        return self.dataset(RUNS).to_table().to_pylist()


BLOB_FIELD_METADATA = {b"lance-encoding:blob": b"true"}


def is_blob(field: pa.Field) -> bool:
    """Whether ``field`` is a Lance blob column (bytes read lazily through ``open_blob``)."""
    # Once lance registers its extension types the table reports an ExtensionType;
    # before that, the same column comes back as a struct carrying the extension name.
    if isinstance(field.type, pa.ExtensionType):
        return field.type.extension_name.startswith("lance.blob")
    meta = field.metadata or {}
    return meta.get(b"lance-encoding:blob") == b"true" or meta.get(
        b"ARROW:extension:name", b""
    ).startswith(b"lance.blob")


def _str_dict(meta: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in meta.items()}


def _with_primary_key(name: str) -> pa.Schema:
    """Table ``name``'s schema with its key declared a Lance (unenforced) primary key."""
    schema = SCHEMAS[name]
    i = schema.get_field_index(KEYS[name])
    field = schema.field(i)
    return schema.set(i, field.with_metadata({**(field.metadata or {}), **PRIMARY_KEY_METADATA}))


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder and cast ``rows`` to ``schema``; columns missing from rows become nulls.

    Blob columns are written as plain large binaries with the blob encoding marker (the
    table reports them as Lance's blob extension type, which is not a cast target).
    """
    cols, fields = [], []
    for field in schema:
        if is_blob(field):
            field = pa.field(field.name, pa.large_binary(), metadata=BLOB_FIELD_METADATA)
        if field.name in rows.column_names:
            cols.append(rows.column(field.name).cast(field.type))
        else:
            cols.append(pa.nulls(rows.num_rows, field.type))
        fields.append(field)
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))
