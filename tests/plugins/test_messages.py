"""MessagesSource: OpenAI / Qwen2-VL content parts and LLaMA-Factory strings + images."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from lake.errors import RejectedInput
from lake.records import Location, Reject, SourceRecord
from lake.sources import IMAGE_TOKEN
from plugins.messages import MessagesSource, flatten_parts
from tests.conftest import jpeg_bytes, png_bytes

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, lines: list[object]) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _answer(text: str = "ok") -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``msg/`` with ``img/a.jpg`` and ``img/b.png``."""
    ds = tmp_path / "msg"
    (ds / "img").mkdir(parents=True)
    (ds / "img" / "a.jpg").write_bytes(jpeg_bytes((200, 0, 0)))
    (ds / "img" / "b.png").write_bytes(png_bytes((0, 0, 200)))
    return ds


def test_qwen_and_openai_parts_flatten_in_order(root: Path) -> None:
    raw = png_bytes((7, 7, 7))
    data_url = "data:image/png;base64," + base64.b64encode(raw).decode()
    _write_jsonl(
        root / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "You are a captioner."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": "img/a.jpg"},
                            _text("Describe."),
                        ],
                    },
                    _answer("A red square."),
                ]
            },
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            _text("First "),
                            {"type": "image_url", "image_url": {"url": data_url}},
                            _text(" then "),
                            {"type": "image", "path": "img/b.png"},
                        ],
                    },
                    _answer("grey, blue"),
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "img/a.jpg"}},
                            {"type": "image", "url": "img/b.png"},
                        ],
                    },
                    _answer("red, blue"),
                ]
            },
        ],
    )
    first, second = MessagesSource(root / "chat.jsonl").records()
    assert isinstance(first, SourceRecord) and isinstance(second, SourceRecord)
    assert first.location == Location("chat.jsonl", line=1)
    assert first.messages == [
        {"role": "system", "content": "You are a captioner."},
        {"role": "user", "content": "<image>Describe."},
        {"role": "assistant", "content": "A red square."},
    ]
    assert [m.source_uri for m in first.media] == ["img/a.jpg"]
    assert first.steps == [("parse_messages", {"format": "messages", "content": "parts"})]
    assert second.messages[0]["content"] == "First <image> then <image>"
    assert second.messages[2]["content"] == "<image><image>"
    assert second.media[0].data == raw and second.media[0].path is None
    assert [m.source_uri for m in second.media[1:]] == ["img/b.png", "img/a.jpg", "img/b.png"]


def test_string_content_with_top_level_images(root: Path) -> None:
    (root / "lf.json").write_text(
        json.dumps(
            [
                {
                    "messages": [
                        {"role": "user", "content": "<image><image>Which is red?"},
                        _answer("The first."),
                    ],
                    "images": ["img/a.jpg", "img/b.png"],
                },
                {"messages": [{"role": "user", "content": "hi"}, _answer("hello")]},
            ]
        )
    )
    rec, text_only = MessagesSource(root / "lf.json").records()
    assert isinstance(rec, SourceRecord) and isinstance(text_only, SourceRecord)
    assert rec.location == Location("lf.json", row=0)
    assert rec.messages[0] == {"role": "user", "content": "<image><image>Which is red?"}
    assert [m.source_uri for m in rec.media] == ["img/a.jpg", "img/b.png"]
    assert rec.steps == [("parse_messages", {"format": "messages", "content": "text"})]
    assert text_only.media == []


def test_file_url_inside_root_and_image_folder(root: Path) -> None:
    file_url = (root / "img" / "a.jpg").resolve().as_uri()
    _write_jsonl(
        root / "d.jsonl",
        [
            {"messages": [{"role": "user", "content": [{"type": "image", "image": file_url}]}]},
            {"messages": [{"role": "user", "content": "<image>x"}], "images": ["b.png"]},
        ],
    )
    strict = list(MessagesSource(root / "d.jsonl").records())
    assert isinstance(strict[0], Reject)
    assert "absolute image path not allowed" in strict[0].reason
    url_rec, _ = MessagesSource(root / "d.jsonl", allow_absolute=True).records()
    assert isinstance(url_rec, SourceRecord)
    assert url_rec.media[0].source_uri == "img/a.jpg"
    _, prefixed = MessagesSource(root / "d.jsonl", image_folder="img").records()
    assert isinstance(prefixed, SourceRecord)
    assert prefixed.media[0].source_uri == "img/b.png"


def test_rejects_with_locations_and_reading_goes_on(root: Path) -> None:
    user_parts = lambda *parts: {"role": "user", "content": list(parts)}  # noqa: E731
    _write_jsonl(
        root / "bad.jsonl",
        [
            {"messages": [user_parts(_text("fine")), _answer()]},
            "not json at all",
            {
                "messages": [user_parts({"type": "image", "image": "img/a.jpg"})],
                "images": ["img/b.png"],
            },
            {"messages": [user_parts({"type": "file", "file": "doc.pdf"})]},
            {"messages": [user_parts(_text("literal <image> in text"))]},
            {"messages": [{"role": "tool", "content": "42"}]},
            {"messages": [{"role": "assistant", "content": None}]},
            {"messages": [{"role": "user"}]},
            {"conversations": [{"from": "human", "value": "wrong format"}]},
            {"messages": []},
            {"messages": [user_parts({"type": "video"})]},
            {"messages": [user_parts({"type": "image_url", "image_url": {}})]},
            {"messages": [user_parts({"type": "image", "image": "../escape.png"})]},
            {"messages": [user_parts({"type": "image", "image": "http://example.com/a.png"})]},
            {"messages": [{"role": "user", "content": "<image><image>"}], "images": ["img/a.jpg"]},
            {"messages": [user_parts({"type": "image", "image": "img/none.jpg"})]},
            {"messages": [user_parts("bare string part")]},
            {"messages": [user_parts({"type": "image", "image": "img/b.png"}), _answer("blue")]},
        ],
    )
    (root.parent / "escape.png").write_bytes(png_bytes((1, 2, 3)))
    got = list(MessagesSource(root / "bad.jsonl").records())
    records = [r for r in got if isinstance(r, SourceRecord)]
    assert [r.location.line for r in records] == [1, 18]
    assert records[1].messages == [
        {"role": "user", "content": "<image>"},
        {"role": "assistant", "content": "blue"},
    ]
    expected = [
        (2, "malformed JSON line"),
        (3, "content parts and a top-level images list are mixed"),
        (4, "message 0 part 0: unknown content part type 'file'"),
        (5, "text part contains a literal <image>"),
        (6, "unknown message role 'tool'"),
        (7, "message 0: content must be a string or a list of parts, got null"),
        (8, "message 0: missing field 'content'"),
        (9, "missing field 'messages'"),
        (10, "empty conversation"),
        # a reference-less image part is TRL's layout (it takes the top-level images);
        # a video part has no such layout, so it still needs its own reference
        (11, "video part needs one of 'video', 'path', 'url'"),
        (12, "image_url part needs"),
        (13, "image path escapes the dataset root"),
        (14, "URL image references are not allowed"),
        (15, "2 <image> placeholder(s) but 1 image(s)"),
        (16, "image file not found: img/none.jpg"),
        (17, "message 0 part 0 must be an object, got string"),
    ]
    rejects = [r for r in got if isinstance(r, Reject)]
    assert [r.location for r in rejects] == [
        Location("bad.jsonl", line=line) for line, _ in expected
    ]
    for reject, (_, reason) in zip(rejects, expected, strict=True):
        assert reason in reject.reason


def _unflatten(content: str, images: list[str]) -> list[dict[str, str]]:
    """The inverse an exporter applies (documented in plugins.messages)."""
    parts: list[dict[str, str]] = []
    it = iter(images)
    for piece in re.split(f"({re.escape(IMAGE_TOKEN)})", content):
        if piece == IMAGE_TOKEN:
            parts.append({"type": "image", "image": next(it)})
        elif piece:
            parts.append(_text(piece))
    return parts


@pytest.mark.parametrize(
    "content",
    ["", "plain", "<image>", "<image><image>", "a<image>b<image>", "<image> x\n<image>\ny "],
)
def test_flattening_rule_is_exactly_invertible(content: str) -> None:
    n = content.count(IMAGE_TOKEN)
    refs = [f"img{i}.png" for i in range(n)]
    parts = _unflatten(content, refs)
    images: list[object] = []
    assert flatten_parts(parts, images) == content
    assert images == refs
    again: list[object] = []
    assert _unflatten(flatten_parts(parts, again), refs) == parts


def test_flatten_merges_adjacent_text_and_rejects_literal_token() -> None:
    images: list[object] = []
    parts = [_text("a"), _text(""), _text("b"), {"type": "image_url", "image_url": "x.png"}]
    assert flatten_parts(parts, images) == "ab<image>"
    assert images == ["x.png"]
    with pytest.raises(RejectedInput, match="literal <image>"):
        flatten_parts([_text("<image>")], [])


def test_config_instantiates_source(root: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "source" / "messages.yaml")
    cfg.path = str(root)
    src = instantiate(cfg)
    assert isinstance(src, MessagesSource)
    assert (src.name, src.version, src.count()) == ("messages", "0.1.0", None)
    assert src.params()["messages_key"] == "messages"
    assert src.params()["image_folder"] is None
