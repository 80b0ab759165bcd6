"""``python -m core.family_check`` on a small lake built by the real demo job (``python -m
lake.demo``: the shapes images, their LLaVA conversations and two synthetic videos; the
speech, photo and traffic datasets left out for time): every family trains 2 steps,
merges and reloads to the same logits, and the video families train on the videos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.family_check import FAMILIES
from lake.runs import RunDir

REPO = Path(__file__).resolve().parents[2]
VIDEO_FAMILIES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm"}


def run(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "MPLCONFIGDIR": str(tmp_path / "mpl")}  # fmt: skip
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_every_family_trains_merges_and_reloads_on_the_demo_lake(tmp_path: Path) -> None:
    demo, lake = tmp_path / "demo", tmp_path / "lake"
    made = run([
        "lake.demo", f"lake.uri={lake}", f"lake.reports={tmp_path / 'reports'}",
        f"demo.out={demo / 'shapes'}", "demo.n=24", "demo.size=48",
        f"videos.out={demo / 'videos'}", "videos.n=2", "videos.narration=null",
        f"speech.out={demo / 'speech'}", "speech.n=1", f"photos.out={demo / 'photos'}",
        f"traffic.out={demo / 'traffic'}", f"read_speech.src={tmp_path / 'no_speech'}",
        f"read_speech.out={demo / 'read_speech'}", "~datasets.speech", "~datasets.photos",
        "~datasets.traffic", "~datasets.read_speech",
    ], tmp_path, timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]

    out = tmp_path / "check"
    got = run(["core.family_check", str(lake), "--steps", "2", "--out", str(out)], tmp_path, 600)
    assert got.returncode == 0, (got.stdout[-3000:], got.stderr[-3000:])
    figures = json.loads(got.stdout.strip().splitlines()[-1])
    rows = {r["family"]: r for r in figures["family_check"]}
    assert set(rows) == set(FAMILIES)
    for name, r in rows.items():
        assert r["ok"] and r["steps"] == 2, r
        assert r["max_delta"] <= 1e-4 and r["lora_params"] == 0, r
        assert r["skipped"] == 0 and r["image_samples"] == 8, r  # one epoch: each sample once
        if name == "llava":  # images only (LLaVA takes no video)
            assert r["kinds"] == ["image"] and r["video_samples"] == 0, r
        # LoRA: the adapter changed the outputs (LLaVA's and Qwen2-VL's tiny presets train fully)
        assert r["peft"] == (name not in ("llava", "qwen2_vl")), r
        assert r["adapter_delta"] > 1e-4 or not r["peft"], r
        if name in VIDEO_FAMILIES:  # both demo videos, as videos (frames on the video input)
            assert r["kinds"] == ["image", "video"] and r["video_samples"] == 2, r
            assert r["video_frames"] > 0, r
    assert f"{'family':<12}" in got.stdout  # the table
    assert (RunDir(out / "runs" / "qwen3_vl").merged / "config.json").is_file()
    assert (out / "runs" / "qwen3_vl" / "summary.json").is_file()
    import lance  # the demo lake itself is not written: the videos' conversations are in the fork

    datasets = lance.dataset(str(lake / "samples.lance")).to_table(columns=["dataset"])
    assert "family_check_videos" not in set(datasets.column("dataset").to_pylist())
