"""Fast start: ``lakeloom stats`` / ``versions`` / ``why`` read the lake without LanceDB,
torch, Hydra or pandas, with the same answers LanceDB gives and the config Hydra composes;
a repeated ``lakeloom query`` loads no model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lake.query_cache import VectorCache
from lake.store import Lake
from tests.conftest import REPO
from tests.plugins.test_clip_embed import clip_base  # noqa: F401 - session fixture

HEAVY = ("lancedb", "torch", "open_clip", "transformers", "lightning", "torchvision")
# what a light command composed without Hydra and a lance import without pandas leave out
LIGHT = (*HEAVY, "hydra", "pandas")

# runs a job in this process, then prints the heavy top-level modules it imported
PROBE = f"""
import json, sys
from lake.cli import main
try:
    main(sys.argv[1:])
finally:
    heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({LIGHT!r}))
    print("HEAVY=" + json.dumps(heavy), flush=True)
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def small_lake(tmp_path: Path) -> Lake:
    """12 samples in two datasets over 4 image media, two writes, one tagged version."""
    lake = Lake(tmp_path / "lake")
    media = [{"media_id": _sha(f"m{i}"), "kind": "image", "mime": "image/png"} for i in range(4)]
    lake.insert_new("media", pa.Table.from_pylist(media))
    samples = [
        {
            "sample_id": _sha(f"s{i}"),
            "dataset": "pets" if i < 8 else "shapes",
            "media_ids": [media[i % 4]["media_id"]],
            "caption": f"caption {i}",
        }
        for i in range(12)
    ]
    lake.insert_new("samples", pa.Table.from_pylist(samples[:7]))
    lake.insert_new("samples", pa.Table.from_pylist(samples[7:]))
    lake.tag("run-startup-test")
    return lake


def _probe(tmp_path: Path, *args: str) -> tuple[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = [line for line in proc.stdout.splitlines() if line.startswith("HEAVY=")]
    assert len(heavy) == 1, proc.stdout
    return proc.stdout, json.loads(heavy[0].removeprefix("HEAVY="))


def test_stats_imports_neither_lancedb_nor_torch(small_lake: Lake, tmp_path: Path) -> None:
    out, heavy = _probe(tmp_path, "stats", f"lake.uri={small_lake.uri}")
    assert heavy == []
    counts = {w[0]: w[1] for w in map(str.split, out.splitlines()) if len(w) == 2}
    assert counts["media"] == "4" and counts["samples"] == "12" and counts["image"] == "4"
    assert counts["pets"] == "8" and counts["shapes"] == "4"


def test_versions_imports_neither_lancedb_nor_torch(small_lake: Lake, tmp_path: Path) -> None:
    out, heavy = _probe(tmp_path, "versions", f"lake.uri={small_lake.uri}")
    assert heavy == []
    assert "run-startup-test" in out
    assert out.count("run-startup-test") == 2  # media's and samples' tagged versions


def test_why_imports_neither_lancedb_torch_hydra_nor_pandas(
    small_lake: Lake, tmp_path: Path
) -> None:
    sid = _sha("s3")
    out, heavy = _probe(tmp_path, "why", sid, f"lake.uri={small_lake.uri}", "format=json")
    assert heavy == []
    assert json.loads(out[: out.rindex("HEAVY=")])["sample"]["sample_id"] == sid


def test_a_command_line_only_hydra_reads_still_goes_through_hydra(
    small_lake: Lake, tmp_path: Path
) -> None:
    out, heavy = _probe(tmp_path, "stats", f"lake.uri={small_lake.uri}", "--cfg", "job")
    assert heavy == ["hydra"]  # Hydra printed the config, nothing was read
    assert f"uri: {small_lake.uri}" in out and "media_kinds" not in out
    out, heavy = _probe(tmp_path, "versions", f"lake.uri={small_lake.uri}", "+extra=1")
    assert heavy == ["hydra", "pandas"] and "run-startup-test" in out


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("stats", []),
        ("stats", ["lake.uri=/x/lake", "out=state.json"]),
        ("versions", ["table=samples", "runs_dir=/r"]),
        ("why", ['id="0123"', "format=json", "verify=true", "max_samples=5"]),
        ("why", ["id=abc", "lake.reports=  spaced out  ", "max_samples=1_000"]),
        ("tui", ["lake.uri=/l", "tui.graphics=halfblock", "tui.lake_poll_s=1.5", "port=-1"]),
        ("tui", ["tui.who=null", "tui.theme='a b'", 'tui.search_model.run="r1"']),
    ],
)
def test_light_compose_equals_hydra_compose(name: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lake.compose import compose_light

    light = compose_light(name, overrides)
    assert light is not None and OmegaConf.is_struct(light.cfg)
    with initialize_config_module("conf", version_base="1.3"):
        full = compose(name, overrides=overrides)
    theirs = OmegaConf.to_container(full, resolve=False)
    theirs.pop("hydra", None)
    mine = OmegaConf.to_container(light.cfg, resolve=False)
    assert mine == theirs and list(mine) == list(theirs)
    resolved = OmegaConf.to_container(full, resolve=True)
    resolved.pop("hydra", None)
    assert OmegaConf.to_container(light.cfg, resolve=True) == resolved
    assert light.job_logging == ("none" if name == "tui" else "stdout")


@pytest.mark.parametrize(
    "overrides",
    [["+x=1"], ["~out"], ["tui=other"], ["lake=other"], ["nope=1"], ["lake.storage_options=1"],
     ["x=[1,2]"], ["out={a: 1}"], ["out=${runs_dir}"], ["out=0123"], ["out='a\\'b'"],
     ["--cfg", "job"], ["hydra.run.dir=x"], ["-m"]],
)  # fmt: skip
def test_light_compose_leaves_the_rest_to_hydra(overrides: list[str]) -> None:
    from lake.compose import compose_light

    assert compose_light("stats", overrides) is None


def test_lance_imported_without_pandas_still_converts_pandas(tmp_path: Path) -> None:
    code = (
        "import sys; from lake.compose import import_lance; import_lance(); "
        "assert 'lance' in sys.modules and 'pandas' not in sys.modules; "
        "import pandas as pd, pyarrow as pa; "
        "print(pa.array(pd.Series([1, 2, None])).to_pylist(), pa.Table.from_pandas("
        "pd.DataFrame({'a': ['x']})).column('a').to_pylist())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1.0,", "2.0,", "None]", "['x']"]  # NaN read as null


def test_light_reads_answer_as_lancedb_does(small_lake: Lake) -> None:
    import lancedb

    db = lancedb.connect(small_lake.uri)
    assert small_lake.table_names() == sorted(db.list_tables().tables)
    for name, where in (("media", "kind = 'image'"), ("samples", "dataset = 'pets'")):
        tbl = db.open_table(name)
        assert small_lake.count(name) == tbl.count_rows()
        assert small_lake.count(name, where) == tbl.count_rows(where) > 0
        mine = small_lake.versions(name)
        theirs = tbl.list_versions()
        assert [v["version"] for v in mine] == [v["version"] for v in theirs]
        assert [v["timestamp"] for v in mine] == [v["timestamp"] for v in theirs]
        tagged = {v["version"] for v in mine if v["tags"] == ["run-startup-test"]}
        assert tagged == {int(tbl.tags.list()["run-startup-test"]["version"])}
        assert small_lake.current_versions()[name] == tbl.version
    first = small_lake.dataset("samples", version=2)
    assert first.count_rows() == 7  # the first write only
    assert small_lake.dataset("samples", version="run-startup-test").count_rows() == 12


def test_light_reads_of_a_missing_lake_create_nothing(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "nowhere")
    assert lake.table_names() == [] and not lake.present() and lake.count("samples") == 0
    assert not (tmp_path / "nowhere").exists()


def test_vector_cache_keys_by_owner_kind_and_query(tmp_path: Path) -> None:
    cache = VectorCache(tmp_path / "vectors")
    v = np.arange(8, dtype=np.float32)
    assert cache.get("open_clip:a:run:x:111", "text", b"a cat") is None
    cache.put("open_clip:a:run:x:111", "text", b"a cat", v)
    np.testing.assert_array_equal(cache.get("open_clip:a:run:x:111", "text", b"a cat"), v)
    assert cache.get("open_clip:a:run:x:222", "text", b"a cat") is None  # another model
    assert cache.get("open_clip:a:run:x:111", "image", b"a cat") is None
    assert cache.get("open_clip:a:run:x:111", "text", b"a dog") is None
    (file,) = (tmp_path / "vectors").glob("*.npy")
    file.write_bytes(b"not a numpy file")
    assert cache.get("open_clip:a:run:x:111", "text", b"a cat") is None
    off = VectorCache(None)
    off.put("o", "text", b"q", v)
    assert off.get("o", "text", b"q") is None


@pytest.mark.slow
def test_a_repeated_query_loads_no_model(clip_base, tmp_path: Path) -> None:  # noqa: F811
    from lake.enrich import enrich
    from lake.query import run_query
    from plugins.clip_embed import _CACHE as clip_models
    from plugins.clip_embed import ClipImageEmbedder

    shutil.copytree(clip_base["lake"], tmp_path / "lake")
    model = tmp_path / "m1"  # the lake's model, removed after the first query
    shutil.copytree(str(clip_base["m1"]).removeprefix("local-dir:"), model)
    pretrained = f"local-dir:{model}"
    enrich(ClipImageEmbedder(pretrained=pretrained, device="cpu"), Lake(tmp_path / "lake"),
           progress=False)  # fmt: skip
    from hydra import compose, initialize_config_module

    overrides = [
        f"lake.uri={tmp_path / 'lake'}",
        "text=a red circle",
        "k=3",
        "plugin=plugins.clip_embed:ClipImageEmbedder",
        f"model.pretrained={pretrained}",
        "model.device=cpu",
        f"vector_cache={tmp_path / 'vectors'}",
    ]
    with initialize_config_module(version_base="1.3", config_module="conf"):
        cfg = compose(config_name="query", overrides=overrides)
    first = run_query(cfg)
    assert len(list((tmp_path / "vectors").glob("*.npy"))) == 1
    shutil.rmtree(model)  # a model load would fail now, in this process too:
    clip_models.clear()
    again = run_query(cfg)
    assert [(h.media_id, h.sample_id) for h in again] == [(h.media_id, h.sample_id) for h in first]
    assert [h.score for h in again] == pytest.approx([h.score for h in first])
    cfg.text = "a blue square"  # a new query needs the model, and says it is missing
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader's error for a gone folder
        run_query(cfg)
