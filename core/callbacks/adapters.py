"""Save PEFT adapters beside the run's checkpoints, in PEFT's own format.

``checkpoints/adapter-step-NNNNNNN/`` every ``every_n_steps`` optimizer steps (0: off),
keeping the newest ``keep``, and ``checkpoints/adapter-last/`` when training ends. Each
holds ``adapter_config.json`` + ``adapter_model.safetensors`` and the processor, so
``PeftModel.from_pretrained(base, dir)`` (or ``lakeloom merge``) can use it directly.
"""

from __future__ import annotations

import shutil

import lightning as L

from lake.runs import RunDir


class AdapterCheckpoint(L.Callback):
    """Write the module's adapter periodically and at the end of fit (rank zero only)."""

    def __init__(self, every_n_steps: int = 0, keep: int = 3) -> None:
        self.every_n_steps = int(every_n_steps)
        self.keep = int(keep)

    def _run(self, trainer: L.Trainer) -> RunDir:
        return RunDir(trainer.default_root_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps:
            return
        if trainer.is_global_zero:
            run = self._run(trainer)
            out = run.adapter_dir(step)
            if not out.exists():
                pl_module.save_adapter(out)
            old = run.adapter_dirs()[: -self.keep or None]
            for path in old if self.keep else []:
                shutil.rmtree(path, ignore_errors=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            out = self._run(trainer).adapter_last
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            pl_module.save_adapter(tmp)  # type: ignore[attr-defined]
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
