"""Fixtures for core tests: small real lakes (ingested images) and config composition."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import conf_kwargs, jpeg_bytes, png_bytes

TEST_CONF = Path(__file__).parent / "conf"


def _folder(root: Path, classes: dict[str, int], seed: int) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = ((37 * i + seed) % 256, (90 * c + 11 * i) % 256, (200 - 50 * c) % 256)
            data = jpeg_bytes(colour, (32, 24)) if i % 3 else png_bytes(colour, (24, 24))
            suffix = ".jpg" if i % 3 else ".png"
            (root / name / f"{name}{i:03d}{suffix}").write_bytes(data)
    return root


@pytest.fixture(scope="session")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with datasets ``pets`` (cat 20, dog 20) and ``toys`` (ball 8).

    Four pets samples carry ``split = 'test'`` and two ``split = 'val'``; all others
    have no split (hash split).
    """
    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    base = tmp_path_factory.mktemp("core_lake")
    lake = Lake(base / "lake")
    settings = IngestSettings(workers=0, progress=False)
    ingest(
        ImageFolderSource(_folder(base / "pets", {"cat": 20, "dog": 20}, 1)), lake, "pets", settings
    )
    ingest(ImageFolderSource(_folder(base / "toys", {"ball": 8}, 5)), lake, "toys", settings)
    rows = lake.dataset(SAMPLES).to_table(filter="dataset = 'pets'").sort_by("source_uri")
    rows = rows.slice(0, 6).to_pylist()
    for i, r in enumerate(rows):
        r["split"] = "test" if i < 4 else "val"
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows, lake.dataset(SAMPLES).schema))
    return base / "lake"


#: colours of the VLM lake's images (names from the tiny tokenizers' corpus)
VLM_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
               "yellow": (230, 220, 30)}  # fmt: skip


@pytest.fixture(scope="session")
def vlm_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake for the VLM tests, ingested through the real LLaVA and ShareGPT plugins.

    ``convs`` (LLaVA JSON, 24 samples): 22 with one small JPEG, whose answer names its
    colour (some two-turn), and 2 text-only; ``split`` is set: 4 image samples ``val``,
    2 ``test``, the rest ``train``. ``prefs`` (ShareGPT JSONL, 8 samples, all ``train``):
    "<image> Which colour is the shape?" with ``chosen`` the true colour and ``rejected``
    another one.
    """
    import pyarrow.compute as pc

    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.llava import LlavaSource
    from plugins.sharegpt import ShareGPTSource

    base = tmp_path_factory.mktemp("vlm_lake")
    names = list(VLM_COLOURS)
    convs, prefs = base / "convs", base / "prefs"
    (convs / "images").mkdir(parents=True)
    prefs.mkdir()
    records = []
    for i in range(22):
        colour = names[i % 4]
        rgb = tuple((c + 7 * i) % 256 for c in VLM_COLOURS[colour])
        (convs / "images" / f"{i:02d}.jpg").write_bytes(jpeg_bytes(rgb, (40 + 4 * i, 36)))
        turns = [{"from": "human", "value": "<image>\nWhich colour is the shape?"},
                 {"from": "gpt", "value": f"It is {colour}."}]  # fmt: skip
        if i % 3 == 2:
            answer = f"A {colour} square on a light background."
            turns += [{"from": "human", "value": "Describe the image briefly."},
                      {"from": "gpt", "value": answer}]  # fmt: skip
        records.append({"id": f"c{i:02d}", "image": f"images/{i:02d}.jpg", "conversations": turns})
    for i, shape in enumerate(("circle", "square")):
        records.append({"id": f"t{i}", "conversations": [
            {"from": "human", "value": f"What is a {shape}?"},
            {"from": "gpt", "value": f"A {shape} is a shape."}]})  # fmt: skip
    (convs / "data.json").write_text(json.dumps(records))
    lines = []
    for i in range(8):
        colour, wrong = names[i % 4], names[(i + 1) % 4]
        (prefs / f"p{i}.jpg").write_bytes(jpeg_bytes(VLM_COLOURS[colour], (48, 40 + 2 * i)))
        lines.append(json.dumps({
            "id": f"p{i}", "image": f"p{i}.jpg",
            "conversations": [{"from": "human", "value": "<image> Which colour is the shape?"}],
            "chosen": f"It is {colour}.", "rejected": f"It is {wrong}.",
        }))  # fmt: skip
    (prefs / "pairs.jsonl").write_text("\n".join(lines) + "\n")

    lake = Lake(base / "lake")
    settings = IngestSettings(workers=0, progress=False)
    for report in (
        ingest(LlavaSource(convs / "data.json"), lake, "convs", settings),
        ingest(ShareGPTSource(prefs / "pairs.jsonl"), lake, "prefs", settings),
    ):
        assert report.new_samples and not report.rejected, report.summary()
    table = lake.dataset(SAMPLES).to_table()
    rows = table.sort_by("source_uri").to_pylist()
    with_image = [r for r in rows if r["dataset"] == "convs" and r["media_ids"]]
    split = {r["sample_id"]: "val" for r in with_image[:4]}
    split.update({r["sample_id"]: "test" for r in with_image[4:6]})
    for r in rows:
        r["split"] = split.get(r["sample_id"], "train")
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows, table.schema))
    counts = pc.value_counts(lake.dataset(SAMPLES).to_table(columns=["dataset"])["dataset"])
    assert {c["values"]: c["counts"] for c in counts.to_pylist()} == {"convs": 24, "prefs": 8}
    return base / "lake"


@pytest.fixture
def compose(tmp_path: Path, lake_dir: Path):
    """Compose ``conf/train.yaml`` (plus the test config dir) with overrides; ``lake``
    picks another lake than ``lake_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def _compose(*overrides: str, runs: Path | None = None, lake: Path | None = None):
        base = [
            f"hydra.searchpath=[file://{TEST_CONF}]",
            f"lake.uri={lake or lake_dir}",
            f"runs_dir={runs or tmp_path / 'runs'}",
        ]
        with initialize_config_module(version_base="1.3", config_module="conf"):
            return hydra_compose(config_name="train", overrides=[*base, *overrides])

    return _compose


#: the media lake's tones and the "transcripts" they are labelled with (learnable)
TONES = {330.0: "a low tone", 660.0: "a middle tone", 1320.0: "a high tone"}


@pytest.fixture(scope="session")
def media_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of every sample kind Apotheon reads, through the real sources.

    ``pics`` (LLaVA JSON): 12 captioned JPEGs ("A red square on a light background.").
    ``clips`` (video source): one video of 3 scenes (red circle / 330 Hz, blue square /
    660 Hz, green triangle / 1320 Hz) -> frame samples and clip samples; frames and clips
    get their scene's caption, clips the tone's words as transcript. ``tones`` (audio
    source): 6 WAV tones whose media transcript names the pitch (as ``enrich=transcribe``
    would write it).
    """
    import numpy as np

    from lake.audio import encode_pcm
    from lake.ingest import IngestSettings, ingest
    from lake.schema import KIND_TAGS, MEDIA, SAMPLES
    from lake.store import Lake
    from lake.synth_video import Segment, write_video
    from plugins.audio import AudioSource
    from plugins.llava import LlavaSource
    from plugins.video import VideoSource

    base = tmp_path_factory.mktemp("media_lake")
    lake = Lake(base / "lake")
    settings = IngestSettings(workers=0, progress=False)
    pics = base / "pics"
    (pics / "images").mkdir(parents=True)
    records = []
    for i in range(12):
        colour = list(VLM_COLOURS)[i % 4]
        rgb = tuple((c + 5 * i) % 256 for c in VLM_COLOURS[colour])
        (pics / "images" / f"{i:02d}.jpg").write_bytes(jpeg_bytes(rgb, (40 + 2 * i, 36)))
        turns = [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                 {"from": "gpt", "value": f"A {colour} square on a light background."}]  # fmt: skip
        records.append({"id": f"p{i:02d}", "image": f"images/{i:02d}.jpg", "conversations": turns})
    (pics / "data.json").write_text(json.dumps(records))
    ingest(LlavaSource(pics / "data.json"), lake, "pics", settings)

    scenes = [
        ((90, 90, 90), "circle", (200, 30, 30), 330.0, "A red circle on a grey background."),
        ((30, 30, 200), "square", (30, 160, 60), 660.0, "A green square on a blue background."),
        ((30, 160, 60), "triangle", (30, 30, 200), 1320.0, "A blue triangle on a green bg."),
    ]
    videos = base / "videos"
    write_video(videos / "v.mp4", [Segment(1.6, bg, shape, fg, "moving", hz)
                                    for bg, shape, fg, hz, _ in scenes])  # fmt: skip
    source = VideoSource(**conf_kwargs("ingest", "source", "source=video", path=videos, workers=0))
    ingest(source, lake, "clips", settings)

    tones = base / "tones"
    tones.mkdir()
    t = np.arange(int(1.5 * 16000)) / 16000
    for k, hz in enumerate([*TONES, *TONES]):
        pcm = (0.3 * np.sin(2 * np.pi * hz * t + k) * 32767).astype(np.int16)
        (tones / f"tone_{k}.wav").write_bytes(encode_pcm(pcm, 16000, "wav"))
    ingest(AudioSource(tones, workers=0), lake, "tones", settings)

    media = lake.dataset(MEDIA).to_table(columns=["media_id", "kind", "scene", "source_uri"])
    media = media.to_pylist()
    audio_media = [m for m in media if m["kind"] == "audio" and m["source_uri"].startswith("tone_")]
    hz_of = {f"tone_{k}.wav": hz for k, hz in enumerate([*TONES, *TONES])}
    lake.update_columns(MEDIA, pa.table({
        "media_id": [m["media_id"] for m in audio_media],
        "transcript": [TONES[hz_of[m["source_uri"]]] for m in audio_media],
    }))  # fmt: skip
    scene_of = {m["media_id"]: m["scene"] for m in media if m["kind"] == "frame"}
    samples = (
        lake.dataset(SAMPLES)
        .to_table(columns=["sample_id", "tags", "media_ids"], filter="dataset = 'clips'")
        .to_pylist()
    )
    ids, captions, transcripts = [], [], []
    for s in samples:
        scene = scene_of[s["media_ids"][0]]
        ids.append(s["sample_id"])
        captions.append(scenes[scene][4])
        clip = KIND_TAGS["clip"] in s["tags"]
        transcripts.append(TONES[scenes[scene][3]] if clip else None)
    lake.update_columns(SAMPLES, pa.table({
        "sample_id": ids, "caption": captions, "transcript": pa.array(transcripts, pa.string()),
    }))  # fmt: skip
    return base / "lake"


@pytest.fixture(scope="module")
def tiny():
    """``tiny(family)`` -> (model, processor), each family built once per test module."""
    from core.models.vlm_tiny import build_tiny

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model, processor = build_tiny(name, {}, seed=0)
            cache[name] = (model.eval().float(), processor)
        return cache[name]

    return get
