"""The lake on a local folder and on a real S3 server (SeaweedFS): the same operations,
the same results; concurrent writers on S3 lose no commit."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.compact import compact_lake
from lake.query import IMAGE_COLUMN, IMAGE_OWNER, search
from lake.schema import MEDIA, SAMPLES
from lake.storage import file_sizes, join
from lake.store import Lake

REPO = Path(__file__).resolve().parents[2]
DIM = 4


def media_rows(ids: list[str], kind: str = "image", **cols: list) -> pa.Table:
    """Media rows with the required columns (``cols``: more columns, one list each)."""
    data = {"media_id": ids, "kind": [kind] * len(ids), **cols}
    return pa.table(data)


def sample_rows(ids: list[str], media: list[str], dataset: str = "d") -> pa.Table:
    """One sample per id, each using one media row."""
    return pa.table(
        {"sample_id": ids, "dataset": [dataset] * len(ids), "media_ids": [[m] for m in media]}
    )


def open_lake(lake_uri: tuple[str, dict[str, str]]) -> Lake:
    """The parametrised lake (local folder or S3)."""
    uri, options = lake_uri
    return Lake(uri, options)


def test_writes_reads_and_versions(lake_uri: tuple[str, dict[str, str]]) -> None:
    lake = open_lake(lake_uri)
    assert lake.table_names() == [] and not lake.present()
    assert lake.insert_new(MEDIA, media_rows(["a", "b", "c"])) == 3
    assert lake.insert_new(MEDIA, media_rows(["b", "c", "d"])) == 1  # only the new key
    assert lake.keys(MEDIA) == {"a", "b", "c", "d"}
    lake.upsert(MEDIA, media_rows(["a", "e"], mime=["image/png", "image/jpeg"]))
    assert lake.count(MEDIA) == 5
    assert lake.update_columns(MEDIA, pa.table({"media_id": ["b"], "width": [7]})) == 1
    got = lake.dataset(MEDIA).to_table(columns=["media_id", "mime", "width"]).to_pylist()
    by_id = {r["media_id"]: r for r in got}
    assert by_id["a"]["mime"] == "image/png" and by_id["b"]["width"] == 7
    assert lake.value_counts(MEDIA, "kind") == {"image": 5}
    assert lake.delete(MEDIA, "media_id = 'e'") == 1

    tagged = lake.tag("before-f")
    lake.insert_new(MEDIA, media_rows(["f"]))
    assert lake.count(MEDIA) == 5
    assert lake.table(MEDIA, version="before-f").count_rows() == 4
    old = tagged[MEDIA]
    assert lake.table(MEDIA, version=old).count_rows() == 4
    versions = lake.versions(MEDIA)
    assert [v["version"] for v in versions] == sorted(v["version"] for v in versions)
    assert any("before-f" in v["tags"] for v in versions)
    assert versions[-1]["rows"] == 5

    # a second handle (a new connection) sees the same lake
    again = open_lake(lake_uri)
    assert again.keys(MEDIA) == {"a", "b", "c", "d", "f"}
    assert again.current_versions()[MEDIA] == int(lake.table(MEDIA).version)


def test_vector_search(lake_uri: tuple[str, dict[str, str]]) -> None:
    lake = open_lake(lake_uri)
    ids = [f"m{i}" for i in range(6)]
    lake.insert_new(MEDIA, media_rows(ids))
    lake.insert_new(SAMPLES, sample_rows([f"s{i}" for i in range(6)], ids))
    vector_type = pa.list_(pa.float32(), DIM)
    lake.add_columns(
        MEDIA, [pa.field(IMAGE_COLUMN, vector_type), pa.field(IMAGE_OWNER, pa.string())]
    )
    vectors = np.eye(6, DIM, dtype=np.float32) + 0.01
    lake.update_columns(
        MEDIA,
        pa.table(
            {
                "media_id": ids,
                IMAGE_COLUMN: pa.FixedSizeListArray.from_arrays(vectors.ravel(), DIM),
                IMAGE_OWNER: ["test"] * 6,
            }
        ),
    )
    hits = search(lake, np.array([0, 0, 1, 0], np.float32), k=2)
    assert hits[0].media_id == "m2" and hits[0].sample_id == "s2"
    assert hits[0].score > 0.99


def test_video_blob_reads(lake_uri: tuple[str, dict[str, str]]) -> None:
    lake = open_lake(lake_uri)
    payload = bytes(range(256)) * 2000  # 512 kB: read back a slice, not the whole
    lake.insert_new(MEDIA, media_rows(["v1"], kind="video", blob=[payload], mime=["video/mp4"]))
    lake.insert_new(MEDIA, media_rows(["i1"], bytes=[b"jpeg"]))
    assert lake.has_blobs(MEDIA)
    with lake.open_blob(MEDIA, "v1") as blob:
        blob.seek(1000)
        assert blob.read(10) == payload[1000:1010]
        blob.seek(0)
        assert blob.read() == payload
    with pytest.raises(KeyError):
        lake.open_blob(MEDIA, "nope")


def test_compaction(lake_uri: tuple[str, dict[str, str]]) -> None:
    lake = open_lake(lake_uri)
    for i in range(6):  # one commit, one fragment each
        lake.insert_new(MEDIA, media_rows([f"m{i}"]))
    lake.tag("keep-me")
    before = lake.dataset(MEDIA)
    assert len(before.get_fragments()) == 6
    dry = compact_lake(lake, retention_days=0, tables=[MEDIA], dry_run=True)["tables"][MEDIA]
    assert dry["fragments_after"] == 1 and dry["bytes_predicted"] > 0  # measured on a clone
    assert len(lake.dataset(MEDIA).get_fragments()) == 6  # a dry run changes nothing
    report = compact_lake(lake, retention_days=0, tables=[MEDIA])
    media = report["tables"][MEDIA]
    assert media["rows"] == 6 and media["fragments_before"] == 6
    assert media["bytes_before"] > 0 and media["bytes_after"] > 0
    assert lake.count(MEDIA) == 6
    assert lake.table(MEDIA, version="keep-me").count_rows() == 6  # tagged: still readable
    assert media["removed_versions"], "untagged old versions are removed"
    assert media["fragments_after"] == 1
    # the measuring clone left nothing behind
    assert lake.table_names() == [MEDIA]
    assert file_sizes(join(lake.uri, "_lakeloom_tmp"), lake.storage_options) == {}


def test_compact_job_on_s3_takes_keys_from_the_environment(s3, tmp_path: Path) -> None:
    """``lakeloom compact`` against an s3:// lake, keys from the AWS_* variables; none of
    them is printed."""
    uri = s3.uri("lake")
    lake = Lake(uri, s3.storage_options)
    for i in range(4):
        lake.insert_new(MEDIA, media_rows([f"m{i}"]))
    so = s3.storage_options
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {
        "AWS_ENDPOINT_URL": so["endpoint"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": so["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": so["aws_secret_access_key"],
        "AWS_REGION": so["region"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "lake.compact", f"lake.uri={uri}", "compact.retention_days=0",
         f"lake.reports={tmp_path / 'reports'}"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "media" in done.stdout and "->" in done.stdout
    assert so["aws_secret_access_key"] not in out
    assert len(lake.dataset(MEDIA).get_fragments()) == 1
    assert lake.count(MEDIA) == 4


# -- concurrent writers on S3 -------------------------------------------------------------
WRITERS = 4
COMMITS = 10


def _insert_worker(uri: str, options: dict[str, str], worker: int) -> None:
    lake = Lake(uri, options)
    for k in range(COMMITS):
        assert lake.insert_new(MEDIA, media_rows([f"i{worker}-{k}"])) == 1


def _upsert_worker(uri: str, options: dict[str, str], worker: int) -> None:
    lake = Lake(uri, options)
    for k in range(COMMITS):
        lake.upsert(MEDIA, media_rows([f"u{worker}-{k}", "seed"], mime=[f"w{worker}"] * 2))


def _run_workers(target, uri: str, options: dict[str, str]) -> list[int | None]:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(uri, options, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


@pytest.mark.slow
def test_concurrent_writers_on_s3_keep_every_row(s3) -> None:
    """4 processes x 10 insert_new, then 4 x 10 upserts into one S3 table: every row and
    every commit lands (Lance's conflict detection on the store's conditional writes;
    there is no writer lock on S3)."""
    uri, options = s3.uri("lake"), s3.storage_options
    lake = Lake(uri, options)
    lake.insert_new(MEDIA, media_rows(["seed"]))
    start = int(lake.table(MEDIA).version)

    assert _run_workers(_insert_worker, uri, options) == [0] * WRITERS
    keys = lake.keys(MEDIA)
    assert len(keys) == 1 + WRITERS * COMMITS
    assert int(lake.table(MEDIA).version) == start + WRITERS * COMMITS

    assert _run_workers(_upsert_worker, uri, options) == [0] * WRITERS
    assert lake.count(MEDIA) == 1 + 2 * WRITERS * COMMITS  # no duplicate "seed"
    assert int(lake.table(MEDIA).version) == start + 2 * WRITERS * COMMITS
    expected = {f"i{w}-{k}" for w in range(WRITERS) for k in range(COMMITS)}
    expected |= {f"u{w}-{k}" for w in range(WRITERS) for k in range(COMMITS)}
    assert lake.keys(MEDIA) == expected | {"seed"}
