"""Exports: each format round-trips through its source plugin; selection, streaming, errors."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake.errors import ConfigError
from lake.export import MANIFEST, export
from lake.ingest import IngestSettings, ingest
from lake.plugin import Source
from lake.schema import MEDIA, SAMPLES
from lake.store import Lake
from plugins.clip_pairs import ClipPairsSource
from plugins.exporters import (
    ClipPairsCsvExporter,
    ClipPairsParquetExporter,
    LlavaExporter,
    MessagesExporter,
    ShareGPTExporter,
)
from plugins.image_folder import ImageFolderSource
from plugins.llava import LlavaSource
from plugins.messages import MessagesSource
from plugins.sharegpt import ShareGPTSource
from tests.conftest import REPO, jpeg_bytes, png_bytes

QUIET = IngestSettings(workers=0, progress=False)
TRICKY = 'naïve "quoted", comma;\n second line  '  # quotes, commas, newline, trailing spaces


def _images(root: Path) -> Path:
    """``root/img/{a,c,d}.jpg`` and ``b.png``."""
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.jpg").write_bytes(jpeg_bytes((200, 30, 30)))
    (root / "img" / "b.png").write_bytes(png_bytes((30, 30, 200)))
    (root / "img" / "c.jpg").write_bytes(jpeg_bytes((30, 200, 30)))
    (root / "img" / "d.jpg").write_bytes(jpeg_bytes((90, 90, 90)))
    return root


def _ingest(source: Source, lake: Lake, dataset: str) -> None:
    report = ingest(source, lake, dataset, QUIET)
    assert report.rejected == 0, report.summary()


def _rows(lake: Lake, where: str | None = None) -> list[dict[str, Any]]:
    return lake.dataset(SAMPLES).to_table(filter=where).to_pylist()


def _content(lake: Lake, where: str | None = None) -> dict[str, list[str]]:
    """sample_id -> sha256 of each of its media's stored bytes, in order."""
    media = lake.dataset(MEDIA).to_table(columns=["media_id", "bytes"]).to_pylist()
    digest = {m["media_id"]: hashlib.sha256(m["bytes"]).hexdigest() for m in media}
    return {r["sample_id"]: [digest[m] for m in r["media_ids"]] for r in _rows(lake, where)}


def _set_split(lake: Lake, splits: dict[str, str | None]) -> None:
    ids = list(splits)
    table = pa.table({"sample_id": ids, "split": pa.array([splits[i] for i in ids], pa.string())})
    assert lake.update_columns(SAMPLES, table) == len(ids)


def _split_all_but(lake: Lake, held_out: int = 1) -> None:
    """Every sample ``train`` except the last ``held_out`` (by source_uri): ``val``."""
    rows = sorted(_rows(lake), key=lambda r: r["source_uri"])
    n = len(rows) - held_out
    _set_split(lake, {r["sample_id"]: "train" if i < n else "val" for i, r in enumerate(rows)})


def _round_trip(
    lake: Lake, exporter: Any, source: Any, out: Path, tmp: Path, **kw: Any
) -> tuple[dict[str, Any], Lake]:
    """Export ``split=train``, ingest it into a fresh lake; assert the same samples."""
    report = export(lake, exporter, out, split="train", **kw)
    back = Lake(tmp / f"back_{out.name}")
    # the dataset is part of a sample's id: ingest back under the same name
    (dataset,) = {r["dataset"] for r in _rows(lake, "split = 'train'")}
    _ingest(source, back, dataset)
    assert _content(back) == _content(lake, "split = 'train'")
    assert report["changed_ids"] == 0 and report["skipped"] == {}
    return report, back


def _image_files(out: Path) -> list[Path]:
    return sorted(p for p in (out / "images").rglob("*") if p.is_file())


@pytest.fixture
def llava_lake(tmp_path: Path, lake: Lake) -> Lake:
    """LLaVA data: system turn, two samples sharing ``a.jpg``, multi-image, text-only, a
    preference pair; the last record (only one using ``d.jpg``) is held out as ``val``."""
    root = _images(tmp_path / "llava")

    def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
        return [{"from": f, "value": v} for f, v in turns]

    records = [
        {
            "id": "1",
            "image": "img/a.jpg",
            "conversations": conv(
                ("system", " "), ("human", "<image>\nWhat colour?"), ("gpt", TRICKY)
            ),
        },
        {"id": "2", "image": "img/a.jpg", "conversations": conv(("human", "Size?<image>"))},
        {
            "id": "3",
            "images": ["img/b.png", "img/c.jpg"],
            "conversations": conv(("human", "<image> vs <image>"), ("gpt", "blue, green")),
        },
        {"id": "4", "conversations": conv(("human", "hi"), ("gpt", "hello"))},
        {
            "id": "5",
            "image": "img/c.jpg",
            "conversations": conv(("human", "<image>Nice?")),
            "chosen": "yes",
            "rejected": "no",
        },
        {"id": "6", "image": "img/d.jpg", "conversations": conv(("human", "<image>grey?"))},
    ]
    (root / "data.json").write_text(json.dumps(records))
    _ingest(LlavaSource(root / "data.json"), lake, "llava")
    _split_all_but(lake)
    return lake


def test_llava_round_trip_writes_each_image_once_with_relative_paths(
    llava_lake: Lake, tmp_path: Path
) -> None:
    out = tmp_path / "exports" / "llava"
    report, _ = _round_trip(llava_lake, LlavaExporter(), LlavaSource(out), out, tmp_path)
    assert report["samples"] == 5 and report["selected"] == 5
    records = json.loads((out / "llava.json").read_text())
    # the records' own ids come back (samples.record_id)
    assert [r["id"] for r in records] == ["1", "2", "3", "4", "5"]
    paths = [p for r in records for p in ([r["image"]] if isinstance(r.get("image"), str) else [])]
    paths += [p for r in records if isinstance(r.get("image"), list) for p in r["image"]]
    assert all(not Path(p).is_absolute() and p.startswith("images/") for p in paths)
    # a.jpg is used twice, d.jpg only by the held-out sample: 3 files for 5 references
    files = _image_files(out)
    assert len(paths) == 5 and len(set(paths)) == 3 == len(files) == report["media"]
    for f in files:
        assert f.stem == hashlib.sha256(f.read_bytes()).hexdigest()
        assert f.parent.name == f.stem[:2] and f.suffix in (".jpg", ".png")
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["split"] == "train" and manifest["ingest"]["source"] == "llava"
    assert manifest["versions"] == llava_lake.current_versions()


def test_sharegpt_round_trip_with_custom_keys_and_preference_pairs(
    llava_lake: Lake, tmp_path: Path
) -> None:
    keys = {
        "messages_key": "messages",
        "role_key": "role",
        "content_key": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
    }
    out = tmp_path / "sharegpt"
    exporter = ShareGPTExporter(file="data.jsonl", **keys)
    report, _ = _round_trip(llava_lake, exporter, ShareGPTSource(out, **keys), out, tmp_path)
    lines = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    pair = next(x for x in lines if "chosen" in x)
    assert pair["chosen"] == {"role": "assistant", "content": "yes"}
    assert report["ingest"] == {
        "source": "sharegpt",
        "path": str(out),
        **keys,
        "system_tag": "system",
    }


@pytest.mark.parametrize("style", ["qwen", "openai", "text"])
def test_messages_round_trip_multi_image(style: str, tmp_path: Path, lake: Lake) -> None:
    root = _images(tmp_path / "msg")

    def img(path: str) -> dict[str, str]:
        return {"type": "image", "image": path}

    def text(t: str) -> dict[str, str]:
        return {"type": "text", "text": t}

    records = [
        {
            "messages": [
                {"role": "system", "content": "You compare."},
                {"role": "user", "content": [img("img/a.jpg"), text(" and "), img("img/b.png")]},
                {"role": "assistant", "content": "red, blue"},
                {"role": "user", "content": [text("and "), img("img/c.jpg"), img("img/a.jpg")]},
                {"role": "assistant", "content": [text(TRICKY)]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "<image><image>Same?"},
                {"role": "assistant", "content": "no"},
            ],
            "images": ["img/c.jpg", "img/b.png"],
        },
        {
            "messages": [
                {"role": "user", "content": "text only"},
                {"role": "assistant", "content": ""},
            ]
        },
        {"messages": [{"role": "user", "content": [img("img/d.jpg")]}]},
    ]
    (root / "chat.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    _ingest(MessagesSource(root), lake, "msg")
    _split_all_but(lake)
    out = tmp_path / f"messages_{style}"
    exporter = MessagesExporter(style=style)
    report, _ = _round_trip(lake, exporter, MessagesSource(out), out, tmp_path)
    assert report["media"] == 3 == len(_image_files(out))  # a, b, c once each; d held out
    first = json.loads((out / "messages.jsonl").read_text().splitlines()[0])
    user = first["messages"][1]["content"]
    if style == "text":
        assert user == "<image> and <image>" and len(first["images"]) == 4
    else:
        kind = {"qwen": "image", "openai": "image_url"}[style]
        assert [p["type"] for p in user] == [kind, "text", kind]
        assert first["messages"][2]["content"] == "red, blue"  # no image: plain string


@pytest.mark.parametrize(
    ("exporter", "data_file"),
    [
        (ClipPairsCsvExporter(), "pairs.csv"),
        (ClipPairsParquetExporter(), "pairs.parquet"),
        (ClipPairsParquetExporter(file="inline.parquet", inline=True), "inline.parquet"),
    ],
    ids=["csv", "parquet", "parquet_inline"],
)
def test_clip_pairs_round_trip(exporter: Any, data_file: str, tmp_path: Path, lake: Lake) -> None:
    root = _images(tmp_path / "pairs")
    with (root / "pairs.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", "label"])
        w.writerow(["img/a.jpg", TRICKY, "red"])
        w.writerow(["img/a.jpg", "the same red square", "red"])  # shares a.jpg
        w.writerow(["img/b.png", "a blue square", ""])  # no label
        w.writerow(["img/c.jpg", "ünïcödé green", "3"])
        w.writerow(["img/d.jpg", "held out", "grey"])
    _ingest(ClipPairsSource(root, label_column="label"), lake, "pairs")
    _split_all_but(lake)
    out = tmp_path / "out"
    source = ClipPairsSource(out, label_column="label")
    report, back = _round_trip(lake, exporter, source, out, tmp_path)
    assert report["files"][0] == data_file
    assert sorted(r["label"] or "" for r in _rows(back)) == ["", "3", "red", "red"]
    if exporter.inline_media:
        assert not (out / "images").exists() and report["media"] == 0
        images = pq.read_table(out / data_file).column("image").to_pylist()
        assert all(isinstance(b, bytes) for b in images)
    else:
        assert report["media"] == 3 == len(_image_files(out))


def test_image_folder_to_pairs_keeps_bytes_but_not_ids(
    class_folder: Path, tmp_path: Path, lake: Lake
) -> None:
    """image_folder keys its ids with the file path, which no pairs file carries."""
    for stem in ("cat0", "cat0_copy", "cat1"):
        (class_folder / "cat" / f"{stem}.txt").write_text("a cat")  # cat0_copy: same bytes
    (class_folder / "dog" / "dog0.txt").write_text("a dog")
    _ingest(ImageFolderSource(class_folder, caption_sidecar=True), lake, "pets")
    out = tmp_path / "pairs"
    report = export(lake, ClipPairsCsvExporter(), out)  # split=null: every sample
    assert report["samples"] == 4 == report["changed_ids"]
    assert report["skipped"] == {"no caption": 4}
    assert report["media"] == 3  # cat0 and its byte-identical copy share one file
    back = Lake(tmp_path / "back")
    _ingest(ClipPairsSource(out, label_column="label"), back, "pets")
    got = {(r["caption"], r["label"], tuple(r["media_ids"])) for r in _rows(back)}
    want = {
        (r["caption"], r["label"], tuple(r["media_ids"]))
        for r in _rows(lake, "caption IS NOT NULL")
    }
    assert got == want
    assert len(_rows(back)) == 3  # the copy and its original now have equal content: one sample
    assert not set(_content(back)) & set(_content(lake))


def test_caption_prompt_turns_captions_into_conversations(
    class_folder: Path, tmp_path: Path, lake: Lake
) -> None:
    (class_folder / "cat" / "cat1.txt").write_text("a cat")
    _ingest(ImageFolderSource(class_folder, caption_sidecar=True), lake, "pets")
    with pytest.raises(ConfigError, match=r"nothing to export: all 8 .*no conversation \(caption"):
        export(lake, LlavaExporter(), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    report = export(lake, LlavaExporter(caption_prompt="Describe."), tmp_path / "cap")
    assert report["samples"] == 1 == report["changed_ids"]
    (record,) = json.loads((tmp_path / "cap" / "llava.json").read_text())
    assert record["conversations"] == [
        {"from": "human", "value": "<image>\nDescribe."},
        {"from": "gpt", "value": "a cat"},
    ]


def test_streaming_tiny_batches_give_the_same_export(llava_lake: Lake, tmp_path: Path) -> None:
    small = export(llava_lake, LlavaExporter(), tmp_path / "small", split="train", batch_size=1)
    large = export(llava_lake, LlavaExporter(), tmp_path / "large", split="train")
    assert small["batches"] == 5 and large["batches"] == 1
    assert (tmp_path / "small" / "llava.json").read_bytes() == (
        tmp_path / "large" / "llava.json"
    ).read_bytes()
    assert [p.name for p in _image_files(tmp_path / "small")] == [
        p.name for p in _image_files(tmp_path / "large")
    ]


def test_selection_by_dataset_and_where(llava_lake: Lake, tmp_path: Path) -> None:
    report = export(llava_lake, LlavaExporter(), tmp_path / "a", where="split = 'val'")
    assert report["samples"] == 1 and report["media"] == 1
    report = export(llava_lake, LlavaExporter(), tmp_path / "b", dataset="llava")
    assert report["samples"] == 6
    report = export(
        llava_lake, LlavaExporter(), tmp_path / "c", split="train", where="chosen IS NOT NULL"
    )
    assert report["samples"] == 1


def test_bad_selections_name_what_exists(llava_lake: Lake, tmp_path: Path, lake: Lake) -> None:
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match=r"split 'trian'; splits in the lake: train \(5\), val"):
        export(llava_lake, LlavaExporter(), out, split="trian")
    with pytest.raises(ConfigError, match=r"no dataset 'nope'.*datasets: llava \(6\)"):
        export(llava_lake, LlavaExporter(), out, dataset="nope")
    with pytest.raises(ConfigError, match="empty selection"):
        export(llava_lake, LlavaExporter(), out, split="val", where="chosen IS NOT NULL")
    with pytest.raises(ConfigError, match="invalid where filter"):
        export(llava_lake, LlavaExporter(), out, where="no_such_column = 1")
    with pytest.raises(ConfigError, match="no samples table"):
        export(Lake(tmp_path / "empty_lake"), LlavaExporter(), out)
    _set_split(llava_lake, {r["sample_id"]: None for r in _rows(llava_lake)})
    with pytest.raises(ConfigError, match="no splits yet"):
        export(llava_lake, LlavaExporter(), out, split="train")
    assert export(llava_lake, LlavaExporter(), out)["samples"] == 6  # split=null: all
    assert not list(tmp_path.glob(".x.*"))  # no temporary siblings left


def test_out_folder_rules_and_atomic_replace(llava_lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    export(llava_lake, LlavaExporter(), out, split="val")
    (out / "stray.txt").write_text("from the earlier export")
    export(llava_lake, LlavaExporter(), out, split="train")  # an earlier export: replaced
    assert (
        not (out / "stray.txt").exists() and len(json.loads((out / "llava.json").read_text())) == 5
    )

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match=r"not a lakeloom export.*force=true"):
        export(llava_lake, LlavaExporter(), mine, split="train")
    assert (mine / "notes.txt").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export(llava_lake, LlavaExporter(), afile, split="train")
    export(llava_lake, LlavaExporter(), mine, split="train", force=True)
    assert not (mine / "notes.txt").exists() and (mine / MANIFEST).is_file()
    for bad in (tmp_path, Path(llava_lake.uri)):
        with pytest.raises(ConfigError, match="would replace the lake"):
            export(llava_lake, LlavaExporter(), bad, split="train", force=True)

    class Crashing(LlavaExporter):
        """Fails after the first batch was written."""

        def write(self, rows: list[dict[str, Any]], media: list[Any]) -> None:
            super().write(rows, media)
            raise RuntimeError("disk full")

    before = (out / "llava.json").read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        export(llava_lake, Crashing(), out, split="val", batch_size=1)
    assert (out / "llava.json").read_bytes() == before  # the old export is intact
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_exporter_options_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"\.json or \.jsonl"):
        LlavaExporter(file="llava.txt")
    with pytest.raises(ConfigError, match="plain visible file name"):
        MessagesExporter(file="sub/messages.jsonl")
    with pytest.raises(ConfigError, match="style must be one of"):
        MessagesExporter(style="anthropic")
    with pytest.raises(ConfigError, match=r"\.csv"):
        ClipPairsCsvExporter(file="pairs.parquet")


@pytest.mark.parametrize(
    "name", ["llava", "messages", "sharegpt", "clip_pairs_csv", "clip_pairs_parquet"]
)
def test_configs_compose_and_instantiate(name: str) -> None:
    from hydra import compose, initialize_config_module

    from lake.export import build_exporter

    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("export", overrides=[f"export={name}", "out=x"])
    exporter = build_exporter(cfg.export)
    assert exporter.name == cfg.export.name == name and exporter.kind == "exporter"
    assert cfg.split is None and cfg.lake.uri


def test_cli_export_records_the_run(llava_lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "lake.cli", "export", f"lake.uri={llava_lake.uri}"]
    done = subprocess.run(
        [*args, "export=messages", "split=train", f"out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "5 of 5 selected" in done.stdout and "source=messages" in done.stdout
    assert (out / "messages.jsonl").is_file()
    (run,) = [r for r in llava_lake.runs() if r["job"] == "export"]
    assert run["status"] == "finished" and json.loads(run["counts"])["samples"] == 5
    # export only reads: the versions it read are in its run record, the tables untouched
    assert json.loads(run["versions"]) == llava_lake.current_versions()
    assert not any(run["run_id"] in v["tags"] for v in llava_lake.versions(SAMPLES))
    no_out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert no_out.returncode == 2 and "out=DIR is required" in no_out.stderr
