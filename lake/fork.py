"""Fork a local lake: a full copy under another folder, with some columns dropped.

The lake holds one set of embedding columns (``clip_image`` / ``clip_text`` and their
owners); a second model with another output width embeds and checks a fork, so both
models' results can be compared on the same rows (the demo's MiniLM-text CLIP does)::

    python -m lake.fork SRC DST [--drop clip_image,clip_image_model,...]

The copy is written beside ``DST`` and renamed into place once complete (the old ``DST``
renamed away first), so a killed fork never leaves a half copy or a half-deleted ``DST``.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from lake.errors import ConfigError
from lake.storage import is_s3
from lake.store import Lake

# the embedding columns and their owner ids (plugins/clip_embed.py writes them)
EMBEDDINGS = ("clip_image", "clip_image_model", "clip_text", "clip_text_model")


def fork_lake(src: str | Path, dst: str | Path, drop: Iterable[str] = ()) -> dict[str, list[str]]:
    """Copy the local lake ``src`` to ``dst`` (replacing it) without the columns ``drop``;
    return the columns dropped per table."""
    if is_s3(str(src)) or is_s3(str(dst)):
        raise ConfigError(f"fork copies local lakes only, not {src} -> {dst}")
    source, target = Path(src), Path(dst)
    if not Lake(source).present():
        raise ConfigError(f"{source}: no lake here to fork")
    tmp = target.parent / f".{target.name}.fork-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(source, tmp, symlinks=True)
        lake = Lake(tmp)
        columns = list(drop)
        dropped = {name: lake.drop_columns(name, columns) for name in lake.table_names()}
        if target.exists():  # renamed away, not deleted in place: never a half-deleted DST
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():  # the new copy did not land: put DST back
            os.replace(old, target)
        shutil.rmtree(old, ignore_errors=True)
    return {name: cols for name, cols in dropped.items() if cols}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m lake.fork SRC DST [--drop a,b | --drop-embeddings]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--drop", default="", help="comma-separated columns to leave out")
    parser.add_argument(
        "--drop-embeddings", action="store_true", help="leave out " + ", ".join(EMBEDDINGS)
    )
    args = parser.parse_args(argv)
    drop = [c for c in args.drop.split(",") if c]
    if args.drop_embeddings:
        drop += EMBEDDINGS
    dropped = fork_lake(args.src, args.dst, drop)
    gone = "; ".join(f"{t}: {', '.join(c)}" for t, c in dropped.items()) or "nothing"
    print(f"forked {args.src} -> {args.dst} (dropped {gone})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
