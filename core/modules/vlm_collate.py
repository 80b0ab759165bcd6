"""Lake samples -> VLM training batches, batch by batch in the data loader.

Nothing is preprocessed ahead of training: each batch's samples are rendered through the
model's own chat template and processor when the loader asks for it. Per sample:

1. **Conversation**: canonical ``messages`` (content strings with ``<image>``
   placeholders, one per ``media_ids`` entry) become content parts; a sample with only a
   ``caption`` (or only a ``label``) becomes "user: <image> prompt / assistant: caption".
2. **Pixel budget**: every image is resized (aspect kept) into
   ``[min_pixels, max_pixels]`` by this loader (per dataset in ``pixels.datasets``, per
   sample through optional ``min_pixels`` / ``max_pixels`` sample columns) before the
   processor sees it; the effective sizes are returned with the batch.
3. **Tokens**: ``processor(text=template(conversation), images=...)``, exactly what
   ``processor.apply_chat_template(..., tokenize=True)`` produces.
4. **Labels by construction**: assistant turns are located as character spans of the
   rendered text (the template rendered up to each assistant turn with the generation
   prompt must be a prefix of the full text), the text is tokenized once more with
   offsets, and only tokens starting inside a span get labels. The two tokenizations
   agree on every text token (checked; text the processor inserts next to a media run,
   such as Qwen3-VL's frame timestamps, is aligned around and never supervised), and
   image tokens are always -100.
   A sample with no supervised token is an error.
5. **Length**: a sample longer than ``max_length`` is skipped and reported, or with
   ``overlong="truncate_text"`` cut in text after its last image (never inside an image).

With ``pack=True`` the samples of a batch are packed first-fit into rows of at most
``max_length`` tokens with per-sample position ids restarting at 0 and no attention mask,
which transformers turns into block-diagonal attention; ``objective="dpo"`` builds a
chosen row and a rejected row per sample with the same images.

What each objective trains on (``feedback``: the sample's KTO label, true = desirable):

- ``sft``: a preference sample is its prompt answered by ``chosen`` (its ``rejected``
  answer is never rendered); a sample with ``feedback = false`` is never an SFT target: it
  is left out of the batch and reported in ``skipped`` (:meth:`VlmCollator.sample_filter`
  lets the data module leave such samples out of the selection in the first place).
- ``dpo``: a chosen row and a rejected row per sample (``rejected_media_ids``, a rejected
  answer with media of its own, is refused: its media are not read yet).
- ``kto``: per sample its prompt with its answer (the last assistant turn; labels on that
  turn only) and ``feedback`` as the batch's ``feedback`` tensor; ``kl`` is a second batch
  of the same prompts with the answers cycled by one inside the batch (prompt i with answer
  i - 1, as TRL's ``DataCollatorForVisionUnpairedPreference`` builds its KL rows), from
  which the module estimates the KL reference point.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from lake.errors import ConfigError
from lake.images import decode_image
from lake.schema import IMAGE_TOKEN, PLACEHOLDERS

log = logging.getLogger(__name__)

IGNORE = -100
IMAGE_PLACEHOLDER = IMAGE_TOKEN
#: a placeholder of any media kind in a canonical message (``<image>``, ``<video>``, ...)
_PLACEHOLDER_RE = re.compile("(" + "|".join(re.escape(t) for t in PLACEHOLDERS.values()) + ")")
_KIND_OF = {token: kind for kind, token in PLACEHOLDERS.items()}


class SampleError(ValueError):
    """A sample cannot be turned into a training example (the message names it)."""


# ---- conversation ------------------------------------------------------------------------


def _parts(text: str) -> list[dict[str, str]]:
    """``"<image>\\nWhat?"`` -> ``[{"type": "image"}, {"type": "text", "text": "What?"}]``
    (``<video>`` / ``<audio>`` likewise give ``video`` / ``audio`` parts)."""
    out: list[dict[str, str]] = []
    pieces = _PLACEHOLDER_RE.split(text)  # text, token, text, token, ..., text
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append({"type": _KIND_OF[piece]})
            continue
        piece = piece.strip() if len(pieces) > 1 else piece
        if piece:
            out.append({"type": "text", "text": piece})
    return out


def media_kinds(sample: Mapping[str, Any]) -> list[str]:
    """The placeholder kind each of the sample's media fills, in order (``image`` for
    images and video frames, ``video``, ``audio``); all images when the sample does not
    say (``media_kinds`` is what the lake's data module reads with the media)."""
    n = len(sample.get("images") or [])
    kinds = sample.get("media_kinds")
    if kinds is None:
        return ["image"] * n
    return ["image" if k in ("image", "frame") else str(k) for k in kinds]


def to_conversation(
    sample: Mapping[str, Any],
    caption_prompt: str = "Describe the image.",
    label_prompt: str = "What is in the image? Answer with one word.",
) -> list[dict[str, Any]]:
    """The sample as chat-template messages with content parts: its ``messages``, else
    "<image> caption_prompt" answered by the caption, else "<image> label_prompt"
    answered by the label."""
    messages = sample.get("messages") or []
    kinds = media_kinds(sample)
    if not messages:
        answer, prompt = (sample.get("caption") or "").strip(), caption_prompt
        if not answer and (sample.get("label") or "").strip():
            answer, prompt = sample["label"].strip(), label_prompt
        if not answer:
            raise SampleError(f"{_where(sample)}: no messages, caption or label to train on")
        user = [{"type": k} for k in kinds] + [{"type": "text", "text": prompt}]
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    conv = [{"role": m["role"], "content": _parts(m.get("content") or "")} for m in messages]
    placed = [p["type"] for m in conv for p in m["content"] if p["type"] != "text"]
    if placed != kinds:
        raise SampleError(
            f"{_where(sample)}: placeholders {_tally(placed)} do not match its media "
            f"{_tally(kinds)} (in order)"
        )
    return conv


def _tally(kinds: Sequence[str]) -> str:
    """``["image", "video"]`` -> ``"<image><video>"`` (``none`` when empty)."""
    return "".join(PLACEHOLDERS.get(k, f"<{k}>") for k in kinds) or "none"


def _where(sample: Mapping[str, Any]) -> str:
    src = sample.get("source_uri")
    return f"sample {sample.get('sample_id')}" + (f" ({src})" if src else "")


def _text(message: Mapping[str, Any]) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p["type"] == "text")


# ---- pixel budget ------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelBudget:
    """Bounds on ``width * height`` of every image (None: unbounded on that side)."""

    min_pixels: int | None = None
    max_pixels: int | None = None

    def size(self, w: int, h: int) -> tuple[int, int]:
        """The ``(width, height)`` an image of ``w`` x ``h`` gets in the budget (aspect
        kept); its own size if inside (token counts are planned from this, no decode)."""
        area = w * h
        scale = 1.0
        if self.max_pixels and area > self.max_pixels:
            scale = math.sqrt(self.max_pixels / area)
        elif self.min_pixels and area < self.min_pixels:
            scale = math.sqrt(self.min_pixels / area)
        if scale == 1.0:
            return w, h
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if self.max_pixels and size[0] * size[1] > self.max_pixels:  # rounding overshoot
            size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        return size

    def fit(self, image: Image.Image) -> Image.Image:
        """The image resized (aspect kept, bicubic) into the budget; itself if inside."""
        size = self.size(*image.size)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.BICUBIC)


def budget_for(
    sample: Mapping[str, Any], default: PixelBudget, per_dataset: Mapping[str, PixelBudget]
) -> PixelBudget:
    """The sample's own budget columns, else its dataset's, else the default."""
    base = per_dataset.get(sample.get("dataset") or "", default)
    lo, hi = sample.get("min_pixels"), sample.get("max_pixels")
    if lo is None and hi is None:
        return base
    return PixelBudget(lo if lo is not None else base.min_pixels,
                       hi if hi is not None else base.max_pixels)  # fmt: skip


@dataclass(frozen=True)
class VideoSettings:
    """How a ``<video>`` is fed to the model: frames sampled at ``fps`` (at most
    ``max_frames``, evenly spread beyond), each fitted into ``[min_pixels, max_pixels]``
    (None: the sample's image budget)."""

    fps: float = 2.0
    max_frames: int = 32
    min_pixels: int | None = None
    max_pixels: int | None = None

    @classmethod
    def of(cls, cfg: Mapping[str, Any] | None) -> VideoSettings:
        """Settings from the model config's ``video`` mapping (missing keys: defaults)."""
        out = cls(**dict(cfg or {}))
        if out.fps <= 0 or out.max_frames < 1:
            raise ConfigError(f"video.fps must be > 0 and video.max_frames >= 1, got {out}")
        return out


@dataclass
class VideoClip:
    """One ``<video>``'s frames, decoded and fitted, with the rate they were sampled at."""

    frames: list[Image.Image]
    fps: float
    duration_s: float | None = None  # the whole video's (SmolVLM writes it in its intro)


def split_media(media: Sequence[Any]) -> tuple[list[Image.Image], list[VideoClip]]:
    """A sample's decoded media in placeholder order -> (images, videos), each in order."""
    images = [m for m in media if not isinstance(m, VideoClip)]
    return images, [m for m in media if isinstance(m, VideoClip)]


# ---- one sample --------------------------------------------------------------------------


@dataclass
class Encoded:
    """One tokenized sample (1-D tensors) and its vision inputs."""

    sample_id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    vision: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, grid ...
    mm_token_type_ids: torch.Tensor | None = None
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    n_images: int = 0
    n_videos: int = 0
    n_frames: list[int] = field(default_factory=list)  # sampled frames per video

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def supervised(self) -> int:
        """Number of tokens that carry a label."""
        return int((self.labels != IGNORE).sum())


class Renderer:
    """Chat template + processor + exact labels for one family's processor."""

    def __init__(
        self,
        processor: Any,
        never_supervised: Sequence[str],
        image_token: str,
        video_token: str | None = None,
        media_tokens: Sequence[str] = (),
    ):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = int(self.tokenizer.convert_tokens_to_ids(image_token))
        # the tokens the processor expands (one per patch group): never compared with text
        self.media_token_ids = {self.image_token_id}
        if video_token is not None:
            self.media_token_ids.add(int(self.tokenizer.convert_tokens_to_ids(video_token)))
        self.media_token_ids |= {int(self.tokenizer.convert_tokens_to_ids(t)) for t in media_tokens}
        self.never = torch.tensor(
            [int(self.tokenizer.convert_tokens_to_ids(t)) for t in never_supervised]
        )
        # the tokens that bracket a media run (never supervised): a placeholder's
        # neighbourhood in the alignment reaches past them to the nearest text
        self.bracket_ids = {int(t) for t in self.never.tolist()} - self.media_token_ids

    def render(self, conv: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The chat template's text for ``conv``."""
        return self.processor.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def assistant_spans(self, conv: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
        """Character spans of the assistant turns in ``text`` (trailing whitespace out)."""
        spans = []
        for i, message in enumerate(conv):
            if message["role"] != "assistant":
                continue
            head = self.render(conv[:i], add_generation_prompt=True) if i else ""
            upto = self.render(conv[: i + 1])
            if not text.startswith(head) or not text.startswith(upto):
                raise SampleError(
                    "the chat template is not prefix-stable (rendering the conversation up "
                    f"to assistant turn {i} is not a prefix of the whole), so the "
                    "assistant tokens cannot be located"
                )
            end = len(upto.rstrip())
            if end > len(head):
                spans.append((len(head), end))
        return spans

    def _special(self, text: str) -> bool:
        bos = self.tokenizer.bos_token
        return not (bos is not None and text.startswith(bos))

    def tokenize(self, text: str, images: list[Any]) -> dict[str, torch.Tensor]:
        """The processor's encoding (as ``apply_chat_template(tokenize=True)`` does it);
        ``images`` may hold :class:`VideoClip` entries, fed to the video input."""
        stills, videos = split_media(images)
        if videos and (stills or len(videos) > 1) and frames_as_images(self.processor):
            raise SampleError(
                "this processor feeds a video's frames on its image input (SmolVLM): a "
                "sample may hold one video and no image beside it"
            )
        return self.processor(
            text=[text],
            images=stills or None,
            return_tensors="pt",
            add_special_tokens=self._special(text),
            **video_kwargs(videos, self.processor),
        )

    def labels(
        self, text: str, spans: list[tuple[int, int]], input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Labels aligned to the processor's ``input_ids`` (1-D)."""
        plain = self.tokenizer(
            text, add_special_tokens=self._special(text), return_offsets_mapping=True
        )
        ids, offsets = plain["input_ids"], plain["offset_mapping"]
        keep = [
            any(a <= start < b for a, b in spans) and end > start
            for start, end in offsets
        ]  # fmt: skip
        media = self.media_token_ids
        text_keep = [k for t, k in zip(ids, keep, strict=True) if t not in media]
        full = input_ids.tolist()
        positions = align_to_processor(ids, full, media, self.bracket_ids, self.tokenizer.decode)
        labels = torch.full_like(input_ids, IGNORE)
        for j, k in zip(positions, text_keep, strict=True):
            if k:
                labels[j] = input_ids[j]
        labels[torch.isin(input_ids, self.never)] = IGNORE
        return labels


def align_to_processor(
    plain: Sequence[int],
    full: Sequence[int],
    media: set[int],
    brackets: Collection[int] = (),
    decode: Callable[[list[int]], str] | None = None,
) -> list[int]:
    """Where each non-media token of the plain tokenization sits in the processor's
    ``full`` ids (positions, in order).

    Processors may write text of their own around a media run (Qwen3-VL's frame
    timestamps ``<0.5 seconds>``, SmolVLM's video intro and ``Frame from 00:01:`` lines):
    the two id lists are aligned (``difflib``, no junk heuristic) and only matched and
    inserted tokens are accepted. Every inserted token must lie inside the neighbourhood
    of a media placeholder: strictly between the processor positions of the nearest plain
    text tokens before and after the placeholder (bracket tokens such as
    ``<|vision_start|>`` skipped), so inserted text can never be confused with the
    conversation's own (an answer containing ``0.5 seconds`` stays where it is). A
    replaced or dropped text token raises :class:`SampleError`.
    """
    plain_text = [i for i, t in enumerate(plain) if t not in media]
    ids = [plain[i] for i in plain_text]
    at = [j for j, t in enumerate(full) if t not in media]
    proc = [full[j] for j in at]
    if proc == ids:
        return at
    import difflib

    show = decode or (lambda toks: str(list(toks)))
    out: list[int] = []
    inserted: list[int] = []
    ops = difflib.SequenceMatcher(None, ids, proc, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            out.extend(at[j1:j2])
        elif tag == "insert":
            inserted.extend(at[j1:j2])
        else:
            what = "replaced" if tag == "replace" else "dropped"
            raise SampleError(
                f"the processor {what} text tokens {show(ids[i1:i2])!r}"
                + (f" with {show(proc[j1:j2])!r}" if tag == "replace" else "")
                + " outside its media spans; cannot align labels"
            )
    if inserted:
        where = dict(zip(plain_text, out, strict=True))  # plain index -> processor position
        regions = []
        for i, t in enumerate(plain):
            if t not in media:
                continue
            a = next((k for k in range(i - 1, -1, -1)
                      if plain[k] not in media and plain[k] not in brackets), None)  # fmt: skip
            b = next((k for k in range(i + 1, len(plain))
                      if plain[k] not in media and plain[k] not in brackets), None)  # fmt: skip
            regions.append((-1 if a is None else where[a], len(full) if b is None else where[b]))
        stray = [j for j in inserted if not any(lo < j < hi for lo, hi in regions)]
        if stray:
            raise SampleError(
                f"the processor inserted text tokens {show([full[j] for j in stray])!r} away "
                "from any media placeholder; cannot align labels"
            )
    return out


def video_kwargs(videos: Sequence[VideoClip], processor: Any = None) -> dict[str, Any]:
    """The processor's video arguments for already sampled clips (no resampling; the
    sampling rate and duration as metadata, from which Qwen2.5-VL derives
    ``second_per_grid_ts`` and Qwen3-VL / SmolVLM write their frame timestamps)."""
    if not videos:
        return {}
    from transformers.video_utils import VideoMetadata

    meta = [
        VideoMetadata(total_num_frames=len(v.frames), fps=v.fps, duration=v.duration_s,
                      frames_indices=list(range(len(v.frames))))
        for v in videos
    ]  # fmt: skip
    out: dict[str, Any] = {
        "videos": [v.frames for v in videos],
        "video_metadata": meta,
        "do_sample_frames": False,
    }
    if hasattr(getattr(processor, "video_processor", None), "cap_pixels_per_frame"):
        out["cap_pixels_per_frame"] = True  # Qwen: frames come fitted into the budget already
    return out


# ---- the collator ------------------------------------------------------------------------

#: processor outputs the model takes (images, then videos: Qwen2-VL / Qwen2.5-VL)
VISION_KEYS = (
    "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
    "second_per_grid_ts", "pixel_attention_mask",
)  # fmt: skip
OBJECTIVES = ("sft", "dpo", "kto")


class VlmCollator:
    """Collate lake samples into SFT or DPO batches (see the module docstring).

    Output keys: ``input_ids``, ``labels``, ``attention_mask`` (None when packed),
    ``position_ids`` (packed: 1-D positions restarting per sample), ``seq_lens`` (per row,
    the packed samples' lengths), the processor's vision keys (``pixel_values``,
    ``image_grid_thw``), ``mm_token_type_ids`` when the processor makes them,
    ``sample_ids``, ``n_supervised`` (per sample), ``skipped`` (``[(sample_id, reason)]``),
    ``image_sizes`` (effective, per image) and, for evaluation, ``prompts`` (left-padded
    generation prompts) with ``references`` (the last assistant turn).
    """

    def __init__(
        self,
        processor: Any,
        never_supervised: Sequence[str],
        image_token: str,
        max_length: int,
        overlong: str = "skip",
        pack: bool = False,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        dataset_pixels: Mapping[str, Mapping[str, int | None]] | None = None,
        caption_prompt: str = "Describe the image.",
        objective: str = "sft",
        with_prompts: bool = False,
        on_error: str = "error",
        video_token: str | None = None,
        video: Mapping[str, Any] | None = None,
        family: str = "",
        media_tokens: Sequence[str] = (),
    ) -> None:
        if overlong not in ("skip", "truncate_text"):
            raise ValueError(f"overlong must be 'skip' or 'truncate_text', not {overlong!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {objective!r}")
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', not {on_error!r}")
        if pack and objective != "sft":
            raise ValueError(f"packing is for SFT; {objective} scores each row on its own")
        self.renderer = Renderer(processor, never_supervised, image_token, video_token,
                                 media_tokens)  # fmt: skip
        self.takes_video = video_token is not None
        self.video = VideoSettings.of(video)
        self.family = family
        self.max_length = int(max_length)
        self.overlong = overlong
        self.pack = pack
        self.budget = PixelBudget(min_pixels, max_pixels)
        self.per_dataset = {
            k: PixelBudget(v.get("min_pixels"), v.get("max_pixels"))
            for k, v in (dataset_pixels or {}).items()
        }
        self.caption_prompt = caption_prompt
        self.objective = objective
        self.with_prompts = with_prompts
        self.on_error = on_error

    @property
    def processor(self) -> Any:
        return self.renderer.processor

    @property
    def pad_id(self) -> int:
        tok = self.renderer.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def sample_filter(self, columns: Sequence[str]) -> str | None:
        """The samples this objective trains on, as a Lance filter over a table with
        ``columns`` (None: all): SFT leaves out undesirable answers (``feedback = false``),
        KTO takes the samples with feedback."""
        if "feedback" not in columns:
            if self.objective == "kto":
                raise ConfigError(
                    "objective=kto trains on feedback data, but the lake's samples have no "
                    "'feedback' column (ingest KTO data with a 'label' true/false first)"
                )
            return None
        if self.objective == "sft":
            return "feedback IS NULL OR feedback = true"
        if self.objective == "kto":
            return "feedback IS NOT NULL"
        return None

    # -- per sample ---------------------------------------------------------------------
    @property
    def accepted_kinds(self) -> tuple[str, ...]:
        """The media kinds this family's model takes (the data module's pre-flight
        refuses samples with others)."""
        return ("image", "frame", "video") if self.takes_video else ("image", "frame")

    def images(self, sample: Mapping[str, Any]) -> list[Any]:
        """The sample's media decoded in placeholder order: images fitted into the pixel
        budget, videos as :class:`VideoClip` frames sampled at ``video.fps``."""
        budget = budget_for(sample, self.budget, self.per_dataset)
        kinds = media_kinds(sample)
        out: list[Any] = []
        for i, data in enumerate(sample.get("images") or []):
            kind = kinds[i] if i < len(kinds) else "image"
            if kind == "video" and self.takes_video:
                out.append(self._video(sample, i, data, budget))
                continue
            if kind != "image":
                raise SampleError(
                    f"{_where(sample)}: media {i} is {kind}, which the "
                    f"{self.family or 'model'} family cannot take"
                )
            try:
                rgb = decode_image(data)
            except Exception as err:  # PIL raises several types for bad bytes
                raise SampleError(f"{_where(sample)}: image {i} does not decode ({err})") from err
            out.append(budget.fit(rgb))
        return out

    def _video(self, sample: Mapping[str, Any], i: int, data: Any, budget: PixelBudget) -> Any:
        """Media ``i`` (a video: inline bytes, a lake blob or a referenced file) as
        frames at ``video.fps``, each fitted into the video budget."""
        from lake.video import VideoRejected, sample_frames

        if data is None:
            raise SampleError(
                f"{_where(sample)}: video {i} has no bytes, blob or referenced file to read"
            )
        if isinstance(data, str) and not Path(data).is_file():
            raise SampleError(
                f"{_where(sample)}: video {i} is stored by reference and {data} is not a "
                "file (set data.media_root to the directory it was ingested from)"
            )
        v = self.video
        step = int(getattr(getattr(self.processor, "video_processor", None),
                           "temporal_patch_size", 1) or 1)  # fmt: skip
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        if hasattr(source, "seek"):
            source.seek(0)  # a cached blob may have been read before
        try:
            got = sample_frames(source, v.fps, v.max_frames, step)
        except VideoRejected as err:
            raise SampleError(f"{_where(sample)}: video {i} does not decode ({err})") from err
        fit = PixelBudget(
            v.min_pixels if v.min_pixels is not None else budget.min_pixels,
            v.max_pixels if v.max_pixels is not None else budget.max_pixels,
        )
        return VideoClip([fit.fit(f.convert("RGB")) for f in got.frames], got.fps, got.duration_s)

    def encode(
        self,
        sample: Mapping[str, Any],
        conv: list[dict[str, Any]],
        images: list[Image.Image],
        last_turn_only: bool = False,
    ) -> Encoded:
        """Tokens and exact labels of one conversation (raises :class:`SampleError`);
        ``last_turn_only`` labels the final assistant turn only (DPO scores the answer)."""
        r = self.renderer
        text = r.render(conv)
        try:
            spans = r.assistant_spans(conv, text)
        except SampleError as err:
            raise SampleError(f"{_where(sample)}: {err}") from err
        if last_turn_only:
            spans = spans[-1:]
        try:
            enc = r.tokenize(text, images)
            ids = enc["input_ids"][0]
            labels = r.labels(text, spans, ids)
        except SampleError as err:
            raise SampleError(f"{_where(sample)}: {err}") from err
        vision = {k: torch.as_tensor(enc[k]) for k in VISION_KEYS if k in enc}
        mm = enc["mm_token_type_ids"][0] if "mm_token_type_ids" in enc else None
        stills, videos = split_media(images)
        return Encoded(
            str(sample.get("sample_id")), ids, labels, vision, mm,
            [im.size for im in stills], len(stills), len(videos),
            [len(v.frames) for v in videos],
        )  # fmt: skip

    def fit_length(self, enc: Encoded) -> str | None:
        """Apply the length policy in place; the reason when the sample must be skipped."""
        if len(enc) <= self.max_length:
            return None
        if self.overlong == "truncate_text":
            media = torch.tensor(sorted(self.renderer.media_token_ids))
            img = torch.isin(enc.input_ids, media).nonzero()
            last_image = int(img[-1]) if len(img) else -1
            if last_image < self.max_length - 1:
                cut = self.max_length
                kept = enc.labels[:cut]
                if int((kept != IGNORE).sum()) > 0:
                    enc.input_ids, enc.labels = enc.input_ids[:cut], kept
                    if enc.mm_token_type_ids is not None:
                        enc.mm_token_type_ids = enc.mm_token_type_ids[:cut]
                    return None
                return f"{len(enc)} tokens > max_length {self.max_length}; no label left after cut"
            return (
                f"{len(enc)} tokens > max_length {self.max_length} and an image ends after "
                "the limit (images are never cut)"
            )
        return f"{len(enc)} tokens > max_length {self.max_length}"

    # -- batch --------------------------------------------------------------------------
    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        skipped: list[tuple[str, str]] = []
        rows: list[Encoded] = []
        rejected: list[Encoded] = []
        prompts: list[tuple[list[dict[str, Any]], list[Image.Image]]] = []
        references: list[str] = []
        kept: list[tuple[Mapping[str, Any], list[dict[str, Any]], list[Image.Image]]] = []
        for sample in samples:
            try:
                got = self._sample(sample)
            except SampleError as err:
                if self.on_error == "error":
                    raise
                got = str(err)
            if isinstance(got, str):
                skipped.append((str(sample.get("sample_id")), got))
                continue
            chosen, other, conv, images = got
            kept.append((sample, conv, images))
            rows.append(chosen)
            if other is not None:
                rejected.append(other)
            if self.with_prompts:
                prompts.append((_prompt_of(conv), images))
                references.append(_text(conv[-1]))
        for sid, why in skipped:
            log.warning("skipping sample %s: %s", sid, why)
        batch = self._batch(rows + rejected)
        batch["skipped"] = skipped
        batch["n_pairs"] = len(rejected)
        if self.objective == "kto":
            batch["feedback"] = torch.tensor([bool(s["feedback"]) for s, _, _ in kept])
            batch["kl"] = self._batch(self._kl_rows(kept))
        if self.with_prompts:
            batch.update(self._prompts(prompts))
            batch["references"] = references
        return batch

    def sft_conversation(self, sample: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The conversation an SFT row renders (a preference pair's chosen answer in place
        of its last turn); :mod:`core.data.packing` counts tokens from it."""
        conv = to_conversation(sample, self.caption_prompt)
        chosen = sample.get("chosen")
        if isinstance(chosen, str) and chosen.strip():
            # a preference pair teaches its chosen answer only, whatever messages end with
            conv = [*_prompt_only(conv), _assistant(chosen)]
        return conv

    def _sample(self, sample: Mapping[str, Any]) -> Any:
        if self.objective in ("dpo", "kto"):
            conv = to_conversation(sample, self.caption_prompt)
            images = self.images(sample)
            if self.objective == "dpo":
                return self._pair(sample, conv, images)
            return self._feedback(sample, conv, images)
        conv = self.sft_conversation(sample)
        images = self.images(sample)
        if sample.get("feedback") is not None and not sample["feedback"]:
            return "undesirable answer (feedback = false): never an SFT target"
        if not any(_text(m).strip() for m in conv if m["role"] == "assistant"):
            # an empty answer would still label the template's end-of-turn token
            raise SampleError(f"{_where(sample)}: no assistant text to train on")
        return self._supervised(sample, conv, images)

    def _supervised(
        self,
        sample: Mapping[str, Any],
        conv: list[dict[str, Any]],
        images: list[Image.Image],
        last_turn_only: bool = False,
    ) -> Any:
        """Encode one row: ``(enc, None, conv, images)``, or the reason it is skipped
        (over the length budget); an error when nothing in it is supervised."""
        enc = self.encode(sample, conv, images, last_turn_only=last_turn_only)
        why = self.fit_length(enc)
        if why:
            return why
        if enc.supervised == 0:
            raise SampleError(f"{_where(sample)}: no supervised (assistant) tokens")
        return enc, None, conv, images

    def _feedback(
        self, sample: Mapping[str, Any], conv: list[dict[str, Any]], images: list[Image.Image]
    ) -> Any:
        """A KTO row: the prompt and its rated answer (the last assistant turn)."""
        if sample.get("feedback") is None:
            raise SampleError(f"{_where(sample)}: KTO needs feedback (true / false)")
        if not conv or conv[-1]["role"] != "assistant" or not _text(conv[-1]).strip():
            raise SampleError(f"{_where(sample)}: KTO needs an answer (a last assistant turn)")
        return self._supervised(sample, conv, images, last_turn_only=True)

    def _kl_rows(
        self, kept: list[tuple[Mapping[str, Any], list[dict[str, Any]], list[Image.Image]]]
    ) -> list[Encoded]:
        """Prompt i answered by answer i - 1 (cyclic), for KTO's KL estimate; a row over
        ``max_length`` is left out (the estimate is a mean over the rows)."""
        out = []
        for i, (sample, conv, images) in enumerate(kept):
            answer = _text(kept[i - 1][1][-1])
            enc = self.encode(sample, [*conv[:-1], _assistant(answer)], images, True)
            if self.fit_length(enc) is None and enc.supervised:
                out.append(enc)
        return out

    def _pair(
        self, sample: Mapping[str, Any], conv: list[dict[str, Any]], images: list[Image.Image]
    ) -> Any:
        chosen, rejected = sample.get("chosen"), sample.get("rejected")
        if not (isinstance(chosen, str) and chosen.strip()) or not (
            isinstance(rejected, str) and rejected.strip()
        ):
            raise SampleError(f"{_where(sample)}: DPO needs both chosen and rejected")
        if sample.get("rejected_media_ids"):
            raise SampleError(
                f"{_where(sample)}: the rejected answer has media of its own "
                "(rejected_media_ids); DPO training does not read them yet"
            )
        prompt = _prompt_only(conv)
        out = []
        for answer in (chosen, rejected):
            turn = {"role": "assistant", "content": [{"type": "text", "text": answer.strip()}]}
            enc = self.encode(sample, [*prompt, turn], images, last_turn_only=True)
            why = self.fit_length(enc)
            if why:
                return why
            if enc.supervised == 0:
                raise SampleError(f"{_where(sample)}: no supervised (assistant) tokens")
            out.append(enc)
        return out[0], out[1], [*prompt, {"role": "assistant", "content": [
            {"type": "text", "text": chosen.strip()}]}], images  # fmt: skip

    def _batch(self, rows: list[Encoded]) -> dict[str, Any]:
        if self.pack and rows:
            groups = pack_first_fit([len(r) for r in rows], self.max_length)
        else:
            groups = [[i] for i in range(len(rows))]
        ordered = [rows[i] for g in groups for i in g]  # vision inputs follow token order
        width = max((sum(len(rows[i]) for i in g) for g in groups), default=0)
        n = len(groups)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.long)
        mm = torch.zeros((n, width), dtype=torch.long)
        seq_lens: list[list[int]] = []
        for row, g in enumerate(groups):
            at, lens = 0, []
            for i in g:
                e = rows[i]
                k = len(e)
                input_ids[row, at : at + k] = e.input_ids
                labels[row, at : at + k] = e.labels
                labels[row, at] = IGNORE  # never predict a sample's first token from the last
                attention[row, at : at + k] = 1
                positions[row, at : at + k] = torch.arange(k)
                if e.mm_token_type_ids is not None:
                    mm[row, at : at + k] = e.mm_token_type_ids
                at += k
                lens.append(k)
            if at < width:  # padding forms its own segment when packed
                positions[row, at:] = torch.arange(width - at)
            seq_lens.append(lens)
        batch: dict[str, Any] = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": None if self.pack else attention,
            "position_ids": positions if self.pack else None,
            "token_mask": attention,
            "seq_lens": seq_lens,
            "packed": self.pack,
            "sample_ids": [e.sample_id for e in ordered],
            "n_supervised": [e.supervised for e in ordered],
            "image_sizes": [s for e in ordered for s in e.image_sizes],
            "n_images": [e.n_images for e in ordered],
            "n_videos": [e.n_videos for e in ordered],
            "video_frames": [n for e in ordered for n in e.n_frames],
        }
        if any(e.mm_token_type_ids is not None for e in rows):
            batch["mm_token_type_ids"] = mm
        batch.update(_cat_vision([e.vision for e in ordered]))
        return batch

    def _prompts(self, prompts: list[tuple[list[dict[str, Any]], list[Image.Image]]]) -> dict:
        """Left-padded generation prompts (the conversation before its last answer)."""
        if not prompts:
            return {"prompts": None}
        r = self.renderer
        texts = [r.render(conv, add_generation_prompt=True) for conv, _ in prompts]
        images = [split_media(media)[0] for _, media in prompts]
        videos = [v for _, media in prompts for v in split_media(media)[1]]
        if videos and frames_as_images(self.processor):
            return {"prompts": self._prompts_per_row(texts, [m for _, m in prompts])}
        tok = r.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = self.processor(
                text=texts,
                images=images if any(images) else None,
                **video_kwargs(videos, self.processor),
                return_tensors="pt",
                padding=True,
                add_special_tokens=r._special(texts[0]),
            )
        finally:
            tok.padding_side = side
        return {"prompts": dict(enc)}

    def _prompts_per_row(self, texts: list[str], media: list[list[Any]]) -> dict[str, Any]:
        """Prompts encoded one row at a time and left-padded here: SmolVLM's processor
        cannot take one row's video beside another row's images in one call (both come
        out as ``pixel_values``); its model takes every row's images as one sequence."""
        rows = [self.renderer.tokenize(text, m) for text, m in zip(texts, media, strict=True)]
        width = max(int(e["input_ids"].shape[1]) for e in rows)
        out: dict[str, Any] = {}
        for key, fill in (("input_ids", self.pad_id), ("attention_mask", 0),
                          ("mm_token_type_ids", 0)):  # fmt: skip
            if key in rows[0]:
                out[key] = torch.stack([
                    F.pad(torch.as_tensor(e[key][0]), (width - e[key].shape[1], 0), value=fill)
                    for e in rows
                ])  # fmt: skip
        out.update(_cat_vision([{k: torch.as_tensor(e[k]) for k in VISION_KEYS if k in e}
                                for e in rows]))  # fmt: skip
        return out


def frames_as_images(processor: Any) -> bool:
    """Whether the processor feeds video frames on its image input (SmolVLM: its video
    processor outputs ``pixel_values``), so images and videos cannot share one call."""
    names = getattr(getattr(processor, "video_processor", None), "model_input_names", ())
    return "pixel_values" in names


def _prompt_only(conv: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation without a final assistant turn (a preference sample's prompt)."""
    return conv[:-1] if conv and conv[-1]["role"] == "assistant" else conv


def _assistant(answer: str) -> dict[str, Any]:
    """An assistant turn answering ``answer`` (stripped)."""
    return {"role": "assistant", "content": [{"type": "text", "text": answer.strip()}]}


def _prompt_of(conv: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to (not including) its last assistant turn."""
    last = max((i for i, m in enumerate(conv) if m["role"] == "assistant"), default=len(conv))
    return conv[:last]


def _cat_vision(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate the processor's vision tensors of several samples in order."""
    out: dict[str, torch.Tensor] = {}
    per_row = any(p["pixel_values"].dim() == 5 for p in parts if "pixel_values" in p)
    for key in VISION_KEYS:
        tensors = [p[key] for p in parts if key in p]
        if tensors and per_row and key in ("pixel_values", "pixel_attention_mask"):
            # SmolVLM: (1, images, [3,] H, W) per sample -> one row of every image (the
            # model takes images in token order, whatever row they sit in)
            out[key] = _cat_padded(tensors)
        elif tensors:
            out[key] = torch.cat(tensors, dim=0)
    return out


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``(1, n_i, ..., H_i, W_i)`` tensors as one ``(1, sum n_i, ..., H, W)``, zero-padded
    to the largest H, W (zero pixels are what the processor pads with, masked out)."""
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    padded = [F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in tensors]
    return torch.cat([t.flatten(0, 1) for t in padded], dim=0)[None]


def pack_first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= ``capacity``, first-fit decreasing
    (each bin keeps its samples in their original order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]
