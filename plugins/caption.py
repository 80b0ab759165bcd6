"""Enricher: captions for images and video frames from a vision-language model.

:class:`CaptionEnricher` writes ``samples.caption`` and its owner column
``samples.caption_model`` for samples that lack a caption. The model is either

- ``model``: a hub id or a local directory of any transformers image-to-text /
  image-text-to-text model (``AutoProcessor`` + ``AutoModelForImageTextToText``), or
- ``run``: a lakeloom VLM training run under ``runs_dir``: its ``merged/`` directory
  (``lakeloom merge run=ID``) if there is one, else its ``hf/`` export when that holds
  full weights. A run that exported only LoRA adapters must be merged first.

**Scope.** Samples with exactly one media, that are not audio or clip samples (tags
``kind:audio`` / ``kind:clip``), whose caption is missing (null or empty) or was written
by a model (``caption_model`` set). A human caption (``caption_model`` null) is never
replaced, not even with ``enrich.reembed=true``; a tool that edits a caption by hand must
clear ``caption_model``. An optional ``where`` is ANDed in.

**Generation.** The prompt is rendered with the processor's chat template (one image part
and one text part) when it has one; otherwise it is used as plain text, with the
processor's image token in front when it has one and the prompt lacks it. Batches are
decoded greedily (``max_new_tokens``), left-padded for decoder-only models; the prompt
is cut from the output and whitespace stripped.

**Owner id.** ``<hf|run>:<hub id, folder name or run id>:<sha12>:<gen8>``: ``sha12``
hashes the weight files and ``config.json`` (sha256 of each file's bytes; a file in the
Hugging Face cache is named by that sha256 already, so hub models are not re-read; a local
folder is read once per job, about 1 s per GB here), so retrained or re-merged weights get
another id; ``gen8`` hashes the prompt and ``max_new_tokens``, so changing either needs
``enrich.reembed=true``, like a change of model.

**Rows the model did not caption.** Media that are not images or frames, images that do
not decode, and empty generations get a null caption with the owner set: the row counts
as done by this model (re-runs skip it) and ``caption IS NULL AND caption_model IS NOT
NULL`` finds them. A sample whose media row is missing keeps a null owner (retried later).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from lake import ids
from lake.cache import resolve_device
from lake.errors import ConfigError
from lake.images import decode_image
from lake.plugin import Enricher
from lake.runs import RunDir
from lake.schema import KIND_TAGS
from lake.sql import and_filters, in_list, quote

log = logging.getLogger("lakeloom.caption")

CAPTION = "caption"
OWNER = "caption_model"
IMAGE_KINDS = ("image", "frame")
DEFAULT_PROMPT = "Describe the image in one sentence."
_SKIPPED_TAGS = ", ".join(quote(KIND_TAGS[k]) for k in ("audio", "clip"))
SCOPE = (
    f"({CAPTION} IS NULL OR {CAPTION} = '' OR {OWNER} IS NOT NULL)"
    " AND array_length(media_ids) = 1"
    f" AND (tags IS NULL OR NOT array_has_any(tags, [{_SKIPPED_TAGS}]))"
)
_HUB_BLOB = re.compile(r"[0-9a-f]{64}")
_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Captioner:
    """A loaded model and processor, ready to generate."""

    model: Any
    processor: Any
    device: str
    text: str | None  # the rendered prompt (None: images only)
    plain: str | None  # the prompt to cut from outputs when no chat template renders it


def model_dir(model: str | None, run: str | None, runs_dir: str | Path) -> tuple[str, str]:
    """``(what from_pretrained loads, "hf:<name>" or "run:<id>")`` for the options."""
    if bool(model) == bool(run):
        raise ConfigError(
            "caption needs exactly one model: enrich.model.source=<hub id or directory> "
            "or enrich.model.run=<lakeloom run id>"
        )
    if model:
        path = Path(model).expanduser()
        if not path.is_dir() and (path.is_absolute() or model.startswith((".", "~"))):
            raise ConfigError(f"model directory {model} does not exist")
        if path.is_dir():
            _check_not_adapter(path, f"model {model}")
            return str(path), f"hf:{path.resolve().name}"
        return str(model), f"hf:{model}"
    rd = RunDir.of(runs_dir, str(run))
    if not rd.path.is_dir():
        raise ConfigError(f"no run {run!r} under {runs_dir} (no directory {rd.path})")
    for folder in (rd.merged, rd.hf):
        if (folder / "config.json").is_file():
            return str(folder), f"run:{run}"
    if (rd.hf / "adapter_config.json").is_file():
        raise ConfigError(
            f"run {run} exported only LoRA adapters ({rd.hf}): merge them into the base "
            f"model first with `lakeloom merge run={run}`, then caption with enrich.model.run={run}"
        )
    raise ConfigError(
        f"run {run} has no exported model: expected {rd.merged} (lakeloom merge "
        f"run={run}) or {rd.hf} with config.json (written when training ends)"
    )


def _check_not_adapter(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise ConfigError(
                f"{what} holds a PEFT adapter, not a model: merge it into its base model "
                "first (lakeloom merge run=ID for a lakeloom run)"
            )
        raise ConfigError(f"{what}: no config.json in {path}, not a transformers model")


def weights_sha256(folder: str | Path) -> str:
    """sha256 over the names and sha256 of a model folder's weight files and config.json.

    Weights are the ``*.safetensors`` files, else ``*.bin`` / ``*.pt`` / ``*.pth``. A file
    that resolves to a Hugging Face cache blob named by a 64-hex sha256 is not re-read.
    """
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        weights = sorted(p for ext in ("bin", "pt", "pth") for p in folder.glob(f"*.{ext}"))
    if not weights:
        raise ConfigError(f"no model weights (*.safetensors or *.bin) in {folder}")
    digest = hashlib.sha256()
    for path in [folder / "config.json", *weights]:
        digest.update(f"{path.name}\t{_file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    real = path.resolve()
    if _HUB_BLOB.fullmatch(real.name) and real.parent.name == "blobs":
        return real.name  # LFS blobs are named by the sha256 of their bytes
    return ids.file_sha256(real)


def _hub_folder(hub_id: str) -> Path | None:
    """The local snapshot of a hub model, or None when it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (the exception type varies across hub versions)
        return None


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` -> bfloat16 (float16 without bf16 support) on CUDA, float32 elsewhere."""
    import torch

    if dtype not in _DTYPES:
        raise ConfigError(f"caption dtype must be one of {_DTYPES}, not {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_captioner(
    source: str, prompt: str, device: str, dtype: str, trust_remote_code: bool
) -> Captioner:
    """Load processor and model from ``source`` (a folder or a hub id), in eval mode."""
    import transformers
    from transformers import AutoProcessor

    dev = resolve_device(device)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        processor = AutoProcessor.from_pretrained(source, **kw)
    except OSError as exc:
        raise ConfigError(f"cannot load a processor from {source!r}: {exc}") from exc
    if getattr(processor, "image_processor", None) is None:
        raise ConfigError(f"{source}: its processor takes no images, not an image-to-text model")
    # remote-code VLMs often register as causal LMs only
    classes = ["AutoModelForImageTextToText"] + (
        ["AutoModelForCausalLM"] if trust_remote_code else []
    )
    model, errors = None, []
    for name in classes:
        try:
            model = getattr(transformers, name).from_pretrained(
                source, dtype=resolve_dtype(dtype, dev), device_map=dev, **kw
            )
            break
        except ValueError as exc:  # the config class is not in this auto class's mapping
            errors.append(f"{name}: {exc}")
        except OSError as exc:
            raise ConfigError(f"cannot load model weights from {source!r}: {exc}") from exc
    if model is None:
        raise ConfigError(f"{source} is not an image-to-text model: {'; '.join(errors)}")
    model.eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and not model.config.is_encoder_decoder:
        tokenizer.padding_side = "left"  # generation continues right after the prompt
    text, plain = render_prompt(processor, prompt)
    return Captioner(model, processor, dev, text, plain)


def render_prompt(processor: Any, prompt: str) -> tuple[str | None, str | None]:
    """``(text given to the processor, plain prompt to cut from outputs)`` for one image."""
    if getattr(processor, "chat_template", None):
        content = (
            [{"type": "image"}, {"type": "text", "text": prompt}] if prompt else [{"type": "image"}]
        )
        messages = [{"role": "user", "content": content}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, None
    token = getattr(processor, "image_token", None)
    if isinstance(token, str) and token and token not in prompt:
        return f"{token}\n{prompt}", prompt or None
    return (prompt or None), (prompt or None)


def generate(captioner: Captioner, images: list[Any], max_new_tokens: int) -> list[str | None]:
    """Greedy captions of PIL images (one batch); None where the model produced nothing."""
    import torch

    c = captioner
    if c.text is None:
        enc = c.processor(images=images, return_tensors="pt")
    else:
        enc = c.processor(
            images=images, text=[c.text] * len(images), return_tensors="pt", padding=True
        )
    dtype = c.model.dtype
    inputs = {
        k: (v.to(c.device, dtype) if v.is_floating_point() else v.to(c.device))
        for k, v in enc.items()
        if isinstance(v, torch.Tensor)
    }
    tokenizer = getattr(c.processor, "tokenizer", c.processor)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = c.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
            pad_token_id=pad,
        )  # fmt: skip
    prompt_ids = inputs.get("input_ids")
    if prompt_ids is not None and out.shape[1] >= prompt_ids.shape[1]:
        n = prompt_ids.shape[1]
        if torch.equal(out[:, :n], prompt_ids):
            out = out[:, n:]
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    return [_clean(t, c.plain) for t in texts]


def _clean(text: str, plain: str | None) -> str | None:
    text = text.strip()
    if plain and text.startswith(plain):  # models that echo their text prompt (BLIP)
        text = text[len(plain) :].strip()
    return text or None


class CaptionEnricher(Enricher):
    """Captions single-image and frame samples that lack a caption (module docstring)."""

    name: ClassVar[str] = "caption"
    version: ClassVar[str] = "0.1.0"
    table: ClassVar[str] = "samples"
    inputs: ClassVar[tuple[str, ...]] = ("sample_id", "media_ids")

    def __init__(
        self,
        model: str | None = None,
        run: str | None = None,
        runs_dir: str = "runs",
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 32,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        where: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.source, self.prefix = model_dir(None if model is None else str(model), run, runs_dir)
        if dtype not in _DTYPES:
            raise ConfigError(f"caption dtype must be one of {_DTYPES}, not {dtype!r}")
        self.prompt = prompt or ""
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("caption max_new_tokens and batch_size must be at least 1")
        self.device, self.dtype = device, dtype
        self.user_where = where
        self.trust_remote_code = bool(trust_remote_code)
        self._owner: str | None = None
        self._captioner: Captioner | None = None
        self._lake: Any = None

    # ---- declarations ---------------------------------------------------------------------

    def output_fields(self) -> list[pa.Field]:
        """``caption`` (already in the samples schema) and its owner ``caption_model``."""
        return [pa.field(CAPTION, pa.string()), pa.field(OWNER, pa.string())]

    def owner_column(self) -> str:
        """Column naming the model of each caption (null: a human caption)."""
        return OWNER

    def owner(self) -> str:
        """``<hf|run>:<name>:<sha12>:<gen8>`` (see the module docstring)."""
        if self._owner is None:
            folder = Path(self.source)
            if not folder.is_dir():
                folder = _hub_folder(self.source) or Path()
                if not (folder / "config.json").is_file():
                    self.setup()  # downloads the model when the hub can be reached
                    folder = _hub_folder(self.source) or folder
            if not (folder / "config.json").is_file():
                raise ConfigError(f"model {self.source!r} is not in the local Hugging Face cache")
            gen = json.dumps({"prompt": self.prompt, "max_new_tokens": self.max_new_tokens})
            self._owner = ":".join(
                (
                    self.prefix,
                    weights_sha256(folder)[:12],
                    hashlib.sha256(gen.encode()).hexdigest()[:8],
                )
            )
        return self._owner

    def where(self) -> str:
        """Single-media, non-audio, non-clip samples without a human caption (+ ``where``)."""
        return and_filters(SCOPE, self.user_where) or SCOPE

    # ---- running --------------------------------------------------------------------------

    def prepare(self, lake: Any) -> None:
        """Keep the lake: each batch reads its media bytes from ``media``."""
        self._lake = lake

    @property
    def captioner(self) -> Captioner:
        """The loaded model and processor (loaded on first use)."""
        if self._captioner is None:
            self._captioner = load_captioner(
                self.source, self.prompt, self.device, self.dtype, self.trust_remote_code
            )
            log.info("caption model %s on %s", self.source, self._captioner.device)
        return self._captioner

    def setup(self) -> None:
        """Load the model and processor (once)."""
        _ = self.captioner

    def process(self, batch: pa.Table) -> pa.Table:
        """``sample_id`` + ``caption`` + ``caption_model`` for a batch of samples."""
        if self._lake is None:
            raise RuntimeError("CaptionEnricher.prepare(lake) must be called before process()")
        owner = self.owner()
        first = [ids[0] if ids else None for ids in batch.column("media_ids").to_pylist()]
        media = self._media({m for m in first if m})
        captions: list[str | None] = [None] * batch.num_rows
        owners: list[str | None] = [owner] * batch.num_rows
        todo = []
        for i, media_id in enumerate(first):
            row = media.get(media_id)
            if row is None:
                log.warning("caption: media %s of a sample is not in the lake", media_id)
                owners[i] = None
            elif row["kind"] in IMAGE_KINDS and row["bytes"]:
                todo.append((i, row))
        for start in range(0, len(todo), self.batch_size):
            chunk = []  # decoded per chunk: a scan batch of large images would not fit
            for i, row in todo[start : start + self.batch_size]:
                try:
                    chunk.append((i, decode_image(row["bytes"])))
                except Exception as exc:  # PIL raises many types for corrupt data
                    log.warning("caption: cannot decode %s (%s): %s", row["media_id"],
                                row["source_uri"], exc)  # fmt: skip
            if chunk:
                texts = generate(self.captioner, [img for _, img in chunk], self.max_new_tokens)
                for (i, _), text in zip(chunk, texts, strict=True):
                    captions[i] = text
        return pa.table(
            {
                "sample_id": batch.column("sample_id"),
                CAPTION: pa.array(captions, pa.string()),
                OWNER: pa.array(owners, pa.string()),
            }
        )

    def _media(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """``media_id -> {kind, bytes, source_uri}`` in one filtered read."""
        if not ids:
            return {}
        rows = (
            self._lake.dataset("media")
            .to_table(
                columns=["media_id", "kind", "bytes", "source_uri"],
                filter=f"media_id IN {in_list(sorted(ids))}",
            )
            .to_pylist()
        )
        return {r["media_id"]: r for r in rows}
