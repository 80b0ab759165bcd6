"""``VlmModule``: supervised and preference fine-tuning of LLaVA / Qwen2-VL on lake samples.

- Model: :func:`core.models.vlm_load.load_vlm` (tiny, local directory or hub id; 4-bit
  for QLoRA), then by config: roles frozen, LoRA / DoRA on the language model (trained
  non-LM roles become ``modules_to_save``), non-reentrant gradient checkpointing. The
  trainable-parameter table is printed at start and written to the events log.
- Data: :class:`core.modules.vlm_collate.VlmCollator` renders each batch in the loader.
- Loss: mean cross-entropy over the supervised tokens of the batch (computed here from the
  logits, so packed and unpacked batches give the same value). ``objective=dpo``: the DPO
  loss against the frozen base (the adapter disabled under LoRA, a frozen copy otherwise);
  ``objective=orpo``: NLL of the chosen answer plus ``orpo_lambda`` x the odds-ratio term,
  no reference model; ``objective=kto``: TRL's KTO loss on feedback data (samples with
  ``feedback`` true / false), against the same frozen reference, with TRL's batch KL
  estimate (:meth:`VlmModule.kto_loss`). SFT trains a preference sample on its ``chosen``
  answer and never on a ``feedback = false`` one (see ``core.modules.vlm_collate``).
- Every step runs the vision tower: a batch without images feeds it a blank image and adds
  0 x its output to the loss, so DDP / FSDP ranks never diverge on mixed batches.
- Validation: loss and perplexity, and ``generate`` on the first ``generate_samples``
  validation samples with exact match / token F1 against the reference answers; the texts
  go to the run's events (``generations``).
- ``init_from`` starts from the trained tensors of an earlier run (LLaVA: the ``align``
  run's projector for ``instruct``).
- Checkpoints keep only trainable tensors when part of the model is frozen (the rest is
  rebuilt from ``source``); ``export(run_dir)`` writes ``run_dir/hf/`` (adapter or full
  weights + processor) and PEFT adapters are saved beside the checkpoints.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image

from core.models.vlm_families import family as vlm_family
from core.models.vlm_load import (
    apply_peft,
    format_table,
    freeze_roles,
    load_trained_tensors,
    load_vlm,
    no_grad_when_frozen,
    parameter_table,
    role_param_groups,
    save_processor,
    vision_from_of,
)
from core.modules.base import LakeloomModule
from core.modules.optim import adamw_warmup_cosine
from core.modules.slim_checkpoint import TrainableOnlyCheckpoints
from core.modules.vlm_collate import IGNORE, VlmCollator
from core.modules.vlm_metrics import exact_match, token_f1
from lake.errors import ConfigError
from lake.runs import EV_GENERATIONS, EV_PARAMS, EV_SKIPPED, RunDir

log = logging.getLogger(__name__)

MODEL_INPUTS = (
    "pixel_values", "image_grid_thw", "mm_token_type_ids", "pixel_values_videos",
    "video_grid_thw", "second_per_grid_ts", "pixel_attention_mask",
)  # fmt: skip
DEFAULT_FREEZE = {"vision": True, "projector": False, "language_model": False}


class VlmModule(TrainableOnlyCheckpoints, LakeloomModule):
    """Fine-tune a vision-language model (see the module docstring)."""

    def __init__(
        self,
        *,
        family: str,
        source: str,
        language_source: str | None,
        vision_from: str | None,
        tiny: Mapping[str, Any] | None,
        revision: str | None,
        trust_remote_code: bool,
        dtype: str | None,
        quantization: str | None,
        allow_cpu_quantization: bool,
        attn_implementation: str | None,
        freeze: Mapping[str, bool] | None,
        peft: Mapping[str, Any] | None,
        lr: float,
        lrs: Mapping[str, float | None] | None,
        weight_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        min_lr_ratio: float,
        max_steps: int | None,
        grad_checkpointing: bool,
        objective: str,
        beta: float,
        orpo_lambda: float,
        desirable_weight: float,
        undesirable_weight: float,
        max_length: int,
        overlong: str,
        pack: bool,
        min_pixels: int | None,
        max_pixels: int | None,
        dataset_pixels: Mapping[str, Mapping[str, int | None]] | None,
        caption_prompt: str,
        on_error: str,
        video: Mapping[str, Any] | None,
        generate_samples: int,
        max_new_tokens: int,
        adapter_every_n_steps: int,
        init_from: str | None,
        seed: int,
    ) -> None:
        """Every argument comes from ``conf/model/vlm.yaml`` and a family file over it (the
        one place of their defaults)."""
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("sft", "dpo", "orpo", "kto"):
            raise ConfigError(f"objective must be sft, dpo, orpo or kto, not {objective!r}")
        self.frozen = {**DEFAULT_FREEZE, **dict(freeze or {})}
        peft_cfg = {"method": "none", "r": 16, "alpha": 32, "dropout": 0.05, **dict(peft or {})}
        if quantization and peft_cfg["method"] == "none":
            raise ConfigError("a quantized model trains only through adapters: set peft.method")
        refusal = vlm_family(family).pack_refusal
        if pack and refusal:
            raise ConfigError(f"model.pack=true is refused for family {family!r}: {refusal}; "
                              "set model.pack=false (rows are padded)")  # fmt: skip
        if init_from and not vision_from:
            # a frozen tower is not in the earlier run's checkpoint: rebuild it as it was
            vision_from = vision_from_of(init_from)
        model, self.processor, self.spec = load_vlm(
            family, source, tiny, seed, dtype, trust_remote_code, revision,
            quantization, allow_cpu_quantization, attn_implementation, language_source,
            vision_from,
        )  # fmt: skip
        if init_from:
            load_trained_tensors(model, init_from)
        if grad_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.config.use_cache = False
        if quantization:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, grad_checkpointing, {"use_reentrant": False}
            )
        self.uses_peft = peft_cfg["method"] != "none"
        freeze_roles(model, self.spec, self.frozen)
        if self.uses_peft:
            model = apply_peft(
                model,
                self.spec,
                peft_cfg["method"],
                int(peft_cfg["r"]),
                int(peft_cfg["alpha"]),
                float(peft_cfg["dropout"]),
                self.frozen,
            )
        self.model = model
        no_grad_when_frozen(self.model, self.spec, "vision")
        # a full fine-tune's DPO / KTO reference: a frozen copy, kept out of the state dict
        self._reference: list[torch.nn.Module] = []
        if objective in ("dpo", "kto") and not self.uses_peft:
            ref = copy.deepcopy(model).eval()
            ref.requires_grad_(False)
            self._reference.append(ref)
        self.strict_loading = False  # checkpoints hold the trainable tensors only
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._gen: list[dict[str, Any]] = []
        self._val: dict[str, float] = {}
        self._dummy: dict[str, torch.Tensor] | None = None

    # ---- wiring ---------------------------------------------------------------------------

    def make_collator(self, train: bool = True) -> VlmCollator:
        """A picklable collator; the eval one also builds generation prompts."""
        h = self.hparams
        return VlmCollator(
            self.processor,
            self.spec.never_supervised,
            self.spec.image_token,
            max_length=h.max_length,
            overlong=h.overlong,
            pack=h.pack and train,
            min_pixels=h.min_pixels,
            max_pixels=h.max_pixels,
            dataset_pixels=h.dataset_pixels,
            caption_prompt=h.caption_prompt,
            objective={"orpo": "dpo"}.get(h.objective, h.objective),
            with_prompts=not train and h.generate_samples > 0 and h.objective == "sft",
            on_error=h.on_error,
            video_token=self.spec.video_token,
            video=h.video,
            family=self.spec.name,
            media_tokens=self.spec.media_tokens,
        )

    def pop_events(self) -> list[tuple[str, dict[str, Any]]]:
        """Events for the run's log, queued since the last call."""
        out, self._events = self._events, []
        return out

    def configure_callbacks(self) -> list[L.Callback]:
        """PEFT adapters saved beside the checkpoints (``checkpoints/adapter-*``)."""
        if not self.uses_peft:
            return []
        from core.callbacks.adapters import AdapterCheckpoint

        return [AdapterCheckpoint(self.hparams.adapter_every_n_steps)]

    def on_fit_start(self) -> None:
        rows = parameter_table(self.model, self.spec)
        if self.trainer.is_global_zero:
            log.info("trainable parameters (%s):\n%s", self.spec.name, format_table(rows))
        self._events.append((EV_PARAMS, {"family": self.spec.name, "rows": rows}))

    # ---- forward --------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any], model: torch.nn.Module | None = None) -> Any:
        """Logits of a collated batch (packed batches get per-sample positions)."""
        model = model or self.model
        kwargs: dict[str, Any] = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        kwargs["input_ids"] = batch["input_ids"]
        kwargs["attention_mask"] = batch.get("attention_mask")
        if batch.get("packed"):
            kwargs["position_ids"] = self.packed_positions(batch)
        return model(**kwargs, use_cache=False).logits

    def packed_positions(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Position ids of a packed batch: 1-D restarting per sample, or for M-RoPE models
        the text positions stacked on the per-sample 3-D positions (4 x B x L)."""
        pos = batch["position_ids"]
        if not self.spec.mrope:
            return pos
        inner = _unwrap(self.model)
        rope = torch.zeros((3, *pos.shape), dtype=pos.dtype, device=pos.device)
        grids, vgrids = batch.get("image_grid_thw"), batch.get("video_grid_thw")
        seconds = batch.get("second_per_grid_ts")  # Qwen2.5-VL: time per video grid step
        n_images = iter(batch["n_images"])
        n_videos = iter(batch.get("n_videos") or [0] * len(batch["n_images"]))
        g = gv = 0
        for row, lens in enumerate(batch["seq_lens"]):
            at = 0
            for k in lens:
                n, nv = next(n_images), next(n_videos)
                seg = batch["input_ids"][row, at : at + k]
                mm = batch["mm_token_type_ids"][row, at : at + k]
                grid = grids[g : g + n] if n else None
                vgrid = vgrids[gv : gv + nv] if nv else None
                extra = {}
                if nv and seconds is not None:
                    extra["second_per_grid_ts"] = seconds[gv : gv + nv]
                p, _ = inner.model.get_rope_index(
                    input_ids=seg[None], mm_token_type_ids=mm[None], image_grid_thw=grid,
                    video_grid_thw=vgrid, **extra,
                )  # fmt: skip
                rope[:, row, at : at + k] = p[:, 0]
                at += k
                g += n
                gv += nv
            width = pos.shape[1]
            if at < width:
                rope[:, row, at:] = torch.arange(width - at, device=pos.device)
        return torch.cat([pos[None], rope], dim=0)

    def vision_dummy(self) -> torch.Tensor:
        """0 x the vision tower's output on a blank image (keeps every rank in step)."""
        if self._dummy is None:
            ip = self.processor.image_processor
            enc = ip(images=[Image.new("RGB", (56, 56))], return_tensors="pt")
            self._dummy = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor)}
        inputs = {k: v.to(self.device) for k, v in self._dummy.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._vision_dtype())
        out = _unwrap(self.model).model.get_image_features(**inputs)
        return 0.0 * _sum_tensors(out)

    def _vision_dtype(self) -> torch.dtype:
        for name, p in self.model.named_parameters():
            if self.spec.role_of(name) == "vision" and p.is_floating_point():
                return p.dtype
        return torch.float32

    # ---- losses ---------------------------------------------------------------------------

    @staticmethod
    def token_logps(
        logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of the labels (shifted) and the label mask."""
        from trl.trainer.utils import selective_log_softmax

        tgt = labels[:, 1:]
        mask = tgt != IGNORE
        logps = selective_log_softmax(logits[:, :-1].float(), tgt.clamp(min=0))
        return logps * mask, mask

    def sft_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        """Mean NLL over the batch's supervised tokens, and their count."""
        logits = self(batch)
        tgt = batch["labels"][:, 1:]
        n = int((tgt != IGNORE).sum())
        ce = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            tgt.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return ce / max(1, n), n

    def preference_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """DPO or ORPO loss of a chosen-then-rejected batch, with its metrics."""
        n = int(batch["n_pairs"])
        logps, mask = self.token_logps(self(batch), batch["labels"])
        seq = logps.sum(-1)
        chosen, rejected = seq[:n], seq[n:]
        if self.hparams.objective == "orpo":
            count = mask.sum(-1).clamp(min=1)
            mean = seq / count
            log_odds = (mean[:n] - torch.log1p(-torch.exp(mean[:n]).clamp(max=1 - 1e-6))) - (
                mean[n:] - torch.log1p(-torch.exp(mean[n:]).clamp(max=1 - 1e-6))
            )
            nll = -(seq[:n].sum() / count[:n].sum())
            ratio = -F.logsigmoid(log_odds).mean()
            loss = nll + self.hparams.orpo_lambda * ratio
            return loss, {"nll": nll.detach(), "log_odds": log_odds.mean().detach(),
                          "accuracy": (log_odds > 0).float().mean()}  # fmt: skip
        with torch.no_grad():
            ref = self.reference_logps(batch)
        beta = self.hparams.beta
        margin = (chosen - ref[:n]) - (rejected - ref[n:])
        loss = -F.logsigmoid(beta * margin).mean()
        return loss, {
            "reward_chosen": (beta * (chosen - ref[:n])).mean().detach(),
            "reward_rejected": (beta * (rejected - ref[n:])).mean().detach(),
            "accuracy": (margin > 0).float().mean(),
            "margin": (beta * margin).mean().detach(),
        }

    def kto_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """TRL 1.16's KTO loss (``trl/trainer/kto_trainer.py``, ``KTOTrainer._compute_loss``,
        ``loss_type="kto"``; Eqn 7 of the KTO paper) of a feedback batch, with its metrics.

        With r = log pi(y|x) - log ref(y|x) summed over the answer's tokens and z the KL
        reference point (the mean of r over the batch's mismatched prompt / answer rows
        ``batch["kl"]``, no gradient, averaged over ranks, clamped at 0): a desirable answer
        costs ``desirable_weight * (1 - sigmoid(beta * (r - z)))``, an undesirable one
        ``undesirable_weight * (1 - sigmoid(beta * (z - r)))``; the loss is their mean.
        """
        h = self.hparams
        logps, _ = self.token_logps(self(batch), batch["labels"])
        policy = logps.sum(-1)
        with torch.no_grad():
            ref = self.reference_logps(batch)
            kl = self.kto_kl(batch["kl"])
        good = batch["feedback"].to(policy.device)
        ratio = policy - ref
        desirable = 1 - torch.sigmoid(h.beta * (ratio[good] - kl))
        undesirable = 1 - torch.sigmoid(h.beta * (kl - ratio[~good]))
        loss = torch.cat((h.desirable_weight * desirable, h.undesirable_weight * undesirable))
        metrics: dict[str, Any] = {"kl": kl.detach()}
        if bool(good.any()):
            metrics["reward_chosen"] = (h.beta * ratio[good]).mean().detach()
        if bool((~good).any()):
            metrics["reward_rejected"] = (h.beta * ratio[~good]).mean().detach()
        return loss.nanmean(), metrics

    def kto_kl(self, kl_batch: Mapping[str, Any]) -> torch.Tensor:
        """KTO's KL reference point: mean (policy - reference) log-probability of the
        mismatched rows, averaged over ranks, at least 0 (0 without rows)."""
        if kl_batch["input_ids"].numel() == 0:
            return torch.zeros((), device=self.device)
        logps, _ = self.token_logps(self(kl_batch), kl_batch["labels"])
        kl = (logps.sum(-1) - self.reference_logps(kl_batch)).mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(kl)
            kl = kl / torch.distributed.get_world_size()
        return kl.clamp(min=0)

    def objective_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The preference objective's loss (DPO, ORPO or KTO) and its metrics."""
        if self.hparams.objective == "kto":
            return self.kto_loss(batch)
        return self.preference_loss(batch)

    def reference_logps(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Summed label log-probabilities under the frozen base model."""
        if self.uses_peft:
            with self.model.disable_adapter():
                logits = self(batch)
        else:
            ref = self._reference[0].to(self.device)
            logits = self(batch, model=ref)
        logps, _ = self.token_logps(logits, batch["labels"])
        return logps.sum(-1)

    # ---- steps ----------------------------------------------------------------------------

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        bs = len(batch["sample_ids"])
        if batch["skipped"]:
            self._events.append(
                (EV_SKIPPED, {"step": self.global_step, "samples": batch["skipped"]})
            )
        if batch["input_ids"].numel() == 0:
            raise RuntimeError(f"batch {batch_idx}: every sample was skipped: {batch['skipped']}")
        if self.hparams.objective == "sft":
            loss, n = self.sft_loss(batch)
            self.log("train/tokens", float(n), batch_size=bs)
        else:
            loss, metrics = self.objective_loss(batch)
            for k, v in metrics.items():
                self.log(f"train/{k}", v, batch_size=bs)
        if "pixel_values" not in batch:
            loss = loss + self.vision_dummy()
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        tokens = batch["token_mask"]
        self.log("train/pad_frac", 1.0 - float(tokens.float().mean()), batch_size=bs)
        if batch["image_sizes"]:  # effective sizes after the loader's pixel budget
            pixels = sum(w * h for w, h in batch["image_sizes"]) / len(batch["image_sizes"])
            self.log("train/image_pixels", float(pixels), batch_size=bs)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Mapping[str, Any], prefix: str) -> None:
        if batch["input_ids"].numel() == 0:
            return
        bs = len(batch["sample_ids"])
        if self.hparams.objective == "sft":
            loss, n = self.sft_loss(batch)
            self._val["nll"] = self._val.get("nll", 0.0) + float(loss) * n
            self._val["tokens"] = self._val.get("tokens", 0.0) + n
            self.log(f"{prefix}/loss", loss, batch_size=bs, sync_dist=True)
            if batch.get("prompts") and len(self._gen) < self.hparams.generate_samples:
                self._generate(batch)
        else:
            loss, metrics = self.objective_loss(batch)
            self.log(f"{prefix}/loss", loss, batch_size=bs, sync_dist=True)
            for k, v in metrics.items():
                if k.startswith("reward_") and self.hparams.objective == "kto":
                    continue  # present only when the batch has such answers: ranks differ
                self.log(f"{prefix}/{k}", v, batch_size=bs, sync_dist=True)

    def _generate(self, batch: Mapping[str, Any]) -> None:
        room = self.hparams.generate_samples - len(self._gen)
        prompts = {k: v for k, v in batch["prompts"].items() if isinstance(v, torch.Tensor)}
        n = min(room, prompts["input_ids"].shape[0])
        if batch.get("video_frames") and n < prompts["input_ids"].shape[0]:
            return  # video inputs are not cut per row: generate only whole batches of them
        if "pixel_values" in prompts and prompts["pixel_values"].dim() == 5:
            # SmolVLM: one row of (padded) images per prompt
            for key in ("pixel_values", "pixel_attention_mask"):
                if key in prompts:
                    prompts[key] = prompts[key][:n]
        elif "pixel_values" in prompts and "image_grid_thw" not in prompts:
            # rows may hold no image (text-only samples) or several: count them per row
            k = int(sum(_images_per_row(prompts["input_ids"], self.spec, self.processor)[:n]))
            prompts["pixel_values"] = prompts["pixel_values"][:k]
        elif "image_grid_thw" in prompts:
            grids = prompts["image_grid_thw"]
            counts = _images_per_row(prompts["input_ids"], self.spec, self.processor)[:n]
            k = int(sum(counts))
            patches = int(grids[:k].prod(-1).sum())
            prompts["image_grid_thw"], prompts["pixel_values"] = (
                grids[:k],
                prompts["pixel_values"][:patches],
            )
        if "pixel_values" in prompts and prompts["pixel_values"].shape[0] == 0:
            del prompts["pixel_values"]  # the kept rows are text-only
            prompts.pop("image_grid_thw", None)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in prompts:
                prompts[key] = prompts[key][:n]
        out = self.model.generate(
            **prompts,
            max_new_tokens=self.hparams.max_new_tokens,
            do_sample=False,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        texts = self.processor.tokenizer.batch_decode(
            out[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for sid, pred, ref in zip(
            batch["sample_ids"][:n], texts, batch["references"][:n], strict=True
        ):
            self._gen.append(
                {
                    "sample_id": sid,
                    "prediction": pred.strip(),
                    "reference": ref,
                    "exact_match": exact_match(pred, ref),
                    "token_f1": token_f1(pred, ref),
                }
            )

    def on_validation_epoch_start(self) -> None:
        self._gen, self._val = [], {}

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._gen, self._val = [], {}

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _eval_epoch_end(self, prefix: str) -> None:
        if self._val.get("tokens"):
            ppl = float(torch.exp(torch.tensor(self._val["nll"] / self._val["tokens"])))
            self.log(f"{prefix}/ppl", ppl, sync_dist=True)
        if self._gen:
            em = sum(g["exact_match"] for g in self._gen) / len(self._gen)
            f1 = sum(g["token_f1"] for g in self._gen) / len(self._gen)
            self.log(f"{prefix}/exact_match", em, sync_dist=True)
            self.log(f"{prefix}/token_f1", f1, sync_dist=True)
            self._events.append((EV_GENERATIONS, {"split": prefix, "step": self.global_step,
                                                 "samples": list(self._gen)}))  # fmt: skip

    # ---- optimiser ------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        groups = role_param_groups(self.model, self.spec, dict(h.lrs or {}), h.lr, h.weight_decay)
        if not groups:
            raise ConfigError("nothing to train: every role is frozen and no adapter is set")
        return adamw_warmup_cosine(groups, h, lambda: self.trainer.estimated_stepping_batches)

    # ---- export ---------------------------------------------------------------------------

    def save_adapter(self, out: str | Path) -> Path:
        """Write the PEFT adapter (PEFT's own format) and the processor to ``out``."""
        out = Path(out)
        self.model.save_pretrained(out)
        save_processor(self.processor, out)
        return out

    def export(self, run_dir: str | Path) -> Path:
        """``run_dir/hf``: the adapter (LoRA) or full weights, with the processor."""
        out = RunDir(run_dir).hf
        self.model.save_pretrained(out)
        save_processor(self.processor, out)
        return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PeftModel (or the model itself)."""
    base = getattr(model, "get_base_model", None)
    return base() if base is not None else model


def _sum_tensors(obj: Any) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj.float().sum()
    if isinstance(obj, Mapping):
        parts = [_sum_tensors(v) for v in obj.values() if v is not None]
    elif isinstance(obj, (list, tuple)):
        parts = [_sum_tensors(v) for v in obj if v is not None]
    elif hasattr(obj, "to_tuple"):
        parts = [_sum_tensors(v) for v in obj.to_tuple() if v is not None]
    else:
        parts = []
    return torch.stack(parts).sum() if parts else torch.zeros(())


def _images_per_row(input_ids: torch.Tensor, spec: Any, processor: Any) -> list[int]:
    """Images in each prompt row: vision-start tokens (Qwen), else runs of image tokens
    (LLaVA expands each ``<image>`` into one run)."""
    if spec.mrope:
        start = processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
        return (input_ids == start).sum(-1).tolist()
    hit = input_ids == processor.tokenizer.convert_tokens_to_ids(spec.image_token)
    starts = hit & ~F.pad(hit, (1, 0))[:, :-1]
    return starts.sum(-1).tolist()
