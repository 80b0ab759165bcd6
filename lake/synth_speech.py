"""Spoken demo audio: espeak-ng reads short sentences about the demo's shapes.

Each file is one sentence such as "A small red circle on a light background.", built from
the shapes demo's vocabulary (:mod:`lake.demo_data`), spoken by espeak-ng
(:func:`lake.synth_video.speak`) and stored as 16 kHz mono 16-bit WAV. The texts come
from ``numpy.random.default_rng(seed)`` (all distinct); each file's speaking speed
(espeak-ng ``-s``, 140-180 words per minute) is derived from its text, so
``ground_truth.json`` (file name -> text) describes the files completely.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from lake.audio import encode_pcm
from lake.demo_data import BACKGROUND_WORDS, COLOURS, SHAPES, SIZES
from lake.synth_video import speak

RATE = 16000
SPEEDS = (140, 180)  # espeak-ng -s range, words per minute (inclusive)
TEMPLATE = "{A} {size} {colour} {shape} on a {bg} background."
SKIPPED = "espeak-ng not found"


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct shape sentences, drawn deterministically from ``seed``."""
    combos = list(product(SIZES, COLOURS, SHAPES, BACKGROUND_WORDS.values()))
    if not 0 <= n <= len(combos):
        raise ValueError(f"n must be between 0 and {len(combos)}, got {n}")
    picks = np.random.default_rng(seed).choice(len(combos), size=n, replace=False)
    out = []
    for k in picks:
        size, colour, shape, bg = combos[int(k)]
        article = "An" if size[0] in "aeiou" else "A"
        out.append(TEMPLATE.format(A=article, size=size, colour=colour, shape=shape, bg=bg))
    return out


def speed_of(text: str) -> int:
    """espeak-ng speed (words per minute) for ``text``: fixed by the text, in ``SPEEDS``."""
    lo, hi = SPEEDS
    return lo + int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % (hi - lo + 1)


def demo_speech(out: str | Path, n: int = 24, seed: int = 0) -> dict[str, Any]:
    """Write ``n`` spoken sentences (``speech_000.wav``...) and ``ground_truth.json``.

    Idempotent: when ``out`` already holds the files of the same arguments (the stored
    ground truth equals the planned one), nothing is rewritten; files of an earlier, other
    set are removed. Without espeak-ng on the PATH nothing is written. Returns
    ``{"files": [names], "texts": {name: text}}`` or ``{"files": [], "skipped": reason}``.
    """
    out = Path(out)
    texts = {f"speech_{i:03d}.wav": t for i, t in enumerate(sentences(int(n), int(seed)))}
    gt_path = out / "ground_truth.json"
    if ground_truth_current(out, texts):
        return {"files": list(texts), "texts": texts}
    if shutil.which("espeak-ng") is None:
        print(f"demo speech: {SKIPPED}, no speech files written")
        return {"files": [], "skipped": SKIPPED}
    out.mkdir(parents=True, exist_ok=True)
    stored = stored_ground_truth(out)
    for name in stored if isinstance(stored, dict) else ():
        if name not in texts and Path(name).name == name:
            (out / name).unlink(missing_ok=True)
    for name, text in texts.items():
        samples = speak(text, RATE, speed=speed_of(text))
        pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(encode_pcm(pcm, RATE, "wav"))
        tmp.replace(out / name)
    gt_path.write_text(json.dumps(texts, indent=1) + "\n")
    return {"files": list(texts), "texts": texts}


def stored_ground_truth(out: Path) -> Any:
    """The parsed ``ground_truth.json`` of ``out``, or None when absent or unreadable."""
    try:
        return json.loads((out / "ground_truth.json").read_text())
    except (OSError, ValueError):
        return None


def ground_truth_current(out: Path, texts: dict[str, str]) -> bool:
    """Whether ``out`` already holds every file of ``texts`` and a ``ground_truth.json``
    equal to it (written last, so a killed writer is redone)."""
    stored = stored_ground_truth(out)
    return stored == texts and all((out / name).is_file() for name in texts)
