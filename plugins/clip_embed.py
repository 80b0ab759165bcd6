"""Enrichers: CLIP embeddings of images (``media.clip_image``) and captions (``samples.clip_text``).

Both enrichers take the same model options and share one loaded model per process (so the
image and the text step of one ``lakeloom enrich enrich=clip`` job load it once):

- ``arch``: an open_clip architecture (``ViT-B-32``) or a lakeloom config (``tiny-clip``);
- ``pretrained``: ``None`` (random init), an open_clip tag, a checkpoint file (open_clip
  state dict or a ClipModule ``.ckpt``) or ``local-dir:<folder>``;
- ``run``: a lakeloom training run id; loads ``<runs_dir>/<run>/open_clip`` (wins over
  ``arch``/``pretrained``);
- ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda:0``...;
- ``batch_size``: model batch size (the runner's scan batch is cut into such chunks).

**Owner id.** Every vector is recorded with the model that made it (``clip_image_model`` /
``clip_text_model``)::

    open_clip:<arch>:<source>:<sha12>

``<arch>`` is the architecture name (``custom`` when a local folder or run holds a model
config that matches no named architecture), ``<source>`` is ``run:<id>``,
``tag:<tag>``, ``file:<file name>``, ``local-dir:<folder name>`` or ``scratch``, and
``<sha12>`` is the first 12 hex digits of a sha256 over the loaded state dict (names,
dtypes, shapes and bytes, in name order). The hash is what makes the id honest: a
retrained run, an overwritten checkpoint or a changed tag gives another owner, while the
same weights moved to another folder or machine keep theirs (only base names go into the
id). ``pretrained=None`` is a random init, hence a new owner in every process: it is
useful for tests only.

**Captions.** The text of a sample is its ``caption``, else the content of its first
assistant message (``<image>`` placeholders removed), else nothing: such a row keeps a
null ``clip_text`` but gets its owner set, so it is counted as done and not retried by
every run. ``label`` is not used as text (zero-shot checks build prompts from labels).

:func:`build_index` builds the cosine IVF_PQ index on ``media.clip_image`` once at least
``index_min_rows`` images are embedded (below that, exact search is fast and exact); the
image enricher calls it from :meth:`ClipImageEmbedder.finish`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from lake.cache import ModelCache, resolve_device
from lake.images import decode_image
from lake.plugin import Enricher
from lake.runs import RunDir
from lake.schema import PLACEHOLDER_RE

log = logging.getLogger("lakeloom.clip_embed")

IMAGE_COLUMN = "clip_image"
IMAGE_OWNER = "clip_image_model"
TEXT_COLUMN = "clip_text"
TEXT_OWNER = "clip_text_model"
IMAGE_KINDS = "kind IN ('image', 'frame')"
DEFAULT_INDEX_MIN_ROWS = 100_000


@dataclass(frozen=True)
class ModelSpec:
    """Where a CLIP model comes from; hashable, so it keys the per-process cache."""

    arch: str = "tiny-clip"
    pretrained: str | None = None
    run: str | None = None
    runs_dir: str = "runs"
    device: str = "auto"

    def source(self) -> str:
        """The ``<source>`` part of the owner id."""
        if self.run:
            return f"run:{self.run}"
        if self.pretrained is None:
            return "scratch"
        text = str(self.pretrained)
        if text.startswith("local-dir:"):
            return "local-dir:" + Path(text[len("local-dir:") :]).name
        path = Path(text)
        if path.is_dir():
            return "local-dir:" + path.name
        if path.is_file():
            return "file:" + path.name
        return "tag:" + text


@dataclass
class LoadedClip:
    """A loaded model with what the enrichers need: transforms, tokenizer, id, width."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any
    dim: int
    owner: str


_CACHE: ModelCache[LoadedClip] = ModelCache()


def state_dict_sha256(model: Any) -> str:
    """sha256 over a model's state dict (name, dtype, shape and bytes, in name order)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _arch_name(spec: ModelSpec, model: Any) -> str:
    """The architecture named in the owner id: the configured one, if the model is it."""
    if not spec.run and not (spec.pretrained and _is_folder(spec.pretrained)):
        return spec.arch
    import open_clip

    from core.models.clip import model_config, register_lakeloom_configs

    register_lakeloom_configs()
    named = open_clip.get_model_config(spec.arch)
    return spec.arch if named is not None and named == model_config(model) else "custom"


def _is_folder(pretrained: str) -> bool:
    return str(pretrained).startswith("local-dir:") or Path(pretrained).is_dir()


def load_clip(spec: ModelSpec) -> LoadedClip:
    """Load (once per process) the model ``spec`` names, in eval mode on its device."""
    return _CACHE.get(spec, lambda: _load_clip(spec))


def _load_clip(spec: ModelSpec) -> LoadedClip:
    from core.models.clip import create_clip, load_from_run

    if spec.run:
        bundle = load_from_run(RunDir.of(spec.runs_dir, spec.run).path)
    else:
        bundle = create_clip(spec.arch, spec.pretrained)
    model, _, preprocess, tokenizer = bundle
    digest = state_dict_sha256(model)  # on CPU, before moving
    device = resolve_device(spec.device)
    model = model.to(device).eval()
    dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
    if not dim:
        dim = int(_probe_dim(model, tokenizer, device))
    owner = f"open_clip:{_arch_name(spec, model)}:{spec.source()}:{digest[:12]}"
    log.info("loaded CLIP %s on %s (dim %d)", owner, device, dim)
    return LoadedClip(model, preprocess, tokenizer, device, dim, owner)


def _probe_dim(model: Any, tokenizer: Any, device: str) -> int:
    import torch

    with torch.inference_mode():
        return int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])


def clear_cache() -> None:
    """Forget the loaded models (tests; freeing GPU memory)."""
    _CACHE.clear()


def _normalise(x: Any) -> np.ndarray:
    import torch

    x = torch.nn.functional.normalize(x.float(), dim=-1)
    out = x.cpu().numpy().astype(np.float32, copy=False)
    if not np.isfinite(out).all():  # a collapsed model: fail rather than store garbage
        raise FloatingPointError("CLIP produced non-finite embeddings")
    return out


def _vectors(matrix: np.ndarray, dim: int, valid: list[bool] | None = None) -> pa.Array:
    """A fixed_size_list<float32>[dim] array; rows with ``valid`` False are null."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    mask = None if valid is None else pa.array([not v for v in valid])
    return pa.FixedSizeListArray.from_arrays(flat, dim, mask=mask)


class _ClipEnricher(Enricher):
    """What the image and text enrichers share: options, model, owner."""

    version: ClassVar[str] = "0.1.0"
    column: ClassVar[str]
    owner_col: ClassVar[str]

    def __init__(
        self,
        arch: str = "tiny-clip",
        pretrained: str | None = None,
        run: str | None = None,
        runs_dir: str = "runs",
        device: str = "auto",
        batch_size: int = 64,
    ) -> None:
        self.spec = ModelSpec(
            arch, None if pretrained is None else str(pretrained), run, str(runs_dir), device
        )
        self.batch_size = int(batch_size)

    @classmethod
    def from_owner(cls, owner: str, **options: Any) -> _ClipEnricher:
        """An enricher that reproduces the model of ``owner`` (for queries).

        A run id or a pretrained tag is read from the id; a model from a file or folder
        needs ``pretrained=`` (only its base name is in the id). ``options`` win over
        what the id says; the caller should check ``owner()`` equals ``owner``.
        """
        from lake.errors import ConfigError

        parsed = parse_owner(owner)
        if parsed is None:
            raise ConfigError(f"{owner!r} is not an open_clip model id")
        arch, kind, value = parsed
        derived: dict[str, Any] = {} if arch == "custom" else {"arch": arch}
        if kind == "run":
            derived["run"] = value
        elif kind == "tag":
            derived["pretrained"] = value
        given = {k: v for k, v in options.items() if v is not None}
        merged = {**derived, **given}
        if kind in ("file", "local-dir") and not (merged.get("pretrained") or merged.get("run")):
            raise ConfigError(
                f"the lake was embedded by {owner}, loaded from a {kind} named {value!r}: "
                "pass its path as model.pretrained=..."
            )
        return cls(**merged)

    @property
    def clip(self) -> LoadedClip:
        """The loaded model (loaded on first use, shared within the process)."""
        return load_clip(self.spec)

    def setup(self) -> None:
        """Load the model."""
        _ = self.clip

    def owner_column(self) -> str:
        """Column naming the model of each vector."""
        return self.owner_col

    def owner(self) -> str:
        """``open_clip:<arch>:<source>:<sha12>`` (see the module docstring)."""
        return self.clip.owner

    def output_fields(self) -> list[pa.Field]:
        """The vector column (width from the model) and its owner column."""
        return [
            pa.field(self.column, pa.list_(pa.float32(), self.clip.dim)),
            pa.field(self.owner_col, pa.string()),
        ]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings, shape ``(len(texts), dim)``."""
        import torch

        clip = self.clip
        out = [np.zeros((0, clip.dim), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = clip.tokenizer(texts[i : i + self.batch_size]).to(clip.device)
                out.append(_normalise(clip.model.encode_text(tokens)))
        return np.concatenate(out)

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        """L2-normalised float32 image embeddings of encoded images (JPEG, PNG, ...)."""
        import torch

        clip = self.clip
        out = [np.zeros((0, clip.dim), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pixels = []
                for data in images[i : i + self.batch_size]:
                    pixels.append(clip.preprocess(decode_image(data)))
                batch = torch.stack(pixels).to(clip.device)
                out.append(_normalise(clip.model.encode_image(batch)))
        return np.concatenate(out)


class ClipImageEmbedder(_ClipEnricher):
    """Embeds images and video frames into ``media.clip_image``; indexes them when large."""

    name: ClassVar[str] = "clip_image"
    table: ClassVar[str] = "media"
    inputs: ClassVar[tuple[str, ...]] = ("media_id", "bytes")
    column: ClassVar[str] = IMAGE_COLUMN
    owner_col: ClassVar[str] = IMAGE_OWNER

    def __init__(
        self,
        *args: Any,
        index_min_rows: int = DEFAULT_INDEX_MIN_ROWS,
        index_partitions: int | None = None,
        index_sub_vectors: int | None = None,
        index_max_partitions: int = 256,
        index_sample_rate: int = 256,
        index_max_iterations: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.index_min_rows = int(index_min_rows)
        self.index_partitions = index_partitions
        self.index_sub_vectors = index_sub_vectors
        self.index_max_partitions = int(index_max_partitions)
        self.index_sample_rate = int(index_sample_rate)
        self.index_max_iterations = int(index_max_iterations)

    def where(self) -> str:
        """Only images and frames (not audio or whole videos)."""
        return IMAGE_KINDS

    def process(self, batch: pa.Table) -> pa.Table:
        """``media_id`` + ``clip_image`` + ``clip_image_model`` for a batch of media."""
        vectors = self.embed_images(batch.column("bytes").to_pylist())
        owners = pa.array([self.owner()] * batch.num_rows, pa.string())
        return pa.table(
            {
                "media_id": batch.column("media_id"),
                IMAGE_COLUMN: _vectors(vectors, self.clip.dim),
                IMAGE_OWNER: owners,
            }
        )

    def finish(self, lake: Any) -> None:
        """Build (or refresh) the vector index once the table is large enough."""
        build_index(
            lake,
            min_rows=self.index_min_rows,
            num_partitions=self.index_partitions,
            num_sub_vectors=self.index_sub_vectors,
            max_partitions=self.index_max_partitions,
            sample_rate=self.index_sample_rate,
            max_iterations=self.index_max_iterations,
        )


class ClipTextEmbedder(_ClipEnricher):
    """Embeds sample captions (or the first assistant answer) into ``samples.clip_text``."""

    name: ClassVar[str] = "clip_text"
    table: ClassVar[str] = "samples"
    inputs: ClassVar[tuple[str, ...]] = ("sample_id", "caption", "messages")
    column: ClassVar[str] = TEXT_COLUMN
    owner_col: ClassVar[str] = TEXT_OWNER

    def process(self, batch: pa.Table) -> pa.Table:
        """``sample_id`` + ``clip_text`` (null without text) + ``clip_text_model``."""
        texts = [
            sample_text(c, m)
            for c, m in zip(
                batch.column("caption").to_pylist(),
                batch.column("messages").to_pylist(),
                strict=True,
            )
        ]
        present = [t is not None for t in texts]
        dim = self.clip.dim
        matrix = np.zeros((batch.num_rows, dim), np.float32)
        if any(present):
            matrix[np.flatnonzero(present)] = self.embed_texts([t for t in texts if t is not None])
        return pa.table(
            {
                "sample_id": batch.column("sample_id"),
                TEXT_COLUMN: _vectors(matrix, dim, present),
                TEXT_OWNER: pa.array([self.owner()] * batch.num_rows, pa.string()),
            }
        )


def sample_text(caption: str | None, messages: list[dict[str, Any]] | None) -> str | None:
    """The caption, else the first assistant message without placeholders, else None."""
    if caption and caption.strip():
        return caption.strip()
    for msg in messages or []:
        if msg.get("role") == "assistant":
            text = PLACEHOLDER_RE.sub("", msg.get("content") or "").strip()
            return text or None
    return None


def parse_owner(owner: str) -> tuple[str, str, str] | None:
    """``(arch, source kind, source value)`` of an owner id, or None if not one of ours."""
    prefix = "open_clip:"
    if not owner.startswith(prefix) or owner.count(":") < 3:
        return None
    rest = owner[len(prefix) :].rsplit(":", 1)[0]
    if rest.endswith(":scratch"):
        return rest[: -len(":scratch")], "scratch", ""
    for kind in ("local-dir", "file", "run", "tag"):
        arch, sep, value = rest.partition(f":{kind}:")
        if sep:
            return arch, kind, value
    return None


def _has_index(tbl: Any, column: str) -> bool:
    return any(column in (idx.columns or []) for idx in tbl.list_indices())


# Lance's k-means warns (via its Rust logger, on fd 2) whenever a training round leaves
# clusters empty; it says nothing a user can act on (the index is built and measured
# by recall), so build_index drops these lines and passes every other one through
KMEANS_NOISE = ("KMeans: more than", "this could mean your dataset has many duplicate vectors")


@contextmanager
def quiet_kmeans() -> Iterator[None]:
    """Hold back Lance's empty-cluster k-means warnings printed inside the block.

    The Rust logger writes to file descriptor 2 directly (no Python logging to filter, and
    ``LANCE_LOG`` is read only when Lance is first imported), so fd 2 is pointed at a
    temporary file for the block; afterwards its lines go back to stderr, less the
    k-means warnings, which are counted in a debug log record.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = [ln for ln in lines if not any(n in ln for n in KMEANS_NOISE)]
            if len(kept) < len(lines):
                log.debug(
                    "Lance k-means: %d empty-cluster warnings held back", len(lines) - len(kept)
                )
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def index_partitions(rows: int, max_partitions: int) -> int:
    """IVF partitions for ``rows`` vectors: sqrt(rows), at most ``max_partitions``.

    Above 256 partitions Lance trains a hierarchical k-means whose small sub-problems
    leave clusters empty (hundreds of "KMeans: more than 10% of clusters are empty"
    warnings at 1M rows) and take most of the build time; ``bench/vectors.py`` measures it.
    """
    return max(1, min(int(math.sqrt(rows)), max_partitions))


def build_index(
    lake: Any,
    min_rows: int = DEFAULT_INDEX_MIN_ROWS,
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    column: str = IMAGE_COLUMN,
    max_partitions: int = 256,
    sample_rate: int = 256,
    max_iterations: int = 50,
) -> str:
    """Create a cosine IVF_PQ index on ``media.<column>`` when enough rows are embedded.

    Returns what was done: ``"skipped"`` (fewer than ``min_rows`` vectors), ``"created"``
    or ``"updated"`` (an existing index extended to rows added since). Defaults:
    ``num_partitions`` = :func:`index_partitions`, ``num_sub_vectors`` = dim / 8 (8 dims
    per code byte: better recall than lancedb's dim / 16 for a 2x larger index);
    ``sample_rate`` vectors per partition train the k-means, for at most ``max_iterations``.
    A Bitmap index on ``media.kind`` comes with it (:func:`kind_index`): the ``kind`` prefilter
    of a query then reads the bitmap, not the column (``bench/vectors.py`` at 200k:
    ``kind=frame`` 22 -> 14 ms p50; one on ``samples.dataset`` changed nothing, so none).
    Queries refine PQ distances with exact ones (``refine_factor``), see ``lake.query``;
    measure recall with :func:`lake.query.index_recall` or ``bench/vectors.py`` when
    changing these.
    """
    tbl = lake.table("media")
    if column not in tbl.schema.names:
        return "skipped"
    rows = tbl.count_rows(f"{column} IS NOT NULL")
    if rows < min_rows:
        return "skipped"
    if _has_index(tbl, column):
        with lake.lock(), quiet_kmeans():  # an index commit is a lake write (lake/lock.py)
            kind_index(tbl)  # a lake indexed before the kind index existed
            lake.dataset("media").optimize.optimize_indices()  # add rows embedded since
        return "updated"
    dim = tbl.schema.field(column).type.list_size
    parts = num_partitions or index_partitions(rows, max_partitions)
    subs = num_sub_vectors or next(
        s for s in (dim // 8, dim // 4, dim // 2, 1) if s and dim % s == 0
    )
    log.info("building IVF_PQ(cosine) on media.%s: %d rows, %d/%d", column, rows, parts, subs)
    from lancedb.index import IvfPq

    config = IvfPq(
        distance_type="cosine", num_partitions=parts, num_sub_vectors=subs,
        sample_rate=sample_rate, max_iterations=max_iterations,
    )  # fmt: skip
    with lake.lock(), quiet_kmeans():
        # the unified API: column first, then an index config
        lake.table("media").create_index(column, config=config)
        kind_index(lake.table("media"))
    return "created"


def kind_index(tbl: Any) -> None:
    """A Bitmap index on ``media.kind`` (few values) unless there is one; caller holds the lock."""
    if "kind" in tbl.schema.names and not _has_index(tbl, "kind"):
        from lancedb.index import Bitmap

        tbl.create_index("kind", config=Bitmap())
