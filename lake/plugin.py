"""Plugin kinds and discovery.

Four kinds, each a small class with one job (see ``DESIGN.md``): :class:`Source`,
``Enricher``, ``Check`` and ``Exporter``. Every plugin declares ``name``, ``version`` and
``kind``. Built-ins and third-party plugins come through the same door: the
``lakeloom.plugins`` entry-point group (a third-party package may also register a
``lakeloom.conf`` entry point naming a package of Hydra config groups).
``lake`` never imports ``plugins``: it discovers them.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from lake.errors import PluginError
from lake.records import Reject, SourceRecord
from lake.sources import PathPolicy

PLUGIN_GROUP = "lakeloom.plugins"
CONF_GROUP = "lakeloom.conf"


class Plugin(ABC):
    """Common declarations of every plugin."""

    name: ClassVar[str]
    version: ClassVar[str] = "0.1.0"
    kind: ClassVar[str]


class Source(Plugin):
    """Reads a raw dataset and yields records or rejects.

    ``path`` is a folder or a file; the dataset root (against which image paths are
    resolved) is the folder itself, or the file's folder. ``policy`` says which image
    references are accepted and bounds the bytes of a media object (``max_media_bytes``)
    and of a record line (``max_line_bytes``); None means no limit. Subclasses implement
    :meth:`records`. Image sources never read media bytes themselves: the ingest runner
    does that in worker processes. Sources of time-based media (video, audio) analyse
    their files in their own process pool and attach the results (``MediaMeta``).
    """

    kind: ClassVar[str] = "source"
    # False for sources that analyse their media themselves and hand over MediaMeta
    # (video, audio): the runner then starts no image worker processes.
    decodes_images: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path,
        allow_absolute: bool = False,
        allow_outside_root: bool = False,
        allow_urls: bool = False,
        max_media_bytes: int | None = None,
        max_line_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.policy = PathPolicy(
            allow_absolute, allow_outside_root, allow_urls, max_media_bytes, max_line_bytes
        )

    @property
    def root(self) -> Path:
        """Folder that image paths are relative to."""
        return self.path if self.path.is_dir() else self.path.parent

    def default_dataset(self) -> str:
        """Dataset name used when the job does not give one: the source folder's name."""
        return self.root.resolve().name

    def validate(self) -> None:
        """Raise FileNotFoundError when the source path does not exist."""
        if not self.path.exists():
            raise FileNotFoundError(f"source path does not exist: {self.path}")

    def count(self) -> int | None:
        """Number of records if cheaply known (for the progress bar), else None."""
        return None

    def params(self) -> dict[str, object]:
        """Options recorded in provenance."""
        return {"path": str(self.path), **self.policy.__dict__}

    @abstractmethod
    def records(self) -> Iterator[SourceRecord | Reject]:
        """Yield every record of the source, or a Reject for each unreadable one."""


class Enricher(Plugin):
    """Adds columns to the rows of one table, in batches.

    Declares the table it writes, the columns it reads and the columns it writes
    (:meth:`output_fields`, which may depend on the model, e.g. an embedding width), and
    an owner column recording who produced each row's outputs (model id or plugin
    version). The runner adds the output columns up front, skips rows already produced
    by the same owner, and refuses to overwrite another owner's outputs unless a re-run
    is explicitly requested.
    """

    kind: ClassVar[str] = "enricher"
    table: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]

    @abstractmethod
    def output_fields(self) -> list[pa.Field]:
        """Columns this enricher writes (the owner column included)."""

    @abstractmethod
    def owner_column(self) -> str:
        """Column holding the owner of each row's outputs."""

    @abstractmethod
    def owner(self) -> str:
        """Identity of what produces the outputs now (model id, or name@version)."""

    def where(self) -> str | None:
        """SQL filter selecting the rows this enricher applies to (None: all)."""
        return None

    def prepare(self, lake: Any) -> None:
        """Called by the runner before planning, with the lake (e.g. to read another table)."""

    def setup(self) -> None:
        """Load heavy resources (models) once, before the first batch."""

    @abstractmethod
    def process(self, batch: pa.Table) -> pa.Table:
        """Compute the output columns for ``batch`` (key + inputs); return key + outputs."""

    def finish(self, lake: Any) -> None:
        """Called by the runner after the last write (e.g. to build an index)."""


# What a Check returns per scored sample (a check may append columns it also writes,
# e.g. caption_mismatch's ``clip_score``).
RESULT_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("flagged", pa.bool_()),
        pa.field("group", pa.string()),
        pa.field("detail", pa.string()),
    ]
)


class Check(Plugin):
    """A consistency query over the lake that scores and flags samples; it never deletes.

    :meth:`run` returns one row per scored sample in :data:`RESULT_SCHEMA` (``sample_id``,
    ``score``, ``flagged``, optional ``group`` and ``detail``; extra columns the check
    writes to ``samples``, named in ``writes``) and a JSON-ready summary. ``has_groups``:
    the ``group`` column holds the representative's ``sample_id``.
    """

    kind: ClassVar[str] = "check"
    writes: ClassVar[tuple[str, ...]] = ()
    has_groups: ClassVar[bool] = False

    @abstractmethod
    def run(self, lake: Any, where: str | None = None) -> tuple[pa.Table, dict[str, Any]]:
        """Score the samples selected by ``where``; return (per-sample results, summary)."""


@dataclass(frozen=True)
class ExportMedia:
    """One media object of a sample, as the exporter sees it.

    ``path`` is relative to the export folder (POSIX) when the runner wrote the file;
    ``data`` holds the bytes instead for exporters with ``inline_media``.
    """

    media_id: str
    mime: str | None
    path: str | None = None
    data: bytes | None = None


class Exporter(Plugin):
    """Writes samples in one training format that a source plugin reads back.

    The runner calls :meth:`open` with the (temporary) export folder, then per batch
    :meth:`skip_reason` for every row and :meth:`write` with the kept rows and their
    media, then :meth:`close` (or :meth:`abort` after an error). Rows are dicts with
    ``sample_id`` and the content fields of :data:`lake.ids.SAMPLE_CONTENT_FIELDS`.
    """

    kind: ClassVar[str] = "exporter"
    source: ClassVar[str]  # the source plugin that reads the export back
    inline_media: bool = False  # True: media bytes go into the records, no files
    media_kinds: ClassVar[tuple[str, ...]] = ("image", "frame")

    def skip_reason(self, row: dict[str, Any]) -> str | None:
        """Why a sample cannot be written in this format (None: it can)."""
        return None

    @abstractmethod
    def readback(self, row: dict[str, Any]) -> dict[str, Any]:
        """The content fields (messages, caption, label, chosen, rejected) that the
        matching source reads back from this sample's exported record."""

    @abstractmethod
    def open(self, folder: Path) -> None:
        """Start writing into ``folder`` (it exists and is empty but for ``images/``)."""

    @abstractmethod
    def write(self, rows: list[dict[str, Any]], media: list[list[ExportMedia]]) -> None:
        """Append the records of one batch; ``media[i]`` are ``rows[i]``'s media in order."""

    @abstractmethod
    def close(self) -> list[str]:
        """Finish the files; return their names relative to the export folder."""

    def abort(self) -> None:
        """Release open files after an error (the runner deletes the folder)."""

    def source_options(self) -> dict[str, Any]:
        """Options the matching source needs (besides ``path``) to read the export."""
        return {}

    def losses(self, row: dict[str, Any]) -> list[str]:
        """What of a written sample this format cannot carry (a preference pair, KTO
        feedback, a rejected answer's own media): one reason each, reported per sample."""
        return []

    def params(self) -> dict[str, Any]:
        """Options recorded in the manifest."""
        return {}


@dataclass(frozen=True)
class PluginInfo:
    """One discovered plugin."""

    name: str
    kind: str
    version: str
    target: str
    distribution: str


def discover() -> list[PluginInfo]:
    """List plugins registered in the ``lakeloom.plugins`` entry-point group."""
    found: list[PluginInfo] = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the others
            found.append(PluginInfo(ep.name, "?", "?", ep.value, f"load failed: {exc}"))
            continue
        dist = ep.dist.name if ep.dist else "?"
        found.append(
            PluginInfo(
                getattr(cls, "name", ep.name),
                getattr(cls, "kind", "?"),
                getattr(cls, "version", "?"),
                ep.value,
                dist,
            )
        )
    return sorted(found, key=lambda p: (p.kind, p.name))


def registered(name: str) -> type:
    """The class registered as ``name`` in the ``lakeloom.plugins`` entry-point group.

    How one plugin uses another (the label check reproducing the CLIP text tower through
    the ``clip_text`` enricher) without importing its module: plugins import ``lake``,
    never each other.
    """
    found = entry_points(group=PLUGIN_GROUP, name=name)
    if not found:
        raise PluginError(f"no plugin named {name!r} is installed (see lakeloom plugins)")
    return load_class(next(iter(found)).value)


def load_class(target: str) -> type:
    """Import ``module:Class`` or ``module.Class``."""
    module, _, attr = target.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot load plugin {target!r}: {exc}") from exc


def config_search_path() -> list[str]:
    """Hydra search-path entries (``pkg://...``) that third-party plugins register."""
    return [f"pkg://{ep.value}" for ep in entry_points(group=CONF_GROUP)]
