"""Enricher: perceptual hash and thumbnail of image media (``media.phash``, ``media.thumb``).

The ingest computes both for every image it stores; this enricher (re)computes them from
the stored ``bytes`` for a lake whose rows lack them (e.g. after a bulk load that wrote
media rows directly), through the same function as the ingest
(:func:`lake.images.process_image`), so its values equal what the ingest writes. Its owner
(``phash_model``) is ``phash@<version>:<thumb_size>:<thumb_quality>``. Video frames are not
in scope: the video analysis hashes and previews them itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from lake.errors import RejectedInput
from lake.images import ImageRejected, ImageSettings, process_image
from lake.plugin import Enricher

OWNER_COLUMN = "phash_model"


class PhashThumbnail(Enricher):
    """``phash`` (uint64) and ``thumb`` (JPEG) of image rows lacking them."""

    name: ClassVar[str] = "phash"
    version: ClassVar[str] = "0.1.0"
    table: ClassVar[str] = "media"
    inputs: ClassVar[tuple[str, ...]] = ("media_id", "bytes")

    def __init__(
        self, thumb_size: int, thumb_quality: int, max_pixels: int, formats: list[str]
    ) -> None:
        self.settings = ImageSettings(
            int(thumb_size), int(thumb_quality), int(max_pixels), tuple(formats)
        )

    def where(self) -> str:
        """Stored images without a hash or a thumbnail."""
        return "kind = 'image' AND bytes IS NOT NULL AND (phash IS NULL OR thumb IS NULL)"

    def output_fields(self) -> list[pa.Field]:
        """``phash``, ``thumb`` (already in the media schema) and the owner column."""
        return [
            pa.field("phash", pa.uint64()),
            pa.field("thumb", pa.binary()),
            pa.field(OWNER_COLUMN, pa.string()),
        ]

    def owner_column(self) -> str:
        """``phash_model``."""
        return OWNER_COLUMN

    def owner(self) -> str:
        """The plugin version and the thumbnail settings."""
        s = self.settings
        return f"{self.name}@{self.version}:{s.thumb_size}:{s.thumb_quality}"

    def process(self, batch: pa.Table) -> pa.Table:
        """Hash and thumbnail each row's bytes; an undecodable image names its row."""
        hashes: list[int] = []
        thumbs: list[bytes] = []
        for key, data in zip(
            batch.column("media_id").to_pylist(), batch.column("bytes").to_pylist(), strict=True
        ):
            try:
                info = process_image(data, self.settings)
            except ImageRejected as exc:
                raise RejectedInput(f"media {key}: {exc}") from exc
            hashes.append(info.phash)
            thumbs.append(data if info.thumb is None else info.thumb)
        return pa.table(
            {
                "media_id": batch.column("media_id"),
                "phash": pa.array(hashes, pa.uint64()),
                "thumb": pa.array(thumbs, pa.binary()),
                OWNER_COLUMN: pa.array([self.owner()] * batch.num_rows, pa.string()),
            }
        )

    def params(self) -> dict[str, Any]:
        """Options recorded with the run."""
        return dict(self.settings.__dict__)
