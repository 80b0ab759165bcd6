"""Fixtures for core tests: a small real lake (ingested images) and config composition."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.conftest import jpeg_bytes, png_bytes

TEST_CONF = Path(__file__).parent / "conf"


def _folder(root: Path, classes: dict[str, int], seed: int) -> Path:
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            colour = ((37 * i + seed) % 256, (90 * c + 11 * i) % 256, (200 - 50 * c) % 256)
            data = jpeg_bytes(colour, (32, 24)) if i % 3 else png_bytes(colour, (24, 24))
            suffix = ".jpg" if i % 3 else ".png"
            (root / name / f"{name}{i:03d}{suffix}").write_bytes(data)
    return root


@pytest.fixture(scope="session")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake with datasets ``pets`` (cat 20, dog 20) and ``toys`` (ball 8).

    Four pets samples carry ``split = 'test'`` and two ``split = 'val'``; all others
    have no split (hash split).
    """
    from lake.ingest import IngestSettings, ingest
    from lake.schema import SAMPLES
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    base = tmp_path_factory.mktemp("core_lake")
    lake = Lake(base / "lake")
    settings = IngestSettings(workers=0, progress=False)
    ingest(
        ImageFolderSource(_folder(base / "pets", {"cat": 20, "dog": 20}, 1)), lake, "pets", settings
    )
    ingest(ImageFolderSource(_folder(base / "toys", {"ball": 8}, 5)), lake, "toys", settings)
    rows = lake.dataset(SAMPLES).to_table(filter="dataset = 'pets'").sort_by("source_uri")
    rows = rows.slice(0, 6).to_pylist()
    for i, r in enumerate(rows):
        r["split"] = "test" if i < 4 else "val"
    lake.upsert(SAMPLES, pa.Table.from_pylist(rows, lake.dataset(SAMPLES).schema))
    return base / "lake"


@pytest.fixture
def compose(tmp_path: Path, lake_dir: Path):
    """Compose ``conf/train.yaml`` (plus the test config dir) with overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def _compose(*overrides: str, runs: Path | None = None):
        base = [
            f"hydra.searchpath=[file://{TEST_CONF}]",
            f"lake.uri={lake_dir}",
            f"runs_dir={runs or tmp_path / 'runs'}",
        ]
        with initialize_config_module(version_base="1.3", config_module="conf"):
            return hydra_compose(config_name="train", overrides=[*base, *overrides])

    return _compose
