"""``<video>`` and ``<audio>`` media of conversation samples reach the models that take them.

Lakes are built directly with ``Lake.insert_new``: a ``video`` media row stored as a Lance
blob, one stored by reference (``source_uri`` under ``data.media_root``), an ``audio`` row
with 16 kHz FLAC bytes, and samples whose ``media_ids`` follow their placeholders. Qwen2-VL
and Qwen2.5-VL get the video's frames (sampled at ``video.fps``) on their video input and
train on them; LLaVA (no video), Qwen (no audio) and Apotheon (no whole videos) refuse such
samples at pre-flight in one line naming them; Apotheon feeds a conversation's audio.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from core.data.apotheon_data import ApotheonDataModule
from core.data.lance_data import LanceDataModule
from core.modules.vlm_module import VlmModule
from lake.audio import encode_pcm
from lake.errors import ConfigError
from lake.schema import MEDIA, MEDIA_SCHEMA, SAMPLES
from lake.store import Lake
from lake.synth_video import Segment, write_video
from tests.conftest import conf_kwargs

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 160, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def _msgs(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in turns]


def build_lake(tmp_path: Path) -> dict[str, Any]:
    """A lake with an image sample, a blob video sample (2 s), a referenced video sample
    (3 s, file under ``src/``) and an audio conversation sample; returns ids and paths."""
    src = tmp_path / "src"
    blob_video = write_video(tmp_path / "blob.mp4", [Segment(1.0, (200, 20, 20)),
                             Segment(1.0, (20, 20, 200))], fps=25, size=(64, 48))  # fmt: skip
    assert blob_video["duration_s"] == 2.0
    write_video(src / "clips/ref.mp4", [Segment(3.0, (240, 240, 20))], fps=25, size=(48, 64))
    video = (tmp_path / "blob.mp4").read_bytes()
    ref = (src / "clips/ref.mp4").read_bytes()
    t = np.arange(16000, dtype=np.float32) / 16000
    audio = encode_pcm((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    image = _jpeg()
    ids = {"image": _sha(image), "video": _sha(video), "ref": _sha(ref), "audio": _sha(audio)}
    media = [
        {"media_id": ids["image"], "kind": "image", "mime": "image/jpeg", "bytes": image,
         "width": 64, "height": 48, "source_uri": "a.jpg"},
        {"media_id": ids["video"], "kind": "video", "mime": "video/mp4", "blob": video,
         "width": 64, "height": 48, "duration_s": 2.0, "source_uri": "blob.mp4"},
        {"media_id": ids["ref"], "kind": "video", "mime": "video/mp4",
         "width": 48, "height": 64, "duration_s": 3.0, "source_uri": "clips/ref.mp4"},
        {"media_id": ids["audio"], "kind": "audio", "mime": "audio/flac", "bytes": audio,
         "duration_s": 1.0, "source_uri": "tone.flac"},
    ]  # fmt: skip
    samples = [
        {"sample_id": "img", "dataset": "d", "media_ids": [ids["image"]],
         "messages": _msgs(("user", "<image>\nWhat colour?"), ("assistant", "Green."))},
        {"sample_id": "vid", "dataset": "d", "media_ids": [ids["video"]],
         "messages": _msgs(("user", "<video>\nWhat changes?"), ("assistant", "Red to blue."))},
        {"sample_id": "ref", "dataset": "d", "media_ids": [ids["ref"]],
         "messages": _msgs(("user", "<video>What is it?"), ("assistant", "Yellow."))},
        {"sample_id": "snd", "dataset": "d", "media_ids": [ids["audio"]],
         "messages": _msgs(("user", "<audio>\nWhat do you hear?"), ("assistant", "A tone."))},
    ]  # fmt: skip
    lake = Lake(tmp_path / "lake")
    lake.insert_new(MEDIA, pa.Table.from_pylist(media, schema=MEDIA_SCHEMA))
    lake.insert_new(SAMPLES, pa.Table.from_pylist(samples))
    return {"uri": str(tmp_path / "lake"), "src": str(src), "ids": ids}


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> dict[str, Any]:
    return build_lake(tmp_path_factory.mktemp("video_lake"))


def tiny_apotheon() -> Any:
    """ApotheonModule as ``conf/model/apotheon_tiny.yaml`` at this file's sizes."""
    from core.modules.apotheon_module import ApotheonModule

    model = conf_kwargs("train", "model", "model=apotheon_tiny", config=APOTHEON_TINY)
    return ApotheonModule(**model)


def tiny_module(family: str, **kw: Any) -> VlmModule:
    """VlmModule as ``conf/model/<family>_tiny.yaml`` (over ``vlm.yaml``)."""
    name = "qwen2_vl" if family.startswith("qwen") else family
    return VlmModule(**conf_kwargs("train", "model", f"model={name}_tiny", family=family, **kw))


def data(lake: dict[str, Any], where: str | None = None, **kw: Any) -> LanceDataModule:
    dm = LanceDataModule(lake_uri=lake["uri"], where=where, batch_size=4, val_fraction=0.0,
                         test_fraction=0.0, media_root=lake["src"], **kw)  # fmt: skip
    dm.setup()
    return dm


def items(dm: LanceDataModule) -> dict[str, dict[str, Any]]:
    ds = dm.dataset("train")
    return {it["sample_id"]: it for it in ds.__getitems__(list(range(len(ds))))}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_feeds_video_frames_at_the_configured_fps_and_trains(lake, family) -> None:
    module = tiny_module(family, video={"fps": 2.0, "max_frames": 32})
    dm = data(lake, where="sample_id != 'snd'")
    collate = module.make_collator()
    dm.set_collator(collate)  # pre-flight passes: Qwen takes images and videos
    got = items(dm)
    batch = collate([got["img"], got["vid"], got["ref"]])
    # 2 s at 2 fps = 4 frames, 3 s = 6 frames; the temporal patch (2) halves them
    assert batch["video_frames"] == [4, 6]
    grids = batch["video_grid_thw"]
    assert grids[:, 0].tolist() == [2, 3]
    assert batch["pixel_values_videos"].shape[0] == int(grids.prod(-1).sum())
    assert batch["n_videos"] == [0, 1, 1] and batch["n_images"] == [1, 0, 0]
    video_pad = module.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    per_row = (batch["input_ids"] == video_pad).sum(-1).tolist()
    assert per_row == [0, *(int(g.prod()) // 4 for g in grids)]
    assert (batch["labels"][batch["input_ids"] == video_pad] == -100).all()
    assert "pixel_values" in batch  # the image sample's own input beside the videos
    if family == "qwen2_5_vl":
        assert batch["second_per_grid_ts"].tolist() == [1.0, 1.0]  # 2 frames / 2 fps
    # a changing video: its two halves (red, then blue) reach the model as different frames
    frames = batch["pixel_values_videos"][: int(grids[0].prod())]
    assert not torch.allclose(frames[0], frames[-1])
    # a forward and backward step trains the projector on the video alone (vision frozen)
    module.train()
    only = collate([got["vid"]])
    assert "pixel_values" not in only and "pixel_values_videos" in only
    loss, n = module.sft_loss(only)
    assert n > 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.model.model.visual.merger.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_video_frame_count_follows_fps_and_max_frames(lake) -> None:
    dm = data(lake, where="sample_id = 'vid'")
    vid = items(dm)["vid"]
    for video, frames in (({"fps": 4.0}, [8]), ({"fps": 2.0, "max_frames": 2}, [2]),
                          ({"fps": 1.0}, [2])):  # fmt: skip
        collate = tiny_module("qwen2_vl", video={"fps": 2.0, "max_frames": 32, **video})
        assert collate.make_collator()([vid])["video_frames"] == frames


def test_llava_refuses_video_samples_at_preflight(lake) -> None:
    module = tiny_module("llava")
    dm = data(lake, where="sample_id != 'snd'")
    with pytest.raises(ConfigError) as err:
        dm.set_collator(module.make_collator())
    msg = str(err.value)
    assert "\n" not in msg and "llava cannot take video" in msg
    assert "2 selected sample(s)" in msg and "ref" in msg and "vid" in msg
    ok = data(lake, where="sample_id = 'img'")
    ok.set_collator(module.make_collator())  # an image-only selection passes


def test_qwen_refuses_audio_samples_at_preflight(lake) -> None:
    module = tiny_module("qwen2_vl")
    dm = data(lake)
    with pytest.raises(ConfigError, match=r"qwen2_vl cannot take audio media: 1 selected "
                       r"sample\(s\) hold some \(snd\)"):  # fmt: skip
        dm.set_collator(module.make_collator())


def test_a_referenced_video_without_its_file_is_named(lake, tmp_path) -> None:
    module = tiny_module("qwen2_vl")
    dm = LanceDataModule(lake_uri=lake["uri"], where="sample_id = 'ref'", batch_size=4,
                         val_fraction=0.0, test_fraction=0.0, media_root=str(tmp_path))  # fmt: skip
    got = items(dm)
    with pytest.raises(ValueError, match=r"sample ref.*stored by reference.*media_root"):
        module.make_collator()([got["ref"]])


# ---- Apotheon -----------------------------------------------------------------------------

APOTHEON_TINY: dict[str, Any] = {
    "vision": {"image_size": 56, "hidden": 32, "layers": 1, "heads": 2},
    "audio": {"chunk_s": 2.0, "hidden": 32, "layers": 1, "heads": 2, "pool": 4},
    "language": {"hidden": 32, "intermediate": 64, "layers": 1, "heads": 2, "kv_heads": 1},
    "fusion": {"width": 32, "layers": 1, "heads": 2, "latents": 4, "max_frames": 4},
    "contrastive_dim": 16,
}


def test_apotheon_feeds_a_conversations_audio(lake) -> None:
    dm = ApotheonDataModule(lake_uri=lake["uri"], where="sample_id IN ('snd', 'img')",
                            curriculum=None, batch_size=4, val_fraction=0.0,
                            test_fraction=0.0)  # fmt: skip
    dm.setup()
    module = tiny_apotheon()
    collate = module.make_collator()
    dm.set_collator(collate)  # pre-flight passes: Apotheon takes images and audio
    got = items(dm)
    batch = collate([got["img"], got["snd"]])
    assert batch["audio_index"].tolist() == [1]  # the audio conversation's row
    assert batch["audio_features"].shape[0] == 1 and batch["audio_lengths"][0] > 0
    assert batch["frame_index"][:, 0].tolist() == [0]  # the image sample's image
    assert batch["captions"] == ["Green.", "A tone."]
    prompts = module.processors["tokenizer"].batch_decode(
        batch["caption_prompt_ids"], skip_special_tokens=True
    )
    assert "<audio>" not in prompts[1] and "What do you hear?" in prompts[1]


def test_apotheon_refuses_whole_videos_at_preflight(lake) -> None:
    dm = ApotheonDataModule(lake_uri=lake["uri"], curriculum=None, batch_size=4, val_fraction=0.0,
                            test_fraction=0.0)  # fmt: skip
    dm.setup()
    with pytest.raises(ConfigError, match=r"apotheon cannot take video media: 2 selected"):
        dm.set_collator(tiny_apotheon().make_collator())
