"""Enrichers on Ray (lake.ray_enrich): equal to the local runner row for row, one model load
per actor, resumable after a SIGKILL of the driver or of a worker, rows appended during a
backfill filled by the next run, idempotent; the progress table tells what happened.
Every Ray test runs under an alarm; one private Ray (2 CPUs, 127.0.0.1) serves the module."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from lake import progress
from lake.enrich import enrich
from lake.images import ImageSettings
from lake.ingest import IngestSettings, ingest
from lake.ray_enrich import RaySettings, enrich_on_ray
from lake.store import Lake
from plugins.phash import PhashThumbnail
from tests.conftest import conf_kwargs, jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("ray_alarm")


@functools.cache
def phash_kw() -> dict[str, Any]:
    """The phash step's arguments from conf/enrich/phash.yaml (composed on first use: the
    module is also imported inside a Hydra job, by the driver a test starts)."""
    return conf_kwargs("enrich", "enrich.steps.image", "enrich=phash")


class SlowPhash(PhashThumbnail):
    """The phash enricher (same name, version and owner), slowed down per batch, writing a
    ``<pid>-<ns>.setup`` marker on each setup (one per actor that loads it)."""

    def __init__(self, delay: float = 0.0, markers: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.delay, self.markers = float(delay), markers

    def setup(self) -> None:
        """Record this process as a loader."""
        if self.markers:
            Path(self.markers, f"{os.getpid()}-{time.time_ns()}.setup").touch()

    def process(self, batch: pa.Table) -> pa.Table:
        """Sleep, then hash."""
        time.sleep(self.delay)
        return super().process(batch)


def settings(**kw: Any) -> RaySettings:
    """Stage settings fitting 2 CPUs (read tasks and actors below a node's CPUs: G1)."""
    base = dict(read_cpus=0.25, actors=2, cpus_per_actor=0.5, gpus_per_actor=0,
                batch_size=2, max_retries=2)  # fmt: skip
    return RaySettings(**base | kw)


def node(cls: type, **kw: Any) -> dict[str, Any]:
    """The Hydra node an actor instantiates."""
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **kw}


def images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct small JPEGs."""
    return [jpeg_bytes(((37 * i + seed) % 256, (91 * i) % 256, 60), (40, 32)) for i in range(n)]


def bulk_load(lake: Lake, data: list[bytes], per_fragment: int) -> list[str]:
    """Media rows without phash/thumb (one insert, hence one fragment, per ``per_fragment``
    images) and a captioned sample per image; returns the media ids."""
    ids = [hashlib.sha256(b).hexdigest() for b in data]
    for i in range(0, len(data), per_fragment):
        part = range(i, min(i + per_fragment, len(data)))
        lake.insert_new("media", pa.Table.from_pylist([
            {"media_id": ids[j], "kind": "image", "mime": "image/jpeg", "bytes": data[j]}
            for j in part]))  # fmt: skip
        lake.insert_new("samples", pa.Table.from_pylist([
            {"sample_id": f"s{j}", "dataset": "d", "media_ids": [ids[j]],
             "caption": f"a picture number {j}" if j % 4 else None} for j in part]))  # fmt: skip
    return ids


def columns(lake: Lake, table: str, key: str, *names: str) -> dict[str, dict[str, Any]]:
    """``key -> {name: value}``."""
    rows = lake.dataset(table).to_table(columns=[key, *names]).to_pylist()
    return {r[key]: {n: r[n] for n in names} for r in rows}


def assert_same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> None:
    """Equal row for row (vectors to float tolerance: batches are cut differently)."""
    assert a.keys() == b.keys()
    for k in a:
        for name, value in a[k].items():
            other = b[k][name]
            if isinstance(value, list) and value and isinstance(value[0], float):
                np.testing.assert_allclose(value, other, atol=1e-5)
            else:
                assert value == other, (k, name)


def step_names(lake: Lake, table: str) -> list[list[str]]:
    """The provenance steps of every row, by name (run ids differ between runs)."""
    prov = lake.dataset(table).to_table(columns=["provenance"]).column("provenance")
    return sorted([s["name"] for s in (p or {}).get("steps") or []] for p in prov.to_pylist())


def test_progress_rows_read_back(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    bid = progress.backfill_id(table="media", enricher="x", version="1")
    assert bid == progress.backfill_id(version="1", enricher="x", table="media")
    assert progress.stages(lake) == [] and progress.units(lake, bid) == []
    progress.record_stage(lake, bid, "r1", "enrich", "enrich:x", progress.RUNNING, 0, 10)
    unit = {"unit": progress.fragment_unit(3), "status": progress.DONE, "rows": 6, "attempts": 1}
    progress.record_units(lake, bid, "r1", "enrich", "enrich:x", [unit])
    progress.record_stage(lake, bid, "r1", "enrich", "enrich:x", progress.RUNNING, 6, 10)
    [stage] = progress.stages(lake)
    assert (stage["status"], stage["rows"], stage["total"]) == ("running", 6, 10)
    [unit] = progress.units(lake, bid)
    assert progress.unit_fragment(unit["unit"]) == 3 and unit["rows"] == 6
    assert progress.forget_units(lake, bid) == 1 and progress.units(lake, bid) == []


@pytest.mark.slow
def test_ray_equals_local_for_phash_and_clip(ray_env: Any, tmp_path: Path) -> None:
    from plugins.clip_embed import ClipImageEmbedder, ClipTextEmbedder
    from plugins.image_folder import ImageFolderSource
    from tests.plugins.test_clip_embed import save_tiny_clip

    data = images(12)
    folder = tmp_path / "folder" / "c"
    folder.mkdir(parents=True)
    for i, b in enumerate(data):
        (folder / f"{i:02d}.jpg").write_bytes(b)
    ingested = Lake(tmp_path / "ingested")
    ingest(ImageFolderSource(folder.parent), ingested, settings=IngestSettings(progress=False))
    bulk_load(Lake(tmp_path / "local"), data, per_fragment=3)
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    local, on_ray = Lake(tmp_path / "local"), Lake(tmp_path / "ray")
    clip = {"pretrained": save_tiny_clip(tmp_path / "m", 0), "device": "cpu", "batch_size": 4}
    steps = [(PhashThumbnail, phash_kw()), (ClipImageEmbedder, clip), (ClipTextEmbedder, clip)]
    for cls, kw in steps:
        r1 = enrich(cls(**kw), local, batch_size=5, write_batch=4, progress=False)
        r2 = enrich_on_ray(cls(**kw), node(cls, **kw), on_ray, settings(actors=1))
        assert r1.done == r2.done > 0
    assert_same(columns(local, "media", "media_id", "phash", "thumb", "phash_model", "clip_image",
                        "clip_image_model"),
                columns(on_ray, "media", "media_id", "phash", "thumb", "phash_model", "clip_image",
                        "clip_image_model"))  # fmt: skip
    text = ("clip_text", "clip_text_model")
    assert_same(columns(local, "samples", "sample_id", *text),
                columns(on_ray, "samples", "sample_id", *text))  # fmt: skip
    assert step_names(local, "media") == step_names(on_ray, "media")
    assert step_names(local, "samples") == step_names(on_ray, "samples")
    # what the phash enricher writes is what the ingest writes
    assert_same(columns(on_ray, "media", "media_id", "phash", "thumb"),
                columns(ingested, "media", "media_id", "phash", "thumb"))  # fmt: skip
    # every stage committed, its staging gone; a second run does nothing
    assert {s["status"] for s in progress.stages(on_ray)} == {progress.COMMITTED}
    assert list((tmp_path / "ray" / "_staging").iterdir()) == []
    version = on_ray.table("media").version
    again = enrich_on_ray(PhashThumbnail(**phash_kw()), node(PhashThumbnail, **phash_kw()), on_ray,
                          settings())  # fmt: skip
    assert (again.todo, again.done) == (0, 0) and on_ray.table("media").version == version


@pytest.mark.slow
def test_ray_equals_local_for_transcription(ray_env: Any, tmp_path: Path) -> None:
    from faster_whisper import decode_audio

    from plugins.transcribe import TranscribeEnricher
    from tests.plugins.test_transcribe import SENTENCE, audio_table, silence, wav_bytes

    spoken = tmp_path / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(spoken), SENTENCE], check=True, capture_output=True)
    speech = decode_audio(str(spoken), sampling_rate=16000)
    local = Lake(tmp_path / "local")
    for part in ([np.concatenate([silence(0.5), speech])], [silence(1.0)], [speech]):
        local.insert_new("media", audio_table([{"bytes": wav_bytes(a)} for a in part]))
    shutil.copytree(tmp_path / "local", tmp_path / "ray")
    on_ray = Lake(tmp_path / "ray")
    kw = conf_kwargs("enrich", "enrich.steps.audio", "enrich=transcribe") | {
        "device": "cpu", "cpu_threads": 1}  # fmt: skip
    assert enrich(TranscribeEnricher(**kw), local, batch_size=2, progress=False).done == 3
    report = enrich_on_ray(TranscribeEnricher(**kw), node(TranscribeEnricher, **kw), on_ray,
                           settings(actors=1))  # fmt: skip
    assert report.done == 3
    names = ("transcript", "transcript_language", "transcript_model")
    got = columns(on_ray, "media", "media_id", *names)
    assert_same(columns(local, "media", "media_id", *names), got)
    assert any("fox" in (r["transcript"] or "").lower() for r in got.values())


@pytest.mark.slow
def test_model_loads_once_per_actor_and_a_killed_worker_is_retried(
    ray_env: Any, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    data = images(12)
    bulk_load(lake, data, per_fragment=3)
    markers = tmp_path / "markers"
    markers.mkdir()
    kw = phash_kw() | {"delay": 0.3, "markers": str(markers)}
    killed: list[int] = []

    def kill_one_worker() -> None:  # the first actor that loaded the plugin, mid-job
        deadline = time.monotonic() + 120
        while not list(markers.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        pid = int(sorted(markers.iterdir())[0].name.split("-")[0])
        os.kill(pid, signal.SIGKILL)  # a Ray worker of our own private Ray
        killed.append(pid)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    report = enrich_on_ray(SlowPhash(**kw), node(SlowPhash, **kw), lake, settings(batch_size=1))
    killer.join()
    assert killed and report.done == 12
    loads = [int(p.name.split("-")[0]) for p in markers.iterdir()]
    # one load per actor: 2 actors, plus the replacement of the killed one
    assert len(loads) == len(set(loads)) and 3 <= len(loads) <= 2 + 2 * 2
    expected = Lake(tmp_path / "expected")
    bulk_load(expected, data, per_fragment=3)
    enrich(PhashThumbnail(**phash_kw()), expected, progress=False)
    assert_same(columns(expected, "media", "media_id", "phash", "thumb", "phash_model"),
                columns(lake, "media", "media_id", "phash", "thumb", "phash_model"))  # fmt: skip


@pytest.mark.slow
def test_rows_appended_during_a_backfill_are_filled_by_the_next_run(
    ray_env: Any, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    bulk_load(lake, images(8), per_fragment=4)
    late = images(3, seed=101)
    late_ids = []

    def append_once(fragment: int) -> None:  # another writer, between planning and commit
        if not late_ids:
            late_ids.extend(bulk_load(lake, late, per_fragment=3))

    enricher = PhashThumbnail(**phash_kw())
    first = enrich_on_ray(enricher, node(PhashThumbnail, **phash_kw()), lake, settings(),
                          on_unit=append_once)  # fmt: skip
    assert first.done == 8 and len(late_ids) == 3
    rows = columns(lake, "media", "media_id", "phash", "thumb", "phash_model")
    assert all(rows[k]["phash"] is None and rows[k]["phash_model"] is None for k in late_ids)
    assert sum(r["phash_model"] is not None for r in rows.values()) == 8  # never a wrong value
    second = enrich_on_ray(enricher, node(PhashThumbnail, **phash_kw()), lake, settings())
    assert (second.todo, second.done) == (3, 3)
    expected = Lake(tmp_path / "expected")
    bulk_load(expected, images(8) + late, per_fragment=4)
    enrich(PhashThumbnail(**phash_kw()), expected, progress=False)
    assert_same(columns(expected, "media", "media_id", "phash", "thumb", "phash_model"),
                columns(lake, "media", "media_id", "phash", "thumb", "phash_model"))  # fmt: skip


@pytest.mark.slow
def test_killed_driver_resumes_and_ends_like_an_uninterrupted_run(
    ray_env: Any, tmp_path: Path
) -> None:
    uri = tmp_path / "lake"
    lake = Lake(uri)
    data = images(12)
    bulk_load(lake, data, per_fragment=2)  # 6 fragments
    ray_tmp = tempfile.mkdtemp(prefix="lr-")  # short: Ray's socket paths live under it
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                        "HF_HUB_OFFLINE": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "lake.enrich", "enrich=phash", f"lake.uri={uri}",
           f"lake.reports={tmp_path / 'reports'}", "enrich.progress=false", "executor=ray",
           "executor.num_cpus=2", f"executor.temp_dir={ray_tmp}", "executor.actors=1",
           "executor.batch_size=1",
           "enrich.steps.image._target_=tests.lake.test_ray_enrich.SlowPhash",
           "+enrich.steps.image.delay=0.3"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    done: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            stages = progress.stages(lake) if lake.exists("progress") else []
            done = [u for s in stages for u in progress.units(lake, s["backfill"])]
            if len([u for u in done if u["status"] == progress.DONE]) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    finally:
        # the driver and the private Ray it started (its own session: our process group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    killed_run = {u["run_id"] for u in done}
    done_units = {u["unit"] for u in done if u["status"] == progress.DONE}
    assert done_units and len(done_units) < 6
    assert lake.count("media", "phash_model IS NOT NULL") == 0  # staging is not the table

    report = enrich_on_ray(PhashThumbnail(**phash_kw()), node(PhashThumbnail, **phash_kw()), lake,
                           settings())  # fmt: skip
    assert report.done == 12
    [stage] = progress.stages(lake)
    units = progress.units(lake, stage["backfill"])
    assert stage["status"] == progress.COMMITTED and stage["rows"] == stage["total"] == 12
    assert {u["status"] for u in units} == {progress.COMMITTED} and len(units) == 6
    skipped = {u["unit"] for u in units if u["run_id"] in killed_run}
    assert done_units <= skipped  # the resumed run did not recompute them
    expected = Lake(tmp_path / "expected")
    bulk_load(expected, data, per_fragment=2)
    enrich(PhashThumbnail(**phash_kw()), expected, progress=False)
    assert_same(columns(expected, "media", "media_id", "phash", "thumb", "phash_model"),
                columns(lake, "media", "media_id", "phash", "thumb", "phash_model"))  # fmt: skip


@pytest.mark.slow
def test_backfill_on_s3(ray_env: Any, s3: Any, tmp_path: Path) -> None:
    lake = Lake(s3.uri("ray-enrich"), s3.storage_options)
    data = images(6)
    bulk_load(lake, data, per_fragment=3)
    report = enrich_on_ray(PhashThumbnail(**phash_kw()), node(PhashThumbnail, **phash_kw()), lake,
                           settings())  # fmt: skip
    assert report.done == 6
    expected = Lake(tmp_path / "expected")
    bulk_load(expected, data, per_fragment=3)
    enrich(PhashThumbnail(**phash_kw()), expected, progress=False)
    assert_same(columns(expected, "media", "media_id", "phash", "thumb", "phash_model"),
                columns(lake, "media", "media_id", "phash", "thumb", "phash_model"))  # fmt: skip
    assert [s["status"] for s in progress.stages(lake)] == [progress.COMMITTED]


def test_phash_settings_are_the_ingest_settings() -> None:
    s = PhashThumbnail(**phash_kw()).settings
    assert s == ImageSettings(s.thumb_size, s.thumb_quality, s.max_pixels, s.formats)
    ingest_media = conf_kwargs("ingest", "media")
    assert (s.thumb_size, s.thumb_quality) == (ingest_media["thumb_size"],
                                               ingest_media["thumb_quality"])  # fmt: skip
