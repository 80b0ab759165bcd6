"""The export runner: ``lakeloom export export=NAME [split=train] out=DIR``.

Writes the selected samples in one training format (the Exporter plugins of
``conf/export/*.yaml``, built-ins in ``plugins/exporters.py``) into the folder ``out``:
the exporter's data file(s), every referenced image once under
``images/<media_id[:2]>/<media_id>.<ext>`` (paths in the records are relative to
``out``) and a hidden manifest ``.lakeloom_export.json`` (exporter, selection, table
versions read, counts, how to ingest it back). Hidden, so the sources never read it.

Selection: ``split`` (``samples.split`` equals it; null = every sample), ``dataset`` and a
``where`` SQL filter, combined with AND. A split no sample has, an unknown dataset, an
invalid filter or an empty selection is an error naming what exists.

Streaming: samples are read with a Lance scanner in batches of ``batch_size`` rows (only
the content columns); each batch's media are read with one filtered scan
``media_id IN (...)`` of the media not yet written, written, and the batch's records are
appended to the exporter's files. Memory: one batch of samples and its media bytes,
plus the relative path of each media already written (to write each image once).
Without a scalar index on ``media.media_id`` each batch's media read scans that column,
so larger batches mean fewer scans.

Atomic: everything is written to a hidden temporary sibling
``.<out>.tmp-<host>-<pid>-<start>-<hex>`` and renamed to ``out`` at the end; an earlier
export at ``out`` is moved aside first and deleted after. A failed export deletes its
temporary folder; a killed one leaves it, and the next export to ``out`` deletes it
(its process is gone, see :mod:`lake.runs`). A crash leaves the old export or none.
``out`` may be missing, an empty folder or an earlier export (it has the manifest);
anything else is refused unless ``force=true``.

Round trip: the media bytes are written unchanged (verified against their sha256), so
``media_ids`` are kept; :meth:`Exporter.readback` states the canonical content the
matching source will read back, and the report counts ``changed_ids``: the samples whose
``sample_id`` will differ after re-ingesting (content the format cannot carry, e.g. a
caption in a conversation format, or a source ``key`` such as ``image_folder``'s path).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from lake import ids, provenance, runs
from lake.errors import ConfigError, FileProblem, LakeloomError
from lake.job import RunContext, hydra_job, run_record
from lake.plugin import Exporter, ExportMedia
from lake.schema import MEDIA, SAMPLES
from lake.sql import and_filters, filter_error, in_list, quote
from lake.store import Lake

log = logging.getLogger("lakeloom.export")

MANIFEST = ".lakeloom_export.json"
IMAGES = "images"
SAMPLE_COLUMNS = ["sample_id", "dataset", *ids.SAMPLE_CONTENT_FIELDS]
# read when the lake has them (older lakes lack columns added since)
OPTIONAL_COLUMNS = ("record_id", "feedback", "rejected_media_ids")
# MIME -> file extension of the exported media (anything else: mimetypes, then "bin")
EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tif",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/x-matroska": "mkv",
    "video/webm": "webm",
    "video/x-msvideo": "avi",
    "audio/flac": "flac",
    "audio/wav": "wav",
}


def selection(
    split: str | None = None, where: str | None = None, dataset: str | None = None
) -> str | None:
    """SQL filter on ``samples`` for a split, a dataset and a free filter (AND-ed)."""
    return and_filters(
        f"split = {quote(split)}" if split is not None else None,
        f"dataset = {quote(dataset)}" if dataset else None,
        where,
    )


def extension(mime: str | None) -> str:
    """File extension (no dot) for a media MIME type."""
    if mime in EXTENSIONS:
        return EXTENSIONS[mime]
    guessed = mimetypes.guess_extension(mime) if mime else None
    return guessed.lstrip(".") if guessed else "bin"


def media_path(media_id: str, mime: str | None) -> str:
    """Where a media object goes, relative to the export folder."""
    return f"{IMAGES}/{media_id[:2]}/{media_id}.{extension(mime)}"


def _listing(counts: dict[str, int], unset: str = "unset") -> str:
    items = sorted(counts.items(), key=lambda kv: (kv[0] == "None", kv[0]))
    return ", ".join(f"{unset if k == 'None' else k} ({n})" for k, n in items)


def _count(samples: Any, where: str | None, what: str) -> int:
    try:
        return int(samples.count_rows(where))
    except Exception as exc:  # Lance reports SQL problems as several exception types
        raise filter_error(what, where, exc) from exc


def check_selection(
    lake: Lake,
    samples: Any,
    split: str | None,
    where: str | None,
    dataset: str | None,
) -> int:
    """Number of selected samples; ConfigError naming what exists when it is zero."""
    if split is not None and _count(samples, selection(split=split), "split") == 0:
        splits = lake.value_counts(SAMPLES, "split")
        if set(splits) <= {"None"}:
            raise ConfigError(
                f"no samples with split {split!r}: the lake has no splits yet (samples.split "
                "is null everywhere); run `lakeloom split`, or export every sample with "
                "split=null"
            )
        raise ConfigError(
            f"no samples with split {split!r}; splits in the lake: {_listing(splits)}"
        )
    if dataset and _count(samples, selection(dataset=dataset), "dataset") == 0:
        names = lake.value_counts(SAMPLES, "dataset")
        raise ConfigError(f"no dataset {dataset!r} in the lake; datasets: {_listing(names)}")
    if where:
        _count(samples, where, "where filter")
    n = _count(samples, selection(split, where, dataset), "selection")
    if n == 0:
        raise ConfigError(
            f"empty selection: no samples match split={split!r}, dataset={dataset!r}, "
            f"where={where!r}"
        )
    return n


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, force: bool, lake: Lake) -> None:
    """Refuse an ``out`` that is neither missing, empty nor an earlier export (unless
    ``force``), and always one that holds the lake or the working directory."""
    full = out.resolve()
    for keep, what in ((Path(lake.uri).resolve(), "the lake"), (Path.cwd(), "the working dir")):
        if _inside(keep, full):
            raise ConfigError(f"out={out} would replace {what} ({keep}); choose another folder")
    if not (out.exists() or out.is_symlink()):
        return
    is_folder = out.is_dir() and not out.is_symlink()
    if is_folder and ((out / MANIFEST).is_file() or not any(out.iterdir())):
        return
    if force:
        return
    what = "a folder" if is_folder else "a link" if out.is_symlink() else "a file"
    raise ConfigError(
        f"out={out} exists and is {what} that is not a lakeloom export (no {MANIFEST}): "
        "choose another folder, or pass force=true to replace it"
    )


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


_TEMP = re.compile(r"\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+|x)-[0-9a-f]+$")


def _host_token() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_folder(out: Path) -> Path:
    """A fresh hidden sibling ``.<out>.tmp-<host>-<pid>-<start>-<hex>`` to write into.

    Host, pid and process start time let a later export tell a folder left by a killed
    export (:func:`remove_stale_temps`) from one another export is still writing.
    """
    me = runs.owner()
    start = me["pid_start"] if me["pid_start"] is not None else "x"
    return (
        out.parent / f".{out.name}.tmp-{_host_token()}-{me['pid']}-{start}-{secrets.token_hex(4)}"
    )


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temporary folders of earlier exports to ``out`` whose process is gone
    (killed: a failed export removes its own); return them."""
    removed = []
    for path in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        m = _TEMP.search(path.name[len(out.name) + 1 :])
        if m is None or m["host"] != _host_token():
            continue
        record = {
            "pid": int(m["pid"]),
            "host": socket.gethostname(),
            "pid_start": None if m["start"] == "x" else int(m["start"]),
        }
        if runs.is_dead(record):
            _remove(path)
            removed.append(path)
            log.info("removed %s, left by a killed export", path)
    return removed


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is moved aside first, then deleted."""
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.rename(out, old)
        os.rename(tmp, out)
        _remove(old)
    else:
        os.rename(tmp, out)


class _MediaWriter:
    """Reads a batch's media with one filtered scan and writes each file once."""

    def __init__(self, media: Any, folder: Path, exporter: Exporter) -> None:
        self.media = media
        self.folder = folder
        self.inline = exporter.inline_media
        self.kinds = exporter.media_kinds
        self.written: dict[str, ExportMedia] = {}  # media_id -> its file in the folder
        self.bad: dict[str, str] = {}  # media_id -> why it cannot be exported

    def fetch(self, wanted: set[str]) -> dict[str, ExportMedia]:
        """ExportMedia for every media id of ``wanted`` that can be exported."""
        out: dict[str, ExportMedia] = {}
        todo = sorted(m for m in wanted if self.inline or m not in self.written)
        todo = [m for m in todo if m not in self.bad]
        if todo:
            table = self.media.to_table(
                columns=["media_id", "kind", "mime", "bytes"],
                filter=f"media_id IN {in_list(todo)}",
                with_row_id=True,
            )
            for row in table.to_pylist():
                mid, data = row["media_id"], row["bytes"]
                if row["kind"] not in self.kinds:
                    self.bad[mid] = f"media kind {row['kind']!r} not supported by this format"
                    continue
                if data is None and row["kind"] == "video" and not self.inline:
                    written = self._video(mid, row["mime"], row["_rowid"])
                    if written is not None:
                        self.written[mid] = written
                    continue
                if data is None or ids.media_id(data) != mid:
                    raise LakeloomError(f"media {mid}: stored bytes do not match their sha256")
                if self.inline:
                    out[mid] = ExportMedia(mid, row["mime"], data=data)
                    continue
                path = media_path(mid, row["mime"])
                target = self.folder / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                self.written[mid] = ExportMedia(mid, row["mime"], path=path)
        if not self.inline:
            out.update((m, self.written[m]) for m in wanted if m in self.written)
        return out

    def _video(self, mid: str, mime: str | None, rowid: int) -> ExportMedia | None:
        """Copy a blob-stored video into the folder (streamed, sha256 checked); a video
        stored by reference (``store_video=false``) has no bytes here: it is marked bad."""
        blob = self.media.take_blobs("blob", ids=[rowid])[0]
        if blob is None or blob.size() == 0:
            self.bad[mid] = (
                "video stored by reference (store_video=false): its bytes are not in the lake"
            )
            return None
        path = media_path(mid, mime)
        target = self.folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with blob, target.open("wb") as fh:
            while chunk := blob.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != mid:
            raise LakeloomError(f"media {mid}: stored video bytes do not match their sha256")
        return ExportMedia(mid, mime, path=path)


def export(
    lake: Lake,
    exporter: Exporter,
    out: str | Path,
    split: str | None = None,
    where: str | None = None,
    dataset: str | None = None,
    *,
    force: bool = False,
    batch_size: int = 1024,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Export the selected samples with ``exporter`` into the folder ``out``; return the report.

    See the module docstring for the selection, the layout, streaming and atomicity.
    Raises ConfigError for a bad selection or ``out``, and when every selected sample
    had to be skipped.
    """
    out = Path(out)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not lake.exists(SAMPLES):
        raise ConfigError(f"lake {lake.uri} has no samples table: ingest something first")
    samples = lake.dataset(SAMPLES)  # pinned to the version read from here on
    selected = check_selection(lake, samples, split, where, dataset)
    if not lake.exists(MEDIA):
        raise ConfigError(f"lake {lake.uri} has no media table")
    media = lake.dataset(MEDIA)
    check_out(out, force, lake)
    run_id = ctx.run_id if ctx else provenance.new_run_id("export")
    filt = selection(split, where, dataset)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = temp_folder(out)
    tmp.mkdir()
    report: dict[str, Any] = {
        "out": str(out),
        "exporter": exporter.name,
        "run_id": run_id,
        "selection": filt,
        "selected": selected,
        "samples": 0,
        "media": 0,
        "batches": 0,
        "skipped": Counter(),
        "changed_ids": 0,
        # content of written samples the format cannot carry: {sample_id, reason} each
        "dropped": [],
    }
    try:
        exporter.open(tmp)
        writer = _MediaWriter(media, tmp, exporter)
        have = set(samples.schema.names)
        columns = SAMPLE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in have]
        scanner = samples.scanner(columns=columns, filter=filt, batch_size=batch_size)
        for batch in scanner.to_batches():
            if batch.num_rows:
                _export_batch(batch.to_pylist(), exporter, writer, report)
        files = exporter.close()
    except BaseException as exc:
        try:
            exporter.abort()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not exc.filename:
            # a write that hit a full disk names no file: name the export being written
            raise FileProblem(out, exc.strerror or str(exc)) from exc
        raise
    report["media"] = len(writer.written)
    report["skipped"] = dict(report["skipped"].most_common())
    report["files"] = [*files, IMAGES] if writer.written else files
    report["versions"] = {SAMPLES: int(samples.version), MEDIA: int(media.version)}
    report["ingest"] = {"source": exporter.source, "path": str(out), **exporter.source_options()}
    if report["samples"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"nothing to export: all {selected} selected samples were skipped "
            f"({', '.join(f'{r}: {n}' for r, n in report['skipped'].items())})"
        )
    manifest = {
        **report,
        "exporter_version": exporter.version,
        "params": exporter.params(),
        "lake": lake.uri,
        "split": split,
        "where": where,
        "dataset": dataset,
        "created_at": provenance.now().isoformat(),
        "lakeloom_version": provenance.lakeloom_version(),
    }
    try:
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
        check_out(out, force, lake)  # again: something may have appeared meanwhile
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "export %s: %d samples, %d media -> %s",
        exporter.name,
        report["samples"],
        report["media"],
        out,
    )
    return report


def _export_batch(
    rows: list[dict[str, Any]], exporter: Exporter, writer: _MediaWriter, report: dict[str, Any]
) -> None:
    report["batches"] += 1
    kept: list[dict[str, Any]] = []
    for row in rows:
        row["media_ids"] = list(row["media_ids"] or [])
        row["messages"] = list(row["messages"] or [])
        reason = exporter.skip_reason(row)
        if reason is not None:
            report["skipped"][reason] += 1
            continue
        kept.append(row)
    found = writer.fetch({m for row in kept for m in row["media_ids"]})
    rows_out: list[dict[str, Any]] = []
    media_out: list[list[ExportMedia]] = []
    for row in kept:
        missing = [m for m in row["media_ids"] if m not in found]
        if missing:
            reason = writer.bad.get(missing[0], "media missing from the lake")
            report["skipped"][reason] += 1
            continue
        rows_out.append(row)
        media_out.append([found[m] for m in row["media_ids"]])
        for loss in exporter.losses(row):
            report["dropped"].append({"sample_id": row["sample_id"], "reason": loss})
        back = exporter.readback(row)
        if row["sample_id"] not in (
            ids.sample_id(row["media_ids"], **back, dataset=row.get("dataset")),
            ids.sample_id(row["media_ids"], **back),  # a sample of an older lake
        ):
            report["changed_ids"] += 1
    if rows_out:
        exporter.write(rows_out, media_out)
    report["samples"] += len(rows_out)


def build_exporter(node: Any) -> Exporter:
    """Instantiate an Exporter from its config node (``_target_`` + options; ``name`` is
    the config's own name and is not passed)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    options = {k: v for k, v in dict(options).items() if k != "name"}
    try:
        exporter = instantiate(options)
    except InstantiationException as exc:
        raise ConfigError(f"cannot create exporter {options.get('_target_')}: {exc}") from exc
    if not isinstance(exporter, Exporter):
        raise ConfigError(f"{options.get('_target_')} is not an Exporter plugin")
    return exporter


def format_report(report: dict[str, Any]) -> str:
    """Closing lines for the console."""
    lines = [
        f"export {report['exporter']}: {report['samples']} of {report['selected']} selected "
        f"samples, {report['media']} media files in {report['batches']} batches -> "
        f"{report['out']} ({', '.join(report['files'])})"
    ]
    for reason, n in report["skipped"].items():
        lines.append(f"  skipped {n:6d}  {reason}")
    dropped = Counter(d["reason"] for d in report.get("dropped", []))
    for reason, n in dropped.most_common():
        lines.append(f"  dropped {n:6d}  {reason} (samples listed in {MANIFEST})")
    if report["changed_ids"]:
        lines.append(
            f"  {report['changed_ids']} samples will get a new sample_id when ingested back "
            "(content this format cannot carry, or a source key)"
        )
    ing = report["ingest"]
    opts = " ".join(f"source.{k}={v}" for k, v in ing.items() if k != "source")
    lines.append(f"ingest it back: lakeloom ingest source={ing['source']} {opts}")
    return "\n".join(lines)


@hydra_job("export")
def main(cfg: Any) -> int:
    """Hydra entry point: export the selection and record the run."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise ConfigError("out=DIR is required: the folder to write the export into")
    ctx = RunContext.from_config("export", cfg)
    exporter = build_exporter(cfg.export)
    lake = Lake.from_config(cfg.lake)
    split = None if cfg.get("split") is None else str(cfg.split)
    asked = {"exporter": cfg.export.get("name"), "out": str(cfg.out), "split": split}
    asked |= {"where": cfg.get("where"), "dataset": cfg.get("dataset")}
    with run_record(lake, ctx, asked):
        report = export(
            lake,
            exporter,
            cfg.out,
            split=split,
            where=cfg.get("where"),
            dataset=cfg.get("dataset"),
            force=bool(cfg.get("force", False)),
            batch_size=int(cfg.get("batch_size", 1024)),
            ctx=ctx,
        )
        print(format_report(report))
        inputs = {k: report[k] for k in ("exporter", "selection", "out")}
        counts = {k: report[k] for k in ("samples", "media", "skipped", "changed_ids")}
        counts["dropped"] = dict(Counter(d["reason"] for d in report["dropped"]))
        lake.record_run(
            ctx.record("finished", inputs=inputs, counts=counts, versions=report["versions"])
        )
    return 0


if __name__ == "__main__":
    main()
