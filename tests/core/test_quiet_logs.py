"""Quiet by default: each Lightning line once, no adverts, open_clip below warning, and no
``outputs/`` folder from any job."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from lake.job import quiet_logs
from tests.conftest import REPO


def test_lightning_lines_once_no_advert_no_open_clip_info() -> None:
    import lightning as L
    import open_clip
    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # what Hydra's stdout job_logging installs
    lightning_stream = io.StringIO()
    lightning_console = logging.StreamHandler(lightning_stream)  # Lightning's own, on import
    logging.getLogger("lightning").addHandler(lightning_console)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        quiet_logs()
        L.seed_everything(3)
        rank_zero_info("💡 Tip: try installing [litlogger] to log to the cloud")
        open_clip.get_tokenizer("ViT-B-32")  # logs "Parsing tokenizer identifier" at INFO
        logging.getLogger("open_clip").warning("kept: a warning")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        logging.getLogger("lightning").removeHandler(lightning_console)
    lines = (stream.getvalue() + lightning_stream.getvalue()).splitlines()
    assert [ln for ln in lines if "Seed set to 3" in ln] == ["Seed set to 3"]
    assert not any("Tip" in ln or "litlogger" in ln for ln in lines), lines
    assert not any("tokenizer" in ln.lower() for ln in lines), lines
    assert "kept: a warning" in lines


def test_merge_writes_no_outputs_folder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "core.merge", "run=nope", f"runs_dir={tmp_path / 'runs'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no run 'nope'" in done.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()
