"""``ClipModule``: contrastive training of an open_clip model on lake samples.

- Loss: symmetric InfoNCE with open_clip's learnable temperature (``logit_scale``, the log
  of the factor), clamped at a factor of 100 after every step. The loss is per rank (no
  cross-rank feature gather), which keeps it correct with the ragged batches the collator
  makes when it drops image-less samples.
- Optimiser: AdamW, no weight decay on biases, norms, position embeddings and the
  temperature; linear warmup then cosine decay, stepped per optimiser step.
- LiT: ``lock_image`` / ``lock_text`` freeze a tower, leaving the last
  ``lock_image_unlocked_groups`` / ``lock_text_unlocked_layers`` trainable.
- Locked-text tuning (a fully frozen Hugging Face text tower, e.g. all-MiniLM-L6-v2 in
  ``tiny-clip-minilm``): the tower runs in eval mode (no dropout: the same caption always
  gives the same embedding) and training looks the text features up per unique token
  sequence (``text_cache_size`` entries at most, kept on the CPU), so each distinct
  caption goes through the text tower once per run.
- Validation (and test, with the ``test/`` prefix) gathers every embedding of the loader
  and reports loss, image→text and text→image recall@k, zero-shot accuracy over the label
  names and the temperature. With ``trainer.num_sanity_val_steps=-1`` the sanity check is
  a full validation before the first step; its figures go to the loggers at step 0, so a
  fine-tune that collapses shows as recall falling from its step-0 value.
- ``export(run_dir)`` writes ``run_dir/open_clip/`` in open_clip's local-dir layout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch.optim.lr_scheduler import LambdaLR

from core.models.clip import create_clip, model_config, save_open_clip
from core.modules.base import LakeloomModule
from core.modules.clip_collate import ClipCollator
from core.modules.clip_metrics import clip_loss, retrieval_recall, zero_shot_accuracy
from core.modules.optim import WarmupCosine, decay_groups
from lake.errors import ConfigError
from lake.runs import RunDir

log = logging.getLogger(__name__)


class ClipModule(LakeloomModule):
    """Train (fine-tune, LiT, or from scratch) any open_clip architecture."""

    #: a contrastive loss needs negatives: the data module merges a smaller last train
    #: batch of an epoch into the batch before it (``ShardedBatchSampler(min_batch=)``)
    min_batch = 2

    def __init__(
        self,
        *,
        arch: str,
        pretrained: str | None,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        warmup_steps: int,
        max_steps: int | None,
        min_lr_ratio: float,
        lock_image: bool,
        lock_image_unlocked_groups: int,
        lock_image_freeze_bn_stats: bool,
        lock_text: bool,
        lock_text_unlocked_layers: int,
        grad_checkpointing: bool,
        init_logit_scale: float | None,
        max_logit_scale: float,
        prompt_template: str,
        recall_ks: tuple[int, ...] | list[int],
        fused_adamw: bool | None,
        drop_high_loss_frac: float,
        drop_high_loss_after_epochs: int,
        text_cache_size: int,
    ) -> None:
        """Every argument comes from ``conf/model/clip_tiny.yaml`` (the one place of their
        defaults); ``max_steps=None`` takes the schedule length from the trainer;
        ``init_logit_scale`` (log of the factor, open_clip default ln(1/0.07)) overrides
        the built or loaded temperature when given; ``fused_adamw=None`` uses torch's fused
        AdamW on CPU and CUDA (8× faster than the default on a 2-core CPU for tiny-clip);
        ``text_cache_size`` bounds the per-caption text feature cache of a frozen HF text
        tower (0: no cache)."""
        super().__init__()
        self.save_hyperparameters()
        self.model, self.preprocess_train, self.preprocess_val, self.tokenizer = create_clip(
            arch, pretrained
        )
        if init_logit_scale is not None:
            with torch.no_grad():
                self.model.logit_scale.fill_(init_logit_scale)
        if lock_image:
            self.model.lock_image_tower(
                unlocked_groups=lock_image_unlocked_groups,
                freeze_bn_stats=lock_image_freeze_bn_stats,
            )
        if lock_text:
            self.model.lock_text_tower(unlocked_layers=lock_text_unlocked_layers)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self._text_cache: dict[bytes, torch.Tensor] = {}
        self.text_frozen = _frozen_hf_text(self.model)
        if self.text_frozen:
            self.model.text.eval()
        self.recall_ks = tuple(int(k) for k in recall_ks)
        self.label_names: list[str] | None = None
        self.sanity_metrics: dict[str, float] = {}
        self._eval: dict[str, list[Any]] = {}

    # ---- data -------------------------------------------------------------------------

    def set_label_names(self, names: list[str] | None) -> None:
        """Class names for zero-shot accuracy, from the data module (``None`` or empty: use
        the labels validation sees)."""
        self.label_names = list(names) if names else None

    def make_collator(self, train: bool = True) -> ClipCollator:
        """A picklable collator with the train (augmenting) or val transform."""
        preprocess = self.preprocess_train if train else self.preprocess_val
        return ClipCollator(preprocess, self.tokenizer, self.hparams.prompt_template)

    # ---- training ---------------------------------------------------------------------

    def train(self, mode: bool = True) -> ClipModule:
        """Train mode, except a frozen HF text tower, which stays in eval mode."""
        super().train(mode)
        if mode and self.text_frozen:
            self.model.text.eval()
        return self

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised image and text features and the temperature factor."""
        if not (self.text_frozen and self.hparams.text_cache_size > 0):
            return self.model(images, texts)
        out = {
            "image_features": self.model.encode_image(images, normalize=True),
            "text_features": self.cached_text_features(texts),
            "logit_scale": self.model.logit_scale.exp(),
        }
        if getattr(self.model, "logit_bias", None) is not None:
            out["logit_bias"] = self.model.logit_bias
        return out

    @torch.no_grad()
    def cached_text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised features of a frozen text tower, computed once per token sequence."""
        keys = [row.numpy().tobytes() for row in tokens.cpu()]
        todo = {k: i for i, k in enumerate(keys) if k not in self._text_cache}
        fresh: dict[bytes, torch.Tensor] = {}
        if todo:
            rows = tokens[list(todo.values())]
            feats = self.model.encode_text(rows, normalize=True).float().cpu()
            fresh = dict(zip(todo, feats, strict=True))
            room = self.hparams.text_cache_size - len(self._text_cache)
            for key in list(fresh)[: max(room, 0)]:
                self._text_cache[key] = fresh[key]
        feats = [self._text_cache.get(k, fresh.get(k)) for k in keys]
        return torch.stack(feats).to(self.device)

    def _loss(
        self, batch: dict[str, Any], drop_frac: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(batch["images"], batch["texts"])
        scale = out["logit_scale"].clamp(max=self.hparams.max_logit_scale)
        loss = clip_loss(out["image_features"], out["text_features"], scale, drop_frac)
        return loss, out

    def _drop_frac(self) -> float:
        """Share of highest-loss pairs left out of this training batch's loss."""
        hp = self.hparams
        return (
            hp.drop_high_loss_frac if self.current_epoch >= hp.drop_high_loss_after_epochs else 0.0
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        n = batch["images"].shape[0]
        if n < self.min_batch:  # only when the collator dropped undecodable samples
            return None
        loss, out = self._loss(batch, self._drop_frac())
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", out["logit_scale"].detach(), batch_size=n)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # as open_clip: the factor stays within [1, max_logit_scale]
            self.model.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = decay_groups(self.model, hp.weight_decay)
        if not groups:
            raise ConfigError("every CLIP parameter is frozen: unlock a tower to train")
        fused = hp.fused_adamw
        if fused is None:
            fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.AdamW(
            groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused
        )
        total = hp.max_steps or self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError(
                "set model.max_steps or trainer.max_steps/max_epochs for the LR schedule"
            )
        schedule = WarmupCosine(hp.warmup_steps, int(total), hp.min_lr_ratio)
        scheduler = LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ---- evaluation -------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def _reset_eval(self) -> None:
        self._eval = {"image": [], "text": [], "tokens": [], "labels": [], "loss": [], "n": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def _eval_step(self, batch: dict[str, Any]) -> None:
        n = batch["images"].shape[0]
        if n == 0:
            return
        loss, out = self._loss(batch)
        self._eval["image"].append(out["image_features"].float().cpu())
        self._eval["text"].append(out["text_features"].float().cpu())
        self._eval["tokens"].append(batch["texts"].cpu())
        self._eval["labels"].extend(batch["labels"])
        self._eval["loss"].append(loss.item() * n)
        self._eval["n"].append(n)

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_metrics("val")
        if self.trainer.sanity_checking:
            # self.log is muted during the sanity check; a full one is the step-0 validation
            if metrics and math.isinf(self.trainer.num_sanity_val_steps):
                self.sanity_metrics = metrics
                log.info("validation before training: %s", metrics)
                for logger in self.loggers:
                    logger.log_metrics(metrics, step=self.global_step)
            return
        self.log_dict(metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._eval_metrics("test"))

    def _gathered(self) -> dict[str, Any]:
        """This rank's evaluation data, joined with every other rank's under DDP."""
        local = {
            "image": torch.cat(self._eval["image"]) if self._eval["image"] else None,
            "text": torch.cat(self._eval["text"]) if self._eval["text"] else None,
            "tokens": self._eval["tokens"],
            "labels": self._eval["labels"],
            "loss": sum(self._eval["loss"]),
            "n": sum(self._eval["n"]),
        }
        if self.trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return local
        parts: list[dict[str, Any]] = [{} for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather_object(parts, local)
        keep = [p for p in parts if p["n"]]
        return {
            "image": torch.cat([p["image"] for p in keep]) if keep else None,
            "text": torch.cat([p["text"] for p in keep]) if keep else None,
            "tokens": [t for p in keep for t in p["tokens"]],
            "labels": [x for p in keep for x in p["labels"]],
            "loss": sum(p["loss"] for p in parts),
            "n": sum(p["n"] for p in parts),
        }

    def _eval_metrics(self, prefix: str) -> dict[str, float]:
        data = self._gathered()
        if not data["n"]:
            return {}
        metrics = {"loss": data["loss"] / data["n"]}
        groups = _text_groups(data["tokens"])
        metrics |= retrieval_recall(data["image"], data["text"], self.recall_ks, groups)
        accuracy = self._zero_shot(data["image"], data["labels"])
        if accuracy is not None:
            metrics["zeroshot_acc"] = accuracy
        metrics["logit_scale"] = self.model.logit_scale.exp().item()
        return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}

    @torch.no_grad()
    def _zero_shot(self, image: torch.Tensor, labels: list[str | None]) -> float | None:
        names = self.label_names or sorted({x for x in labels if x})
        if not names:
            return None
        index = {name: i for i, name in enumerate(names)}
        rows = [i for i, x in enumerate(labels) if x in index]
        if not rows:
            return None
        classes = self.class_embeddings(names)
        targets = torch.tensor([index[labels[i]] for i in rows])
        return zero_shot_accuracy(image[rows], classes.cpu(), targets)

    @torch.no_grad()
    def class_embeddings(self, names: list[str], batch_size: int = 256) -> torch.Tensor:
        """Normalised text embeddings of the prompt template filled with each name."""
        prompts = [self.hparams.prompt_template.format(name) for name in names]
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.tokenizer(prompts[start : start + batch_size]).to(self.device)
            chunks.append(self.model.encode_text(tokens, normalize=True).float())
        return torch.cat(chunks)

    # ---- export -----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Embed the open_clip config so ``create_clip(arch, "x.ckpt")`` rebuilds it."""
        checkpoint["open_clip"] = {
            "model_cfg": model_config(self.model),
            "preprocess_cfg": dict(open_clip.get_model_preprocess_cfg(self.model)),
        }

    def export_open_clip(self, out_dir: str | Path) -> Path:
        """Write the model in open_clip's local-dir layout to ``out_dir``."""
        return save_open_clip(self.model, None, out_dir, tokenizer=self.tokenizer)

    def export(self, run_dir: str | Path) -> Path:
        """Called by ``core.train`` at the end of a run: writes ``run_dir/open_clip/``."""
        return self.export_open_clip(RunDir(run_dir).open_clip)


def _frozen_hf_text(model: torch.nn.Module) -> bool:
    """True for a Hugging Face text tower (open_clip ``CustomTextCLIP.text``) with no
    trainable parameter: its features depend on the caption only."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    return isinstance(text, HFTextEncoder) and not any(p.requires_grad for p in text.parameters())


def _text_groups(token_batches: list[torch.Tensor]) -> torch.Tensor:
    """One id per caption, equal for identical token sequences (retrieval positives)."""
    width = max(t.shape[1] for t in token_batches)
    tokens = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in token_batches])
    return torch.unique(tokens, dim=0, return_inverse=True)[1]
