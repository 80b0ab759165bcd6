"""The lake's schema: the one place where table layouts are defined.

Two tables hold the data (``media`` and ``samples``, see ``DESIGN.md``) and a third,
``runs``, records every job that wrote to the lake. Every data row carries a
``provenance`` struct. Columns added later by enrichers (for example CLIP embeddings,
whose width depends on the model) are added through schema evolution, not declared here.
"""

from __future__ import annotations

import re

import pyarrow as pa

MEDIA = "media"
SAMPLES = "samples"
RUNS = "runs"
PROGRESS = "progress"

MEDIA_KEY = "media_id"
SAMPLE_KEY = "sample_id"
RUN_KEY = "run_id"
PROGRESS_KEY = "progress_id"

MEDIA_KINDS = ("image", "frame", "audio", "video")

# Placeholders in canonical messages: each fills the next of the sample's media_ids (kinds
# interleaved in order of appearance across the conversation); the media row's kind says
# which (an `<image>` takes an image or frame row).
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
AUDIO_TOKEN = "<audio>"
PLACEHOLDERS: dict[str, str] = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN, "audio": AUDIO_TOKEN}
PLACEHOLDER_RE = re.compile("|".join(re.escape(t) for t in PLACEHOLDERS.values()))
_KIND_OF = {token: kind for kind, token in PLACEHOLDERS.items()}


def placeholder_kinds(text: str) -> list[str]:
    """The kinds (``image`` | ``video`` | ``audio``) of the placeholders in ``text``, in order."""
    return [_KIND_OF[m.group(0)] for m in PLACEHOLDER_RE.finditer(text)]


# Sample tags naming what a sample is made of, for samples that are not plain images.
KIND_TAGS = {"frame": "kind:frame", "clip": "kind:clip", "audio": "kind:audio"}

STEP = pa.struct([("name", pa.string()), ("params", pa.string())])

PROVENANCE = pa.struct(
    [
        ("plugin", pa.string()),
        ("plugin_version", pa.string()),
        ("lakeloom_version", pa.string()),
        ("config_hash", pa.string()),
        ("run_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("steps", pa.list_(STEP)),
    ]
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

MEDIA_SCHEMA = pa.schema(
    [
        pa.field(MEDIA_KEY, pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("mime", pa.string()),
        pa.field("bytes", pa.large_binary()),
        # Whole videos: Lance blob encoding, read lazily (`Lake.open_blob`), never scanned.
        pa.field("blob", pa.large_binary(), metadata={"lance-encoding:blob": "true"}),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("duration_s", pa.float64()),
        pa.field("thumb", pa.binary()),
        pa.field("phash", pa.uint64()),
        pa.field("parent_id", pa.string()),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
        pa.field("scene", pa.int32()),
        pa.field("transcript", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("provenance", PROVENANCE),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field(SAMPLE_KEY, pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("media_ids", pa.list_(pa.string())),
        pa.field("messages", pa.list_(MESSAGE)),
        pa.field("caption", pa.string()),
        pa.field("label", pa.string()),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("split", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("flags", pa.list_(pa.string())),
        pa.field("clip_score", pa.float32()),
        pa.field("t_start", pa.float64()),
        pa.field("t_end", pa.float64()),
        pa.field("transcript", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("provenance", PROVENANCE),
        # the record's own `id` in its source (LLaVA, ShareGPT, messages), exported back
        pa.field("record_id", pa.string()),
        # KTO feedback on the last assistant turn: true = desirable, false = undesirable
        pa.field("feedback", pa.bool_()),
        # media of a preference pair's rejected answer that differ from the prompt's
        # (ms-swift `rejected_images`); null when the same
        pa.field("rejected_media_ids", pa.list_(pa.string())),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field(RUN_KEY, pa.string(), nullable=False),
        pa.field("job", pa.string()),
        pa.field("status", pa.string()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("config_yaml", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("inputs", pa.string()),
        pa.field("counts", pa.string()),
        pa.field("versions", pa.string()),
        pa.field("lakeloom_version", pa.string()),
        # who runs it (lake.runs.owner): a reader shows a `running` row whose process is
        # gone as `killed`
        pa.field("pid", pa.int64()),
        pa.field("host", pa.string()),
        pa.field("pid_start", pa.int64()),
        # a `failed` / `interrupted` run's reason, one line (lake.job.run_record)
        pa.field("error", pa.string()),
    ]
)

# Progress of the distributed jobs (executor=ray): one row per stage of a job (``unit`` =
# "", ``total`` = rows planned) and one per unit of work done (a fragment, a file shard).
# ``backfill`` names the work independently of the run (table, plugin, its version, model,
# scope), so a run resumed after a kill finds what an earlier run finished and skips it.
PROGRESS_SCHEMA = pa.schema(
    [
        pa.field(PROGRESS_KEY, pa.string(), nullable=False),  # f"{backfill}/{unit}"
        pa.field("backfill", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("job", pa.string()),  # ingest | enrich | check
        pa.field("stage", pa.string()),  # e.g. enrich:clip_image
        pa.field("unit", pa.string()),  # "" (the stage itself) | fragment:12 | shard:3
        pa.field("status", pa.string()),  # running | done | failed | committed
        pa.field("rows", pa.int64()),  # rows this unit wrote (stage row: rows done so far)
        pa.field("total", pa.int64()),  # stage row: rows planned
        pa.field("node", pa.string()),  # Ray node id that did the unit
        pa.field("attempts", pa.int32()),  # tries (1 = no retry)
        pa.field("seconds", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    MEDIA: MEDIA_SCHEMA,
    SAMPLES: SAMPLES_SCHEMA,
    RUNS: RUNS_SCHEMA,
    PROGRESS: PROGRESS_SCHEMA,
}
KEYS: dict[str, str] = {
    MEDIA: MEDIA_KEY,
    SAMPLES: SAMPLE_KEY,
    RUNS: RUN_KEY,
    PROGRESS: PROGRESS_KEY,
}

# One line per column, rendered into the README by `lakeloom schema --markdown`.
COLUMN_DOCS: dict[str, dict[str, str]] = {
    MEDIA: {
        "media_id": "sha256 of the original bytes (key)",
        "kind": "image | frame | audio | video",
        "mime": "MIME type of the original bytes",
        "bytes": "encoded bytes: images as found (never re-encoded), frames and audio as extracted",
        "blob": "a stored video's original bytes (blob-encoded, read lazily)",
        "width": "pixels, after decoding (before EXIF orientation)",
        "height": "pixels, after decoding (before EXIF orientation)",
        "duration_s": "audio/video duration",
        "thumb": "small JPEG preview, EXIF orientation applied",
        "phash": "64-bit perceptual hash (imagehash.phash) as an unsigned integer",
        "parent_id": "media_id of the video a frame or audio track came from",
        "t_start": "start time in the parent, seconds",
        "t_end": "end time in the parent, seconds",
        "scene": "scene index in the parent video",
        "transcript": "speech transcript of audio",
        "source_uri": "path relative to the source root where the bytes were first seen",
        "provenance": "who wrote the row and what was done to it (see below)",
    },
    SAMPLES: {
        "sample_id": "sha256 of the dataset and canonical content (key; re-ingest is idempotent)",
        "dataset": "dataset name (defaults to the source folder's name)",
        "media_ids": "ordered media, one per `<image>` / `<video>` / `<audio>` placeholder",
        "messages": "canonical conversation: list of {role, content} with media placeholders",
        "caption": "free-text caption",
        "label": "class label",
        "chosen": "preferred answer of a preference pair",
        "rejected": "dispreferred answer of a preference pair",
        "split": "train | val | test, written by `lakeloom split`",
        "tags": "free tags (review decisions, user marks)",
        "flags": "names of the checks that flagged the sample",
        "clip_score": "image-text cosine similarity",
        "t_start": "clips: start of the scene in the parent video, seconds",
        "t_end": "clips: end of the scene in the parent video, seconds",
        "transcript": "clips: speech in the clip's time range (`transcribe` enricher)",
        "source_uri": "source file and record (`file#line` or `file#row`)",
        "provenance": "who wrote the row and what was done to it (see below)",
        "record_id": "the record's own `id` in its source (LLaVA, ShareGPT, messages)",
        "feedback": "KTO feedback on the last assistant turn: true desirable, false undesirable",
        "rejected_media_ids": "media of the rejected answer when they differ from the prompt's",
    },
}

PROVENANCE_DOCS: dict[str, str] = {
    "plugin": "plugin that produced the row",
    "plugin_version": "its version",
    "lakeloom_version": "lakeloom version",
    "config_hash": "sha256 (16 hex) of the job's resolved config",
    "run_id": "the run that wrote the row (see the `runs` table)",
    "created_at": "UTC timestamp",
    "steps": "ordered processing steps, each {name, params (JSON)}",
}


def schema_markdown() -> str:
    """Render the schema as Markdown tables (used in the README)."""
    lines: list[str] = []
    for table, docs in COLUMN_DOCS.items():
        schema = SCHEMAS[table]
        lines += [
            f"`{table}` (key `{KEYS[table]}`)",
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        for name, doc in docs.items():
            lines.append(f"| `{name}` | `{_type_name(schema.field(name).type)}` | {doc} |")
        lines.append("")
    lines += ["`provenance` struct", "", "| field | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in PROVENANCE_DOCS.items()]
    return "\n".join(lines) + "\n"


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_struct(t):
        return "struct"
    if pa.types.is_list(t):
        inner = t.value_type
        return f"list<{'struct' if pa.types.is_struct(inner) else inner}>"
    return str(t)
