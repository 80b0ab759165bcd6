"""No code runs from a checkpoint: every entry point that reads one refuses a planted pickle.

Each test writes a checkpoint whose pickle would create a marker file when unpickled
(``pathlib.Path.touch`` through ``__reduce__``) and feeds it to a real entry point:
``enrich.model.pretrained``, ``model.pretrained``, ``model.init_from``, ``lakeloom merge``
and ``resume=true``. The marker must never appear and the error must be one line that
names the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.checkpoint import CheckpointError, check_checkpoint, load_checkpoint
from lake.errors import LakeloomError
from tests.conftest import REPO

FAST = ("trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")


class _Plant:
    """Unpickling this calls ``Path(marker).touch()``: code run by ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _planted(path: Path, marker: Path, **extra: object) -> Path:
    """A Lightning-shaped checkpoint with the plant inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "plant": _Plant(marker), **extra}, path)
    return path


def _assert_refused(exc: BaseException, path: Path, marker: Path, *, exact: bool = True) -> None:
    """The marker is absent and ``exc`` is one line naming ``path`` and the refused global;
    ``exact=False``: ``exc`` may wrap that line (resume: "no intact checkpoint in ...")."""
    text = str(exc)
    assert not marker.exists(), "the planted pickle ran"
    assert isinstance(exc, CheckpointError if exact else LakeloomError), repr(exc)
    line = f"{path}: cannot load checkpoint: "
    assert "\n" not in text and (text.startswith(line) if exact else line in text)
    assert "Path.touch" in text or "getattr" in text  # the refused global is named


def test_the_plant_runs_under_an_unsafe_load(tmp_path: Path) -> None:
    """The fixture is real: ``weights_only=False`` (the old loaders) creates the marker."""
    marker = tmp_path / "MARKER"
    ckpt = _planted(tmp_path / "evil.ckpt", marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_loader_refuses_plants_and_names_unreadable_files(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    evil = _planted(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    _assert_refused(err.value, evil, marker)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(evil)  # the memory-mapped check refuses it too
    _assert_refused(err.value, evil, marker)
    system = tmp_path / "system.pt"
    torch.save({"x": os.system}, system)
    with pytest.raises(CheckpointError, match=r"names posix\.system"):
        load_checkpoint(system)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(evil.read_bytes()[:100])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage, tmp_path / "missing.ckpt"):
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(bad)
        assert str(err.value).startswith(f"{bad}: cannot load checkpoint: ")
        assert "\n" not in str(err.value)
    assert not marker.exists()


def test_enrich_model_pretrained_refuses_a_plant(lake_dir: Path, tmp_path: Path) -> None:
    """``lakeloom enrich enrich=clip enrich.model.pretrained=FILE`` (.ckpt and .pt)."""
    import shutil

    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from lake.enrich import main as enrich_main
    from plugins.clip_embed import clear_cache

    lake = shutil.copytree(lake_dir, tmp_path / "lake")  # the job records its run there
    marker = tmp_path / "MARKER"
    for name in ("evil.ckpt", "evil.pt"):
        evil = _planted(tmp_path / name, marker)
        with initialize_config_module(version_base="1.3", config_module="conf"):
            cfg = hydra_compose(
                config_name="enrich",
                overrides=[f"lake.uri={lake}", f"enrich.model.pretrained={evil}",
                           "enrich.model.device=cpu", "enrich.progress=false"],
            )  # fmt: skip
        clear_cache()
        with pytest.raises(LakeloomError) as err:
            enrich_main.__wrapped__(cfg)  # the job function under the Hydra wrapper
        _assert_refused(err.value, evil, marker)


def test_model_pretrained_refuses_a_plant(compose, tmp_path: Path) -> None:
    """``lakeloom train model=clip_tiny model.pretrained=FILE`` (a run's .ckpt or a .pt)."""
    from core.train import train

    marker = tmp_path / "MARKER"
    for i, name in enumerate(("evil.ckpt", "evil.pt")):
        evil = _planted(tmp_path / name, marker)
        cfg = compose("model=clip_tiny", f"model.pretrained={evil}", f"run_id=p{i}", *FAST)
        with pytest.raises(LakeloomError) as err:
            train(cfg)
        _assert_refused(err.value, evil, marker)


def test_model_init_from_refuses_a_plant(compose, tmp_path: Path) -> None:
    """``lakeloom train model=llava_tiny model.init_from=FILE`` (file or run directory)."""
    from core.train import train

    marker = tmp_path / "MARKER"
    evil = _planted(tmp_path / "other_run" / "checkpoints" / "last.ckpt", marker)
    for i, where in enumerate((evil, tmp_path / "other_run")):
        cfg = compose("model=llava_tiny", f"model.init_from={where}", f"run_id=i{i}", *FAST)
        with pytest.raises(LakeloomError) as err:
            train(cfg)
        _assert_refused(err.value, evil, marker)


def _vlm_run(compose, tmp_path: Path, run_id: str, marker: Path) -> Path:
    """A run directory with a VLM's saved config and a planted ``last.ckpt``."""
    run = tmp_path / "runs" / run_id
    run.mkdir(parents=True)
    cfg = compose("model=llava_tiny", "data.datasets=[convs]", f"run_id={run_id}", *FAST)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return _planted(run / "checkpoints" / "last.ckpt", marker, global_step=3)


def test_merge_refuses_a_plant(compose, tmp_path: Path) -> None:
    """``lakeloom merge run=ID`` (in process, and the CLI's one stderr line)."""
    from core.merge import merge

    marker = tmp_path / "MARKER"
    evil = _vlm_run(compose, tmp_path, "m", marker)
    with pytest.raises(LakeloomError) as err:
        merge(tmp_path / "runs", "m", "last")
    _assert_refused(err.value, evil, marker)
    out = subprocess.run(
        [sys.executable, "-m", "lake.cli", "merge", "run=m", f"runs_dir={tmp_path / 'runs'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 1 and not marker.exists()
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(f"lakeloom: {evil}: cannot load checkpoint: "), out.stderr
    assert "Traceback" not in out.stderr


def test_resume_refuses_a_planted_last_ckpt(compose, tmp_path: Path) -> None:
    """``lakeloom train ... resume=true run_id=ID`` with a planted ``last.ckpt``."""
    from core.train import train

    marker = tmp_path / "MARKER"
    evil = _vlm_run(compose, tmp_path, "r", marker)
    cfg = compose("model=llava_tiny", "data.datasets=[convs]", "run_id=r", "resume=true", *FAST)
    with pytest.raises(LakeloomError) as err:
        train(cfg)
    _assert_refused(err.value, evil, marker, exact=False)  # core.run finds no intact one


def test_train_main_reports_a_corrupt_last_ckpt_in_one_line(compose, tmp_path: Path) -> None:
    """A truncated ``last.ckpt`` (a run killed while saving): one line, the file named once."""
    from core.train import main

    evil = _vlm_run(compose, tmp_path, "t", tmp_path / "MARKER")
    evil.write_bytes(evil.read_bytes()[:200])
    cfg = compose("model=llava_tiny", "run_id=t", "resume=true", *FAST)
    with pytest.raises(LakeloomError) as err:
        main.__wrapped__(cfg)  # the job function under the Hydra wrapper
    text = str(err.value)
    assert f"{evil}: cannot load checkpoint: " in text and text.count(str(evil)) == 1
    assert "\n" not in text


def test_sharded_checkpoint_folder_is_checked_with_its_shard_index(tmp_path: Path) -> None:
    """An FSDP sharded checkpoint (``resume=true`` with ``trainer=fsdp``) is a folder:
    ``meta.pt`` (read by torch.load) and torch.distributed.checkpoint's ``.metadata``
    index (read by a plain ``pickle.load`` in torch): both are vetted."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
        dcp.save({"model": torch.nn.Linear(3, 2).state_dict()}, checkpoint_id=folder)
    torch.save({"global_step": 3, "loops": {"fit_loop": {}}}, folder / "meta.pt")
    check_checkpoint(folder)  # a real one passes
    marker = tmp_path / "MARKER"
    index = folder / ".metadata"
    index.write_bytes(pickle.dumps({"storage_meta": _Plant(marker)}))
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(folder)
    _assert_refused(err.value, index, marker)
    with pytest.raises(CheckpointError, match=r"without meta\.pt"):
        check_checkpoint(tmp_path)
