"""``lakeloom compact``: compact fragments and remove old versions, keeping what matters.

Every lake write is one Lance commit: many small writes leave many small fragments (slow
scans) and many versions whose files stay on disk. For each table (``media``, ``samples``,
``runs``) this job

1. **compacts** the fragments (``LanceDataset.optimize.compact_files``: merges small
   fragments, materialises deleted rows; indices are remapped, and with
   ``optimize_indices`` rows not yet indexed are added to the existing indices). The rows
   are unchanged; compaction only commits a new version.
2. **removes old versions** (``cleanup_old_versions``): a version is removed when it is
   older than ``retention_days`` and none of these holds:

   - it is the latest version (never removed);
   - it is **tagged**. Every job tags the versions it produced with its run id
     (:meth:`lake.store.Lake.tag`), which is how ``lakeloom versions`` and the ``runs``
     table say what each job produced, so tagged versions are kept by default. With
     ``drop_old_tags`` the tags of versions older than the retention are deleted first
     (the ``runs`` records stay, those versions can then no longer be opened);
   - **DVC still references it** (``keep_dvc``): by default the head version of every
     DVC-tracked lake state, in ``dvc.lock`` / ``.dvc`` files or in the local DVC cache
     (``dvc_versions=all``: every version such a state lists). The exact rule is in
     :func:`dvc_scan`. A table whose tracked state has no listing in the local cache keeps
     all its versions.

   The exact list of removable versions is passed to Lance (``versions=``) together with
   ``older_than`` and ``error_if_tagged_old_versions=False``, so Lance itself also
   re-checks the age and skips tagged versions. A protected version keeps every data file
   it needs and stays readable: ``Lake(uri).table("samples", version=N)``.

**Prediction, growth.** Before writing anything each table's outcome is predicted
(:func:`predict`): the compacted files are measured by compacting a throwaway shallow
clone in the system temp folder (exact sizes; it costs the compaction's writes), and the
cleanup's deletions are the files that only removed versions read. Compaction adds the
merged fragments while a version that is kept (tagged, DVC-referenced, younger than the
retention) still reads the old ones, so it can *grow* a table: the report's ``growth``
says by how much and which versions hold the old fragments, and a warning is logged
before anything runs. Growth held by tagged or DVC-referenced versions is lasting: that
table's compaction is skipped (its cleanup still runs) unless ``allow_growth``. Growth
held only by young versions passes once they age out: the table is compacted, with the
warning.

``dry_run`` changes nothing (no compaction, no cleanup, no tags, no ``runs`` record): it
reports that prediction (versions, fragments, bytes after, removed versions), which is what
the real run then does. A real run records itself in ``runs`` and tags the versions it
produced, like every job.

Removing versions while another process still reads one of them breaks that reader
(Lance's own caveat): run it when no job is writing or reading old versions, and keep
``delete_unverified`` false unless no other process can be writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lake.errors import ConfigError, LakeloomError
from lake.job import RunContext, hydra_job, run_record
from lake.lineage import ensure_indexes
from lake.schema import MEDIA, RUNS, SAMPLES
from lake.storage import file_sizes, is_remote, join, remove_tree
from lake.store import Lake

log = logging.getLogger("lakeloom.compact")

TABLES = (MEDIA, SAMPLES, RUNS)
LANCE_DEFAULT_ROWS_PER_FRAGMENT = 1024 * 1024

_U64_MAX = 2**64 - 1
_MANIFEST = re.compile(r"^(?P<table>[^/]+)\.lance/_versions/(?P<stem>\d+)\.manifest$")
_OWN_MANIFEST = re.compile(r"^_versions/(?P<stem>\d+)\.manifest$")
_ANY_MANIFEST = re.compile(r"(?:^|/)_versions/(?P<stem>\d+)\.manifest$")


# -- Lance manifests -------------------------------------------------------------------------
def manifest_version(stem: str) -> int:
    """Version number of a Lance manifest file ``_versions/<stem>.manifest``.

    Lance has two naming schemes: V1 writes ``<version>.manifest``; V2 (the default of the
    installed pylance) writes ``u64::MAX - version`` zero-padded to 20 digits, so that
    the newest version sorts first (version 1 is ``18446744073709551614.manifest``).
    """
    number = int(stem)
    if len(stem) == 20 and number > 2**63:
        return _U64_MAX - number
    return number


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _lake_tables(lake_dir: Path) -> dict[str, Path]:
    if not lake_dir.is_dir():
        return {}
    return {p.name[: -len(".lance")]: p for p in lake_dir.glob("*.lance") if p.is_dir()}


def lake_manifests(lake_dir: str | Path) -> dict[str, tuple[str, int]]:
    """md5 of every manifest in the lake -> (table, version)."""
    out: dict[str, tuple[str, int]] = {}
    for table, folder in _lake_tables(Path(lake_dir)).items():
        for path in (folder / "_versions").glob("*.manifest"):
            out[_md5(path)] = (table, manifest_version(path.stem))
    return out


# -- DVC -------------------------------------------------------------------------------------
@dataclass
class DvcRefs:
    """What DVC references in a lake: versions per table, where from, what is unreadable."""

    root: Path | None
    versions: dict[str, set[int]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    # tables whose tracked state has no listing in the local cache: their versions are
    # unknown, so the cleanup leaves those tables alone
    unknown: dict[str, list[str]] = field(default_factory=dict)


def find_dvc_root(start: str | Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds a ``.dvc`` folder."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def dvc_cache_dir(repo_root: str | Path) -> Path:
    """The local DVC cache (``cache.dir`` of ``.dvc/config.local`` / ``.dvc/config``)."""
    dvc_dir = Path(repo_root) / ".dvc"
    for name in ("config.local", "config"):
        conf = dvc_dir / name
        if not conf.is_file():
            continue
        section = ""
        for raw in conf.read_text().splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line.strip("[]").strip().strip("'\"")
            elif section == "cache" and "=" in line:
                key, value = (s.strip() for s in line.split("=", 1))
                if key == "dir" and value:
                    return (dvc_dir / value).resolve()
    return dvc_dir / "cache"


def _cache_file(cache: Path, md5: str, legacy: bool) -> Path:
    md5 = md5.strip()
    base = cache if legacy else cache / "files" / "md5"
    return base / md5[:2] / md5[2:]


def _read_listing(path: Path) -> list[dict[str, str]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) else None


def _tracked(repo_root: Path) -> Iterator[tuple[Path, Mapping[str, Any], str]]:
    """(folder the paths are relative to, entry, source) for the outs and deps of dvc.lock."""
    import yaml

    lock = repo_root / "dvc.lock"
    if not lock.is_file():
        return
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        msg = f"cannot read {lock} (compact.keep_dvc=false ignores DVC): {exc}"
        raise ConfigError(msg) from exc
    for stage in (data.get("stages") or {}).values():
        for kind in ("outs", "deps"):
            for entry in stage.get(kind) or []:
                if isinstance(entry, Mapping) and entry.get("path") and entry.get("md5"):
                    yield repo_root, entry, "dvc.lock"


def _dvc_files(repo_root: Path, lake_dir: Path) -> list[Path]:
    """``.dvc`` files that can track the lake: in it, beside it, beside a parent in the repo."""
    if _rel(lake_dir, repo_root) is None:
        return []
    folders = [lake_dir]
    for folder in (lake_dir, *lake_dir.parents):
        if folder == repo_root:
            break
        folders.append(folder.parent)
    found = [f for folder in folders if folder.is_dir() for f in sorted(folder.glob("*.dvc"))]
    return [f for f in dict.fromkeys(found) if f.is_file()]


def _tracked_dvc_files(
    repo_root: Path, lake_dir: Path
) -> Iterator[tuple[Path, Mapping[str, Any], str]]:
    import yaml

    for dvc_file in _dvc_files(repo_root, lake_dir):
        try:
            data = yaml.safe_load(dvc_file.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        outs = data.get("outs") if isinstance(data, Mapping) else None
        for entry in outs or []:
            if isinstance(entry, Mapping) and entry.get("path") and entry.get("md5"):
                yield dvc_file.parent, entry, str(dvc_file.relative_to(repo_root))


def _rel(path: Path, base: Path) -> str | None:
    try:
        rel = path.relative_to(base).as_posix()
    except ValueError:
        return None
    return "" if rel == "." else rel


def dvc_scan(
    repo_root: str | Path | None,
    lake_dir: str | Path,
    scan_cache: bool = True,
    heads_only: bool = True,
) -> DvcRefs:
    """Every lake version that DVC references, with where each reference comes from.

    DVC tracks the lake (or its ``<table>.lance`` folders) as directories: a tracked state
    is a ``<md5>.dir`` listing in the DVC cache (``files/md5/<2>/<rest>``, or ``<2>/<rest>``
    for DVC 2 entries), a JSON list of ``{relpath, md5}`` that includes the table's version
    manifests ``_versions/<name>.manifest``. A state *references* a table's **head**: the
    highest version it lists, which is what the table reads as when that state is checked
    out. The older manifests a state happens to carry are history that ``dvc checkout``
    restores from the cache anyway; with ``heads_only=False`` every listed version is
    protected instead (a lake that was ever committed then keeps all those versions).

    A version of table ``T`` is protected when either holds:

    1. **Tracked now**: ``dvc.lock`` at ``repo_root`` (the outs and deps of every stage) or
       a ``.dvc`` file beside the lake, beside one of its parents up to ``repo_root``, or
       inside the lake, tracks the lake folder, a folder containing it, or a folder or file
       inside it, and that entry's listing lists ``T.lance/_versions/<name>.manifest``
       (resolved against the tracked path, matched by file name; a single tracked manifest
       file counts too). A tracked entry whose listing is not in the local cache leaves its
       tables' references unknown: they are reported under ``unknown`` and the cleanup
       leaves those tables alone.
    2. **Restorable from the local cache** (``scan_cache``): any ``.dir`` listing in the
       local DVC cache (a lake state committed earlier, which ``dvc checkout`` of an older
       commit brings back) lists a manifest whose md5 is the md5 of ``T``'s manifest of that
       version in the lake: a byte-identical manifest, so the same table state, whatever
       path it was tracked under.

    Lake states recorded only in git history or on a DVC remote, whose listing is not in the
    local cache, are not seen (``dvc fetch`` brings those listings into the cache).
    """
    lake = Path(lake_dir).resolve()
    root = Path(repo_root).resolve() if repo_root is not None else find_dvc_root(lake)
    refs = DvcRefs(root)
    tables = _lake_tables(lake)
    refs.versions = {t: set() for t in tables}
    if root is None or not (root / ".dvc").is_dir():
        return refs
    cache = dvc_cache_dir(root)
    for base, entry, source in [*_tracked(root), *_tracked_dvc_files(root, lake)]:
        tracked = (base / str(entry["path"])).resolve()
        inside = _rel(tracked, lake)  # tracked path relative to the lake, if inside it
        above = _rel(lake, tracked)  # lake relative to the tracked path, if it contains it
        if inside is None and above is None:
            continue
        md5 = str(entry["md5"])
        if not md5.endswith(".dir"):  # a single tracked file: a manifest itself?
            match = _MANIFEST.match(inside or "")
            if match and match["table"] in tables:
                refs.versions[match["table"]].add(manifest_version(match["stem"]))
                refs.sources.append(f"{source}: {entry['path']}")
            continue
        top = inside.split("/")[0] if inside else None
        covered = [t for t in tables if top is None or top == f"{t}.lance"]
        listing = _read_listing(_cache_file(cache, md5, legacy=entry.get("hash") != "md5"))
        if listing is None:  # DVC 2 entries have no `hash: md5`; try both layouts
            listing = _read_listing(_cache_file(cache, md5, legacy=entry.get("hash") == "md5"))
        if listing is None:
            for t in covered:
                refs.unknown.setdefault(t, []).append(f"{source}: {entry['path']} ({md5})")
            continue
        refs.sources.append(f"{source}: {entry['path']} ({md5})")
        listed: dict[str, set[int]] = {}
        for item in listing:
            relpath = str(item.get("relpath", ""))
            if not relpath.endswith(".manifest"):
                continue
            if inside is not None:
                full = f"{inside}/{relpath}" if inside else relpath
            else:
                prefix = f"{above}/" if above else ""
                if not relpath.startswith(prefix):
                    continue
                full = relpath[len(prefix) :]
            match = _MANIFEST.match(full)
            if match and match["table"] in tables:
                listed.setdefault(match["table"], set()).add(manifest_version(match["stem"]))
        for table, versions in listed.items():
            refs.versions[table] |= {max(versions)} if heads_only else versions
    if scan_cache:
        _scan_cache(cache, lake, refs, heads_only)
    return refs


def _cache_listings(cache: Path) -> Iterator[Path]:
    for base in (cache / "files" / "md5", cache):
        if not base.is_dir():
            continue
        for sub in sorted(base.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                with os.scandir(sub) as it:
                    for e in it:
                        if e.name.endswith(".dir") and e.is_file():
                            yield Path(e.path)


def _scan_cache(cache: Path, lake: Path, refs: DvcRefs, heads_only: bool) -> None:
    manifests: dict[str, tuple[str, int]] | None = None
    for path in _cache_listings(cache):
        listing = _read_listing(path)
        if not listing:
            continue
        # manifests per Lance dataset folder in the listing: prefix -> [(version, md5)]
        groups: dict[str, list[tuple[int, str]]] = {}
        for item in listing:
            match = _ANY_MANIFEST.search(str(item.get("relpath", "")))
            if match and item.get("md5"):
                prefix = str(item["relpath"])[: match.start()]
                groups.setdefault(prefix, []).append(
                    (manifest_version(match["stem"]), str(item["md5"]))
                )
        if not groups:
            continue
        if manifests is None:
            manifests = lake_manifests(lake)
        found = False
        for entries in groups.values():
            for _version, md5 in [max(entries)] if heads_only else entries:
                if md5 in manifests:
                    table, version = manifests[md5]
                    refs.versions.setdefault(table, set()).add(version)
                    found = True
        if found:
            refs.sources.append(f"cache: {path.relative_to(cache).as_posix()}")


def dvc_referenced_versions(
    repo_root: str | Path | None, lake_dir: str | Path, heads_only: bool = True
) -> dict[str, set[int]]:
    """Versions of each lake table that DVC still references (rule: :func:`dvc_scan`)."""
    return dvc_scan(repo_root, lake_dir, heads_only=heads_only).versions


# -- compaction and cleanup --------------------------------------------------------------------
def _table_uri(lake: Lake, name: str) -> str:
    return join(lake.uri, f"{name}.lance")


def _listing(lake: Lake, name: str) -> dict[str, int]:
    """Every file of table ``name`` (path relative to the table -> bytes): one listing,
    on local disk or object storage alike."""
    return file_sizes(_table_uri(lake, name), lake.storage_options)


def _latest(lake: Lake, name: str) -> Any:
    """The table's dataset at its newest committed version (a cached handle may lag)."""
    ds = lake.dataset(name)
    newest = int(ds.latest_version)
    return ds if int(ds.version) == newest else ds.checkout_version(newest)


def _table_state(lake: Lake, name: str) -> dict[str, Any]:
    ds = _latest(lake, name)
    return {
        "version": int(ds.version),
        "versions": len(ds.versions()),
        "fragments": len(ds.get_fragments()),
        "rows": int(ds.count_rows()),
        "bytes": sum(_listing(lake, name).values()),
    }


def _compaction_options(
    target_rows_per_fragment: int, max_bytes_per_file: int | None
) -> dict[str, Any]:
    opts: dict[str, Any] = {"target_rows_per_fragment": int(target_rows_per_fragment)}
    if max_bytes_per_file:
        opts["max_bytes_per_file"] = int(max_bytes_per_file)
    return opts


def _compact(
    ds: Any,
    opts: dict[str, Any],
    dry_run: bool,
    optimize_indices: bool,
    storage_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    from lance.optimize import Compaction

    if dry_run:
        plan = Compaction.plan(ds, opts)
        rewrite = [f for task in plan.tasks for f in task.fragments]
        rows = sum(int(f.physical_rows or 0) for f in rewrite)
        target = int(opts["target_rows_per_fragment"])
        new = sum(
            max(1, math.ceil(sum(int(f.physical_rows or 0) for f in t.fragments) / target))
            for t in plan.tasks
        )
        return {
            "tasks": plan.num_tasks(),
            "fragments_rewritten": len(rewrite),
            "rows": rows,
            "fragments_added": new if rewrite else 0,
            "fragment_ids": sorted({int(f.id) for f in rewrite}),
        }
    metrics = ds.optimize.compact_files(**opts)
    out = {
        "fragments_removed": int(metrics.fragments_removed),
        "fragments_added": int(metrics.fragments_added),
        "files_removed": int(metrics.files_removed),
        "files_added": int(metrics.files_added),
        "indices_optimized": False,
    }
    if optimize_indices and metrics.fragments_removed:
        from lance import dataset as open_dataset

        fresh = open_dataset(ds.uri, storage_options=storage_options or None)
        if fresh.describe_indices():
            fresh.optimize.optimize_indices()
            out["indices_optimized"] = True
    return out


def _version_files(ds: Any, version: int) -> set[str]:
    """Data and deletion files (paths relative to the table) that one version reads."""
    out: set[str] = set()
    for frag in ds.checkout_version(version).get_fragments():
        md = frag.metadata
        out.update(f"data/{f.path}" for f in md.files)
        if md.deletion_file is not None:
            out.add(str(md.deletion_file.path(md.id)))
    return out


def _own_files(listing: Mapping[str, int], ds: Any, version: int) -> set[str]:
    """The manifest and transaction file of one version (``listing``: the table's files)."""
    out = {
        rel
        for rel in listing
        if (m := _OWN_MANIFEST.match(rel)) and manifest_version(m["stem"]) == version
    }
    with contextlib.suppress(Exception):  # a version written without a transaction file
        txn = ds.read_transaction(version)
        if txn is not None:
            out.add(f"_transactions/{txn.read_version}-{txn.uuid}.txn")
    return out


def _sizes(listing: Mapping[str, int], paths: Iterable[str]) -> int:
    return sum(listing.get(rel, 0) for rel in paths)


@contextlib.contextmanager
def _scratch(lake: Lake) -> Iterator[str]:
    """A throwaway folder for a clone: the system temp folder for a local lake; on object
    storage a prefix inside the lake (a clone must reach the table's files), removed after."""
    import tempfile
    import uuid

    if not is_remote(lake.uri):
        with tempfile.TemporaryDirectory(prefix="lakeloom-compact-") as tmp:
            yield tmp
        return
    # no ".lance" suffix: LanceDB never lists it as a table while it exists
    tmp = join(lake.uri, f"_lakeloom_tmp/compact-{uuid.uuid4().hex}")
    try:
        yield tmp
    finally:
        remove_tree(tmp, lake.storage_options)


def _measure_compaction(ds: Any, opts: dict[str, Any], lake: Lake) -> dict[str, int]:
    """What the compaction adds, measured on a throwaway shallow clone.

    The clone (see :func:`_scratch`) reads the table's files in place and receives
    the compacted files, manifests and transactions, so their sizes are exact; the table
    itself is not touched. It costs what the compaction's writes cost. Lance commits the
    compaction as two versions (fragment ids reserved, then the rewrite): ``transient`` is
    the manifest and transaction of every version but the last, which the cleanup removes.
    """
    import lance

    so = lake.storage_options or None
    with _scratch(lake) as tmp:
        target = join(tmp, "clone.lance")
        ds.checkout_version(int(ds.version)).shallow_clone(
            target, int(ds.version), storage_options=so
        )
        before = file_sizes(target, so)
        first = int(lance.dataset(target, storage_options=so).version)
        lance.dataset(target, storage_options=so).optimize.compact_files(**opts)
        clone = lance.dataset(target, storage_options=so)
        after = file_sizes(target, so)
        added = sum(size for p, size in after.items() if p not in before)
        added += sum(after[p] - before[p] for p in before if p in after)
        middle = range(first + 1, int(clone.version))
        transient = _sizes(after, {f for v in middle for f in _own_files(after, clone, v)})
        return {
            "added": added,
            "transient": transient,
            "versions": int(clone.version) - first,
            "fragments": len(clone.get_fragments()),
        }


def predict(
    lake: Lake,
    name: str,
    ds: Any,
    rewrite: set[int],
    remove: list[int],
    kept: Iterable[int],
    added: int,
) -> dict[str, Any]:
    """Bytes on disk after compaction (rewriting fragments ``rewrite``) and cleanup.

    The compacted version reads the latest version's files minus those of the rewritten
    fragments, plus ``added`` bytes of new files. The cleanup deletes the manifests and
    transactions of the ``remove`` versions and every data or deletion file that only they
    read: a file that a ``kept`` version (tagged, DVC-referenced, younger than the
    retention) still reads stays, and that is how a compaction can grow a table.
    """
    listing = _listing(lake, name)
    latest = int(ds.version)
    files = {v: _version_files(ds, v) for v in {*remove, *kept, latest}}
    rewritten = {
        f"data/{f.path}"
        for frag in ds.get_fragments()
        if frag.fragment_id in rewrite
        for f in frag.metadata.files
    }
    rewritten |= {
        str(frag.metadata.deletion_file.path(frag.fragment_id))
        for frag in ds.get_fragments()
        if frag.fragment_id in rewrite and frag.metadata.deletion_file is not None
    }
    live = files[latest] - rewritten if rewrite else files[latest]
    keep = set(live)
    for v in kept:
        keep |= files[v]
    gone: set[str] = set()
    for v in remove:
        gone |= (files[v] - keep) | _own_files(listing, ds, v)
    held = {v: _sizes(listing, files[v] & rewritten) for v in kept if files[v] & rewritten}
    removed = _sizes(listing, gone)
    return {
        "bytes_added": int(added) if rewrite else 0,
        "bytes_removed": removed,
        "held_by": held,  # version -> bytes of rewritten fragments it keeps on disk
        "held_bytes": _sizes(
            listing, rewritten & set().union(*[files[v] for v in held] or [set()])
        ),
    }


def _main_tags(ds: Any) -> dict[str, int]:
    tags = {}
    for tag, info in ds.tags.list().items():
        branch = info.get("branch") if isinstance(info, Mapping) else None
        if branch in (None, "", "main"):
            tags[str(tag)] = int(info["version"])
    return tags


def compact_table(
    lake: Lake,
    name: str,
    retention_days: float,
    keep_versions: Iterable[int] | None = None,
    *,
    dry_run: bool = False,
    target_rows_per_fragment: int = LANCE_DEFAULT_ROWS_PER_FRAGMENT,
    max_bytes_per_file: int | None = None,
    drop_old_tags: bool = False,
    delete_unverified: bool = False,
    optimize_indices: bool = True,
    skip_cleanup: str | None = None,
    allow_growth: bool = False,
) -> dict[str, Any]:
    """Compact one table, then remove its unprotected versions older than the retention.

    ``keep_versions`` are protected (DVC references); the latest and tagged versions are
    always protected (tags of old versions are dropped first with ``drop_old_tags``).
    ``skip_cleanup`` (a reason) compacts but removes no version. Before anything is
    written the outcome is predicted (:func:`predict`); when the compaction would leave
    the table larger than now, because protected versions keep the fragments it rewrites,
    it is skipped (the cleanup still runs) unless ``allow_growth``; either way the report
    says so under ``growth``.
    """
    # the writer lock: a write during compaction would break the row-count check and
    # conflict with the rewrite (see lake/lock.py); a dry run writes nothing, not even
    # the lock file's holder record
    with contextlib.nullcontext() if dry_run else lake.lock():
        before = _table_state(lake, name)
        opts = _compaction_options(target_rows_per_fragment, max_bytes_per_file)
        ds = _latest(lake, name)
        plan = _compact(ds, opts, True, optimize_indices)
        rewrite = set(plan.pop("fragment_ids"))
        stamps = {int(v["version"]): v["timestamp"] for v in ds.versions()}
        latest = int(ds.version)
        retention = timedelta(days=float(retention_days))
        # Lance's version timestamps are naive local times: compare with the local clock
        cutoff = datetime.now() - retention
        tags = _main_tags(ds)
        dropped = [
            tag
            for tag, version in sorted(tags.items())
            if drop_old_tags and version != latest and stamps.get(version, cutoff) < cutoff
        ]
        tagged = {v for t, v in tags.items() if t not in dropped}
        dvc = {int(v) for v in keep_versions or ()} & set(stamps)

        def plan_cleanup(compacts: bool) -> tuple[list[int], list[int]]:
            """(versions removed, versions kept besides the new latest)."""
            head = None if compacts else latest
            old = [v for v, ts in sorted(stamps.items()) if v != head and ts < cutoff]
            remove = [] if skip_cleanup else [v for v in old if v not in tagged | dvc]
            return remove, [v for v in stamps if v not in remove and v != head]

        compacts = bool(rewrite)
        remove, kept = plan_cleanup(compacts)
        guess = predict(lake, name, ds, rewrite, remove, kept, 0)
        measured = {"added": 0, "transient": 0, "versions": 1, "fragments": before["fragments"]}
        if compacts and (dry_run or guess["held_by"]):
            measured = _measure_compaction(ds, opts, lake)
            guess["bytes_added"] = measured["added"]  # all the measurement changes
        # the compaction's own intermediate versions go in this run only with retention 0
        transient = compacts and not skip_cleanup and float(retention_days) == 0
        if transient:
            guess["bytes_removed"] += measured["transient"]
        growth = guess["bytes_added"] - guess["bytes_removed"]
        grow: dict[str, Any] = {}
        if compacts and growth > 0 and guess["held_by"]:
            held = set(guess["held_by"])
            why = {
                "tagged": sorted(held & tagged),
                "dvc": sorted((held & dvc) - tagged),
                "young": sorted(held - tagged - dvc),
            }
            # versions younger than the retention let their files go at a later run;
            # tagged and DVC-referenced ones keep them for good
            lasting = bool(why["tagged"] or why["dvc"])
            grow = {
                "bytes": growth,
                "held_bytes": guess["held_bytes"],
                "held_by": why,
                "skipped": lasting and not allow_growth,
            }
            log.warning("%s", _growth_text(name, grow))
            if grow["skipped"]:
                compacts = False
                remove, kept = plan_cleanup(False)
                guess = predict(lake, name, ds, set(), remove, kept, 0)
                transient = False

        if dry_run or not compacts:
            compaction = dict(plan) if compacts else {"skipped": True, **plan}
        else:
            compaction = _compact(ds, opts, False, optimize_indices, lake.storage_options)
        ds = _latest(lake, name)  # after compaction
        if not dry_run and compacts and not skip_cleanup:
            # the versions the compaction committed before its last one (reserved ids)
            limit = datetime.now() - retention
            remove += [
                int(v["version"])
                for v in ds.versions()
                if int(v["version"]) not in stamps
                and int(v["version"]) != int(ds.version)
                and v["timestamp"] < limit
            ]
        rows = int(ds.count_rows())
        if rows != before["rows"]:
            raise LakeloomError(
                f"{name}: compaction changed the row count {before['rows']} -> {rows}"
            )
        if not dry_run:
            for tag in dropped:
                ds.tags.delete(tag)
        cleanup: dict[str, Any] = {}
        if skip_cleanup:
            cleanup = {"skipped": skip_cleanup}
        elif remove:
            kwargs: dict[str, Any] = {
                "older_than": retention,
                "versions": remove,
                "delete_unverified": bool(delete_unverified),
                "error_if_tagged_old_versions": False,
            }
            if dry_run:
                stats = ds.explain_cleanup_old_versions(**kwargs).stats
            else:
                stats = ds.cleanup_old_versions(**kwargs)
            cleanup = {
                k: int(getattr(stats, k))
                for k in ("old_versions", "bytes_removed", "data_files_removed", "failed_deletes")
            }
        predicted = {
            "versions": len(stamps)
            - len(remove)
            + (measured["versions"] if compacts else 0)
            - (measured["versions"] - 1 if transient else 0),
            "fragments": measured["fragments"] if compacts else before["fragments"],
            "bytes": before["bytes"] + guess["bytes_added"] - guess["bytes_removed"],
        }
        if dry_run:  # what would be left
            after = predicted
        else:
            after = _table_state(lake, name)
            remove = sorted(
                set(stamps) - {int(v["version"]) for v in _latest(lake, name).versions()}
            )
        new_latest = (
            int(ds.version) if not dry_run else latest + (measured["versions"] if compacts else 0)
        )
        report: dict[str, Any] = {
            "rows": rows,
            "versions_before": before["versions"],
            "versions_after": after["versions"],
            "fragments_before": before["fragments"],
            "fragments_after": after["fragments"],
            "bytes_before": before["bytes"],
            "bytes_after": after["bytes"],
            "bytes_predicted": predicted["bytes"],
            "latest": new_latest,
            "removed_versions": remove,
            "protected": {
                "latest": new_latest,
                "tagged": sorted(v for v in tagged if v in stamps and v != new_latest),
                "dvc": sorted(dvc),
            },
            "kept_young": sum(1 for ts in stamps.values() if ts >= cutoff),
            "dropped_tags": dropped,
            "compaction": compaction,
            "cleanup": cleanup,
            "growth": grow,
        }
        return report


def _growth_text(name: str, grow: Mapping[str, Any]) -> str:
    """Why compacting ``name`` would grow it, and what it does about that."""
    held = grow["held_by"]
    who = "; ".join(
        f"{label} versions {_versions_text(held[key])}"
        for key, label in (("tagged", "tagged"), ("dvc", "DVC-referenced"), ("young", "young"))
        if held[key]
    )
    if grow["skipped"]:
        action = (
            "compaction skipped (compact.allow_growth=true compacts anyway; "
            "compact.drop_old_tags=true releases tagged versions older than the retention)"
        )
    elif held["tagged"] or held["dvc"]:
        action = "compacting anyway (compact.allow_growth=true)"
    else:
        action = "compacting: a later run frees them once those versions pass the retention"
    return (
        f"{name}: compaction would grow the table by {_size(grow['bytes'])}: {who} keep the "
        f"{_size(grow['held_bytes'])} of fragments it rewrites; {action}"
    )


def compact_lake(
    lake: Lake,
    retention_days: float = 7,
    keep_versions: Mapping[str, Iterable[int]] | None = None,
    dry_run: bool = False,
    target_rows_per_fragment: int = LANCE_DEFAULT_ROWS_PER_FRAGMENT,
    *,
    tables: Iterable[str] = TABLES,
    max_bytes_per_file: int | None = None,
    drop_old_tags: bool = False,
    delete_unverified: bool = False,
    optimize_indices: bool = True,
    unknown: Mapping[str, list[str]] | None = None,
    allow_growth: bool = False,
) -> dict[str, Any]:
    """Compact every table of the lake and remove its old unprotected versions.

    ``keep_versions`` maps a table to versions that must survive (e.g. from
    :func:`dvc_referenced_versions`); ``None`` protects nothing beyond the latest and the
    tagged versions. ``unknown`` maps tables whose DVC references could not be read to the
    reasons; those tables are compacted but keep all their versions. ``allow_growth``
    compacts a table even where protected versions would keep the old fragments (see
    :func:`compact_table`). Returns the report (per table: rows, versions, fragments and
    bytes before/after and predicted, protected and removed versions, growth).
    """
    if float(retention_days) < 0:
        raise ConfigError(f"compact.retention_days must be >= 0, got {retention_days}")
    if int(target_rows_per_fragment) < 1:
        raise ConfigError("compact.target_rows_per_fragment must be >= 1")
    keep = {k: set(v) for k, v in (keep_versions or {}).items()}
    report: dict[str, Any] = {
        "lake": lake.uri,
        "retention_days": float(retention_days),
        "dry_run": bool(dry_run),
        "tables": {},
    }
    for name in tables:
        if not lake.exists(name):
            continue
        reasons = (unknown or {}).get(name)
        skip = "DVC state not in the local cache: " + "; ".join(reasons) if reasons else None
        report["tables"][name] = compact_table(
            lake,
            name,
            retention_days,
            keep.get(name),
            dry_run=dry_run,
            target_rows_per_fragment=target_rows_per_fragment,
            max_bytes_per_file=max_bytes_per_file,
            drop_old_tags=drop_old_tags,
            delete_unverified=delete_unverified,
            optimize_indices=optimize_indices,
            skip_cleanup=skip,
            allow_growth=allow_growth,
        )
    return report


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _versions_text(versions: list[int], limit: int = 8) -> str:
    if not versions:
        return "-"
    shown = ", ".join(map(str, versions[:limit]))
    return shown + (f", ... ({len(versions)})" if len(versions) > limit else "")


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for the console."""
    head = "dry run: nothing changed; " if report["dry_run"] else ""
    lines = [
        f"{head}lake {report['lake']}, retention {report['retention_days']:g} days",
        f"{'table':<8} {'versions':>11} {'fragments':>11} {'bytes on disk':>23} "
        "protected (tagged | dvc)",
    ]
    for name, t in report["tables"].items():
        p = t["protected"]
        lines.append(
            f"{name:<8} {t['versions_before']:>5}->{t['versions_after']:<5} "
            f"{t['fragments_before']:>5}->{t['fragments_after']:<5} "
            f"{_size(t['bytes_before']):>11}->{_size(t['bytes_after']):<11} "
            f"latest {p['latest']}; {_versions_text(p['tagged'])} | {_versions_text(p['dvc'])}"
        )
        if t["cleanup"].get("skipped"):
            lines.append(f"  cleanup skipped: {t['cleanup']['skipped']}")
        if t["dropped_tags"]:
            lines.append(f"  tags dropped: {', '.join(t['dropped_tags'])}")
        if t.get("growth"):
            lines.append("  " + _growth_text(name, t["growth"]))
    dvc = report.get("dvc")
    if dvc:
        where = dvc["root"] or "no DVC repository found"
        lines.append(f"DVC ({where}): {len(dvc['sources'])} tracked or cached lake states read")
    return "\n".join(lines)


@hydra_job("compact")
def main(cfg: Any) -> int:
    """Hydra entry point: compact the lake, remove old versions, print and record a report."""
    c = cfg.compact
    ctx = RunContext.from_config("compact", cfg)
    lake = Lake.from_config(cfg.lake)
    if not lake.table_names():
        raise ConfigError(f"lake {lake.uri} has no tables")
    dry_run = bool(c.dry_run)
    if str(c.dvc_versions) not in ("head", "all"):
        raise ConfigError(f"compact.dvc_versions must be head or all, got {c.dvc_versions}")
    refs = (
        dvc_scan(
            c.dvc_root,
            lake.uri,
            scan_cache=bool(c.dvc_cache),
            heads_only=str(c.dvc_versions) == "head",
        )
        if c.keep_dvc and not is_remote(lake.uri)
        else DvcRefs(None)  # DVC tracks local lake folders: a lake on object storage has none
    )
    # a dry run writes nothing, not even its run record
    with (
        run_record(lake, ctx, {"dvc_sources": refs.sources})
        if not dry_run
        else contextlib.nullcontext()
    ):
        return _compact_and_record(cfg, lake, ctx, refs, dry_run)


def _compact_and_record(cfg: Any, lake: Lake, ctx: RunContext, refs: DvcRefs, dry_run: bool) -> int:
    """Compact, print the report and (unless a dry run) record the finished run."""
    c = cfg.compact
    report = compact_lake(
        lake,
        retention_days=float(c.retention_days),
        keep_versions=refs.versions,
        dry_run=dry_run,
        target_rows_per_fragment=int(c.target_rows_per_fragment),
        tables=list(c.tables),
        max_bytes_per_file=c.max_bytes_per_file,
        drop_old_tags=bool(c.drop_old_tags),
        delete_unverified=bool(c.delete_unverified),
        optimize_indices=bool(c.optimize_indices),
        unknown=refs.unknown,
        allow_growth=bool(c.allow_growth),
    )
    report["dvc"] = {
        "root": str(refs.root) if refs.root else None,
        "sources": refs.sources,
        "unknown": refs.unknown,
    }
    print(format_report(report))
    if not dry_run:
        indexes = ensure_indexes(lake)  # lakes ingested before the key indexes existed
        if indexes:
            print("indexes: " + ", ".join(f"{k} {v}" for k, v in indexes.items()))
        versions = lake.tag(ctx.run_id)
        counts = {
            n: {
                k: t[k]
                for k in (
                    "versions_before",
                    "versions_after",
                    "fragments_before",
                    "fragments_after",
                    "bytes_before",
                    "bytes_after",
                )
            }
            | {"removed": len(t["removed_versions"])}
            for n, t in report["tables"].items()
        }
        lake.record_run(ctx.record("finished", counts=counts, versions=versions))
    return 0


if __name__ == "__main__":
    main()
