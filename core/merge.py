"""``lakeloom merge run=ID``: a fine-tuned VLM run as one ``from_pretrained`` directory.

The run's saved config rebuilds the module (base weights from its ``source``), the
checkpoint's trained tensors are loaded over it, LoRA / DoRA adapters are merged into the
base weights (``merge_and_unload``), and the result is saved with the processor (tokenizer,
image processor, chat template). Writing goes to a temporary sibling directory that is
renamed at the end, so an interrupted merge never leaves a half-written model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from lake.errors import ConfigError
from lake.job import hydra_job
from lake.runs import BEST, LAST, RunDir

log = logging.getLogger("lakeloom.merge")


def merge(runs_dir: str | Path, run: str, checkpoint: str = "last", out: str | Path | None = None,
          dtype: str | None = None) -> Path:  # fmt: skip
    """Merge run ``run`` and return the output directory."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from core.checkpoint import load_lightning_checkpoint

    rd = RunDir.of(runs_dir, run)
    if not rd.config.is_file():
        raise ConfigError(f"no run {run!r} under {runs_dir} (missing {rd.config})")
    cfg = OmegaConf.load(rd.config)
    if "VlmModule" not in str(cfg.model.get("_target_", "")):
        raise ConfigError(f"run {run} trained {cfg.model._target_}, not a VLM: nothing to merge")
    ckpt = _checkpoint(rd, checkpoint)
    state = load_lightning_checkpoint(ckpt)
    module = instantiate(cfg.model)
    module.on_load_checkpoint(state)
    _, unexpected = module.load_state_dict(state["state_dict"], strict=False)
    if unexpected:
        raise ConfigError(f"{ckpt} holds tensors this model lacks, e.g. {unexpected[0]}")
    model = module.model
    if module.uses_peft:
        model = model.merge_and_unload()
    if dtype:
        model = model.to(getattr(torch, dtype))
    target = Path(out) if out else rd.merged
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    module.processor.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    log.info("merged %s (%s) -> %s", run, ckpt.name, target)
    return target


def _checkpoint(rd: RunDir, which: str) -> Path:
    path = rd.checkpoint(which) if which in (LAST, BEST) else Path(which)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path


@hydra_job("merge")
def main(cfg: Any) -> int:
    """Hydra entry point."""
    if not cfg.run:
        raise ConfigError("merge needs run=<run id>")
    out = merge(cfg.runs_dir, cfg.run, cfg.checkpoint, cfg.out, cfg.dtype)
    print(f"merged {cfg.run} -> {out}")
    return 0


if __name__ == "__main__":
    main()
