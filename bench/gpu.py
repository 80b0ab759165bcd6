"""Benchmark: every measurement that needs a GPU, in one command, one table, one JSON line.

Parts (``--only NAME,...`` picks some), each against its baseline in the same run:

- ``vlm``: VLM fine-tuning through the real loader and collator (``bench/train_vlm.py``, one
  subprocess per configuration): Qwen2-VL-2B full bf16, LLaVA-1.5-7B LoRA, the same under
  FSDP (``--fsdp``: wrapped as ``trainer=fsdp_vlm``), LLaVA-1.5-7B QLoRA 4-bit
  (``--quantization 4bit``, CUDA only), Qwen2.5-VL-3B and Qwen3-VL-4B LoRA (random weights
  from published configs; a family that core/models/vlm_families.py lacks is skipped).
  Figure: packed tokens/s; baseline: padded tokens/s; with MFU against the card's bf16 dense
  peak (``--peak-tflops``, else from the device name, :data:`PEAK_TFLOPS`), data-wait share
  and peak memory.
- ``clip``: CLIP training (ViT-B/32, random weights) fed from the lake by ``--workers``
  DataLoader workers; baseline: the same steps with 0 workers. samples/s and data-wait share.
- ``enrich``: the CLIP image enricher (``plugins.clip_embed`` through ``lake.enrich``: read,
  decode, embed, write) over the lake's images on CUDA; baseline: the CPU path on the same rows.
- ``whisper``: faster-whisper (``plugins.transcribe``) on CUDA float16; baseline: CPU int8 on
  the same audio (pocketsphinx-testdata's read speech when installed, else synthetic tones).
- ``apotheon``: ``bench/apotheon.py`` at its base width on CUDA (its baseline: the measured
  peak of a large matmul on the same device).

``--tiny`` runs every part on CPU with tiny models (tiny LLaVA / Qwen2-VL, tiny-clip, tiny
Apotheon, Whisper tiny.en int8 on a few seconds of audio; FSDP on gloo over loopback;
QLoRA skipped: it needs CUDA), so the command is known to work before a GPU is used.
Without ``--tiny`` the real sizes run (CUDA required for the parts that need one).

The run has a wall-clock budget (``--budget-s``, default 480 s) that it enforces itself: a
small lake is built first (the shapes demo ingested into a temporary lake, as
``bench/train_vlm.py`` does) unless ``--lake`` names one, then every part gets its share of
what is left (:data:`SHARES`, unused time passes on) and every configuration runs in its own
process group, killed when its time is up: it is reported as ``timeout`` and the rest still
run. Prints one table (part, config, figure, baseline, ratio, status) and, last, one line
with a JSON object of every row.

    python bench/gpu.py                     # on a GPU machine: real sizes, 8 minutes
    python bench/gpu.py --tiny              # on CPU, well under two minutes
    python bench/gpu.py --only vlm,clip --budget-s 300 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("vlm", "clip", "enrich", "whisper", "apotheon")
#: share of the budget left after the lake is built; a part's unused time passes on
SHARES = {"vlm": 0.55, "clip": 0.1, "enrich": 0.1, "whisper": 0.1, "apotheon": 0.15}
LAKE_SHARE = 0.25  # at most this share of the budget builds the lake
DATASET = "shapes_llava"
#: bf16 dense tensor peak (TFLOP/s, no sparsity) by a substring of the CUDA device name,
#: first match wins (vendor spec sheets)
PEAK_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16: V100 has no bf16
)
SKIP_CUDA = "skipped: needs CUDA"


def peak_tflops(device_name: str | None) -> float | None:
    """The card's bf16 dense peak from its name, or None (unknown card, or CPU)."""
    if not device_name:
        return None
    for key, peak in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


# ---- running one configuration in its own process group -----------------------------------


@dataclass
class Job:
    """One configuration of a part: a command whose last stdout line is a JSON object, and
    the function turning that object into a table row."""

    config: str
    argv: list[str] | None  # None: not run (``skip`` says why)
    row: Callable[[dict[str, Any]], dict[str, Any]] = lambda fig: {}
    skip: str | None = None


@dataclass
class Row:
    """One line of the table."""

    part: str
    config: str
    status: str
    figure: str = ""
    baseline: str = ""
    ratio: float | None = None
    seconds: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def run_job(argv: list[str], timeout: float) -> tuple[str, dict[str, Any] | None, str]:
    """``(status, figures, output tail)``: ``ok``, ``failed`` or ``timeout``; a job out of
    time is killed with its whole process group (DataLoader workers included)."""
    if timeout <= 0:
        return "timeout", None, "no time left"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", None, out[-2000:]
    if proc.returncode != 0:
        return "failed", None, out[-2000:]
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    try:
        return "ok", json.loads(lines[-1]), out[-2000:]
    except (IndexError, ValueError):
        return "failed", None, out[-2000:]


def reason_of(tail: str) -> str:
    """The last meaningful line of a failed job's output."""
    lines = [ln.strip() for ln in tail.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


# ---- the parts ---------------------------------------------------------------------------------


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def vlm_jobs(a: argparse.Namespace, lake: str, cuda: bool, peak: float | None) -> list[Job]:
    """train_vlm.py configurations, most important first."""
    from core.models.vlm_families import FAMILIES

    base = ["bench/train_vlm.py", "--lake", lake, "--rounds", "1"]
    if a.tiny:
        base += ["--device", "cpu", "--threads", "1", "--steps", "2", "--warmup", "1",
                 "--batch", "4", "--max-length", "256"]  # fmt: skip
    else:
        base += ["--real", "--steps", str(a.vlm_steps), "--warmup", "2"]
        if peak:
            base += ["--peak-tflops", str(peak)]
    names = {
        "llava": "llava_tiny" if a.tiny else "LLaVA-1.5-7B",
        "qwen2_vl": "qwen2_vl_tiny" if a.tiny else "Qwen2-VL-2B",
        "qwen2_5_vl": "qwen2_5_vl tiny" if a.tiny else "Qwen2.5-VL-3B",
        "qwen3_vl": "qwen3_vl tiny" if a.tiny else "Qwen3-VL-4B",
    }
    specs = [  # (family, peft, extra flags, label)
        ("qwen2_vl", "none", [], "full" + ("" if a.tiny else " bf16")),
        ("llava", "lora", [], "LoRA"),
        ("llava", "lora", ["--quantization", "4bit"], "QLoRA 4-bit"),
        ("qwen2_vl", "none", ["--fsdp"], "full, fsdp_vlm"),
        ("llava", "lora", ["--fsdp"], "LoRA, fsdp_vlm"),
        ("qwen3_vl", "lora", [], "LoRA"),
        ("qwen2_5_vl", "lora", [], "LoRA"),
    ]
    jobs = []
    for fam, peft, extra, label in specs:
        config = f"{names[fam]} {label}"
        skip = None
        if fam not in FAMILIES:
            skip = "skipped: family not available"
        elif "--quantization" in extra and (a.tiny or not cuda):
            skip = SKIP_CUDA
        elif "--fsdp" in extra and fam == "llava" and a.tiny:
            skip = "skipped: tiny runs FSDP with qwen2_vl only"
        argv = _py(*base, "--families", fam, "--peft", peft, *extra)
        jobs.append(Job(config, argv, _vlm_row(fam), skip))
    return jobs


def _vlm_row(fam: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def row(fig: dict[str, Any]) -> dict[str, Any]:
        p, u = (f"{fam}_packed_", f"{fam}_unpacked_")
        extra = [f"wait {100 * fig[p + 'data_wait_frac']:.0f}%"]
        if fig.get(p + "mfu") is not None:
            extra.insert(0, f"MFU {100 * fig[p + 'mfu']:.1f}%")
        extra.append(f"{fig[f'{fam}_peak_mem_gb']:.1f} GB")
        values = {
            "tokens_per_s": fig[p + "tokens_per_s"],
            "padded_tokens_per_s": fig[u + "tokens_per_s"],
            "mfu": fig.get(p + "mfu"),
            "padded_mfu": fig.get(u + "mfu"),
            "data_wait_frac": fig[p + "data_wait_frac"],
            "padded_data_wait_frac": fig[u + "data_wait_frac"],
            "peak_mem_gb": fig[f"{fam}_peak_mem_gb"],
            "params_trainable": fig[f"{fam}_params_trainable"],
            "device": fig["device"],
        }
        return {
            "figure": f"packed {fig[p + 'tokens_per_s']:.0f} tok/s ({', '.join(extra)})",
            "baseline": f"padded {fig[u + 'tokens_per_s']:.0f} tok/s",
            "ratio": fig[f"{fam}_packed_vs_unpacked"],
            "values": values,
        }

    return row


def clip_jobs(a: argparse.Namespace, lake: str, cuda: bool) -> list[Job]:
    """CLIP training with DataLoader workers against 0 workers."""
    arch = "tiny-clip" if a.tiny else "ViT-B-32"
    argv = _py("bench/gpu.py", "--job", "clip", "--lake", lake, "--arch", arch,
               "--workers", str(a.workers), *(["--tiny"] if a.tiny else []))  # fmt: skip

    def row(fig: dict[str, Any]) -> dict[str, Any]:
        w, z = fig["workers"], fig["no_workers"]
        return {
            "figure": f"{w['samples_per_s']:.1f} samples/s, {a.workers} workers "
            f"(wait {100 * w['data_wait_frac']:.0f}%)",
            "baseline": f"{z['samples_per_s']:.1f} (0 workers, wait "
            f"{100 * z['data_wait_frac']:.0f}%)",
            "ratio": w["samples_per_s"] / z["samples_per_s"],
            "values": fig,
        }

    return [Job(f"{arch} train, {fig_device(a, cuda)}", argv, row)]


def fig_device(a: argparse.Namespace, cuda: bool) -> str:
    return "cuda bf16" if cuda and not a.tiny else "cpu fp32"


def enrich_jobs(a: argparse.Namespace, lake: str, cuda: bool) -> list[Job]:
    """The CLIP image enricher on CUDA against the CPU path on the same rows."""
    arch = "tiny-clip" if a.tiny else "ViT-B-32"
    device = "cuda" if cuda and not a.tiny else "cpu"
    argv = _py("bench/gpu.py", "--job", "enrich", "--lake", lake, "--arch", arch,
               "--device", device)  # fmt: skip

    def row(fig: dict[str, Any]) -> dict[str, Any]:
        return {
            "figure": f"{fig['images_per_s']:.1f} images/s on {device} ({fig['rows']} rows)",
            "baseline": f"{fig['cpu_images_per_s']:.1f} on cpu",
            "ratio": fig["images_per_s"] / fig["cpu_images_per_s"],
            "values": fig,
        }

    return [Job(f"clip_image {arch}", argv, row)]


def whisper_jobs(a: argparse.Namespace, cuda: bool) -> list[Job]:
    """faster-whisper CUDA float16 against CPU int8 on the same audio."""
    device = "cuda" if cuda and not a.tiny else "cpu"
    argv = _py("bench/gpu.py", "--job", "whisper", "--device", device,
               "--whisper-model", a.whisper_model, *(["--tiny"] if a.tiny else []))  # fmt: skip

    def row(fig: dict[str, Any]) -> dict[str, Any]:
        return {
            "figure": f"{fig['audio_s_per_s']:.1f} audio s/s {device} {fig['compute_type']}",
            "baseline": f"{fig['cpu_audio_s_per_s']:.1f} cpu int8",
            "ratio": fig["audio_s_per_s"] / fig["cpu_audio_s_per_s"],
            "values": fig,
        }

    return [Job(f"{a.whisper_model}", argv, row)]


def apotheon_jobs(a: argparse.Namespace, cuda: bool) -> list[Job]:
    """bench/apotheon.py: tiny on CPU, base width on CUDA."""
    if a.tiny:
        argv = _py("bench/apotheon.py", "--size", "tiny", "--steps", "3", "--warmup", "1",
                   "--batches", "1", "--batch", "4", "--threads", "1", "--json-only")  # fmt: skip
    else:
        argv = _py("bench/apotheon.py", "--device", "cuda", "--size", "base-width",
                   "--steps", "5", "--warmup", "2", "--batches", "2", "--json-only")  # fmt: skip

    def row(fig: dict[str, Any]) -> dict[str, Any]:
        mem = f", {fig['max_memory_gib']:.1f} GB" if "max_memory_gib" in fig else ""
        return {
            "figure": f"{fig['samples_per_s']:.2f} samples/s, {fig['achieved_tflops']:.3g} "
            f"TFLOP/s{mem}",
            "baseline": f"matmul peak {fig['peak_tflops']:.3g} TFLOP/s",
            "ratio": fig["mfu"],
            "values": fig,
        }

    size = "tiny" if a.tiny else "base width"
    skip = None if a.tiny or cuda else SKIP_CUDA
    return [Job(f"{size} train step (ratio = MFU)", argv, row, skip)]


# ---- the jobs run in child processes (--job NAME) -------------------------------------------


def job_lake(a: argparse.Namespace) -> dict[str, Any]:
    """Build the shapes lake with bench/train_vlm.py's own builder."""
    import train_vlm

    uri = train_vlm.build_lake(Path(a.out), a.n)
    return {"lake": uri, "samples": train_vlm.lake_samples(uri)}


def _model_kwargs(path: Path) -> dict[str, Any]:
    """A ``_target_`` config's arguments (over its ``defaults``), ``_`` keys dropped."""
    from omegaconf import OmegaConf

    conf = OmegaConf.load(path)
    parts = [conf]
    for d in conf.get("defaults", []):
        if isinstance(d, str) and d != "_self_":
            parts.insert(0, OmegaConf.load(path.parent / f"{d}.yaml"))
    merged = OmegaConf.to_container(OmegaConf.merge(*parts), resolve=False)
    assert isinstance(merged, dict)
    return {k: v for k, v in merged.items() if not str(k).startswith("_") and k != "defaults"}


def _clip_run(a: argparse.Namespace, workers: int) -> dict[str, Any]:
    import torch

    from core.data.lance_data import LanceDataModule
    from core.modules.clip_module import ClipModule

    cuda = torch.cuda.is_available() and not a.tiny
    device = torch.device("cuda" if cuda else "cpu")
    kw = _model_kwargs(ROOT / "conf" / "model" / "clip_tiny.yaml")
    steps, warmup = (4, 1) if a.tiny else (30, 5)
    kw |= {"arch": a.arch, "pretrained": None, "max_steps": warmup + steps}
    torch.manual_seed(0)
    module = ClipModule(**kw).to(device)
    opt = module.configure_optimizers()["optimizer"]
    batch = 16 if a.tiny else 256
    dm = LanceDataModule(a.lake, datasets=[DATASET], batch_size=batch, num_workers=workers,
                         seed=0)  # fmt: skip
    dm.setup()
    dm.set_collator(module.make_collator(train=True))
    loader = dm.loader("train", 0, 1)
    it = iter(loader)
    wait = compute = 0.0
    samples = 0
    module.train()
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        t1 = time.perf_counter()
        images = b["images"].to(device, non_blocking=True)
        texts = b["texts"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = module._loss({"images": images, "texts": texts})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step >= warmup:
            wait += t1 - t0
            compute += t2 - t1
            samples += int(images.shape[0])
    del it, loader
    return {
        "samples_per_s": samples / (wait + compute),
        "data_wait_frac": wait / (wait + compute),
        "batch": batch,
        "steps": steps,
    }


def job_clip(a: argparse.Namespace) -> dict[str, Any]:
    """CLIP training steps fed by ``--workers`` loader workers, then by none."""
    import torch

    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("CLIP ViT-B/32 training needs CUDA here (use --tiny on CPU)")
    torch.set_num_threads(1 if a.tiny else torch.get_num_threads())
    return {"workers": _clip_run(a, a.workers), "no_workers": _clip_run(a, 0),
            "n_workers": a.workers, "arch": a.arch}  # fmt: skip


def job_enrich(a: argparse.Namespace) -> dict[str, Any]:
    """The CLIP image enricher end to end on ``--device``, then on the CPU, same rows."""
    import torch

    from lake.enrich import enrich
    from lake.store import Lake
    from plugins.clip_embed import ClipImageEmbedder, clear_cache

    out: dict[str, Any] = {}
    for seed, (key, device) in enumerate((("", a.device), ("cpu_", "cpu"))):
        # random weights: another seed is another owner, so the baseline redoes every row
        clear_cache()
        torch.manual_seed(seed)
        embedder = ClipImageEmbedder(arch=a.arch, pretrained=None, device=device,
                                     batch_size=64 if device == "cpu" else 256)  # fmt: skip
        embedder.setup()  # model load left out of the timing
        report = enrich(embedder, Lake(a.lake), reembed=True, progress=False)
        out[f"{key}images_per_s"] = report.done / report.seconds
        out[f"{key}seconds"] = report.seconds
        out["rows"] = report.done
    out["device"] = a.device
    return out


def _speech(tiny: bool) -> tuple[list[Any], str]:
    """16 kHz float32 clips: pocketsphinx-testdata's read speech, else synthetic tones."""
    import wave

    import numpy as np

    folder = Path("/usr/share/pocketsphinx/test/data/librivox")
    files = sorted(folder.glob("*.wav"))
    clips = []
    for f in files[: 1 if tiny else len(files)]:
        with wave.open(str(f)) as w:
            if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
                continue
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        clips.append(pcm.astype(np.float32) / 32768.0)
    if clips:
        return clips, f"pocketsphinx librivox read speech ({len(clips)} clips)"
    import apotheon

    rng = np.random.default_rng(0)
    n = 1 if tiny else 5
    clips = [apotheon.tones(rng, 4.0).astype(np.float32) / 32768.0 for _ in range(n)]
    return clips, f"synthetic tones ({n} x 4 s; pocketsphinx-testdata not installed)"


def job_whisper(a: argparse.Namespace) -> dict[str, Any]:
    """Transcribe the same clips on ``--device`` (float16 on CUDA) and on the CPU (int8)."""
    from omegaconf import OmegaConf

    from plugins.transcribe import TranscribeEnricher

    conf = OmegaConf.load(ROOT / "conf" / "enrich" / "transcribe.yaml")
    clips, source = _speech(a.tiny)
    audio_s = sum(len(c) for c in clips) / 16000
    out: dict[str, Any] = {"audio": source, "audio_s": round(audio_s, 2)}
    runs = (("", a.device, "float16" if a.device == "cuda" else "int8"), ("cpu_", "cpu", "int8"))
    for key, device, compute in runs:
        enricher = TranscribeEnricher(
            model=a.whisper_model, device=device, compute_type=compute,
            language="en", beam_size=int(conf.beam_size), vad_filter=bool(conf.vad_filter),
            vad_parameters=OmegaConf.to_container(conf.vad_parameters),
            no_speech_threshold=float(conf.no_speech_threshold),
            log_prob_threshold=float(conf.log_prob_threshold),
        )  # fmt: skip
        enricher.setup()
        enricher.transcribe(clips[0][:16000])  # warm-up
        t0 = time.perf_counter()
        words = sum(len(enricher.transcribe(c)[0].split()) for c in clips)
        seconds = time.perf_counter() - t0
        out[f"{key}audio_s_per_s"] = audio_s / seconds
        out[f"{key}words"] = words
        if not key:
            out["compute_type"] = compute
    return out


JOBS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "lake": job_lake,
    "clip": job_clip,
    "enrich": job_enrich,
    "whisper": job_whisper,
}


# ---- the table ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    """Part, config, figure, baseline, ratio, status; then the reasons of what did not run."""
    head = f"{'part':<9}{'config':<30}{'figure':<52}{'baseline':<32}{'ratio':>7}  status"
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        print(f"{r.part:<9}{r.config[:29]:<30}{r.figure[:51]:<52}{r.baseline[:31]:<32}"
              f"{ratio:>7}  {r.status} ({r.seconds:.0f} s)")  # fmt: skip
    notes = [r for r in rows if r.note]
    if notes:
        print()
        for r in notes:
            print(f"{r.part} / {r.config}: {r.note}")


def run_parts(a: argparse.Namespace, parts: list[str], cuda: bool, gpu: str | None) -> list[Row]:
    """The lake, then every part in its share of the budget."""
    start = time.perf_counter()
    deadline = start + a.budget_s
    rows: list[Row] = []
    tmp: Path | None = None
    lake = a.lake
    peak = a.peak_tflops or peak_tflops(gpu)
    try:
        needs_lake = any(p in ("vlm", "clip", "enrich") for p in parts)
        lake_note = ""
        if needs_lake and not lake:
            tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
            n = a.n or (60 if a.tiny else 400)
            argv = _py("bench/gpu.py", "--job", "lake", "--out", str(tmp), "--n", str(n))
            t0 = time.perf_counter()
            status, fig, tail = run_job(argv, min(deadline - t0, a.budget_s * LAKE_SHARE))
            if status == "ok" and fig:
                lake = fig["lake"]
                print(f"lake: {fig['samples']} {DATASET} samples built in "
                      f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
            else:
                lake_note = f"lake build {status}: {reason_of(tail)}"
        shares = {p: SHARES[p] for p in parts}
        for i, part in enumerate(parts):
            share = sum(shares[p] for p in parts[i:])
            part_end = time.perf_counter() + max(0.0, deadline - time.perf_counter()) * (
                shares[part] / share
            )
            jobs = make_jobs(a, part, lake or "", cuda, peak)
            runnable = [j for j in jobs if not j.skip]
            for job in jobs:
                if job.skip:
                    rows.append(Row(part, job.config, job.skip))
                    continue
                if part in ("vlm", "clip", "enrich") and not lake:
                    rows.append(Row(part, job.config, "timeout" if "timeout" in lake_note
                                    else "failed", note=lake_note))  # fmt: skip
                    continue
                remaining = len(runnable) - runnable.index(job)
                slice_s = max(0.0, part_end - time.perf_counter()) / remaining
                t0 = time.perf_counter()
                status, fig, tail = run_job(job.argv or [], slice_s)
                row = Row(part, job.config, status, seconds=time.perf_counter() - t0)
                if status == "ok" and fig is not None:
                    try:
                        for k, v in job.row(fig).items():
                            setattr(row, k, v)
                    except (KeyError, TypeError, ZeroDivisionError) as exc:
                        row.status, row.note = "failed", f"figures: {exc!r}"
                elif status == "timeout":
                    row.note = f"out of time after {slice_s:.0f} s"
                else:
                    reason = reason_of(tail)
                    if reason.startswith("family not available"):
                        row.status = "skipped: family not available"
                    else:
                        row.note = reason
                rows.append(row)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def make_jobs(a: argparse.Namespace, part: str, lake: str, cuda: bool, peak: float | None
              ) -> list[Job]:  # fmt: skip
    """The configurations of one part."""
    if part == "vlm":
        return vlm_jobs(a, lake, cuda, peak)
    if part == "clip":
        return clip_jobs(a, lake, cuda)
    if part == "enrich":
        return enrich_jobs(a, lake, cuda)
    if part == "whisper":
        return whisper_jobs(a, cuda)
    return apotheon_jobs(a, cuda)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="every part on CPU with tiny models")
    ap.add_argument("--real", action="store_true", help="real sizes (default when CUDA is seen)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated of {PARTS}")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget, seconds")
    ap.add_argument("--lake", default=None, help="a lake with shapes_llava samples (else built)")
    ap.add_argument("--n", type=int, default=None, help="images of the built lake (60; real 400)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the card's peak")
    ap.add_argument("--workers", type=int, default=None, help="CLIP loader workers (1; real 8)")
    ap.add_argument("--vlm-steps", type=int, default=5, help="measured steps per VLM run")
    ap.add_argument("--whisper-model", default="tiny.en")
    # child-process options
    ap.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--device", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if a.job:
        print(json.dumps(JOBS[a.job](a)))
        return

    parts = [p.strip() for p in a.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--only: unknown {bad}; choose from {PARTS}")
    import torch

    cuda = torch.cuda.is_available()
    if a.real and a.tiny:
        ap.error("--real and --tiny exclude each other")
    if a.real and not cuda:
        raise SystemExit("--real needs a CUDA GPU and none is visible (use --tiny on CPU)")
    if not cuda and not a.tiny:
        print("no CUDA device visible: running --tiny")
        a.tiny = True
    gpu = torch.cuda.get_device_name(0) if cuda else None
    a.workers = a.workers or (1 if a.tiny else 8)
    t0 = time.perf_counter()
    mode = "tiny, CPU" if a.tiny else f"real, {gpu or 'no GPU'}"
    peak = a.peak_tflops or peak_tflops(gpu)
    print(f"bench/gpu.py: {mode}; budget {a.budget_s:.0f} s; parts {', '.join(parts)}"
          + (f"; peak {peak:g} TFLOP/s bf16 dense" if peak else ""))  # fmt: skip
    rows = run_parts(a, parts, cuda, gpu)
    wall = time.perf_counter() - t0
    print()
    print_table(rows)
    print(f"\nwall time {wall:.0f} s of a {a.budget_s:.0f} s budget")
    print(json.dumps({
        "bench": "gpu", "mode": "tiny" if a.tiny else "real", "device": gpu or "cpu",
        "peak_tflops": peak, "budget_s": a.budget_s, "wall_s": round(wall, 1),
        "rows": [
            {"part": r.part, "config": r.config, "status": r.status, "figure": r.figure,
             "baseline": r.baseline, "ratio": None if r.ratio is None else round(r.ratio, 4),
             "seconds": round(r.seconds, 1), "note": r.note, "values": r.values}
            for r in rows
        ],
    }, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
