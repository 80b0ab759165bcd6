"""``python -m core.family_check [LAKE]``: every VLM family trains, merges and reloads on a lake.

For each family (``--families``, default all six) its tiny experiment
(``conf/experiment/<family>_tiny.yaml``) trains ``--steps`` steps through :func:`core.train.train`
on the lake's ``shapes_llava`` conversations and, for the families that take video
(:attr:`core.models.vlm_families.FamilySpec.media_kinds`), on ``<video>`` conversations
about the lake's own ``video`` media rows; then :func:`core.merge.merge` writes the merged
folder, which is reloaded with the family's transformers class and must give the trained
model's logits on one batch (validation images, plus a video for the video families).

The lake (default ``data/lake``, as ``make demo`` builds it) is never written: it is forked
(:func:`lake.fork.fork_lake`) into the output folder (``--out``, else a temporary folder
removed at the end), where the check's splits are set and the video conversations added
(the demo ingests its videos as frame and scene samples; no sample asks about a whole
video). The train selection is one epoch of ``--steps`` batches, so every video
conversation is trained on; a callback counts the media each trained batch really held.
Prints a table, then one JSON line of the figures; exits 1 when a family failed (the
others still run), naming the family and the reason.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "smolvlm")
#: the tiny experiment of each family (conf/experiment/<name>_tiny.yaml)
EXPERIMENT = {"llava": "llava", "qwen2_vl": "qwen2vl", "qwen2_5_vl": "qwen2_5vl",
              "qwen3_vl": "qwen3vl", "qwen3_5": "qwen3_5", "smolvlm": "smolvlm"}  # fmt: skip
IMAGES = "shapes_llava"  # the demo's LLaVA conversations
VIDEOS = "family_check_videos"  # added to the fork: one <video> conversation per video row
QUESTION = "How many scenes does this video have?"
SEEN = "seen_media.json"  # in the run folder: what the trained batches held


def seen_media(path: str) -> Any:
    """A Lightning callback counting the samples, and those holding images / videos, of
    every trained batch; it writes them as JSON to ``path`` when training ends (built
    here so that importing this module stays free of Lightning)."""
    import lightning as L

    class SeenMedia(L.Callback):
        def __init__(self) -> None:
            self.counts = {"samples": 0, "image_samples": 0, "video_samples": 0,
                           "video_frames": 0, "skipped": 0}  # fmt: skip

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            c = self.counts
            c["samples"] += len(batch["sample_ids"])
            c["image_samples"] += sum(1 for n in batch.get("n_images") or [] if n)
            c["video_samples"] += sum(1 for n in batch.get("n_videos") or [] if n)
            c["video_frames"] += int(sum(batch.get("video_frames") or []))
            c["skipped"] += len(batch.get("skipped") or [])

        def on_train_end(self, trainer: Any, module: Any) -> None:
            Path(path).write_text(json.dumps(self.counts), encoding="utf-8")

    return SeenMedia()


def prepare_lake(src: str | Path, dst: Path, n_train: int, n_val: int = 2) -> dict[str, Any]:
    """Fork ``src`` to ``dst``; there set splits for ``n_train`` + ``n_val`` + 1 (test)
    ``shapes_llava`` samples and add one ``train`` ``<video>`` conversation per video media
    row ("How many scenes does this video have?", answered from its frames' scenes and its
    duration). Returns the chosen sample ids per split and the video sample ids."""
    import pyarrow as pa

    from lake.errors import ConfigError
    from lake.fork import fork_lake
    from lake.schema import MEDIA, SAMPLES, VIDEO_TOKEN
    from lake.sql import quote
    from lake.store import Lake

    fork_lake(src, dst)
    lake = Lake(dst)
    rows = lake.dataset(SAMPLES).to_table(columns=["sample_id"],
                                          filter=f"dataset = {quote(IMAGES)}")  # fmt: skip
    ids = sorted(rows.column("sample_id").to_pylist())
    need = n_train + n_val + 1
    if len(ids) < need:
        raise ConfigError(f"{src}: dataset {IMAGES!r} has {len(ids)} samples, the check needs "
                          f"{need} (run `lakeloom demo` first)")  # fmt: skip
    chosen = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
              "test": ids[n_train + n_val:need]}  # fmt: skip
    media = (
        lake.dataset(MEDIA)
        .to_table(
            columns=["media_id", "kind", "parent_id", "scene", "duration_s"],
            filter="kind IN ('video', 'frame')",
        )
        .to_pylist()
    )
    scenes: dict[str, set[int]] = {}
    for m in media:
        if m["kind"] == "frame" and m["parent_id"] and m["scene"] is not None:
            scenes.setdefault(m["parent_id"], set()).add(int(m["scene"]))
    videos = []
    for m in sorted((m for m in media if m["kind"] == "video"), key=lambda m: m["media_id"]):
        n = len(scenes.get(m["media_id"], ())) or 1
        answer = f"{n} scene{'s' if n > 1 else ''} in {m['duration_s'] or 0:.0f} seconds."
        videos.append({
            "sample_id": f"family-check-video-{m['media_id'][:16]}", "dataset": VIDEOS,
            "media_ids": [m["media_id"]], "split": "train",
            "messages": [{"role": "user", "content": f"{VIDEO_TOKEN}\n{QUESTION}"},
                         {"role": "assistant", "content": answer}],
        })  # fmt: skip
    if videos:
        lake.insert_new(SAMPLES, pa.Table.from_pylist(videos))
    split_rows = [(i, s) for s, group in chosen.items() for i in group]
    lake.update_columns(SAMPLES, pa.table({"sample_id": [i for i, _ in split_rows],
                                           "split": [s for _, s in split_rows]}))  # fmt: skip
    return {**chosen, "videos": [v["sample_id"] for v in videos]}


def compose_train(*overrides: str) -> Any:
    """``conf/train.yaml`` composed with ``overrides``, as ``python -m core.train`` does."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="conf"):
        return compose(config_name="train", overrides=list(overrides))


def lake_samples(lake: str | Path, where: str, split: str) -> list[dict[str, Any]]:
    """The lake's samples of ``split`` matching ``where``, read as training reads them."""
    from core.data.lance_data import LanceDataModule

    ds = LanceDataModule(str(lake), where=where).dataset(split)
    return ds.__getitems__(list(range(len(ds))))


def merged_matches(run_dir: str | Path, merged: str | Path,
                   samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:  # fmt: skip
    """Rebuild run ``run_dir``'s module from its config and last checkpoint, reload the merged
    folder ``merged`` with the family's transformers class, and compare their logits on
    ``samples`` (collated for evaluation). Returns ``max_delta`` (merged vs trained),
    ``adapter_delta`` (trained vs its base without the adapter; 0.0 without PEFT) and
    ``lora_params`` (LoRA tensors left in the reloaded model; must be 0), ``peft`` (whether
    the run trained an adapter) and ``chat_template_kept`` (the merged folder's processor
    has the module's chat template)."""
    import torch
    import transformers
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from core.checkpoint import load_checkpoint
    from core.models.vlm_families import family
    from core.modules.vlm_module import MODEL_INPUTS
    from lake.runs import RunDir

    run = RunDir(Path(run_dir))
    module = instantiate(OmegaConf.load(run.config).model)
    state = load_checkpoint(run.checkpoint("last"))
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=False)
    module.eval()
    batch = module.make_collator(train=False)(list(samples))
    adapter_delta = 0.0
    with torch.no_grad():
        want = module(batch)
        if module.uses_peft:
            with module.model.disable_adapter():
                adapter_delta = float((want - module(batch)).abs().max())
    cls = getattr(transformers, family(module.spec.name).model_class)
    reloaded = cls.from_pretrained(merged).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", *MODEL_INPUTS) if k in batch}
    with torch.no_grad():
        got = reloaded(**inputs).logits
    return {
        "max_delta": float((got - want).abs().max()),
        "adapter_delta": adapter_delta,
        "lora_params": sum(1 for n, _ in reloaded.named_parameters() if "lora_" in n),
        "peft": bool(module.uses_peft),
        "chat_template_kept": transformers.AutoProcessor.from_pretrained(merged).chat_template
        == module.processor.chat_template,
    }


def check_family(name: str, lake: Path, out: Path, chosen: Mapping[str, list[str]],
                 steps: int, atol: float = 1e-4) -> dict[str, Any]:  # fmt: skip
    """Train family ``name``'s tiny experiment ``steps`` steps on the prepared fork ``lake``,
    merge, reload and compare; return its row of figures (``ok``, ``error`` when not)."""
    from core.merge import merge
    from core.models.vlm_families import family
    from core.train import train
    from lake.runs import RunDir
    from lake.sql import in_list, quote

    t0 = time.perf_counter()
    spec = family(name)
    video = "video" in spec.media_kinds and bool(chosen["videos"])
    kinds = ["image", "video"] if video else ["image"]
    ids = [*chosen["train"], *chosen["val"], *chosen["test"]]
    where = f"sample_id IN {in_list(ids)}"
    if video:
        where = f"({where}) OR dataset = {quote(VIDEOS)}"
    n_train = len(chosen["train"]) + (len(chosen["videos"]) if video else 0)
    batch = math.ceil(n_train / steps)  # `steps` batches are one epoch: every sample once
    run = RunDir.of(out / "runs", name)
    cfg = compose_train(
        f"+experiment={EXPERIMENT[name]}_tiny", f"lake.uri={lake}", f"runs_dir={out / 'runs'}",
        f"run_id={name}", f"data.where=\"{where}\"", "data.datasets=null",
        f"data.batch_size={batch}", f"trainer.max_steps={steps}", "trainer.max_epochs=100",
        "trainer.val_check_interval=null", "trainer.check_val_every_n_epoch=100",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "model.generate_samples=0", f"checkpoint.every_n_steps={steps}", "events_every_n_steps=1",
        "+callbacks.seen._target_=core.family_check.seen_media",
        f"+callbacks.seen.path={run.path / SEEN}",
    )  # fmt: skip
    summary = train(cfg)
    if summary.get("status") != "finished":
        raise RuntimeError(f"training ended {summary.get('status')} at step {summary.get('step')}")
    seen = json.loads((run.path / SEEN).read_text(encoding="utf-8"))
    merged = merge(out / "runs", name, "last")  # into the run's merged/ (lake.runs)
    where_check = f"sample_id IN {in_list(chosen['val'])}"
    samples = lake_samples(lake, where_check, "val")
    if video:
        samples += lake_samples(lake, f"sample_id = {quote(chosen['videos'][0])}", "train")
    figures = merged_matches(run.path, merged, samples)
    first, last = summary["train_loss"]
    problems = []  # each named in the row's error
    if figures["max_delta"] > atol:
        problems.append(f"merged logits differ by {figures['max_delta']:.2e} (> {atol:g})")
    if figures["lora_params"]:
        problems.append(f"{figures['lora_params']} LoRA tensors left in the merged model")
    if not figures["chat_template_kept"]:
        problems.append("the merged processor lost the chat template")
    ok = not problems
    return {
        "family": name, "ok": ok, "kinds": kinds, "steps": int(summary["step"]),
        "loss_first": first, "loss_last": last, **figures, **seen,
        "seconds": round(time.perf_counter() - t0, 1),
        **({} if ok else {"error": "; ".join(problems)}),
    }  # fmt: skip


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The readable table of the family rows."""
    head = (f"{'family':<12} {'media':<12} {'steps':>5} {'video seen':>10} {'skipped':>7} "
            f"{'loss first->last':>18} {'merged max|Δ|':>14} {'s':>6}  result")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        if "steps" not in r:
            lines.append(f"{r['family']:<12} {'':<12} {'':>5} {'':>10} {'':>7} {'':>18} {'':>14} "
                         f"{r['seconds']:>6.1f}  FAILED: {r['error']}")  # fmt: skip
            continue
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
        lines.append(
            f"{r['family']:<12} {'+'.join(r['kinds']):<12} {r['steps']:>5} "
            f"{r['video_samples']:>10} {r['skipped']:>7} {loss:>18} {r['max_delta']:>14.2e} "
            f"{r['seconds']:>6.1f}  " + ("ok" if r["ok"] else f"FAILED: {r['error']}")
        )
    return "\n".join(lines)


def run_check(lake: str | Path, families: Sequence[str], steps: int, out: Path,
              n_images: int = 8) -> list[dict[str, Any]]:  # fmt: skip
    """Fork ``lake`` into ``out`` and check every family in ``families``; one row each (a
    failing family gets ``ok: false`` and ``error`` naming the reason, the rest still run)."""
    chosen = prepare_lake(lake, out / "lake", n_images)
    rows = []
    for name in families:
        t0 = time.perf_counter()
        print(f"family_check: {name} ...", flush=True)
        try:
            rows.append(check_family(name, out / "lake", out, chosen, steps))
        except Exception as exc:  # one family's failure is reported, the rest still run
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"family_check: {name} failed: {reason}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            rows.append({"family": name, "ok": False, "error": reason,
                         "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (1 when a family failed)."""
    from lake.errors import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m core.family_check", description=__doc__.split("\n")[0]
    )
    p.add_argument("lake", nargs="?", default="data/lake", help="the demo lake (not written)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    p.add_argument("--steps", type=int, default=3, help="training steps per family")
    p.add_argument("--images", type=int, default=8, help="shapes_llava samples trained on")
    p.add_argument("--out", default=None, help="keep the fork, runs and merged models here")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in EXPERIMENT]
    if unknown or args.steps < 1:
        p.error(f"unknown families {unknown} (known: {', '.join(FAMILIES)})" if unknown
                else "--steps must be at least 1")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lakeloom-family-check-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        try:
            rows = run_check(args.lake, families, args.steps, out, args.images)
        except ConfigError as exc:
            print(f"family_check: {exc}", file=sys.stderr)
            return 2
        print()
        print(table(rows))
        print(json.dumps({"family_check": rows, "lake": str(args.lake), "steps": args.steps}))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
