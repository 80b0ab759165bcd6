"""Hostile dataset files through the real ingest runner (lakeloom issue 15, parts 1 and 4).

Each test builds a small dataset in tmp_path with one hostile entry among good ones and
checks that (a) the hostile entry is in the rejects report at its own file/line/row with
the reason, (b) the good entries around it landed and (c) no bytes from outside the
dataset root landed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import wave
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake.ingest import IngestReport, IngestSettings, ingest
from lake.plugin import Source
from lake.store import Lake
from plugins.audio import AudioSource
from plugins.clip_pairs import ClipPairsSource
from plugins.image_folder import ImageFolderSource
from plugins.llava import LlavaSource
from plugins.messages import MessagesSource
from tests.conftest import jpeg_bytes

QUIET = IngestSettings(progress=False, workers=0)
SECRET = "root:x:0:0:SECRET-OUTSIDE-THE-ROOT"


def run(source: Source, lake: Lake, tmp_path: Path) -> tuple[IngestReport, list[dict], list[dict]]:
    """Ingest ``source``; return the report, the rejects report lines and the samples."""
    rejects_path = tmp_path / "rejects.jsonl"
    report = ingest(source, lake, settings=QUIET, rejects_path=rejects_path)
    rejects = (
        [json.loads(line) for line in rejects_path.read_text().splitlines()]
        if rejects_path.exists()
        else []
    )
    samples = lake.dataset("samples").to_table().to_pylist() if lake.exists("samples") else []
    return report, rejects, samples


def media_bytes(lake: Lake) -> list[bytes]:
    """Every stored media object's bytes."""
    if not lake.exists("media"):
        return []
    return [b for b in lake.dataset("media").to_table(columns=["bytes"]).column(0).to_pylist()]


def only(rejects: list[dict], **where: Any) -> dict:
    """The one reject matching ``where`` (source_file, line, row)."""
    hits = [r for r in rejects if all(r.get(k) == v for k, v in where.items())]
    assert len(hits) == 1, (where, rejects)
    return hits[0]


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the dataset root holding a secret text and a secret image."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "passwd").write_text(SECRET + "\n")
    (out / "secret.jpg").write_bytes(jpeg_bytes((1, 2, 3)))
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``pets/cls/{a,b}.jpg`` with captions ``a.txt`` / ``b.txt``."""
    root = tmp_path / "pets"
    (root / "cls").mkdir(parents=True)
    for name, color in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        (root / "cls" / f"{name}.jpg").write_bytes(jpeg_bytes(color))
        (root / "cls" / f"{name}.txt").write_text(f"caption {name}")
    return root


@pytest.fixture
def llava_root(tmp_path: Path) -> Path:
    """``ds/images/{a,b}.jpg`` for JSON sources."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (root / "images" / "b.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    return root


def llava_line(image: str, text: str = "What is it?") -> str:
    """One LLaVA JSONL record with one image."""
    conv = [{"from": "human", "value": f"<image>\n{text}"}, {"from": "gpt", "value": "a square"}]
    return json.dumps({"image": image, "conversations": conv})


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    """A JSONL file from text or raw byte lines."""
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def landed_lines(samples: list[dict]) -> list[str]:
    """The source_uri of every sample, sorted."""
    return sorted(s["source_uri"] for s in samples)


# -- part 1: confinement -------------------------------------------------------------------
def test_sidecar_symlink_out_of_the_root_is_rejected(
    folder: Path, outside: Path, lake: Lake, tmp_path: Path
) -> None:
    (folder / "cls" / "ok.jpg").write_bytes(jpeg_bytes((0, 200, 0)))
    (folder / "cls" / "ok.txt").symlink_to(outside / "passwd")
    report, rejects, samples = run(ImageFolderSource(folder, caption_sidecar=True), lake, tmp_path)
    reject = only(rejects, source_file="cls/ok.txt")
    assert "symlink escapes the dataset root" in reject["reason"]
    assert sorted(s["caption"] for s in samples) == ["caption a", "caption b"]
    assert not any(SECRET in (s["caption"] or "") for s in samples)
    assert report.rejected == 1


def test_image_and_class_folder_symlinks_out_of_the_root_are_rejected(
    folder: Path, outside: Path, lake: Lake, tmp_path: Path
) -> None:
    (folder / "cls" / "link.jpg").symlink_to(outside / "secret.jpg")
    (folder / "evil").symlink_to(outside, target_is_directory=True)
    # a symlink that stays inside the root is fine
    (folder / "cls" / "inside.jpg").symlink_to(folder / "cls" / "a.jpg")
    _, rejects, samples = run(ImageFolderSource(folder), lake, tmp_path)
    assert "symlink escapes the dataset root" in only(rejects, source_file="cls/link.jpg")["reason"]
    assert "symlink escapes the dataset root" in only(rejects, source_file="evil")["reason"]
    assert len(rejects) == 2
    assert landed_lines(samples) == ["cls/a.jpg", "cls/b.jpg", "cls/inside.jpg"]
    assert (outside / "secret.jpg").read_bytes() not in media_bytes(lake)


def test_fifo_in_an_image_folder_is_rejected_without_opening_it(
    folder: Path, lake: Lake, tmp_path: Path
) -> None:
    fifo = folder / "cls" / "pipe.jpg"
    os.mkfifo(fifo)
    side = folder / "cls" / "b.txt"
    side.unlink()
    os.mkfifo(side)  # a FIFO sidecar: never opened either
    result: dict[str, Any] = {}

    def target() -> None:
        result["out"] = run(ImageFolderSource(folder, caption_sidecar=True), lake, tmp_path)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # a regression: unblock the reader(s), then fail
        for path in (fifo, side):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("ingest blocked on a FIFO")
    _, rejects, samples = result["out"]
    assert "not a regular file (FIFO)" in only(rejects, source_file="cls/pipe.jpg")["reason"]
    assert "not a regular file (FIFO)" in only(rejects, source_file="cls/b.txt")["reason"]
    assert landed_lines(samples) == ["cls/a.jpg"]


def test_symlink_to_dev_zero_is_rejected(folder: Path, lake: Lake, tmp_path: Path) -> None:
    (folder / "cls" / "zero.jpg").symlink_to("/dev/zero")
    _, rejects, samples = run(ImageFolderSource(folder), lake, tmp_path)
    assert "symlink escapes the dataset root" in only(rejects, source_file="cls/zero.jpg")["reason"]
    assert landed_lines(samples) == ["cls/a.jpg", "cls/b.jpg"]
    # allowed outside the root, it is still not a regular file
    lake2 = Lake(tmp_path / "lake2")
    _, rejects, samples = run(ImageFolderSource(folder, allow_outside_root=True), lake2, tmp_path)
    reason = only(rejects, source_file="cls/zero.jpg")["reason"]
    assert "not a regular file (character device)" in reason
    assert landed_lines(samples) == ["cls/a.jpg", "cls/b.jpg"]


def test_llava_image_symlink_out_of_the_root_is_rejected(
    llava_root: Path, outside: Path, lake: Lake, tmp_path: Path
) -> None:
    (llava_root / "images" / "link.jpg").symlink_to(outside / "secret.jpg")
    data = write_lines(
        llava_root / "data.jsonl",
        [llava_line("images/a.jpg"), llava_line("images/link.jpg"), llava_line("images/b.jpg")],
    )
    _, rejects, samples = run(LlavaSource(data), lake, tmp_path)
    reason = only(rejects, source_file="data.jsonl", line=2)["reason"]
    assert "symlink escapes the dataset root" in reason
    assert landed_lines(samples) == ["data.jsonl#L1", "data.jsonl#L3"]
    assert (outside / "secret.jpg").read_bytes() not in media_bytes(lake)


def test_audio_folder_symlink_and_fifo_are_rejected(
    outside: Path, lake: Lake, tmp_path: Path
) -> None:
    root = tmp_path / "rec"
    root.mkdir()

    def tone(path: Path, level: int) -> None:
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(bytes([level % 256, 0]) * 8000)

    tone(root / "good.wav", 40)
    tone(outside / "secret.wav", 90)
    (root / "link.wav").symlink_to(outside / "secret.wav")
    os.mkfifo(root / "pipe.wav")
    result: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: result.update(out=run(AudioSource(root, workers=0), lake, tmp_path)),
        daemon=True,
    )
    thread.start()
    thread.join(60)
    if thread.is_alive():
        os.close(os.open(root / "pipe.wav", os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail("audio ingest blocked on a FIFO")
    _, rejects, samples = result["out"]
    assert "symlink escapes the dataset root" in only(rejects, source_file="link.wav")["reason"]
    assert "not a regular file (FIFO)" in only(rejects, source_file="pipe.wav")["reason"]
    assert landed_lines(samples) == ["good.wav"]


def test_media_and_line_size_limits(llava_root: Path, lake: Lake, tmp_path: Path) -> None:
    big = "x" * 5000
    data_url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes((9, 9, 9)) * 40).decode()
    (llava_root / "images" / "huge.jpg").write_bytes(jpeg_bytes((5, 5, 5)) * 40)
    data = write_lines(
        llava_root / "data.jsonl",
        [
            llava_line("images/a.jpg"),
            llava_line("images/a.jpg", big),  # line 2: over max_line_bytes
            llava_line("images/b.jpg"),
            llava_line(data_url[:3000]),  # line 4: a data: URL under the line limit...
            llava_line("images/huge.jpg"),  # line 5: a file over max_media_bytes
        ],
    )
    limit = len(jpeg_bytes((5, 5, 5))) * 10
    source = LlavaSource(data, max_line_bytes=4096, max_media_bytes=limit)
    _, rejects, samples = run(source, lake, tmp_path)
    line2 = only(rejects, source_file="data.jsonl", line=2)["reason"]
    assert "over the 4096-byte limit (max_line_bytes)" in line2
    assert str(len(llava_line("images/a.jpg", big))) in line2  # the size is named
    assert "max_media_bytes" in only(rejects, source_file="data.jsonl", line=5)["reason"]
    assert "data.jsonl#L3" in landed_lines(samples) and "data.jsonl#L1" in landed_lines(samples)
    # a data: URL over the media limit
    big_url = write_lines(
        llava_root / "url.jsonl", [llava_line(data_url), llava_line("images/b.jpg")]
    )
    _, rejects, samples = run(
        LlavaSource(big_url, max_media_bytes=limit), Lake(tmp_path / "l2"), tmp_path
    )
    reason = only(rejects, source_file="url.jsonl", line=1)["reason"]
    assert "data: URL image is about" in reason and "max_media_bytes" in reason
    assert landed_lines(samples) == ["url.jsonl#L2"]


def test_inline_parquet_bytes_over_the_media_limit(tmp_path: Path, lake: Lake) -> None:
    root = tmp_path / "pairs"
    root.mkdir()
    small, large = jpeg_bytes((1, 100, 1)), jpeg_bytes((100, 1, 1), size=(640, 480))
    table = pa.table({"image": [small, large], "caption": ["small", "large"]})
    pq.write_table(table, root / "p.parquet")
    source = ClipPairsSource(root / "p.parquet", max_media_bytes=len(small) + 10)
    _, rejects, samples = run(source, lake, tmp_path)
    reason = only(rejects, source_file="p.parquet", row=1)["reason"]
    assert f"{len(large)} bytes, over the {len(small) + 10}-byte limit" in reason
    assert [s["caption"] for s in samples] == ["small"]


def test_file_url_with_a_host_is_rejected(llava_root: Path, lake: Lake, tmp_path: Path) -> None:
    a = (llava_root / "images" / "a.jpg").resolve()
    data = write_lines(
        llava_root / "data.jsonl",
        [llava_line(f"file://evil.example{a}"), llava_line(f"file://localhost{a}")],
    )
    source = LlavaSource(data, allow_absolute=True)
    _, rejects, samples = run(source, lake, tmp_path)
    assert "remote host 'evil.example'" in only(rejects, source_file="data.jsonl", line=1)["reason"]
    assert landed_lines(samples) == ["data.jsonl#L2"]


# -- part 4: one bad record never costs another ----------------------------------------------
def test_symlink_loop_nul_byte_and_long_path_reject_one_record_each(
    llava_root: Path, lake: Lake, tmp_path: Path
) -> None:
    (llava_root / "images" / "loop.jpg").symlink_to("loop.jpg")
    data = write_lines(
        llava_root / "data.jsonl",
        [
            llava_line("images/a.jpg"),
            llava_line("images/loop.jpg"),  # line 2
            llava_line("images/a\x00.jpg", "nul"),  # line 3
            llava_line("images/" + "n" * 300 + ".jpg", "long"),  # line 4
            llava_line("images/b.jpg"),  # line 5
        ],
    )
    report, rejects, samples = run(LlavaSource(data), lake, tmp_path)
    assert "Too many levels of symbolic links" in only(rejects, line=2)["reason"]
    assert "null byte" in only(rejects, line=3)["reason"]
    assert "File name too long" in only(rejects, line=4)["reason"]
    assert landed_lines(samples) == ["data.jsonl#L1", "data.jsonl#L5"]
    assert report.rejected == 3


def test_deep_nesting_rejects_its_line_or_row_only(
    llava_root: Path, lake: Lake, tmp_path: Path
) -> None:
    deep = "[" * 10000 + "]" * 10000
    jsonl = write_lines(
        llava_root / "data.jsonl",
        [llava_line("images/a.jpg"), '{"x": 1, "d": ' + deep + "}", llava_line("images/b.jpg")],
    )
    _, rejects, samples = run(LlavaSource(jsonl), lake, tmp_path)
    assert "nested too deeply" in only(rejects, source_file="data.jsonl", line=2)["reason"]
    assert landed_lines(samples) == ["data.jsonl#L1", "data.jsonl#L3"]
    # a JSON array: the deep element is a reject at its row, the others land
    array = llava_root / "arr.json"
    array.write_text(
        "["
        + ",\n".join([llava_line("images/a.jpg", "one"), deep, llava_line("images/b.jpg", "three")])
        + "]"
    )
    _, rejects, samples = run(LlavaSource(array), Lake(tmp_path / "l2"), tmp_path)
    assert "nested too deeply" in only(rejects, source_file="arr.json", row=1)["reason"]
    assert landed_lines(samples) == ["arr.json#0", "arr.json#2"]


def test_invalid_utf8_rejects_its_line_only(llava_root: Path, lake: Lake, tmp_path: Path) -> None:
    bad = llava_line("images/a.jpg", "cafe").encode().replace(b"cafe", b"caf\xff")
    data = write_lines(
        llava_root / "data.jsonl",
        [llava_line("images/a.jpg"), bad, "", llava_line("images/b.jpg")],
    )
    _, rejects, samples = run(LlavaSource(data), lake, tmp_path)
    assert "invalid UTF-8" in only(rejects, source_file="data.jsonl", line=2)["reason"]
    assert len(rejects) == 1
    assert landed_lines(samples) == ["data.jsonl#L1", "data.jsonl#L4"]


def test_lone_surrogates_reject_their_record_only(
    llava_root: Path, lake: Lake, tmp_path: Path
) -> None:
    # JSON may spell a lone surrogate ("\\ud800"), and a file name that is not UTF-8
    # decodes to one: either used to fail the whole commit
    bad = llava_line("images/a.jpg").replace("What is it?", "caf\\ud800")
    data = write_lines(llava_root / "data.jsonl", [llava_line("images/a.jpg"), bad])
    _, rejects, samples = run(LlavaSource(data), lake, tmp_path)
    assert "not valid Unicode" in only(rejects, source_file="data.jsonl", line=2)["reason"]
    assert landed_lines(samples) == ["data.jsonl#L1"]

    folder = tmp_path / "latin1"
    (folder / "cls").mkdir(parents=True)
    (folder / "cls" / "ok.jpg").write_bytes(jpeg_bytes((0, 0, 200)))
    with open(os.fsencode(folder / "cls") + b"/caf\xe9.jpg", "wb") as fh:
        fh.write(jpeg_bytes((9, 9, 9)))
    other = Lake(tmp_path / "lake2")
    _, rejects, samples = run(ImageFolderSource(folder), other, tmp_path / "r2")
    assert len(rejects) == 1 and "not valid Unicode" in rejects[0]["reason"]
    assert landed_lines(samples) == ["cls/ok.jpg"]


def test_csv_invalid_utf8_and_long_line_reject_their_rows_only(tmp_path: Path, lake: Lake) -> None:
    root = tmp_path / "pairs"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (root / "img" / "b.jpg").write_bytes(jpeg_bytes((0, 0, 200)))
    (root / "p.csv").write_bytes(
        b"\xef\xbb\xbfimage,caption\n"
        b"img/a.jpg,red\n"
        b"img/a.jpg,caf\xff\n"  # line 3
        b"img/b.jpg," + b"y" * 600 + b"\n"  # line 4
        b"img/b.jpg,blue\n"
    )
    _, rejects, samples = run(ClipPairsSource(root / "p.csv", max_line_bytes=512), lake, tmp_path)
    assert "invalid UTF-8" in only(rejects, source_file="p.csv", line=3)["reason"]
    assert "max_line_bytes" in only(rejects, source_file="p.csv", line=4)["reason"]
    assert sorted(s["caption"] for s in samples) == ["blue", "red"]


def test_utf8_bom_is_accepted_everywhere(
    llava_root: Path, folder: Path, lake: Lake, tmp_path: Path
) -> None:
    bom = b"\xef\xbb\xbf"
    jsonl = llava_root / "data.jsonl"
    jsonl.write_bytes(bom + (llava_line("images/a.jpg") + "\n").encode())
    array = llava_root / "arr.json"
    array.write_bytes(bom + ("[" + llava_line("images/b.jpg") + "]").encode())
    messages = llava_root / "msgs.jsonl"
    record = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    messages.write_bytes(bom + json.dumps(record).encode() + b"\n")
    for i, source in enumerate((LlavaSource(jsonl), LlavaSource(array), MessagesSource(messages))):
        _, rejects, samples = run(source, Lake(tmp_path / f"l{i}"), tmp_path)
        assert rejects == [] and len(samples) == 1
    (folder / "cls" / "a.txt").write_bytes(bom + b"a cat")
    _, rejects, samples = run(ImageFolderSource(folder, caption_sidecar=True), lake, tmp_path)
    assert rejects == []
    assert sorted(s["caption"] for s in samples) == ["a cat", "caption b"]
