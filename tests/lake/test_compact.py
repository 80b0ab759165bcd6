"""``lakeloom compact``: compaction keeps every row, cleanup keeps what must survive.

The lake is written the way jobs write it, in many small commits (30 upserts into
``samples``, some replacing rows, and a few into ``media``); the DVC tests use a real
``dvc init --no-scm`` repository around it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lake.compact import compact_lake, dvc_referenced_versions, dvc_scan, manifest_version
from lake.schema import KEYS, MEDIA, RUNS, SAMPLES
from lake.store import Lake
from tests.conftest import REPO, jpeg_bytes

WRITES = 30
DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")


def _write(lake: Lake, i: int) -> None:
    """One small job-like commit: two new samples, and sample s000 rewritten (a deletion)."""
    rows = [
        {
            "sample_id": f"s{j:03d}",
            "dataset": "toy",
            "media_ids": [f"m{j % 5}"],
            "messages": [{"role": "user", "content": "<image>"}],
            "caption": f"caption {j} written by write {i}",
            "label": "ab"[j % 2],
        }
        for j in dict.fromkeys((2 * i + 1, 2 * i + 2, 0))
    ]
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows))
    if i % 6 == 0:
        media = [
            {
                "media_id": f"m{i // 6}",
                "kind": "image",
                "mime": "image/jpeg",
                "bytes": jpeg_bytes((40 * (i // 6), 90, 200)),
                "width": 64,
                "height": 48,
            }
        ]
        lake.insert_new(MEDIA, pa.Table.from_pylist(media))


def _rows(lake: Lake, name: str, version: int | str | None = None) -> list[dict[str, Any]]:
    table = lake.dataset(name, version).to_table()
    return table.sort_by(KEYS[name]).to_pylist()


def _versions(lake: Lake, name: str) -> list[int]:
    return [v["version"] for v in lake.versions(name)]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for base, _dirs, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(base, f))
            out[os.path.relpath(os.path.join(base, f), folder)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake that has seen many small writes, built once and copied by ``busy``."""
    folder = tmp_path_factory.mktemp("template") / "lake"
    lake = Lake(folder)
    for i in range(WRITES):
        _write(lake, i)
    return folder


@pytest.fixture
def busy(template: Path, tmp_path: Path) -> Lake:
    """A fresh copy of the template lake at ``<tmp>/data/lake``."""
    target = tmp_path / "data" / "lake"
    shutil.copytree(template, target)
    return Lake(target)


def _dvc(root: Path, *args: str) -> None:
    subprocess.run([str(DVC), *args, "-q"], cwd=root, check=True, capture_output=True, timeout=60)


def test_manifest_names_map_to_versions(busy: Lake) -> None:
    assert manifest_version("18446744073709551614") == 1  # V2 naming: u64::MAX - version
    assert manifest_version("7") == 7  # V1 naming
    names = (Path(busy.uri) / "samples.lance" / "_versions").glob("*.manifest")
    assert sorted(manifest_version(p.stem) for p in names) == _versions(busy, SAMPLES)


def test_compaction_merges_fragments_and_keeps_every_row(busy: Lake) -> None:
    before = {n: _rows(busy, n) for n in (MEDIA, SAMPLES)}
    versions = _versions(busy, SAMPLES)
    report = compact_lake(busy, retention_days=7, keep_versions=None)
    s = report["tables"][SAMPLES]
    assert s["fragments_before"] >= WRITES and s["fragments_after"] == 1
    assert report["tables"][MEDIA]["fragments_after"] == 1
    assert {n: _rows(busy, n) for n in (MEDIA, SAMPLES)} == before
    assert s["rows"] == len(before[SAMPLES]) == 2 * WRITES + 1
    # nothing is older than 7 days: every version is still there and readable
    assert s["removed_versions"] == [] and s["versions_after"] > s["versions_before"]
    assert _versions(busy, SAMPLES)[: len(versions)] == versions
    assert len(_rows(busy, SAMPLES, version=2)) == 3  # 1: created empty, 2: first write


def test_retention_zero_keeps_only_latest_and_tagged(busy: Lake) -> None:
    tagged = busy.tag("ingest-20260101-000000-abcd", tables=[SAMPLES])[SAMPLES]
    at_tag = _rows(busy, SAMPLES)
    _write(busy, WRITES)
    latest = _rows(busy, SAMPLES)
    report = compact_lake(busy, retention_days=0, keep_versions=None)
    s = report["tables"][SAMPLES]
    assert _versions(busy, SAMPLES) == [tagged, s["latest"]]
    assert s["protected"]["tagged"] == [tagged]
    assert s["bytes_after"] < s["bytes_before"]
    assert _rows(busy, SAMPLES) == latest
    assert _rows(busy, SAMPLES, version="ingest-20260101-000000-abcd") == at_tag
    assert len(_versions(busy, MEDIA)) == 1  # untagged table: only the latest is left
    # dropping old tags lets those versions go too
    again = compact_lake(busy, retention_days=0, keep_versions=None, drop_old_tags=True)
    assert again["tables"][SAMPLES]["dropped_tags"] == ["ingest-20260101-000000-abcd"]
    assert _versions(busy, SAMPLES) == [s["latest"]]
    assert _rows(busy, SAMPLES) == latest


def test_dry_run_changes_nothing(busy: Lake) -> None:
    busy.record_run({"run_id": "r1", "job": "test", "status": "finished"})
    before = _files(Path(busy.uri))
    report = compact_lake(busy, retention_days=0, keep_versions=None, dry_run=True)
    assert _files(Path(busy.uri)) == before
    s = report["tables"][SAMPLES]
    assert report["dry_run"] and s["fragments_after"] == 1 < s["fragments_before"]
    # every version goes: the compacted one (and the versions it commits) replace them
    assert len(s["removed_versions"]) == s["versions_before"]
    assert s["bytes_after"] < s["bytes_before"] and not s["growth"]
    assert set(report["tables"]) == {MEDIA, SAMPLES, RUNS}


@pytest.mark.skipif(DVC is None, reason="dvc is not installed")
def test_versions_dvc_references_survive(busy: Lake, tmp_path: Path) -> None:
    # the repository's layout: a stage owns data/lake/{media,samples}.lance
    _dvc(tmp_path, "init", "--no-scm")
    outs = ["-o", "data/lake/samples.lance", "-o", "data/lake/media.lance"]
    _dvc(tmp_path, "stage", "add", "-n", "split", *outs, "true")
    _dvc(tmp_path, "commit", "-f", "split")
    first = busy.table(SAMPLES).version  # only in the DVC cache once committed again
    media_first = busy.table(MEDIA).version
    at_first = _rows(busy, SAMPLES)
    _write(busy, WRITES)
    _write(busy, WRITES + 1)
    _dvc(tmp_path, "commit", "-f", "split")
    second = busy.table(SAMPLES).version  # in dvc.lock
    at_second = _rows(busy, SAMPLES)
    media = busy.table(MEDIA).version  # write 30 added a media
    _write(busy, WRITES + 2)
    latest = _rows(busy, SAMPLES)

    refs = dvc_scan(None, busy.uri)  # finds the repository above the lake
    assert refs.root == tmp_path.resolve() and not refs.unknown
    assert refs.versions[SAMPLES] == {first, second}
    assert dvc_referenced_versions(tmp_path, busy.uri)[MEDIA] == {media_first, media}
    every = dvc_referenced_versions(tmp_path, busy.uri, heads_only=False)[SAMPLES]
    assert every == set(range(1, second + 1))

    report = compact_lake(busy, retention_days=0, keep_versions=refs.versions)
    s = report["tables"][SAMPLES]
    assert s["protected"]["dvc"] == [first, second]
    assert _versions(busy, SAMPLES) == [first, second, s["latest"]]
    assert _rows(busy, SAMPLES, version=first) == at_first
    assert _rows(busy, SAMPLES, version=second) == at_second
    assert _rows(busy, SAMPLES) == latest
    assert _versions(busy, MEDIA) == [media_first, media, report["tables"][MEDIA]["latest"]]


def test_hand_written_dvc_lock_and_missing_listing(busy: Lake, tmp_path: Path) -> None:
    """A dvc.lock entry is read by path; one whose listing is not cached blocks cleanup."""
    names = {
        manifest_version(p.stem): p.name
        for p in (Path(busy.uri) / "samples.lance" / "_versions").glob("*.manifest")
    }
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    listing = [{"relpath": f"samples.lance/_versions/{names[v]}", "md5": "0" * 32} for v in (3, 7)]
    (cache / "cdef.dir").write_text(json.dumps(listing))
    lock = {
        "schema": "2.0",
        "stages": {
            "lake": {
                "cmd": "true",
                "outs": [{"path": "data/lake", "hash": "md5", "md5": "abcdef.dir"}],
            },
            "media": {
                "cmd": "true",
                "outs": [{"path": "data/lake/media.lance", "hash": "md5", "md5": "ff00.dir"}],
            },
        },
    }
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))  # JSON is YAML
    refs = dvc_scan(tmp_path, busy.uri)
    assert refs.versions[SAMPLES] == {7}  # the head of that listed state
    assert list(refs.unknown) == [MEDIA]
    media_versions = _versions(busy, MEDIA)
    report = compact_lake(busy, retention_days=0, keep_versions=refs.versions, unknown=refs.unknown)
    assert _versions(busy, SAMPLES) == [7, report["tables"][SAMPLES]["latest"]]
    assert "not in the local cache" in report["tables"][MEDIA]["cleanup"]["skipped"]
    assert _versions(busy, MEDIA)[: len(media_versions)] == media_versions


def test_compact_job_through_the_cli(busy: Lake, tmp_path: Path) -> None:
    busy.tag("ingest-20260101-000000-abcd")
    args = ["compact", f"lake.uri={busy.uri}", "compact.retention_days=0"]
    proc = subprocess.run(
        [sys.executable, "-m", "lake.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "samples" in proc.stdout and "->" in proc.stdout
    runs = [r for r in busy.runs() if r["job"] == "compact"]
    assert [r["status"] for r in runs] == ["finished"]
    counts = json.loads(runs[0]["counts"])
    assert counts[SAMPLES]["fragments_after"] == 1 and counts[SAMPLES]["versions_after"] == 2
    assert runs[0]["run_id"] in busy.versions(SAMPLES)[-1]["tags"]


def test_dry_run_predicts_the_real_run_and_warns_of_growth(
    busy: Lake, caplog: pytest.LogCaptureFixture
) -> None:
    """A tagged version keeps the small fragments: compacting would only add the merged ones."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):  # photos (noise: JPEG cannot shrink it), one small commit each
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(
            out, format="JPEG", quality=95
        )
        row = {"media_id": f"photo{i}", "kind": "image", "mime": "image/jpeg"}
        busy.insert_new(MEDIA, pa.Table.from_pylist([{**row, "bytes": out.getvalue()}]))
    busy.tag("ingest-20260101-000000-abcd")  # the latest version of every table
    shutil.copytree(busy.uri, Path(busy.uri).parent / "copy")
    copy = Lake(Path(busy.uri).parent / "copy")
    for allow in (False, True):
        lake = busy if not allow else copy
        with caplog.at_level("WARNING", logger="lakeloom.compact"):
            dry = compact_lake(lake, retention_days=0, dry_run=True, allow_growth=allow)
        real = compact_lake(lake, retention_days=0, allow_growth=allow)
        m_dry, m_real = dry["tables"][MEDIA], real["tables"][MEDIA]
        assert m_dry["growth"]["held_by"]["tagged"] and m_dry["growth"]["bytes"] > 0
        assert m_dry["growth"]["skipped"] is (not allow)
        assert "compaction would grow the table" in caplog.text
        assert set(dry["tables"]) == set(real["tables"]) == {MEDIA, SAMPLES}
        for name in dry["tables"]:
            d, r = dry["tables"][name], real["tables"][name]
            assert abs(d["bytes_after"] - r["bytes_after"]) <= 0.03 * r["bytes_after"], name
            assert (d["fragments_after"], d["versions_after"]) == (
                r["fragments_after"],
                r["versions_after"],
            ), name
            assert d["removed_versions"] == r["removed_versions"], name
        if allow:  # compacted anyway: the lake grew as predicted
            assert m_real["bytes_after"] > m_real["bytes_before"]
            assert m_real["fragments_after"] == 1
        else:  # skipped: nothing grew, the fragments stay as they were
            assert m_real["bytes_after"] <= m_real["bytes_before"]
            assert m_real["fragments_after"] == m_real["fragments_before"] > 1
        caplog.clear()
