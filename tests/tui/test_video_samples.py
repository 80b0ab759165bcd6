"""Video samples in the TUI: a clip's frames, place in its video and transcript.

The lake is made for real: a synthetic video with planted cuts whose audio speaks a
sentence (espeak-ng), ingested by the video source and transcribed by faster-whisper.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import conf_kwargs
from tests.tui.pilot import SIZE, make_app, type_into, until
from tui.screens.sample import SampleScreen
from tui.widgets.sample_table import SampleTable

pytestmark = pytest.mark.anyio
GREY, RED, BLUE = (90, 90, 90), (200, 30, 30), (30, 30, 200)


@pytest.fixture(scope="module")
def video_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lake.enrich import enrich
    from lake.ingest import IngestSettings, ingest
    from lake.store import Lake
    from lake.synth_video import Segment, speak, write_video
    from plugins.transcribe import ClipTranscript, TranscribeEnricher
    from plugins.video import VideoSource

    root = tmp_path_factory.mktemp("tui_video")
    speech = speak("the quick brown fox jumps over the lazy dog")
    assert speech is not None, "espeak-ng is needed (make test installs it)"
    segments = [
        Segment(1.5, GREY, "circle", RED, "static", None),
        Segment(4.5, BLUE, "square", RED, "moving", None),
    ]
    write_video(root / "videos" / "fox.mp4", segments, speech=speech, speech_at=2.5)
    lake = Lake(root / "lake")
    source = VideoSource(
        **conf_kwargs("ingest", "source", "source=video", path=root / "videos", workers=0)
    )
    ingest(source, lake, settings=IngestSettings(progress=False))
    enrich(
        TranscribeEnricher(**conf_kwargs("enrich", "enrich.steps.audio", "enrich=transcribe")),
        lake,
        progress=False,
    )
    enrich(ClipTranscript(), lake, progress=False)
    return root / "lake"


async def test_clip_sample_shows_its_frames_scene_and_speech(video_lake: Path) -> None:
    async with make_app(video_lake).run_test(size=SIZE) as pilot:
        await until(
            pilot, lambda: isinstance(pilot.app.screen.query(SampleTable).first(), SampleTable)
        )
        table = pilot.app.screen.query_one(SampleTable)
        await until(pilot, lambda: table.current_row is not None)
        await type_into(pilot, "slash", *"transcript != ''", "enter")
        await until(pilot, lambda: len(table) == 1 and table.current_row is not None)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, SampleScreen))
        screen = pilot.app.screen
        panel = screen.query_one("#panel-media")
        await until(pilot, lambda: "speech" in str(panel.body.render()))
        shown = str(panel.body.render())
        assert re.search(r"^clip 1\.5\d-6\.00s$", shown, re.M)  # the cut, within a frame
        from lake.store import Lake

        rows = Lake(video_lake).dataset("samples").to_table(filter="transcript != ''")
        transcript = rows.column("transcript")[0].as_py()
        assert "lazy dog" in transcript.lower() and f"speech {transcript}" in shown
        frames = [line for line in shown.splitlines() if line.startswith("frame")]
        assert len(frames) > 1 and all("scene 1" in f and "fox.mp4#t=" in f for f in frames)
        provenance = str(screen.query_one("#panel-provenance").body.render())
        assert "scene_detect" in provenance and "sample" in provenance
