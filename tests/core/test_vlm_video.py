"""``<video>`` and ``<audio>`` media of conversation samples reach the models that take them.

Lakes are built directly with ``Lake.insert_new``: a ``video`` media row stored as a Lance
blob, one stored by reference (``source_uri`` under ``data.media_root``), an ``audio`` row
with 16 kHz FLAC bytes, and samples whose ``media_ids`` follow their placeholders. Qwen2-VL,
Qwen2.5-VL, Qwen3-VL and Qwen3.5 get the video's frames (sampled at ``video.fps``) on their
video input, SmolVLM on its image input, and train on them (the frame timestamps Qwen3-VL
and SmolVLM's processors write into the prompt are never supervised); LLaVA (no video),
Qwen (no audio) and Apotheon (no whole videos) refuse such samples at pre-flight in one
line naming them; Apotheon feeds a conversation's audio.
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


# ---- Qwen3-VL, Qwen3.5, SmolVLM: processors that write text around the frames -------------

#: families whose processors write text (timestamps, an intro) beside a video's frames
NEW_VIDEO = ("qwen3_vl", "qwen3_5", "smolvlm")


def own_tiny(family: str, **kw: Any) -> VlmModule:
    """VlmModule as the family's own ``conf/model/<family>_tiny.yaml``."""
    return VlmModule(**conf_kwargs("train", "model", f"model={family}_tiny", **kw))


def supervised_text(module: VlmModule, batch: dict[str, Any], row: int) -> str:
    """The decoded supervised ids of one row (special tokens left out)."""
    labels = batch["labels"][row]
    assert (labels[labels != -100] == batch["input_ids"][row][labels != -100]).all()
    tok = module.processor.tokenizer
    return tok.decode(labels[labels != -100], skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", NEW_VIDEO)
def test_new_families_feed_video_frames_with_timestamps_train_and_generate(lake, family) -> None:
    module = own_tiny(family, video={"fps": 2.0, "max_frames": 32}, lr=5e-3)
    assert module.spec.media_kinds == ("image", "frame", "video")
    dm = data(lake, where="sample_id != 'snd'")
    collate = module.make_collator()
    dm.set_collator(collate)  # pre-flight passes: the family takes images and videos
    got = items(dm)
    batch = collate([got["img"], got["vid"], got["ref"]])
    assert batch["video_frames"] == [4, 6]  # 2 s and 3 s at 2 fps
    assert batch["n_videos"] == [0, 1, 1] and batch["n_images"] == [1, 0, 0]
    tok = module.processor.tokenizer
    rows = [tok.decode(batch["input_ids"][r]) for r in range(3)]
    if family == "smolvlm":
        # frames reach the image input: 1 image + 4 + 6 frames, each its own <image> run
        assert batch["pixel_values"].shape[:2] == (1, 11)
        assert "series of four frames from a 0:00:02" in rows[1]
        assert rows[1].count("Frame from 00:00:") == 2 and rows[1].count("Frame from 00:01:") == 2
        assert rows[2].count("Frame from") == 6 and "0:00:03" in rows[2]
        per_frame = module.processor.image_seq_len
        image = tok.convert_tokens_to_ids("<image>")
        assert (batch["input_ids"] == image).sum(-1).tolist() == [per_frame, 4 * per_frame,
                                                                  6 * per_frame]  # fmt: skip
    else:
        grids = batch["video_grid_thw"]
        assert grids[:, 0].tolist() == [2, 3]  # the temporal patch (2) halves the frames
        assert batch["pixel_values_videos"].shape[0] == int(grids.prod(-1).sum())
        video_pad = tok.convert_tokens_to_ids("<|video_pad|>")
        per_row = (batch["input_ids"] == video_pad).sum(-1).tolist()
        assert per_row == [0, *(int(g.prod()) // 4 for g in grids)]
        # one timestamp per temporal patch: the mean time of its two frames (0, 0.5 s ...)
        assert "<0.2 seconds>" in rows[1] and "<1.2 seconds>" in rows[1]
        assert "<2.2 seconds>" in rows[2] and "<2.2 seconds>" not in rows[1]
    # labels supervise exactly the answers, never the inserted text
    for row, answer in ((0, "Green."), (1, "Red to blue."), (2, "Yellow.")):
        assert supervised_text(module, batch, row) == answer
    # a few training steps on the video alone (LoRA-free tiny: projector and LM train)
    module.train()
    only = collate([got["vid"]])
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(3):
        loss, n = module.sft_loss(only)
        assert n > 0 and torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    if module.spec.pack_refusal is None:
        # packed: per-sample (M-RoPE: 3-D, with the video's grid) positions, the same loss
        module.eval()
        module.hparams.pack = True
        packed = module.make_collator()([got["img"], got["vid"], got["ref"]])
        assert packed["packed"] and packed["input_ids"].shape[0] < 3
        with torch.no_grad():
            a, n_a = module.sft_loss(packed)
            b, n_b = module.sft_loss(batch)
        assert n_a == n_b and float(a) == pytest.approx(float(b), rel=1e-4)
        module.hparams.pack = False
    # generation on a video sample, beside an image sample in the same batch
    module.hparams.generate_samples, module.hparams.max_new_tokens = 2, 3
    gen = module.make_collator(train=False)([got["vid"], got["img"]])
    module.eval()
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step(gen, 0)
    module._eval_epoch_end("val")
    ((_, event),) = [e for e in module.pop_events() if e[0] == "generations"]
    assert [g["sample_id"] for g in event["samples"]] == ["vid", "img"]
    assert all(isinstance(g["prediction"], str) for g in event["samples"])


@pytest.mark.parametrize("family", ["qwen3_vl", "smolvlm"])
def test_an_answer_holding_the_timestamp_text_is_labelled_exactly(lake, family) -> None:
    """The processor's inserted text ('<0.2 seconds>', 'Frame from 00:00:') also occurs in
    the answer: the alignment never takes the answer's tokens for the inserted ones."""
    module = own_tiny(family, video={"fps": 2.0, "max_frames": 32})
    got = items(data(lake, where="sample_id = 'vid'"))["vid"]
    answer = ("<0.2 seconds> seconds 0.5: red. Frame from 00:00: red; frames from a video "
              "<1.2 seconds> blue.")  # fmt: skip
    sample = {**got, "messages": _msgs(("user", "<video>\nWhen?"), ("assistant", answer))}
    batch = module.make_collator()([sample])
    assert supervised_text(module, batch, 0) == answer
    text = module.processor.tokenizer.decode(batch["input_ids"][0])
    # the processor's and the answer's
    if family == "smolvlm":
        assert text.count("Frame from 00:00:") == 3
    else:
        assert text.count("<1.2 seconds>") == 2


def test_alignment_accepts_insertions_near_media_and_refuses_the_rest() -> None:
    from core.modules.vlm_collate import SampleError, align_to_processor

    media, brackets = {9}, {7, 8}  # 9: a media token, 7 / 8: vision start / end
    plain = [1, 2, 7, 9, 8, 3, 4]
    # the processor expands 9 and writes 5, 6 (a timestamp) before each frame's run
    full = [1, 2, 7, 5, 6, 7, 9, 9, 8, 5, 6, 7, 9, 9, 8, 8, 3, 4]
    pos = align_to_processor(plain, full, media, brackets)
    assert [full[j] for j in pos] == [1, 2, 7, 8, 3, 4]
    assert pos[0:2] == [0, 1] and pos[-2:] == [16, 17]
    assert align_to_processor(plain, plain, media, brackets) == [0, 1, 2, 4, 5, 6]
    with pytest.raises(SampleError, match="replaced text tokens"):
        align_to_processor(plain, [1, 5, 7, 9, 8, 3, 4], media, brackets)
    with pytest.raises(SampleError, match="dropped text tokens"):
        align_to_processor(plain, [1, 2, 7, 9, 8, 4], media, brackets)
    with pytest.raises(SampleError, match="away from any media placeholder"):
        align_to_processor(plain, [1, 2, 7, 9, 8, 3, 5, 4], media, brackets)


def test_a_replaced_token_is_refused_and_errors_name_the_sample(lake) -> None:
    """Qwen3-VL's real processor output with one answer token changed is refused (a
    replacement, not an insertion); SmolVLM refuses a video beside an image in one sample
    (both would be its image input), naming the sample."""
    from core.modules.vlm_collate import SampleError

    module = own_tiny("qwen3_vl")
    collate = module.make_collator()
    got = items(data(lake, where="sample_id IN ('vid', 'img')"))
    r = collate.renderer
    conv = collate.sft_conversation(got["vid"])
    text = r.render(conv)
    spans = r.assistant_spans(conv, text)
    ids = r.tokenize(text, collate.images(got["vid"]))["input_ids"][0].clone()
    labels = r.labels(text, spans, ids)  # the timestamps are insertions: accepted
    j = int((labels != -100).nonzero()[0])
    ids[j] = r.tokenizer.convert_tokens_to_ids("<|im_start|>")  # the answer's first token
    with pytest.raises(SampleError, match="replaced text tokens"):
        r.labels(text, spans, ids)
    both = {**got["vid"], "sample_id": "both", "media_kinds": ["image", "video"],
            "images": [got["img"]["images"][0], got["vid"]["images"][0]],
            "messages": _msgs(("user", "<image><video>\nA?"), ("assistant", "B."))}  # fmt: skip
    with pytest.raises(SampleError, match=r"sample both.*one video and no image beside it"):
        own_tiny("smolvlm").make_collator()([both])
    module.make_collator()([both])  # Qwen3-VL takes both
