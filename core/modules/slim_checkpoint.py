"""Checkpoints that keep only the trainable tensors of a partly frozen model."""

from __future__ import annotations

from typing import Any

from lake.errors import ConfigError


class TrainableOnlyCheckpoints:
    """LightningModule mixin: when part of ``self.model`` is frozen, checkpoints hold only
    its trainable tensors (the frozen ones are rebuilt from the model's source), and
    loading checks that every trainable tensor is there. Set ``strict_loading = False``."""

    model: Any

    def _trainable_keys(self) -> set[str]:
        """Trainable tensor names as checkpoints spell them (FSDP's wrapper prefixes
        removed). Under FSDP with sharded checkpoints every tensor counts: Lightning's
        sharded loader expects them all."""
        from torch.distributed.fsdp._common_utils import clean_tensor_name

        trainer = getattr(self, "_trainer", None)
        strategy = getattr(trainer, "strategy", None)
        sharded = getattr(strategy, "_state_dict_type", None) == "sharded"
        return {
            f"model.{clean_tensor_name(n)}"
            for n, p in self.model.named_parameters()
            if p.requires_grad or sharded
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable tensors (frozen ones are rebuilt from ``source``)."""
        trainable = self._trainable_keys()
        if len(trainable) < sum(1 for _ in self.model.parameters()):  # some frozen
            sd = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in sd.items() if k in trainable}
            checkpoint["lakeloom_trainable_only"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that a slim checkpoint covers every trainable tensor of this model."""
        if not checkpoint.get("lakeloom_trainable_only"):
            return
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ConfigError(
                f"checkpoint lacks {len(missing)} trainable tensors (e.g. {sorted(missing)[0]}):"
                " was it made with another freeze / peft configuration?"
            )
