"""Real demo data shipped inside installed packages: photos, a traffic video, read speech.

- :func:`demo_photos`: real photographs from scikit-image (``skimage/data``; CC0 or public
  domain, per the ``skimage.data`` docstrings) and mvtb-data (``mvtbdata/images``; the
  package is MIT, its photos come from mixed sources; ``lena.png`` and the synthetic test
  patterns are left out), converted to JPEG (at most ``max_side`` pixels) with a caption
  each, in ``captions.csv`` (``image,caption``: the layout of the ``clip_pairs`` source).
  ``chelsea.jpg`` is stored rotated with an EXIF Orientation tag, so a correct reader (the
  lake's decoder, :func:`lake.images.decode_image`) shows it upright.
- :func:`demo_traffic`: mvtb-data's real traffic video (h264, 11.7 s) copied as is.
- :func:`demo_read_speech`: Debian ``pocketsphinx-testdata``'s read-speech clips (five
  LibriVox sentences, five spoken playing cards) with their reference transcripts, in
  ``ground_truth.json`` (file name -> text, as :mod:`lake.synth_speech` stores its own).

Each writer is idempotent: the index file (captions / ground truth) is written last and,
when it already matches the plan and the files exist, nothing is rewritten.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from lake.images import decode_image
from lake.synth_speech import ground_truth_current

#: (package, file inside the package's data folder, stored name, caption)
PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    ("skimage", "astronaut.png", "astronaut.jpg", "a portrait of the astronaut Eileen Collins"),
    ("skimage", "camera.png", "camera.jpg", "a man with a camera on a tripod"),
    ("skimage", "chelsea.png", "chelsea.jpg", "a tabby cat"),
    ("skimage", "coffee.png", "coffee.jpg", "a cup of coffee on a saucer"),
    ("skimage", "coins.png", "coins.jpg", "ancient Greek coins"),
    ("skimage", "rocket.jpg", "rocket.jpg", "a rocket lifting off its launch pad"),
    ("skimage", "hubble_deep_field.jpg", "hubble_deep_field.jpg", "galaxies in deep space"),
    ("skimage", "retina.jpg", "retina.jpg", "a photograph of a human retina"),
    ("skimage", "brick.png", "brick.jpg", "a brick wall"),
    ("skimage", "grass.png", "grass.jpg", "a patch of grass"),
    ("skimage", "gravel.png", "gravel.jpg", "gravel"),
    ("mvtbdata", "flowers1.png", "flowers1.jpg", "a field of pink and red tulips"),
    ("mvtbdata", "flowers9.png", "flowers9.jpg", "red and yellow tulips"),
    ("mvtbdata", "eiffel-1.png", "eiffel-1.jpg", "the Eiffel Tower under a blue sky"),
    ("mvtbdata", "eiffel-2.png", "eiffel-2.jpg", "the Eiffel Tower seen from a park"),
    ("mvtbdata", "church.jpg", "church.jpg", "a white church"),
    ("mvtbdata", "notre-dame.png", "notre-dame.jpg", "the Notre-Dame cathedral in Paris"),
    ("mvtbdata", "castle.png", "tourist-sign.jpg", "a tourist information sign"),
    ("mvtbdata", "street.png", "street.jpg", "a city street in black and white"),
    ("mvtbdata", "road.png", "road.jpg", "a straight empty road"),
    ("mvtbdata", "penguins.png", "penguin-sign.jpg", "a warning sign about penguins"),
    ("mvtbdata", "monalisa.png", "monalisa.jpg", "the Mona Lisa painting"),
    ("mvtbdata", "butterfly.jpg", "butterfly.jpg", "a black and white butterfly on a leaf"),
    ("mvtbdata", "building2-1.png", "building.jpg", "an apartment building"),
    ("mvtbdata", "tomato_124.png", "tomato_124.jpg", "tomatoes on the vine"),
    ("mvtbdata", "tomato_54.png", "tomato_54.jpg", "a green tomato on the vine"),
    ("mvtbdata", "campus/P1070491.png", "campus-1.jpg", "a red brick university building"),
    ("mvtbdata", "campus/P1070510.png", "campus-2.jpg", "a building with a veranda"),
    ("mvtbdata", "parks.png", "park.jpg", "a path through a park"),
)
#: the photo stored rotated, with an EXIF Orientation tag that makes it upright again
EXIF_PHOTO = "chelsea.jpg"
#: EXIF tag 0x0112; 6 = "rotate 90 degrees clockwise to display"
ORIENTATION_TAG, ORIENTATION = 0x0112, 6
#: the data folder of each package (relative to its import root)
_DATA_DIRS = {"skimage": "data", "mvtbdata": "images"}
TRAFFIC_VIDEO = "traffic_sequence.mp4"
#: clip set -> (folder under the pocketsphinx test data, transcription file)
SPEECH_SETS = {"librivox": ("librivox", "transcription"), "cards": ("cards", "cards.transcription")}
_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)]+)\)\s*$")


def package_data_dir(package: str) -> Path | None:
    """The data folder shipped inside ``package`` (``skimage``, ``mvtbdata``); None if absent.

    Located with :func:`importlib.util.find_spec`: importing either package is not needed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / _DATA_DIRS[package]
    return folder if folder.is_dir() else None


def _photo_bytes(src: Path, name: str, max_side: int) -> bytes:
    """``src`` as RGB JPEG of at most ``max_side`` pixels; the EXIF photo rotated + tagged."""
    rgb = decode_image(src.read_bytes())
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if name == EXIF_PHOTO:
        # pixels turned 90 degrees counter-clockwise; Orientation 6 turns them back
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = ORIENTATION
        rgb.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif)
    else:
        rgb.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def demo_photos(out: str | Path, max_side: int) -> dict[str, Any]:
    """Write the real photos of :data:`PHOTOS` as JPEG into ``out`` with ``captions.csv``.

    Photos whose package is not installed are left out (with a printed note). Returns
    ``{"files": [names], "captions": {name: caption}}``.
    """
    out = Path(out)
    dirs = {pkg: package_data_dir(pkg) for pkg in _DATA_DIRS}
    for pkg, folder in dirs.items():
        if folder is None:
            print(f"demo photos: package {pkg} is not installed, its photos are left out")
    plan = {
        name: (dirs[pkg] / rel, caption)  # type: ignore[operator]
        for pkg, rel, name, caption in PHOTOS
        if dirs[pkg] is not None
    }
    captions = {name: caption for name, (_, caption) in plan.items()}
    index = out / "captions.csv"
    wanted = [["image", "caption"], *([n, c] for n, c in captions.items())]
    try:
        stored = list(csv.reader(io.StringIO(index.read_text())))
    except OSError:
        stored = None
    meta = out / ".max_side"
    same_size = meta.is_file() and meta.read_text().strip() == str(int(max_side))
    if stored == wanted and same_size and all((out / n).is_file() for n in captions):
        return {"files": list(captions), "captions": captions}
    out.mkdir(parents=True, exist_ok=True)
    index.unlink(missing_ok=True)
    for name, (src, _) in plan.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(_photo_bytes(src, name, int(max_side)))
        tmp.replace(out / name)
    meta.write_text(f"{int(max_side)}\n")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(wanted)
    index.write_text(buf.getvalue())
    return {"files": list(captions), "captions": captions}


def demo_traffic(out: str | Path) -> dict[str, Any]:
    """Copy mvtb-data's real traffic video into ``out``.

    Returns ``{"files": [name]}``, or ``{"files": [], "skipped": reason}`` without mvtb-data.
    """
    folder = package_data_dir("mvtbdata")
    src = folder / TRAFFIC_VIDEO if folder is not None else None
    if src is None or not src.is_file():
        reason = "package mvtbdata (mvtb-data) is not installed"
        print(f"demo traffic: {reason}, no video written")
        return {"files": [], "skipped": reason}
    out = Path(out)
    dest = out / TRAFFIC_VIDEO
    if not (dest.is_file() and dest.stat().st_size == src.stat().st_size):
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{TRAFFIC_VIDEO}.tmp"
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    return {"files": [TRAFFIC_VIDEO]}


def read_transcriptions(path: str | Path) -> dict[str, str]:
    """A pocketsphinx ``transcription`` file: ``<s> text </s> (id)`` lines -> {id: text}.

    Whitespace inside a text is collapsed; a line of another form raises ``ValueError``
    naming the file and line.
    """
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"{path}:{n}: not a '<s> text </s> (id)' line: {line!r}")
        out[m["id"]] = " ".join(m["text"].split())
    return out


def speech_plan(src: str | Path) -> dict[str, tuple[Path, str]]:
    """Stored name (``<set>_<id>.wav``) -> (source WAV, reference text) for every clip of
    :data:`SPEECH_SETS` under the pocketsphinx test data folder ``src``."""
    plan: dict[str, tuple[Path, str]] = {}
    for clip_set, (folder, transcription) in SPEECH_SETS.items():
        base = Path(src) / folder
        for uid, text in read_transcriptions(base / transcription).items():
            short = uid.rsplit("-", 1)[-1]
            plan[f"{clip_set}_{short}.wav"] = (base / f"{uid}.wav", text)
    return plan


def clip_set(name: str) -> str:
    """The clip set (``librivox``, ``cards``) of a stored read-speech file name."""
    return name.split("_", 1)[0]


def demo_read_speech(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Copy the read-speech clips under ``src`` into ``out`` with ``ground_truth.json``.

    Returns ``{"files": [names], "texts": {name: text}}``, or ``{"files": [], "skipped":
    reason}`` (printed) when the Debian package ``pocketsphinx-testdata`` is missing.
    """
    out = Path(out)
    if not all((Path(src) / d / t).is_file() for d, t in SPEECH_SETS.values()):
        reason = f"pocketsphinx-testdata not found under {src} (make sysdeps installs it)"
        print(f"demo read speech: {reason}, no speech files written")
        return {"files": [], "skipped": reason}
    plan = speech_plan(src)
    texts = {name: text for name, (_, text) in plan.items()}
    gt_path = out / "ground_truth.json"
    if ground_truth_current(out, texts):
        return {"files": list(texts), "texts": texts}
    out.mkdir(parents=True, exist_ok=True)
    gt_path.unlink(missing_ok=True)
    for name, (wav, _) in plan.items():
        tmp = out / f".{name}.tmp"
        shutil.copyfile(wav, tmp)
        tmp.replace(out / name)
    gt_path.write_text(json.dumps(texts, indent=1) + "\n")
    return {"files": list(texts), "texts": texts}
