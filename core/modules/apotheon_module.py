"""``ApotheonModule``: train the Apotheon fusion model on lake samples with Lightning.

- Model: :class:`core.models.apotheon.ApotheonModel` from ``config`` (sizes, sources,
  loss weights). By role (:data:`core.models.apotheon.ROLES`): towers frozen or tuned
  independently (a frozen tower runs under ``no_grad``), LoRA / DoRA on the language model
  through peft, one learning rate per role, gradient checkpointing in every tower and
  the fusion stack. bf16 is the trainer's ``precision`` (``bf16-mixed`` on GPU).
- Steps log the weighted loss and each head's loss (``train/loss_caption``,
  ``train/loss_transcription``, ``train/loss_contrastive``) on the steps where the head
  had rows, with the rows each head trained on and the contrastive temperature.
- Validation / test: per-head losses, caption perplexity; greedy captions of the first
  ``eval_samples`` captioned rows and transcripts of the first ``eval_samples`` rows with
  audio and a transcript (a fixed subset: eval loaders do not shuffle) give caption exact
  match and transcription word error rate (jiwer); the
  contrastive embeddings of the whole split give image<->text recall@k. The generated
  texts go to the events log (``generations``).
- Checkpoints hold the trainable tensors only when a tower is frozen; ``export`` writes
  ``run_dir/hf`` (LoRA merged) that :meth:`ApotheonModel.from_pretrained` loads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from core.models.apotheon import (
    ROLES,
    ApotheonConfig,
    ApotheonModel,
    ApotheonRoles,
    build_processors,
)
from core.models.vlm_load import (
    format_table,
    no_grad_while_frozen,
    parameter_table,
    role_param_groups,
)
from core.modules.apotheon_collate import ApotheonCollator, select_rows
from core.modules.base import LakeloomDataModule, LakeloomModule
from core.modules.clip_metrics import retrieval_recall
from core.modules.optim import adamw_warmup_cosine
from core.modules.slim_checkpoint import TrainableOnlyCheckpoints
from core.modules.vlm_metrics import exact_match, normalize
from lake.errors import ConfigError
from lake.runs import EV_GENERATIONS, EV_PARAMS, RunDir

log = logging.getLogger(__name__)

DEFAULT_FREEZE = {"vision": False, "audio": False, "language_model": False}
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ApotheonModule(TrainableOnlyCheckpoints, LakeloomModule):
    """Train Apotheon (see the module docstring)."""

    def __init__(
        self,
        *,
        config: Mapping[str, Any] | None,
        freeze: Mapping[str, bool] | None,
        peft: Mapping[str, Any] | None,
        lr: float,
        lrs: Mapping[str, float | None] | None,
        weight_decay: float,
        betas: Sequence[float],
        warmup_steps: int,
        min_lr_ratio: float,
        max_steps: int | None,
        grad_checkpointing: bool,
        eval_samples: int,
        max_new_tokens: int,
        recall_k: Sequence[int],
        seed: int,
    ) -> None:
        """Every argument comes from ``conf/model/apotheon.yaml`` (or a file over it): the
        one place of their defaults."""
        super().__init__()
        self.save_hyperparameters()
        self.cfg = ApotheonConfig.from_dict(config)
        self.frozen = {**DEFAULT_FREEZE, **dict(freeze or {})}
        unknown = set(self.frozen) - set(ROLES)
        if unknown:
            raise ConfigError(
                f"unknown roles in freeze: {sorted(unknown)}; roles are {tuple(ROLES)}"
            )
        model = ApotheonModel(self.cfg, seed=seed)
        self.processors = build_processors(self.cfg)
        self.roles = ApotheonRoles()
        for name, p in model.named_parameters():
            role = self.roles.role_of(name) or "fusion"
            p.requires_grad_(p.requires_grad and not self.frozen.get(role, False))
        peft_cfg = {"method": "none", "r": 16, "alpha": 32, "dropout": 0.05,
                    "target_modules": list(LM_PROJECTIONS), **dict(peft or {})}  # fmt: skip
        self.uses_peft = peft_cfg["method"] != "none"
        if self.uses_peft:
            model.lm = _lora(model.lm, peft_cfg)
        if grad_checkpointing:
            for tower in (model.vision, model.audio, model.lm):
                tower.activation_checkpointing_enable({"use_reentrant": False})
            model.fusion.gradient_checkpointing = True
        for tower in (model.vision, model.audio):
            no_grad_while_frozen(tower)
        self.model = model
        self.strict_loading = False  # checkpoints may hold the trainable tensors only
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._reset_eval()

    # ---- wiring ---------------------------------------------------------------------------

    def make_collator(self, train: bool = True) -> ApotheonCollator:
        """The batch collator for this model's tokenizer and processors (picklable; the
        same for training and evaluation)."""
        p = self.processors
        return ApotheonCollator(
            p["tokenizer"], p["image_processor"], p["feature_extractor"],
            caption_prompt=self.cfg.caption_prompt,
            transcription_prompt=self.cfg.transcription_prompt,
            max_text_tokens=self.cfg.max_text_tokens, max_frames=self.cfg.fusion.max_frames,
        )  # fmt: skip

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        """Events for the run's log, queued since the last call."""
        out, self._events = self._events, []
        return out

    def setup(self, stage: str) -> None:
        """Under FSDP, :func:`ready_for_fsdp` (one dtype per FSDP unit, one kind of
        activation checkpointing)."""
        super().setup(stage)
        strategy = getattr(self._trainer, "strategy", None)
        if _is_fsdp(strategy):
            strategy_checkpoints = bool(getattr(strategy, "_activation_checkpointing_kwargs", None))
            ready_for_fsdp(self.model, strategy_checkpoints)

    def on_fit_start(self) -> None:
        rows = parameter_table(self.model, self.roles, self.roles.roles)
        if self.trainer.is_global_zero:
            log.info("trainable parameters (apotheon):\n%s", format_table(rows))
        self._events.append((EV_PARAMS, {"family": "apotheon", "rows": rows}))

    def forward(self, batch: Mapping[str, Any]) -> Any:
        """The model's output on a collated batch (:class:`ApotheonOutput`)."""
        return self.model(batch)

    # ---- steps ----------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        bs = len(batch["sample_ids"])
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        for head, value in out.losses.items():
            self.log(f"train/rows_{head}", float(out.counts[head]), batch_size=bs)
            if out.counts[head]:
                self.log(f"train/loss_{head}", value.detach(), batch_size=bs)
        scale = self.model.logit_scale.detach().clamp(max=math.log(100.0)).exp().squeeze(0)
        temperature = 1.0 / scale  # as the forward uses it (scale clamped at 100)
        self.log("train/temperature", temperature, batch_size=bs)
        if batch.get("audio_truncated"):  # audio past the encoder's window is not heard
            self.log("train/audio_truncated", float(batch["audio_truncated"]), batch_size=bs,
                     reduce_fx="sum")  # fmt: skip
        return out.loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Mapping[str, Any], prefix: str) -> None:
        out = self(batch)
        bs = len(batch["sample_ids"])
        self.log(f"{prefix}/loss", out.loss, batch_size=bs, sync_dist=True)
        ev = self._eval
        for head in ("caption", "transcription"):
            if out.counts[head]:
                n = out.tokens[head]
                ev[f"{head}_nll"] += float(out.losses[head]) * n
                ev[f"{head}_tokens"] += n
        if out.counts["contrastive"]:
            ev["contrastive_loss"] += float(out.losses["contrastive"]) * out.counts["contrastive"]
            ev["contrastive_rows"] += out.counts["contrastive"]
        pairs = (batch["has_caption"].bool() & _rows_with_vision(batch)).cpu()
        if pairs.any():
            keep = pairs.to(self.device)
            captions = [c for c, p in zip(batch["captions"], pairs, strict=True) if p]
            self._embeds.append(
                (
                    out.image_embeds[keep].float().cpu(),
                    out.text_embeds[keep].float().cpu(),
                    captions,
                )
            )
        self._generate(batch)

    def _generate(self, batch: Mapping[str, Any]) -> None:
        """Greedy captions and transcripts of the fixed subset: the first ``eval_samples``
        rows of the split that have a caption (with media), and as many with a transcript
        (with audio)."""
        tok = self.processors["tokenizer"]
        has_vision = _rows_with_vision(batch).cpu()
        has_audio = torch.zeros_like(has_vision)
        has_audio[batch["audio_index"].cpu()] = True
        # several ranks (sharded or not) must run the same forwards: every batch, both
        # heads, a fixed number of steps (a placeholder row where none is wanted)
        lockstep = self._world_size() > 1
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        kw = {"max_new_tokens": self.hparams.max_new_tokens, "bos_id": start,
              "eos_id": tok.eos_token_id, "stop_early": not lockstep}  # fmt: skip
        wanted = {
            "caption": [i for i, c in enumerate(batch["captions"])
                        if c and (has_vision[i] or has_audio[i])],
            "transcription": [i for i, t in enumerate(batch["transcripts"]) if t and has_audio[i]],
        }  # fmt: skip
        for head, rows in wanted.items():
            rows = rows[: max(0, self.hparams.eval_samples - self._generated[head])]
            if not rows and not lockstep:
                continue
            self._generated[head] += len(rows)
            refs = batch["captions" if head == "caption" else "transcripts"]
            texts = self.model.generate(select_rows(batch, rows or [0]), head, **kw)
            texts = texts[: len(rows)]
            for i, ids in zip(rows, texts, strict=True):
                pred = tok.decode(ids, skip_special_tokens=True).strip()
                row = {"sample_id": batch["sample_ids"][i], "head": head, "prediction": pred,
                       "reference": refs[i]}  # fmt: skip
                if head == "caption":
                    row["exact_match"] = exact_match(pred, refs[i])
                else:
                    row["wer"] = word_error_rate(pred, refs[i])
                self._gen.append(row)

    def _reset_eval(self) -> None:
        self._eval: dict[str, float] = {
            k: 0.0 for k in ("caption_nll", "caption_tokens", "transcription_nll",
                             "transcription_tokens", "contrastive_loss", "contrastive_rows")
        }  # fmt: skip
        self._embeds: list[tuple[torch.Tensor, torch.Tensor, list[str]]] = []
        self._gen: list[dict[str, Any]] = []
        self._generated = {"caption": 0, "transcription": 0}

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _world_size(self) -> int:
        trainer = self._trainer
        return int(trainer.world_size) if trainer is not None else 1

    def _gathered(self) -> tuple[dict[str, float], list[Any], list[dict[str, Any]]]:
        """This epoch's sums, embeddings and generations from every rank."""
        if self._world_size() == 1:
            return self._eval, self._embeds, self._gen
        import torch.distributed as dist

        parts: list[Any] = [None] * self._world_size()
        dist.all_gather_object(parts, (self._eval, self._embeds, self._gen))
        sums = {k: sum(p[0][k] for p in parts) for k in self._eval}
        return sums, [e for p in parts for e in p[1]], [g for p in parts for g in p[2]]

    def _eval_epoch_end(self, prefix: str) -> None:
        sums, embeds, gens = self._gathered()
        self._gen = gens
        metrics = evaluation_metrics(sums, embeds, gens, self.hparams.recall_k)
        for key, value in metrics.items():
            self.log(f"{prefix}/{key}", value)  # the same on every rank (gathered)
        if self._gen:
            self._events.append((EV_GENERATIONS, {"split": prefix, "step": self.global_step,
                                                 "samples": list(self._gen)}))  # fmt: skip

    # ---- optimiser ------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = role_param_groups(self.model, self.roles, dict(h.lrs or {}), h.lr, h.weight_decay)
        if not groups:
            raise ConfigError("nothing to train: every role is frozen")
        return adamw_warmup_cosine(groups, h, self._estimated_steps)

    def _estimated_steps(self) -> float:
        """Optimizer steps of the whole fit: from the data module's curriculum when it
        has one (stages differ in size), else Lightning's estimate."""
        dm = self.trainer.datamodule
        if isinstance(dm, LakeloomDataModule):
            return dm.estimated_stepping_batches(self.trainer)
        return self.trainer.estimated_stepping_batches

    # ---- export ---------------------------------------------------------------------------

    def export(self, run_dir: str | Path) -> Path | None:
        """``run_dir/hf``: the whole model (LoRA merged into the LM) with its processors,
        loadable with :meth:`ApotheonModel.from_pretrained`. LoRA is merged in place (a
        copy of an 8B model would double its memory): call it when training is done."""
        if _is_fsdp(getattr(self._trainer, "strategy", None)):
            log.warning(
                "export skipped: the model is sharded by FSDP (rank zero alone cannot "
                "gather it); the run's checkpoints hold it"
            )
            return None
        if self.uses_peft:
            self.model.lm = self.model.lm.merge_and_unload()
            self.uses_peft = False
        return self.model.save_pretrained(RunDir(run_dir).hf, self.processors)


def ready_for_fsdp(model: ApotheonModel, strategy_checkpoints: bool) -> None:
    """Prepare a model for FSDP: FSDP flattens each unit's parameters into one tensor of
    one dtype, so a bfloat16 language model (``language.dtype``, with float32 LoRA
    factors) beside float32 towers is cast to float32, the strategy's mixed precision
    computing in bf16; when the strategy checkpoints the blocks, the model's own
    activation checkpointing is turned off (never both)."""
    lm_dtype = model._dtype(model.lm)
    if any(p.dtype != torch.float32 for p in model.lm.parameters() if p.is_floating_point()):
        log.info("FSDP: language model %s -> float32 (bf16 compute by the strategy)", lm_dtype)
        model.lm.float()
    if strategy_checkpoints:
        for tower in (model.vision, model.audio, model.lm):
            if getattr(tower, "is_activation_checkpointing", False):
                tower.activation_checkpointing_disable()
        model.fusion.gradient_checkpointing = False


def _is_fsdp(strategy: Any) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(strategy, FSDPStrategy)


def _lora(lm: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.nn.Module:
    """LoRA / DoRA adapters on the language model's projections (peft)."""
    from peft import LoraConfig, get_peft_model

    if cfg["method"] not in ("lora", "dora"):
        raise ConfigError(f"peft.method must be none, lora or dora, not {cfg['method']!r}")
    config = LoraConfig(
        r=int(cfg["r"]), lora_alpha=int(cfg["alpha"]), lora_dropout=float(cfg["dropout"]),
        target_modules=list(cfg["target_modules"]), use_dora=cfg["method"] == "dora",
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(lm, config)


def _rows_with_vision(batch: Mapping[str, Any]) -> torch.Tensor:
    rows = torch.zeros(
        len(batch["sample_ids"]), dtype=torch.bool, device=batch["frame_index"].device
    )
    rows[batch["frame_index"][:, 0]] = True
    return rows


def word_error_rate(prediction: str, reference: str) -> float:
    """WER (jiwer) after lowercasing and stripping punctuation; 1.0 for an empty output."""
    import jiwer

    ref, pred = normalize(reference), normalize(prediction)
    if not ref:
        return 0.0 if not pred else 1.0
    return float(jiwer.wer(ref, pred)) if pred else 1.0


def evaluation_metrics(
    sums: Mapping[str, float],
    embeds: list[tuple[torch.Tensor, torch.Tensor, list[str]]],
    generations: list[Mapping[str, Any]],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Caption / transcription perplexity, contrastive loss, recall@k (pairs sharing a
    caption count as one answer), caption exact match and transcription WER."""
    out: dict[str, float] = {}
    for head in ("caption", "transcription"):
        if sums[f"{head}_tokens"]:
            nll = sums[f"{head}_nll"] / sums[f"{head}_tokens"]
            out[f"loss_{head}"] = nll
            out[f"{head}_ppl"] = float(torch.exp(torch.tensor(nll)))
    if sums["contrastive_rows"]:
        out["loss_contrastive"] = sums["contrastive_loss"] / sums["contrastive_rows"]
    if embeds:
        images = torch.cat([e[0] for e in embeds])
        texts = torch.cat([e[1] for e in embeds])
        captions = [c for e in embeds for c in e[2]]
        ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        groups = torch.tensor([ids[c] for c in captions])
        for key, value in retrieval_recall(images, texts, tuple(ks), groups).items():
            out[f"recall_{key}"] = value
    caps = [g["exact_match"] for g in generations if g["head"] == "caption"]
    if caps:
        out["caption_exact_match"] = sum(caps) / len(caps)
    wers = [g["wer"] for g in generations if g["head"] == "transcription"]
    if wers:
        out["transcription_wer"] = sum(wers) / len(wers)
    return out
