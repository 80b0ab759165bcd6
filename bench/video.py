"""Benchmark: video analysis speed against PySceneDetect's CLI and a plain decode floor.

Writes a synthetic clip (default 1080p, 15 s, 30 fps, moving shapes, a planted cut every
3 s) to a temp dir, then measures on that same file, each best of ``--repeat`` runs:

1. floor: a plain threaded PyAV decode of every frame, no conversion;
2. ``lake.video.analyze_video`` with default settings (scene detection, motion sampling,
   dedupe, JPEG encoding, audio extraction): frames analysed per second;
3. PySceneDetect's own command line, ``scenedetect -i FILE detect-content list-scenes -n``
   (the venv's console script, in a subprocess): its reported in-loop rate and its wall
   time including start-up, and our ratio to it.

Cut positions found by both are checked against the planted ones. Prints a table and,
last, one line with a JSON object of the figures. Temp files are deleted unless ``--keep``.

    python bench/video.py [--seconds 15] [--fps 30] [--size 1920x1080] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lake.synth_video import PALETTE, SHAPE_COLOURS, SHAPES, Segment, write_video
from lake.video import analyze_video, conf_settings


def make_clip(path: Path, seconds: float, fps: int, size: tuple[int, int]) -> dict:
    """A clip of 3 s scenes, all but one with a moving shape, each on another background."""
    n = max(2, round(seconds / 3))

    def grey(c: tuple[int, int, int]) -> float:
        return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]

    segments = []
    for k in range(n):
        background = PALETTE[k % len(PALETTE)]
        colour = max(SHAPE_COLOURS, key=lambda c: abs(grey(c) - grey(background)))
        motion = "static" if k == 1 else "moving"
        segments.append(
            Segment(
                seconds / n, background, SHAPES[k % len(SHAPES)], colour, motion, 440.0 + 110 * k
            )
        )
    return write_video(path, segments, fps=fps, size=size)


def floor(path: Path) -> tuple[float, int]:
    """Seconds and frame count of a threaded decode of every frame, nothing else."""
    t0 = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = sum(1 for _ in container.decode(stream))
    return time.perf_counter() - t0, frames


def ours(path: Path) -> tuple[float, object]:
    """Seconds and result of analyze_video with default settings."""
    t0 = time.perf_counter()
    result = analyze_video(path, conf_settings())
    return time.perf_counter() - t0, result


def scenedetect_cli(path: Path) -> tuple[float, float, list[int]]:
    """Wall seconds, reported in-loop frames/s, and cut frames (0-based) of the CLI."""
    exe = Path(sys.executable).parent / "scenedetect"
    cmd = [str(exe), "-i", str(path), "detect-content", "list-scenes", "-n"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    rate = re.search(r"Processed \d+ frames in [\d.]+ seconds \(average ([\d.]+) FPS\)", text)
    starts = [int(m) - 1 for m in re.findall(r"^\s*\|\s*\d+\s*\|\s*(\d+)\s*\|", text, re.M)]
    return wall, float(rate.group(1)) if rate else float("nan"), starts[1:]


def main() -> None:
    """Generate the clip, run the three measurements, print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="folder for the clip (default: a temp dir)")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    work = args.keep or Path(tempfile.mkdtemp(prefix="lakeloom-bench-video-"))
    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip.mp4"
    try:
        t0 = time.perf_counter()
        truth = make_clip(clip, args.seconds, args.fps, size)
        gen_s = time.perf_counter() - t0
        analyze_video(clip, conf_settings())  # warm-up: imports, page cache

        floor_s, frames = min(floor(clip) for _ in range(args.repeat))
        runs = [ours(clip) for _ in range(args.repeat)]
        ours_s, result = min(runs, key=lambda r: r[0])
        cli_runs = [scenedetect_cli(clip) for _ in range(args.repeat)]
        cli_wall = min(r[0] for r in cli_runs)
        cli_fps = max(r[1] for r in cli_runs)
        cli_cuts = cli_runs[0][2]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    truth_cuts = [c["frame"] for c in truth["cuts"]]
    our_cuts = [s.first_frame for s in result.scenes[1:]]
    ours_fps, floor_fps, cli_wall_fps = frames / ours_s, frames / floor_s, frames / cli_wall
    rows = [
        ("floor: PyAV threaded decode", floor_s, floor_fps),
        ("lakeloom analyze_video", ours_s, ours_fps),
        ("scenedetect CLI, in-loop", frames / cli_fps, cli_fps),
        ("scenedetect CLI, wall", cli_wall, cli_wall_fps),
    ]
    print(
        f"clip: {size[0]}x{size[1]}, {frames} frames at {args.fps} fps, "
        f"{len(truth_cuts)} planted cuts (written in {gen_s:.1f} s)"
    )
    print(f"{'':32}{'seconds':>10}{'frames/s':>11}{'vs floor':>10}")
    for name, s, rate in rows:
        print(f"{name:32}{s:>10.2f}{rate:>11.0f}{rate / floor_fps:>10.2f}")
    print(f"analyze_video / scenedetect CLI (in-loop): {ours_fps / cli_fps:.2f}x")
    print(f"cuts planted {truth_cuts}, ours {our_cuts}, scenedetect {cli_cuts}")
    st = result.stats
    print(
        f"kept {st['kept']} frames of {st['candidates']} candidates "
        f"({st['dropped_static']} static, {st['dropped_duplicate']} duplicate dropped)"
    )
    print(
        json.dumps(
            {
                "bench": "video",
                "size": f"{size[0]}x{size[1]}",
                "frames": frames,
                "floor_fps": round(floor_fps, 1),
                "analyze_fps": round(ours_fps, 1),
                "scenedetect_cli_fps": round(cli_fps, 1),
                "scenedetect_cli_wall_fps": round(cli_wall_fps, 1),
                "ratio_vs_scenedetect": round(ours_fps / cli_fps, 3),
                "ratio_vs_floor": round(ours_fps / floor_fps, 3),
                "cuts_planted": truth_cuts,
                "cuts_ours": our_cuts,
                "cuts_scenedetect": cli_cuts,
                "kept_frames": st["kept"],
            }
        )
    )


if __name__ == "__main__":
    main()
