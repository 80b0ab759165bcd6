"""The TUI on real data: a photo (the EXIF one), a traffic-video frame and a read-speech
transcript, each opened on the sample screen of a small lake made the way the demo makes
it (lake/real_data.py, then the clip_pairs, video and audio sources and Whisper)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lake.real_data import EXIF_PHOTO, package_data_dir, speech_plan
from tests.conftest import conf_kwargs
from tests.tui.pilot import SIZE, make_app, type_into, until
from tui.screens.sample import SampleScreen
from tui.widgets.sample_table import SampleTable

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        package_data_dir("mvtbdata") is None
        or not Path("/usr/share/pocketsphinx/test/data/librivox").is_dir(),
        reason="mvtb-data and Debian pocketsphinx-testdata are needed (make venv, make sysdeps)",
    ),
]
CLIP = "librivox_0880.wav"  # "he was not an ill disposed young man"


@pytest.fixture(scope="module")
def real_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lake.enrich import enrich
    from lake.ingest import IngestSettings, ingest
    from lake.real_data import demo_photos, demo_traffic
    from lake.store import Lake
    from plugins.audio import AudioSource
    from plugins.clip_pairs import ClipPairsSource
    from plugins.transcribe import TranscribeEnricher
    from plugins.video import VideoSource

    root = tmp_path_factory.mktemp("tui_real")
    demo_photos(root / "photos", 96)
    demo_traffic(root / "traffic")
    (root / "speech").mkdir()
    wav, _ = speech_plan("/usr/share/pocketsphinx/test/data")[CLIP]
    shutil.copyfile(wav, root / "speech" / CLIP)
    lake = Lake(root / "lake")
    quiet = IngestSettings(workers=0, progress=False)
    for dataset, source in (
        ("photos", ClipPairsSource(root / "photos" / "captions.csv")),
        (
            "traffic",
            VideoSource(
                **conf_kwargs("ingest", "source", "source=video", path=root / "traffic", workers=0)
            ),
        ),
        ("read_speech", AudioSource(root / "speech", workers=0)),
    ):
        report = ingest(source, lake, dataset, quiet)
        assert report.new_samples and not report.rejected, report.summary()
    enrich(
        TranscribeEnricher(
            **conf_kwargs("enrich", "enrich.steps.audio", "enrich=transcribe", cpu_threads=1)
        ),
        lake,
        progress=False,
    )
    return root / "lake"


async def _open(pilot, where: str, rows: int) -> SampleScreen:
    """Filter the browse table to ``rows`` samples, open the first on the sample screen."""
    await until(pilot, lambda: isinstance(pilot.app.screen.query(SampleTable).first(), SampleTable))
    table = pilot.app.screen.query_one(SampleTable)
    await until(pilot, lambda: table.current_row is not None)
    await type_into(pilot, "slash", *where, "enter")
    await until(pilot, lambda: len(table) == rows and table.current_row is not None)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen))
    return pilot.app.screen


@pytest.mark.parametrize(
    ("where", "rows", "shown"),
    [
        ("caption = 'a tabby cat'", 1, EXIF_PHOTO),
        ("dataset = 'traffic'", 3, "traffic_sequence.mp4"),
    ],
)
async def test_photo_and_traffic_samples_show_their_images(
    real_lake: Path, where: str, rows: int, shown: str
) -> None:
    async with make_app(real_lake).run_test(size=SIZE) as pilot:
        screen = await _open(pilot, where, rows)
        await until(pilot, lambda: len(screen.query(".sample-image")) > 0)
        header = str(screen.query_one("#sample-header").render())
        panel = str(screen.query_one("#panel-media").body.render())
        assert shown in header + panel


async def test_read_speech_sample_shows_its_transcript(real_lake: Path) -> None:
    async with make_app(real_lake).run_test(size=SIZE) as pilot:
        screen = await _open(pilot, "dataset = 'read_speech'", 1)
        panel = screen.query_one("#panel-media")
        await until(pilot, lambda: "speech" in str(panel.body.render()))
        shown = str(panel.body.render()).lower()
        assert "young man" in shown and CLIP in shown
