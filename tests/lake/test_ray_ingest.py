"""Ingest on Ray (``executor=ray``) equals the local executor row for row, adds nothing when
re-run, and converges after a SIGKILL; every Ray test runs under an alarm."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from lake import progress
from lake.ingest import IngestSettings, ingest
from lake.store import Lake
from tests.conftest import jpeg_bytes, slow_ingest_command
from tests.ray_support import executor_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_alarm")]

QUIET = IngestSettings(progress=False, chunk_size=3, workers=0)
RUN_SPECIFIC = ("run_id", "created_at")  # provenance fields that differ between two runs


def kill_leftovers(marker: str, wait_s: float = 30) -> None:
    """SIGKILL, by pid, the processes of a killed job's private Ray still running (its
    workers sit in their own process groups and rename themselves ``ray::...``): those whose
    environment holds ``LAKELOOM_TEST_MARK=<marker>``, set by this test for the job."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"LAKELOOM_TEST_MARK={marker}".encode() in environ:
                found.append(int(proc.name))
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def rows(lake: Lake, name: str) -> list[dict[str, Any]]:
    """Every row of ``name`` by key, run-specific provenance fields dropped."""
    from lake.schema import KEYS

    out = []
    for row in lake.dataset(name).to_table().to_pylist():
        for field in RUN_SPECIFIC:
            row["provenance"].pop(field)
        out.append(row)
    return sorted(out, key=lambda r: r[KEYS[name]])


def assert_same_lake(a: Lake, b: Lake) -> None:
    """media and samples equal row for row, every column compared."""
    for name in ("media", "samples"):
        ra, rb = rows(a, name), rows(b, name)
        assert len(ra) == len(rb), name
        for x, y in zip(ra, rb, strict=True):
            assert x == y, (name, {k for k in x if x[k] != y.get(k)})


def both(tmp_path: Path, make_source: Any, ray_env: Any) -> tuple[Any, Any, Lake, Lake]:
    """Ingest one source locally and on Ray into two lakes; return both reports and lakes."""
    local, on_ray = Lake(tmp_path / "local"), Lake(tmp_path / "ray")
    r1 = ingest(make_source(), local, settings=QUIET, rejects_path=tmp_path / "r-local.jsonl")
    r2 = ingest(
        make_source(),
        on_ray,
        settings=QUIET,
        rejects_path=tmp_path / "r-ray.jsonl",
        executor=executor_config(
            "ingest",
        ),
    )
    return r1, r2, local, on_ray


def test_image_folder_on_ray_equals_local_and_rerun_adds_nothing(
    class_folder: Path, tmp_path: Path, ray_env: Any
) -> None:
    from plugins.image_folder import ImageFolderSource

    (class_folder / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    r1, r2, local, on_ray = both(tmp_path, lambda: ImageFolderSource(class_folder), ray_env)
    assert (r2.records, r2.new_samples, r2.new_media, r2.rejected) == (9, 8, 7, 1)
    assert r2.counts() | {"seconds": 0, "images_per_s": 0} == r1.counts() | {
        "seconds": 0,
        "images_per_s": 0,
    }
    assert_same_lake(local, on_ray)
    assert (tmp_path / "r-ray.jsonl").read_text() == (tmp_path / "r-local.jsonl").read_text()
    assert not any((tmp_path / "ray" / "_staging").glob("ingest-*"))  # staging removed
    stage = next(s for s in progress.run_rows(on_ray, r2.run_id) if s["unit"] == "")
    assert (stage["stage"], stage["status"], stage["rows"]) == ("ingest:media", "committed", 9)
    units = [u for u in progress.run_rows(on_ray, r2.run_id) if u["unit"].startswith("shard:")]
    assert sum(u["rows"] for u in units) == r2.images_processed and units[0]["node"]

    versions = on_ray.current_versions()
    again = ingest(
        ImageFolderSource(class_folder),
        on_ray,
        settings=QUIET,
        executor=executor_config(
            "ingest",
        ),
    )
    assert (again.new_samples, again.new_media, again.present_samples) == (0, 0, 8)
    assert on_ray.current_versions() == versions


def test_llava_with_bad_lines_on_ray_equals_local_rejects_included(
    tmp_path: Path, ray_env: Any
) -> None:
    from plugins.llava import LlavaSource

    root = tmp_path / "conv"
    root.mkdir()
    for i in range(6):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes((30 * i, 200, 0)))
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    conv = lambda n: [  # noqa: E731
        {"from": "human", "value": "<image>" * n + " describe"},
        {"from": "gpt", "value": "a picture"},
    ]
    lines = [
        {"id": "1", "images": ["0.jpg", "bad.jpg"], "conversations": conv(2)},
        {"id": "2", "image": "1.jpg", "conversations": conv(1)},
        "{not json",
        {"id": "4", "images": ["0.jpg", "2.jpg"], "conversations": conv(2)},
        {"id": "5", "image": "missing.jpg", "conversations": conv(1)},
        {"id": "6", "image": "3.jpg", "conversations": conv(1)},
        {"id": "7", "image": "4.jpg", "conversations": []},
        {"id": "8", "image": "5.jpg", "conversations": conv(1)},
    ]
    (root / "data.jsonl").write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    )
    r1, r2, local, on_ray = both(tmp_path, lambda: LlavaSource(root / "data.jsonl"), ray_env)
    assert r2.rejected == r1.rejected >= 3 and r2.new_samples == r1.new_samples >= 4
    assert_same_lake(local, on_ray)
    got = (tmp_path / "r-ray.jsonl").read_text()
    assert got == (tmp_path / "r-local.jsonl").read_text()
    assert [json.loads(x)["line"] for x in got.splitlines()][:2] == [1, 3]


def test_killed_ray_ingest_converges_when_rerun(tmp_path: Path, ray_env: Any) -> None:
    cmd, uri = slow_ingest_command(tmp_path)
    ray_tmp = tempfile.mkdtemp(prefix="llr-")  # short: Ray's socket paths stay < 108 bytes
    cmd = [*cmd, "executor=ray", "executor.num_cpus=1", f"executor.temp_dir={ray_tmp}"]
    cmd = [c.replace("ingest.chunk_size=10", "ingest.chunk_size=4") for c in cmd]
    staged = Path(uri) / "_staging"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "LAKELOOM_TEST_MARK": ray_tmp}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(staged.glob("ingest-*/media.lance/data/*.lance"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the ingest ended before it could be killed"
    finally:
        # the driver and the private Ray it started share its session: kill that group
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lake = Lake(uri)
    assert lake.count("samples") == 0  # nothing reached the lake before the commit
    src = Path(cmd[3].split("=", 1)[1])
    from plugins.image_folder import ImageFolderSource

    big = IngestSettings(progress=False, chunk_size=50, workers=0)
    report = ingest(
        ImageFolderSource(src),
        lake,
        settings=big,
        executor=executor_config(
            "ingest",
        ),
    )
    assert report.new_samples == 400
    assert not list(staged.glob("ingest-*"))  # the killed run's staging is cleared
    clean = Lake(tmp_path / "clean")
    ingest(ImageFolderSource(src), clean, settings=big)
    assert_same_lake(clean, lake)


def test_ray_ingest_into_s3_lake_equals_local(
    class_folder: Path, tmp_path: Path, ray_env: Any, s3: Any
) -> None:
    from plugins.image_folder import ImageFolderSource

    local = Lake(tmp_path / "local")
    ingest(ImageFolderSource(class_folder), local, settings=QUIET)
    remote = Lake(s3.uri(f"ray-ingest-{tmp_path.name}"), s3.storage_options)
    report = ingest(
        ImageFolderSource(class_folder),
        remote,
        settings=QUIET,
        executor=executor_config(
            "ingest",
        ),
    )
    assert (report.new_samples, report.new_media) == (8, 7)
    assert_same_lake(local, remote)
    again = ingest(
        ImageFolderSource(class_folder),
        remote,
        settings=QUIET,
        executor=executor_config(
            "ingest",
        ),
    )
    assert (again.new_samples, again.new_media) == (0, 0)


def test_audio_source_on_ray_equals_local(tmp_path: Path, ray_env: Any) -> None:
    """A source that analyses its own media (audio): its rows are staged by the driver."""
    import numpy as np

    from lake.audio import encode_pcm
    from plugins.audio import AudioSource
    from tests.conftest import conf_kwargs

    tones = tmp_path / "tones"
    tones.mkdir()
    t = np.arange(8000) / 16000
    for k, hz in enumerate([220, 440, 880, 220]):
        pcm = (0.3 * np.sin(2 * np.pi * hz * t + k) * 32767).astype(np.int16)
        (tones / f"tone_{k}.wav").write_bytes(encode_pcm(pcm, 16000, "wav"))
    (tones / "broken.wav").write_bytes(b"RIFF not audio")

    def source() -> AudioSource:
        return AudioSource(**conf_kwargs("ingest", "source", "source=audio", path=tones, workers=0))

    r1, r2, local, on_ray = both(tmp_path, source, ray_env)
    assert r2.new_media == r1.new_media >= 4 and r2.rejected == r1.rejected == 1
    assert_same_lake(local, on_ray)
    assert (tmp_path / "r-ray.jsonl").read_text() == (tmp_path / "r-local.jsonl").read_text()
