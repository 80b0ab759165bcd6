"""``ApotheonCollator``: lake samples (images, video frames, audio, text) -> one model batch.

Each item (from :class:`core.data.apotheon_data.ApotheonSamples`) may hold images or a
clip's frames (``images``), an audio track with the range to cut (``audio``,
``audio_range``; a conversation's ``<audio>`` media too), a caption (the ``caption``
column, else the assistant's answer of a conversation, whose question becomes the
prompt, its placeholders removed) and a transcript. Whatever a sample
lacks is simply absent from the batch; the model trains the heads that apply.

Batch keys (tensors unless noted):

- ``pixel_values`` (N, 3, S, S) every image and frame; ``frame_index`` (N, 2): its row
  and its position in the clip (frames beyond ``max_frames`` are subsampled evenly).
- ``audio_features`` (Na, n_mels, frames) Whisper log-mel; ``audio_index`` (Na,) rows;
  ``audio_lengths`` (Na,) mel frames of real audio (Whisper pads to its window; audio
  longer than the window is cut, and ``audio_truncated`` counts such clips).
- ``caption_ids`` / ``caption_mask`` (B, L): BOS caption EOS, right-padded;
  ``has_caption`` (B,). ``transcript_ids`` / ``transcript_mask``; ``has_transcript``.
- ``caption_prompt_ids`` / ``_mask`` and ``transcription_prompt_ids`` / ``_mask``: the
  prompts, left-padded (their tokens are the fusion's text queries).
- lists: ``sample_ids``, ``captions``, ``transcripts`` (references for evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lake.images import decode_image
from lake.schema import PLACEHOLDERS

SAMPLE_RATE = 16000


class ApotheonCollator:
    """Picklable collator (runs in DataLoader workers) for :class:`ApotheonModel` batches."""

    #: media kinds Apotheon's encoders take (the data module's pre-flight refuses others:
    #: a conversation's ``<video>`` is not read, its frames and audio track would be)
    accepted_kinds = ("image", "frame", "audio")
    family = "apotheon"

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        feature_extractor: Any,
        caption_prompt: str = "Describe the image.",
        transcription_prompt: str = "Transcribe the audio.",
        max_text_tokens: int = 64,
        max_frames: int = 8,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.feature_extractor = feature_extractor
        self.caption_prompt = caption_prompt
        self.transcription_prompt = transcription_prompt
        self.max_text_tokens = max_text_tokens
        self.max_frames = max_frames

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One batch (the keys in the module docstring) from lake items."""
        images, frame_index, clips, audio_index = [], [], [], []
        captions: list[str | None] = []
        prompts: list[str] = []
        transcripts: list[str | None] = []
        decoded: dict[bytes, Any] = {}
        for row, item in enumerate(items):
            sid = item["sample_id"]
            data = list(item.get("images") or [])
            for t, k in enumerate(_evenly(len(data), self.max_frames)):
                try:
                    images.append(decode_image(data[k]))
                except Exception as exc:
                    raise ValueError(
                        f"sample {sid}: media {k} is not a readable image: {exc}"
                    ) from exc
                frame_index.append((row, t))
            if item.get("audio") is not None:
                clips.append(_audio_clip(sid, item["audio"], item.get("audio_range"), decoded))
                audio_index.append(row)
            caption, prompt = caption_and_prompt(item)
            captions.append(caption)
            prompts.append(prompt or self.caption_prompt)
            text = (item.get("transcript") or "").strip()
            transcripts.append(text or None)
        batch: dict[str, Any] = {
            "sample_ids": [it["sample_id"] for it in items],
            "captions": captions,
            "transcripts": transcripts,
        }
        batch.update(self._pixels(images, frame_index))
        batch.update(self._audio(clips, audio_index))
        batch.update(self._targets("caption", captions))
        batch.update(self._targets("transcript", transcripts))
        batch.update(self._prompts("caption_prompt", prompts))
        batch.update(
            self._prompts("transcription_prompt", [self.transcription_prompt] * len(items))
        )
        return batch

    # -- media --------------------------------------------------------------------------------

    def _pixels(self, images: list[Any], index: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        else:
            crop = self.image_processor.crop_size
            pixels = torch.zeros(0, 3, crop["height"], crop["width"])
        return {
            "pixel_values": pixels,
            "frame_index": torch.tensor(index, dtype=torch.long).view(-1, 2),
        }

    def _audio(self, clips: list[np.ndarray], index: list[int]) -> dict[str, torch.Tensor]:
        fe = self.feature_extractor
        if clips:
            feats = fe(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
        else:
            feats = torch.zeros(0, fe.feature_size, fe.nb_max_frames)
        frames = [-(-len(c) // fe.hop_length) for c in clips]
        return {
            "audio_features": feats,
            "audio_index": torch.tensor(index, dtype=torch.long),
            "audio_lengths": torch.tensor([min(f, fe.nb_max_frames) for f in frames]).long(),
            "audio_truncated": sum(f > fe.nb_max_frames for f in frames),
        }

    # -- text ---------------------------------------------------------------------------------

    @property
    def start_id(self) -> int:
        """The token that starts every target: BOS, or EOS for tokenizers without one
        (Qwen2)."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of every text, in one tokenizer call."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _targets(self, name: str, texts: list[str | None]) -> dict[str, torch.Tensor]:
        """BOS text EOS per row (``max_text_tokens`` at most), right-padded."""
        tok = self.tokenizer
        rows = [
            [self.start_id, *ids[: self.max_text_tokens - 2], tok.eos_token_id]
            for ids in self._ids([t or "" for t in texts])
        ]
        ids, mask = _pad(rows, tok.pad_token_id, left=False)
        present = torch.tensor([t is not None for t in texts], dtype=torch.bool)
        return {f"{name}_ids": ids, f"{name}_mask": mask, f"has_{name}": present}

    def _prompts(self, name: str, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [ids[-self.max_text_tokens :] or [self.start_id] for ids in self._ids(texts)]
        ids, mask = _pad(rows, self.tokenizer.pad_token_id, left=True)
        return {f"{name}_ids": ids, f"{name}_mask": mask}


def select_rows(batch: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The sub-batch of ``rows`` (in that order), media re-indexed to the new rows."""
    index = {r: i for i, r in enumerate(rows)}
    pick = torch.tensor(list(rows), dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in (
            "pixel_values",
            "frame_index",
            "audio_features",
            "audio_index",
            "audio_lengths",
            "audio_truncated",
        ):
            continue
        if isinstance(value, list):
            out[key] = [value[r] for r in rows]
        elif isinstance(value, torch.Tensor):
            out[key] = value[pick.to(value.device)]
    frames = [i for i, (r, _) in enumerate(batch["frame_index"].tolist()) if r in index]
    out["pixel_values"] = batch["pixel_values"][frames]
    out["frame_index"] = torch.tensor(
        [(index[r], t) for r, t in batch["frame_index"][frames].tolist()],
        dtype=torch.long, device=batch["frame_index"].device,
    ).view(-1, 2)  # fmt: skip
    clips = [i for i, r in enumerate(batch["audio_index"].tolist()) if r in index]
    out["audio_features"] = batch["audio_features"][clips]
    out["audio_index"] = torch.tensor(
        [index[r] for r in batch["audio_index"][clips].tolist()],
        dtype=torch.long, device=batch["audio_index"].device,
    )  # fmt: skip
    if "audio_lengths" in batch:
        out["audio_lengths"] = batch["audio_lengths"][clips]
    return out


def caption_and_prompt(item: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The caption target and its prompt: the ``caption`` column (default prompt), else a
    conversation's first assistant answer, prompted by the user turn before it."""
    caption = (item.get("caption") or "").strip()
    if caption:
        return caption, None
    prompt = None
    for message in item.get("messages") or []:
        text = message.get("content") or ""
        for token in PLACEHOLDERS.values():  # the media are fed to the encoders
            text = text.replace(token, "")
        text = text.strip()
        if message.get("role") == "user" and text:
            prompt = text
        elif message.get("role") == "assistant" and text:
            return text, prompt
    return None, None


def _evenly(n: int, k: int) -> list[int]:
    """``k`` indexes spread evenly over ``range(n)`` (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


def _audio_clip(
    sid: str, data: bytes, span: Sequence[float] | None, decoded: dict[bytes, Any]
) -> np.ndarray:
    """The sample's audio as 16 kHz PCM, cut to ``span``; ``decoded`` keeps each track
    decoded once per batch (the clips of one video share its track)."""
    from lake.audio import decode_pcm

    if data not in decoded:
        try:
            decoded[data] = decode_pcm(data)
        except Exception as exc:
            raise ValueError(f"sample {sid}: its audio cannot be decoded: {exc}") from exc
    pcm, rate = decoded[data]
    if rate != SAMPLE_RATE:
        raise ValueError(f"sample {sid}: audio at {rate} Hz, expected {SAMPLE_RATE} (lake audio)")
    if span is not None:
        start, end = (max(0, round(s * rate)) for s in span)
        pcm = pcm[start:end]
    return pcm


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows) if rows else 1
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask
