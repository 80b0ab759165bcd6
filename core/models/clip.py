"""CLIP models through open_clip: one factory, one on-disk layout.

``create_clip(arch, pretrained)`` builds any open_clip architecture, or a lakeloom model
config (``conf/model/clip_configs/<name>.json``, registered with open_clip on first use),
and returns ``(model, preprocess_train, preprocess_val, tokenizer)``. ``pretrained`` is

- ``None``: random init (from scratch);
- an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``): weights from the
  Hugging Face hub cache; offline (``HF_HUB_OFFLINE=1``) a missing cache fails at once
  with :class:`ClipLoadError`;
- a local checkpoint file: an open_clip state dict (``.pt``/``.bin``/``.safetensors``) or
  a Lightning ``.ckpt`` written by :class:`core.modules.clip_module.ClipModule`;
- ``"local-dir:<folder>"`` (or a plain folder): the open_clip local-dir layout written by
  :func:`save_open_clip`, which carries its own architecture, so ``arch`` is ignored.

The model is built with ``output_dict=True``. The resolved open_clip model config is kept
on the model as ``model.lakeloom_model_cfg`` so :func:`save_open_clip` can write it back.

**Hugging Face text towers.** A config whose ``text_cfg`` names ``hf_model_name`` /
``hf_tokenizer_name`` builds open_clip's ``HFTextEncoder``. A name that
:mod:`core.models.packaged` owns (``all-minilm-l6-v2``) is resolved to its local folder
only for building; the config kept on the model (and saved with a run) keeps the symbolic
name, so an export reloads on another machine. The tokenizer is always the one the model
config names (:func:`clip_tokenizer`): every caller (training collator, enrichers,
``lakeloom query text=``, checks) gets it from :func:`create_clip`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from core.checkpoint import check_checkpoint, load_checkpoint
from core.models.packaged import is_packaged, resolve_source
from lake.errors import ConfigError
from lake.runs import RunDir
from lake.weights_origin import CLIP_CONFIG_DIR

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"
#: lakeloom's own architectures (tiny-clip, ...), one JSON per model, named by file stem
#: in CLIP_CONFIG_DIR (owned by lake.weights_origin, which reads their text towers too)
#: attribute under which the factory keeps the model's open_clip config
MODEL_CFG_ATTR = "lakeloom_model_cfg"

ClipBundle = tuple[nn.Module, Callable[..., torch.Tensor], Callable[..., torch.Tensor], Any]


class ClipLoadError(ConfigError):
    """A CLIP model could not be built: unknown arch, missing weights, bad folder."""


def register_lakeloom_configs(config_dir: Path = CLIP_CONFIG_DIR) -> None:
    """Register lakeloom's model JSONs with open_clip (idempotent)."""
    from open_clip import factory

    if config_dir not in factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(config_dir)


def list_clip_models() -> list[str]:
    """Every architecture name ``create_clip`` accepts (open_clip's and lakeloom's)."""
    register_lakeloom_configs()
    return open_clip.list_models()


def _local_dir(spec: str | os.PathLike[str] | None) -> Path | None:
    """The folder a ``local-dir:`` spec (or a folder holding the layout) points to."""
    if spec is None:
        return None
    text = str(spec)
    if text.startswith(LOCAL_DIR):
        return Path(text[len(LOCAL_DIR) :])
    path = Path(text)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    return None


def _read_local_dir(folder: Path) -> dict[str, Any]:
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise ClipLoadError(f"{folder} is not an open_clip folder: {CONFIG_FILE} is missing")
    data = json.loads(config.read_text(encoding="utf-8"))
    if "model_cfg" not in data:
        raise ClipLoadError(f"{config} has no 'model_cfg'")
    return data


def _tag_weights_error(arch: str, tag: str, tag_cfg: dict[str, Any], err: Exception) -> str:
    where = tag_cfg.get("hf_hub") or tag_cfg.get("url") or "?"
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    hint = (
        "HF_HUB_OFFLINE=1 is set and the weights are not in the local cache"
        if offline
        else "downloading them failed"
    )
    return (
        f"open_clip weights for {arch!r} pretrained={tag!r} come from {where}; {hint} "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        "Download them once on a machine with network access, or pass a local checkpoint "
        "file or a 'local-dir:<folder>' as pretrained."
    )


HF_NAME_KEYS = ("hf_model_name", "hf_tokenizer_name")


def _packaged_text(model_cfg: dict[str, Any]) -> bool:
    """True when the text tower or tokenizer is a packaged model (needs a local folder)."""
    text_cfg = model_cfg.get("text_cfg") or {}
    return any(is_packaged(text_cfg.get(key)) for key in HF_NAME_KEYS)


def _resolved(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``model_cfg`` whose packaged HF names are local folders (for building)."""
    out = copy.deepcopy(model_cfg)
    text_cfg = out.get("text_cfg") or {}
    for key in HF_NAME_KEYS:
        if text_cfg.get(key):
            text_cfg[key] = resolve_source(str(text_cfg[key]))
    return out


def clip_tokenizer(name: str, model_cfg: dict[str, Any]) -> Any:
    """The tokenizer of a CLIP model: the one place it is chosen.

    A config with ``text_cfg.hf_tokenizer_name`` gets that Hugging Face tokenizer (a
    packaged name resolved to its folder) with the config's ``context_length``, unless
    ``name`` is a ``local-dir:`` folder that holds the tokenizer's own files; any other
    gets open_clip's choice for ``name`` (CLIP BPE, SigLIP...).
    """
    text_cfg = model_cfg.get("text_cfg") or {}
    hf_name = text_cfg.get("hf_tokenizer_name")
    folder = _local_dir(name) if name.startswith(LOCAL_DIR) else None
    if not hf_name or (folder is not None and (folder / "tokenizer_config.json").is_file()):
        return open_clip.get_tokenizer(name)
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

    return HFTokenizer(
        resolve_source(str(hf_name)),
        context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **(text_cfg.get("tokenizer_kwargs") or {}),
    )


def _lightning_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The CLIP weights (and embedded open_clip config) of a ClipModule ``.ckpt``."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise ClipLoadError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("state_dict", ckpt)
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ClipLoadError(f"{path} holds no 'model.*' weights: not a ClipModule checkpoint")
    return weights, ckpt.get("open_clip")


def create_clip(
    arch: str,
    pretrained: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    aug_cfg: dict[str, Any] | None = None,
    cache_dir: str | None = None,
    **model_kwargs: Any,
) -> ClipBundle:
    """Build ``(model, preprocess_train, preprocess_val, tokenizer)`` through open_clip.

    ``arch`` is an open_clip architecture, a lakeloom config name, or ``local-dir:<folder>``;
    ``pretrained`` is described in the module docstring. Extra keyword arguments go to the
    open_clip model constructor (e.g. ``init_logit_scale``).
    """
    register_lakeloom_configs()
    folder = _local_dir(arch) or _local_dir(pretrained)
    name: str
    weights_arg: str | None = None
    ckpt_weights: dict[str, torch.Tensor] | None = None
    force_quick_gelu = False

    if folder is not None:
        data = _read_local_dir(folder)
        for weights in sorted(folder.glob("*")):
            if weights.suffix in (".safetensors", ".bin", ".pth"):
                check_checkpoint(weights)  # open_clip picks one; a refused file stops here
        model_cfg = copy.deepcopy(data["model_cfg"])
        name = LOCAL_DIR + str(folder)
        if _packaged_text(model_cfg):
            return _build_packaged(
                model_cfg, folder / WEIGHTS_FILE, device, precision, aug_cfg, model_kwargs,
                data.get("preprocess_cfg"),
            )  # fmt: skip
    else:
        name = arch
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ClipLoadError(
                f"unknown CLIP architecture {arch!r}: not an open_clip model and not in "
                f"{CLIP_CONFIG_DIR} (see core.models.clip.list_clip_models())"
            )
        if pretrained is not None:
            path = Path(pretrained)
            tag_cfg = open_clip.get_pretrained_cfg(arch, str(pretrained))
            if path.is_file() and path.suffix == ".ckpt":
                ckpt_weights, embedded = _lightning_state_dict(path)
                if embedded is not None:
                    model_cfg = copy.deepcopy(embedded["model_cfg"])
            elif path.is_file():
                if path.suffix not in (".npz", ".npy"):  # numpy: open_clip refuses pickles
                    check_checkpoint(path)  # a refused file stops here, in one line
                weights_arg = str(path)
            elif tag_cfg:
                force_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
                try:
                    open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
                except Exception as err:
                    msg = _tag_weights_error(arch, str(pretrained), tag_cfg, err)
                    raise ClipLoadError(msg) from err
                weights_arg = str(pretrained)
            else:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise ClipLoadError(
                    f"pretrained={str(pretrained)!r} for {arch!r} is neither a file, a "
                    f"'local-dir:' folder, nor a known tag (tags: {tags or 'none'})"
                )

    if _packaged_text(model_cfg) and ckpt_weights is None:
        weights = Path(weights_arg) if weights_arg is not None else None
        return _build_packaged(model_cfg, weights, device, precision, aug_cfg, model_kwargs)

    if ckpt_weights is not None:
        # the .ckpt carries the architecture; build it from a temporary local-dir config
        model, preprocess_train, preprocess_val, tokenizer = _build_from_cfg(
            model_cfg, device, precision, aug_cfg, model_kwargs
        )
        model.load_state_dict(ckpt_weights, strict=True)
        return model, preprocess_train, preprocess_val, tokenizer

    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        name,
        pretrained=weights_arg,
        device=device,
        precision=precision,
        force_quick_gelu=force_quick_gelu,
        aug_cfg=aug_cfg,
        cache_dir=cache_dir,
        output_dict=True,
        **model_kwargs,
    )
    if force_quick_gelu:
        model_cfg["quick_gelu"] = True
    setattr(model, MODEL_CFG_ATTR, model_cfg)
    tokenizer = clip_tokenizer(name, model_cfg)
    return model, preprocess_train, preprocess_val, tokenizer


class _PartialBuildNotes(logging.Filter):
    """Drops open_clip's notes that a model built from a bare config has no CLIP weights
    (expected here: the text tower's come from the package, the rest is loaded next)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("no CLIP weights found" in message or "initialized partially" in message)


@contextlib.contextmanager
def _quiet_partial_build() -> Iterator[None]:
    """Silence the expected notes of building over a packaged text tower: open_clip's (root
    logger), transformers' load report (BERT's unused pooler weights) and its progress bar."""
    from transformers.utils import logging as hf_logging

    note = _PartialBuildNotes()
    root = logging.getLogger()
    root.addFilter(note)
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
        root.removeFilter(note)


def _build_packaged(
    model_cfg: dict[str, Any],
    weights: Path | None,
    device: str | torch.device,
    precision: str,
    aug_cfg: dict[str, Any] | None,
    model_kwargs: dict[str, Any],
    preprocess_cfg: dict[str, Any] | None = None,
) -> ClipBundle:
    """A model whose HF text tower is a packaged model: built from the resolved config
    (the packaged weights in the text tower), then ``weights`` (a full open_clip state
    dict) loaded over it when given; the symbolic config is kept on the model."""
    with _quiet_partial_build():
        built = _build_from_cfg(model_cfg, device, precision, aug_cfg, model_kwargs, preprocess_cfg)
    model = built[0]
    if weights is not None:
        if not weights.is_file():
            raise ClipLoadError(f"{weights}: no such weights file")
        check_checkpoint(weights)
        open_clip.load_checkpoint(model, str(weights), strict=True)
    return built


def _build_from_cfg(
    model_cfg: dict[str, Any],
    device: str | torch.device,
    precision: str,
    aug_cfg: dict[str, Any] | None,
    model_kwargs: dict[str, Any],
    preprocess_cfg: dict[str, Any] | None = None,
) -> ClipBundle:
    """A randomly initialised model from an explicit open_clip config dict."""
    import tempfile

    build_cfg = _resolved(model_cfg) if _packaged_text(model_cfg) else model_cfg
    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, Any] = {"model_cfg": build_cfg}
        if preprocess_cfg:
            config["preprocess_cfg"] = preprocess_cfg
        Path(tmp, CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            LOCAL_DIR + tmp,
            device=device,
            precision=precision,
            aug_cfg=aug_cfg,
            output_dict=True,
            **model_kwargs,
        )
        tokenizer = clip_tokenizer(LOCAL_DIR + tmp, model_cfg)
    setattr(model, MODEL_CFG_ATTR, copy.deepcopy(model_cfg))
    return model, preprocess_train, preprocess_val, tokenizer


def model_config(model: nn.Module) -> dict[str, Any]:
    """The open_clip model config the factory recorded on ``model``."""
    cfg = getattr(model, MODEL_CFG_ATTR, None)
    if cfg is None:
        raise ClipLoadError("model was not built by core.models.clip.create_clip: no config")
    return copy.deepcopy(cfg)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def save_open_clip(
    model: nn.Module,
    preprocess_cfg: dict[str, Any] | None,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
) -> Path:
    """Write the open_clip local-dir layout: ``open_clip_config.json`` + safetensors.

    ``open_clip.create_model_and_transforms("local-dir:" + out_dir)`` reloads it.
    ``preprocess_cfg`` defaults to the one open_clip recorded on the model. A tokenizer
    with ``save_pretrained`` (Hugging Face based) is saved next to it.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if preprocess_cfg is None:
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
    config = {"model_cfg": model_config(model), "preprocess_cfg": _jsonable(dict(preprocess_cfg))}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(out))
    return out


def load_from_run(run_dir: str | os.PathLike[str], **kwargs: Any) -> ClipBundle:
    """Load the CLIP model a training run exported to ``runs/<id>/open_clip/``."""
    folder = RunDir(run_dir).open_clip
    if not (folder / CONFIG_FILE).is_file():
        raise ClipLoadError(f"run {run_dir} has no exported CLIP model ({folder}/{CONFIG_FILE})")
    return create_clip(LOCAL_DIR + str(folder), None, **kwargs)
