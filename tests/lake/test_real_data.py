"""Real demo data (lake/real_data.py): photos with an EXIF photo, the traffic video, read
speech; and the WER normaliser (lake/wer.py) the transcription bench and tests share."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from lake.images import decode_image
from lake.ingest import IngestSettings, ingest
from lake.real_data import (
    EXIF_PHOTO,
    ORIENTATION,
    ORIENTATION_TAG,
    PHOTOS,
    demo_photos,
    demo_read_speech,
    demo_traffic,
    package_data_dir,
    read_transcriptions,
)
from lake.store import Lake
from lake.wer import normalise, number_words, word_errors
from tests.conftest import conf_kwargs

QUIET = IngestSettings(workers=0, progress=False)
SPEECH_SRC = Path("/usr/share/pocketsphinx/test/data")
needs_packages = pytest.mark.skipif(
    package_data_dir("skimage") is None or package_data_dir("mvtbdata") is None,
    reason="scikit-image and mvtb-data are needed (pyproject dependencies)",
)


# ---- the normaliser --------------------------------------------------------------------


def test_normalise_spells_out_numbers_and_abbreviations() -> None:
    assert normalise("And Mr. John Dashwood had 10 ill-disposed sons.") == (
        "and mister john dashwood had ten ill disposed sons"
    )
    assert normalise("Mrs. Dr. 21st, 1,905 it's 'quoted'") == (
        "missus doctor twenty first one thousand nine hundred five it's quoted"
    )
    assert number_words(0) == "zero"
    assert number_words(40) == "forty"
    assert number_words(2_000_013) == "two million thirteen"


def test_word_errors_count_only_real_differences() -> None:
    got = word_errors(["ten of clubs", "he was not an ill disposed young man"],
                      ["10 of clubs.", "He was not an old-sposed young man."])  # fmt: skip
    # "ill disposed" -> "old sposed": two substitutions over 3 + 8 words
    assert (got["words"], got["substitutions"], got["deletions"], got["insertions"]) == (
        11, 2, 0, 0,
    )  # fmt: skip
    assert got["wer"] == pytest.approx(2 / 11)
    assert word_errors([], [])["wer"] is None
    with pytest.raises(ValueError, match="1 references but 0 hypotheses"):
        word_errors(["a"], [])


# ---- photos ------------------------------------------------------------------------------


@needs_packages
def test_photos_captions_exif_and_idempotence(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    made = demo_photos(out, 160)
    assert len(made["files"]) == len(PHOTOS) and "lena.jpg" not in made["files"]
    rows = list(csv.DictReader((out / "captions.csv").open()))
    assert {r["image"]: r["caption"] for r in rows}[EXIF_PHOTO] == "a tabby cat"
    assert all(r["caption"] and (out / r["image"]).is_file() for r in rows)
    with Image.open(out / EXIF_PHOTO) as raw:
        assert raw.getexif()[ORIENTATION_TAG] == ORIENTATION
        assert raw.size == (106, 160)  # stored sideways: the cat is 451 x 300
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert demo_photos(out, 160) == made
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


@needs_packages
def test_real_photos_ingest_upright_through_the_one_decoder(tmp_path: Path) -> None:
    from plugins.clip_pairs import ClipPairsSource

    out = tmp_path / "photos"
    demo_photos(out, 160)
    lake = Lake(tmp_path / "lake")
    src = ClipPairsSource(**conf_kwargs("ingest", "source", "source=clip_pairs",
                                        path=out / "captions.csv"))  # fmt: skip
    report = ingest(src, lake, "photos", QUIET)
    assert report.new_samples == len(PHOTOS) and not report.rejected, report.summary()
    samples = lake.dataset("samples").to_table().to_pylist()
    assert {s["caption"] for s in samples} >= {"a tabby cat", "the Mona Lisa painting"}
    media = {m["source_uri"]: m for m in lake.dataset("media").to_table().to_pylist()}
    cat = media[EXIF_PHOTO]
    assert cat["bytes"] == (out / EXIF_PHOTO).read_bytes()  # original bytes kept
    # the recorded size and every decoded view (the one decoder, the thumbnail) are
    # upright: wider than tall, while the stored pixels are turned sideways
    assert (cat["width"], cat["height"]) == (160, 106)
    assert decode_image(cat["bytes"]).size == (160, 106)
    thumb = Image.open(io.BytesIO(cat["thumb"]))
    assert thumb.width > thumb.height
    # the upright decode matches the source photo's pixels (not a mirror or a 270° turn)
    with Image.open(package_data_dir("skimage") / "chelsea.png") as src_img:
        ref = src_img.convert("RGB").resize((160, 106))
    got = decode_image(cat["bytes"])
    diff = sum(abs(a - b) for a, b in zip(got.tobytes(), ref.tobytes(), strict=True))
    assert diff / len(ref.tobytes()) < 12


# ---- the traffic video -------------------------------------------------------------------


@needs_packages
def test_traffic_video_ingests_frames_and_a_scene(tmp_path: Path) -> None:
    from plugins.video import VideoSource

    out = tmp_path / "traffic"
    assert demo_traffic(out)["files"] == ["traffic_sequence.mp4"]
    lake = Lake(tmp_path / "lake")
    src = VideoSource(**conf_kwargs("ingest", "source", "source=video", path=out, workers=0))
    report = ingest(src, lake, "traffic", QUIET)
    assert not report.rejected, report.summary()
    media = lake.dataset("media").to_table().to_pylist()
    video = [m for m in media if m["kind"] == "video"]
    assert len(video) == 1 and video[0]["duration_s"] == pytest.approx(11.7, abs=0.2)
    assert (video[0]["width"], video[0]["height"]) == (704, 576)
    frames = [m for m in media if m["kind"] == "frame"]
    assert frames and all(max(f["width"], f["height"]) <= 512 for f in frames)
    assert decode_image(frames[0]["bytes"]).size == (frames[0]["width"], frames[0]["height"])
    tags = [t for s in lake.dataset("samples").to_table().to_pylist() for t in s["tags"]]
    assert "kind:clip" in tags and "kind:frame" in tags


# ---- read speech -------------------------------------------------------------------------


def test_read_speech_is_skipped_with_a_note_without_the_package(tmp_path: Path, capsys) -> None:
    got = demo_read_speech(tmp_path / "missing", tmp_path / "out")
    assert got["files"] == [] and "pocketsphinx-testdata" in got["skipped"]
    assert "pocketsphinx-testdata not found" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_read_transcriptions_parses_and_names_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "transcription"
    good.write_text("<s> ten of  clubs  </s> (001)\n\n<s> five five </s> (x-0930)\n")
    assert read_transcriptions(good) == {"001": "ten of clubs", "x-0930": "five five"}
    bad = tmp_path / "bad"
    bad.write_text("<s> ok </s> (1)\nno markers here\n")
    with pytest.raises(ValueError, match=r"bad:2: not a"):
        read_transcriptions(bad)


@pytest.mark.skipif(not SPEECH_SRC.is_dir(), reason="pocketsphinx-testdata (make sysdeps)")
def test_read_speech_copies_clips_with_references(tmp_path: Path) -> None:
    got = demo_read_speech(SPEECH_SRC, tmp_path / "rs")
    truth = json.loads((tmp_path / "rs" / "ground_truth.json").read_text())
    assert truth == got["texts"] and len(truth) == 10
    assert truth["librivox_0880.wav"] == "he was not an ill disposed young man"
    assert truth["cards_001.wav"] == "ten of clubs"
    assert all((tmp_path / "rs" / name).stat().st_size > 10_000 for name in truth)
