"""``lakeloom demo``: generate the demo data if absent, ingest it, print the lake stats.

Later stages (enrich, check, split, train) extend this job as they land.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lake.demo_data import generate_from_config
from lake.ingest import build_source, ingest, settings_from_config
from lake.job import RunContext, hydra_job
from lake.stats import format_stats, lake_stats
from lake.store import Lake


@hydra_job("demo")
def main(cfg: Any) -> int:
    """Run the demo pipeline."""
    from lake.real_data import demo_photos, demo_read_speech, demo_traffic
    from lake.synth_speech import demo_speech
    from lake.synth_video import demo_videos

    summary = generate_from_config(cfg.demo)
    print(f"demo data: {summary['images']} images in {summary['path']}")
    videos = demo_videos(
        cfg.videos.out, int(cfg.videos.n), int(cfg.videos.seed), narration=cfg.videos.narration
    )
    print(f"demo videos: {len(videos['videos'])} in {cfg.videos.out}")
    speech = demo_speech(cfg.speech.out, int(cfg.speech.n), int(cfg.speech.seed))
    print(f"demo speech: {len(speech['files'])} files in {cfg.speech.out}")
    photos = demo_photos(cfg.photos.out, int(cfg.photos.max_side))
    print(f"demo photos: {len(photos['files'])} real photos in {cfg.photos.out}")
    traffic = demo_traffic(cfg.traffic.out)
    read_speech = demo_read_speech(cfg.read_speech.src, cfg.read_speech.out)
    print(f"demo read speech: {len(read_speech['files'])} real clips in {cfg.read_speech.out}")
    datasets = dict(cfg.datasets.items())
    made_by = {"speech": speech, "photos": photos, "traffic": traffic, "read_speech": read_speech}
    for name, made in made_by.items():
        if not made["files"] and datasets.pop(name, None) is not None:
            print(f"demo: not ingesting dataset `{name}` ({made.get('skipped')})")
    lake = Lake.from_config(cfg.lake)
    settings = settings_from_config(cfg)
    for dataset, source_cfg in datasets.items():
        ctx = RunContext.from_config("ingest", cfg)
        source = build_source(source_cfg)
        rejects = Path(cfg.lake.reports) / "rejects" / f"{dataset}.jsonl"
        report = ingest(source, lake, str(dataset), settings, ctx, rejects)
        print(report.summary())
    print()
    print(format_stats(lake_stats(lake), cfg.lake.uri))
    return 0


if __name__ == "__main__":
    main()
