"""The sample screen's Lineage panel shows what `lakeloom why` shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tui.pilot import SIZE, make_app, until
from tui.screens.sample import SampleScreen

pytestmark = pytest.mark.anyio


async def test_sample_screen_shows_the_lineage(tmp_path: Path, class_folder: Path) -> None:
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from plugins.image_folder import ImageFolderSource

    lake = Lake(tmp_path / "lake")
    ingest(ImageFolderSource(class_folder), lake, "pets", IngestSettings(workers=0, progress=False))
    row = lake.dataset("samples").to_table(filter="source_uri = 'dog/dog1.png'").to_pylist()[0]
    app = make_app(tmp_path / "lake")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        app.push_screen(SampleScreen(row["sample_id"], app.config))
        await until(pilot, lambda: bool(app.screen.query("#panel-lineage")))
        panel = app.screen.query_one("#panel-lineage")

        def shown() -> str:
            return str(panel.body.render())

        await until(pilot, lambda: "written by" in shown(), timeout=30)
        assert f"sample {row['sample_id']}" in shown()
        assert "dog/dog1.png" in shown() and "image_folder" in shown()
        assert f"content sha256 {row['media_ids'][0]}" in shown()
        assert "ingest" in shown() and "wrote the row" in shown()
