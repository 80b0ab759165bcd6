"""One key, ``runs_dir``, says where training runs live in every job's config."""

from __future__ import annotations

from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

JOBS = [
    ("train", []),
    ("merge", []),
    ("enrich", ["enrich=clip"]),
    ("enrich", ["enrich=caption"]),
    ("query", []),
    ("check", []),
    ("tui", []),
]


def _runs_dirs(node: Any, path: str = "") -> dict[str, Any]:
    """Every key named like a runs folder, anywhere in the config."""
    found: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("runs_dir", "run_dir_root", "runs_root"):
                found[where] = value
            found.update(_runs_dirs(value, where))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.update(_runs_dirs(value, f"{path}[{i}]"))
    return found


@pytest.mark.parametrize(("job", "overrides"), JOBS)
def test_every_runs_folder_follows_the_top_level_runs_dir(job: str, overrides: list[str]) -> None:
    with initialize_config_module("conf", version_base="1.3"):
        default = compose(job, overrides=overrides)
        moved = compose(job, overrides=[*overrides, "runs_dir=/elsewhere/runs"])
    assert default.runs_dir == "runs"
    found = _runs_dirs(OmegaConf.to_container(moved, resolve=True))
    assert found and set(found.values()) == {"/elsewhere/runs"}, found


def test_the_runs_dir_default_lives_in_one_file() -> None:
    from tests.conftest import REPO

    setters = sorted(
        str(p.relative_to(REPO / "conf"))
        for p in (REPO / "conf").rglob("*.yaml")
        for line in p.read_text().splitlines()
        if line.split("#")[0].strip().startswith("runs_dir:") and "${" not in line
    )
    assert setters == ["paths/default.yaml"]
