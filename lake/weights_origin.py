"""Where a run's weights come from: the one owner of that description.

From a run's composed config (``config.yaml``) :func:`weights_origin` says, for each part
of the model (CLIP image / text tower; VLM vision tower / projector / language model;
Apotheon vision / audio towers, fusion, language model), its **origin**:

- ``random-init``: built from sizes or a config (``source: tiny``, ``pretrained: null``);
- ``pretrained: <name>``: a packaged model (``smollm2-135m-instruct``,
  ``all-minilm-l6-v2``), a local folder, a hub id, an open_clip tag or a checkpoint file;
- ``from run <id>``: the trained tensors of an earlier run (``model.init_from``; what that
  run started from is kept as ``base``);

and how this run treated it (``frozen``, ``LoRA``, ``trained``), plus the datasets and lake
it was trained on. ``core.train`` writes the result into ``summary.json`` (key
``weights``); readers (run report, compare, bench, check and query reports, the TUI) call
:func:`run_weights`, which derives it from ``config.yaml`` for runs recorded before the
field existed, and say ``unknown`` when neither is readable. Torch-free: only configs are
read, never a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lake.runs import CHECKPOINTS_DIR, CKPT_SUFFIX, CONFIG_FILE, RunDir, read_summary

RANDOM = "random-init"
FROZEN, LORA, TRAINED = "frozen", "LoRA", "trained"
SUMMARY_KEY = "weights"
UNKNOWN = "unknown"
# The lakeloom CLIP architectures (core.models.clip registers them with open_clip from here).
CLIP_CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf" / "model" / "clip_configs"
_MAX_DEPTH = 8  # init_from chains followed at most this deep (a loop ends here)


def _get(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _source(value: Any) -> str:
    """``random-init`` for a model built from sizes, else ``pretrained: <value>``."""
    if value in (None, "", "tiny", "scratch"):
        return RANDOM
    return f"pretrained: {value}"


def _part(origin: str, training: str) -> dict[str, Any]:
    return {"origin": origin, "training": training}


def _clip_text_tower(arch: str, config_dir: Path) -> str | None:
    """The HF model a lakeloom CLIP config names as its text tower (None: open_clip's own)."""
    path = config_dir / f"{arch}.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _get(cfg, "text_cfg", "hf_model_name")


def _clip_parts(model: Mapping[str, Any], config_dir: Path) -> dict[str, dict[str, Any]]:
    arch = str(model.get("arch") or "")
    pretrained = model.get("pretrained")
    if pretrained:
        image = text = _source(f"{arch}/{pretrained}" if "/" not in str(pretrained) else pretrained)
    else:
        image = RANDOM
        hf_text = _clip_text_tower(arch, config_dir)
        text = _source(hf_text) if hf_text else RANDOM

    def training(lock: str, unlocked: str) -> str:
        if not model.get(lock):
            return TRAINED
        n = int(model.get(unlocked) or 0)
        return f"{FROZEN} except its last {n}" if n else FROZEN

    return {
        "image tower": _part(image, training("lock_image", "lock_image_unlocked_groups")),
        "text tower": _part(text, training("lock_text", "lock_text_unlocked_layers")),
    }


def _vlm_parts(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    source = model.get("source")
    base = _source(source)
    lm = _source(model.get("language_source")) if base == RANDOM else base
    freeze = model.get("freeze") or {}
    peft = str(_get(model, "peft", "method") or "none")
    lm_training = FROZEN if freeze.get("language_model") else TRAINED
    if peft in ("lora", "dora"):
        lm_training = LORA if peft == "lora" else "DoRA"
    return {
        "vision tower": _part(base, FROZEN if freeze.get("vision") else TRAINED),
        "projector": _part(base, FROZEN if freeze.get("projector") else TRAINED),
        "language model": _part(lm, lm_training),
    }


def _apotheon_parts(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    cfg = model.get("config") or {}
    freeze = model.get("freeze") or {}
    peft = str(_get(model, "peft", "method") or "none")
    lm_training = FROZEN if freeze.get("language_model") else TRAINED
    if peft in ("lora", "dora"):
        lm_training = LORA if peft == "lora" else "DoRA"

    def tower(key: str) -> dict[str, Any]:
        return _part(_source(_get(cfg, key, "source")), FROZEN if freeze.get(key) else TRAINED)

    return {
        "vision tower": tower("vision"),
        "audio tower": tower("audio"),
        "projector + fusion": _part(RANDOM, FROZEN if freeze.get("fusion") else TRAINED),
        "language model": _part(_source(_get(cfg, "language", "source")), lm_training),
    }


def _init_run(init_from: str, runs_dir: Path | None) -> Path:
    """The run directory ``init_from`` names (a run folder, or a checkpoint inside one)."""
    path = Path(init_from)
    if not path.exists() and runs_dir is not None and (runs_dir / init_from).exists():
        path = runs_dir / init_from
    if path.is_file() or path.suffix == CKPT_SUFFIX:
        path = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else path.parent
    return path


def weights_origin(
    cfg: Mapping[str, Any],
    runs_dir: str | Path | None = None,
    config_dir: Path = CLIP_CONFIG_DIR,
    _depth: int = 0,
) -> dict[str, Any]:
    """The origin of each part of the model a composed training config builds.

    ``{"model": clip|vlm|apotheon|<target>, "parts": {part: {origin, training[, base]}},
    "datasets": [...] or None (all), "where": ..., "lake": ..., "random_init": [parts]}``;
    ``random_init`` lists the parts that started random (themselves or through the runs
    they come from): trained on ``datasets`` only, so no figure of theirs is a pretrained
    model's quality.
    """
    model = cfg.get("model") or {}
    target = str(model.get("_target_") or "")
    if "clip_module" in target:
        kind, parts = "clip", _clip_parts(model, config_dir)
    elif "vlm_module" in target:
        kind, parts = "vlm", _vlm_parts(model)
    elif "apotheon_module" in target:
        kind, parts = "apotheon", _apotheon_parts(model)
    else:
        kind, parts = target or UNKNOWN, {}
    vision_from = model.get("vision_from") if kind == "vlm" else None
    if vision_from and _depth < _MAX_DEPTH:
        clip_run = _init_run(str(vision_from), Path(runs_dir) if runs_dir is not None else None)
        clip = _read(clip_run, Path(runs_dir) if runs_dir else None, config_dir, _depth + 1)
        image = (clip or {}).get("parts", {}).get("image tower") or {}
        parts["vision tower"].update(
            origin=f"from run {clip_run.name} (CLIP image tower)",
            base=image.get("base") or image.get("origin") or UNKNOWN,
        )
    data = cfg.get("data") or {}
    datasets = list(data["datasets"]) if data.get("datasets") else None
    out: dict[str, Any] = {
        "model": kind,
        "parts": parts,
        "datasets": datasets,
        "where": data.get("where"),
        "lake": data.get("lake_uri") or _get(cfg, "lake", "uri"),
    }
    init_from = model.get("init_from")
    if init_from and _depth < _MAX_DEPTH:
        root = Path(runs_dir) if runs_dir is not None else None
        run = _init_run(str(init_from), root)
        parent = _read(run, root, config_dir, _depth + 1)
        for name, part in parts.items():
            before = (parent or {}).get("parts", {}).get(name)
            if before is None:
                part.update(origin=f"from run {run.name}", base=UNKNOWN)
            elif before["training"] == FROZEN and name == "vision tower" and "base" in before:
                # a frozen tower from a CLIP run (vision_from) is rebuilt from that run
                part.update(origin=before["origin"], base=before["base"])
            elif before["training"] != FROZEN:  # the run trained it: its tensors start this one
                part.update(
                    origin=f"from run {run.name}", base=before.get("base") or before["origin"]
                )
        out["init_from"] = run.name
        if parent:
            out["init_datasets"] = parent.get("datasets")
    out["random_init"] = [
        name for name, p in parts.items() if RANDOM in (p["origin"], p.get("base"))
    ]
    return out


def _read(run: Path, runs_dir: Path | None, config_dir: Path, depth: int) -> dict[str, Any] | None:
    """A run's weights: its summary's field, else derived from its config.yaml."""
    try:
        found = (read_summary(RunDir(run)) or {}).get(SUMMARY_KEY)
    except (OSError, ValueError):
        found = None
    if isinstance(found, Mapping):
        return dict(found)
    try:
        import yaml

        cfg = yaml.safe_load((run / CONFIG_FILE).read_text())
    except Exception:  # missing or unreadable (OSError, yaml.YAMLError): nothing to say
        return None
    if not isinstance(cfg, Mapping):
        return None
    return weights_origin(cfg, runs_dir if runs_dir is not None else run.parent, config_dir, depth)


def run_weights(run_dir: str | Path, config_dir: Path = CLIP_CONFIG_DIR) -> dict[str, Any] | None:
    """The weights origin of a run directory (summary.json's ``weights``, else derived from
    its ``config.yaml``); None when neither is readable (say ``unknown``)."""
    run = Path(run_dir)
    return _read(run, run.parent, config_dir, 0)


def describe(weights: Mapping[str, Any] | None) -> str:
    """One line: each part's origin and training, the data, and a caveat when a part
    started random, e.g. ``image tower random-init, trained; text tower pretrained:
    all-minilm-l6-v2, frozen | data: shapes in data/lake | random-init: image tower, learnt
    only from this data: no figure is a pretrained model's quality``."""
    if not weights or not weights.get("parts"):
        return UNKNOWN
    cells = []
    for name, part in weights["parts"].items():
        origin = part["origin"]
        if part.get("base"):
            origin += f" ({part['base']} there)"
        cells.append(f"{name} {origin}, {part['training']}")
    datasets = weights.get("datasets")
    on = ", ".join(datasets) if datasets else "every dataset"
    if weights.get("where"):
        on += f" where {weights['where']}"
    if weights.get("init_from"):
        before = weights.get("init_datasets")
        on += f" (+ run {weights['init_from']}: {', '.join(before) if before else 'its data'})"
    lake = f" in {weights['lake']}" if weights.get("lake") else ""
    line = f"{'; '.join(cells)} | data: {on}{lake}"
    if weights.get("random_init"):
        line += (
            f" | random-init: {', '.join(weights['random_init'])}, learnt only from this"
            " data: no figure is a pretrained model's quality"
        )
    return line


def owner_run(owner_id: str | None) -> str | None:
    """The run id in an embedding owner id (``open_clip:<arch>:run:<id>:<sha12>``), if any."""
    parts = (owner_id or "").split(":")
    for i, part in enumerate(parts[:-1]):
        if part == "run":
            return parts[i + 1]
    return None


def describe_owner(owner_id: str | None, runs_dir: str | Path | None) -> str | None:
    """The weights line of the run that made an embedding (None: not a run's model);
    ``unknown`` when that run's directory is not readable under ``runs_dir``."""
    run = owner_run(owner_id)
    if run is None:
        if (owner_id or "").split(":")[-2:-1] == ["scratch"]:
            return "random-init, untrained"
        return None
    if runs_dir is None:
        return UNKNOWN
    return describe(run_weights(Path(runs_dir) / run))
