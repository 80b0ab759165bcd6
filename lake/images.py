"""Image decoding and the enrichment done at ingest: verify, measure, perceptual hash and
thumbnail.

:func:`decode_image` is the one reader of encoded image bytes in lakeloom: every consumer
(collators, enrichers, the TUI preview, checks) calls it, so all of them see an image the
same way, upright after its EXIF orientation. Runs in worker processes, so it imports only
PIL and imagehash. The original bytes are never modified; EXIF orientation is applied to
the decoded pixels, the thumbnail and the hash only.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit below
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageSettings:
    """Limits and outputs of image processing (``conf/media/default.yaml``)."""

    thumb_size: int = 128
    thumb_quality: int = 85
    max_pixels: int = 89_478_485  # PIL's own decompression-bomb threshold
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class ImageInfo:
    """What processing found out about one image."""

    mime: str
    width: int
    height: int
    phash: int
    thumb: bytes | None  # None: the original bytes serve as the thumbnail


class ImageRejected(Exception):
    """The bytes are not an acceptable image; the message is the reason."""


def _open(data: bytes) -> Image.Image:
    """PIL's lazy handle on ``data`` (header read, no pixels decoded yet)."""
    return Image.open(io.BytesIO(data))


def decode_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, ...) to a loaded, upright image in ``mode``.

    EXIF orientation is applied (as the ingest hash and thumbnail do), so a photo stored
    sideways with an orientation tag comes back as it is meant to be seen. The result is
    fully loaded and owns its pixels: no file handle or context manager is involved.
    Raises PIL's errors (``UnidentifiedImageError``/``OSError``, ``ValueError``) for bytes
    that do not decode.
    """
    with _open(data) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)  # a loaded copy, transposed or not
    if upright.mode == mode:
        return upright
    if upright.mode == "P" and mode == "RGB":  # palette transparency needs RGBA first
        upright = upright.convert("RGBA")
    return upright.convert(mode)


def process_image(data: bytes, settings: ImageSettings) -> ImageInfo:
    """Decode and verify ``data`` fully, then hash and thumbnail it.

    Raises ImageRejected for unidentifiable, unsupported, truncated or corrupt images and
    for images over ``max_pixels`` (decompression bombs), before decoding any pixels.
    """
    if not data:
        raise ImageRejected("empty file")
    try:
        img = _open(data)
    except Image.UnidentifiedImageError:
        raise ImageRejected("not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    if img.format not in settings.formats:
        raise ImageRejected(f"unsupported image format {img.format}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"invalid image size {width}x{height}")
    if width * height > settings.max_pixels:
        raise ImageRejected(
            f"decompression bomb: {width}x{height} = {width * height} pixels "
            f"> max_pixels {settings.max_pixels}"
        )
    mime = Image.MIME.get(img.format, "application/octet-stream")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL reports some corruption only as warnings
            img.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    orientation = img.getexif().get(_ORIENTATION, 1) if "exif" in img.info else 1
    oriented = img if orientation in (1, None) else ImageOps.exif_transpose(img)
    phash = phash_int(oriented)
    # the size recorded is the upright one decode_image gives, so sizes read from the lake
    # (token counts, pixel budgets, exports) agree with the pixels the models see
    width, height = oriented.size
    return ImageInfo(mime, width, height, phash, _thumbnail(data, img, oriented, settings))


def phash_int(img: Image.Image) -> int:
    """``imagehash.phash(img)`` as the unsigned 64-bit integer the lake stores: the hash's
    bits in row order, first bit highest (what ``int(str(hash), 16)`` gives, without the
    hex string in between)."""
    return hash_int(imagehash.phash(img))


def hash_int(h: imagehash.ImageHash) -> int:
    """An ImageHash's bits as an unsigned integer, first bit highest."""
    return int.from_bytes(np.packbits(h.hash.ravel()).tobytes(), "big")


def _thumbnail(
    data: bytes, img: Image.Image, oriented: Image.Image, settings: ImageSettings
) -> bytes:
    """A JPEG no larger than ``thumb_size``; small upright JPEGs are reused as they are."""
    if img.format == "JPEG" and oriented is img and max(img.size) <= settings.thumb_size:
        return data
    thumb = oriented.copy() if oriented is img else oriented
    thumb.thumbnail((settings.thumb_size, settings.thumb_size), Image.Resampling.BILINEAR)
    if thumb.mode != "RGB":
        thumb = thumb.convert("RGBA").convert("RGB") if thumb.mode == "P" else thumb.convert("RGB")
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=settings.thumb_quality)
    return out.getvalue()
