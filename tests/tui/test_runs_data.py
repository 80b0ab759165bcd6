"""tui.runs_data: run statuses, the incremental events tail, downsampling and replay."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lake import runs as run_words
from tui.runs_data import EventTail, downsample, format_event, list_runs, replay, replay_run

RUNS = Path(__file__).resolve().parents[1] / "data" / "runs"
RECORDED = RUNS / "recorded-llava"


def line(kind: str, **fields: object) -> str:
    return json.dumps({"t": round(time.time(), 3), "type": kind, **fields}) + "\n"


def age(path: Path, seconds: float) -> None:
    """Backdate every file under ``path`` (git checkouts give fixtures a fresh mtime)."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(RUNS, root)
    age(root, 3600)
    return root


def by_id(root: Path, **kw: float) -> dict:
    return {r.run_id: r for r in list_runs(root, **kw)}


# -- list_runs ------------------------------------------------------------------------------
def test_list_runs_statuses(runs: Path) -> None:
    (runs / "empty").mkdir()
    (runs / "empty" / "events.jsonl").touch()
    (runs / "not-a-run").mkdir()  # no events, no summary: ignored
    (runs / "stray.txt").write_text("x")
    for name in ("live", "killed"):
        (runs / name).mkdir()
        (runs / name / "events.jsonl").write_text(
            line("status", status="started", run_id=name, experiment="exp")
            + line("train", step=4, loss=1.5)
        )
    age(runs / "killed", 900)
    age(runs / "empty", 900)

    found = list_runs(runs)
    info = {r.run_id: r for r in found}
    assert set(info) == {"recorded-llava", "failed-run", "corrupt-run", "empty", "live", "killed"}
    assert [r.run_id for r in found][:2] in (["live", "killed"], ["killed", "live"])

    rec = info["recorded-llava"]
    assert (rec.status, rec.experiment, rec.error, rec.step) == ("finished", "default", None, 30)
    assert rec.duration_s == pytest.approx(110.344)
    assert rec.best == {"metric": "val/loss", "value": pytest.approx(4.4463, abs=1e-4), "step": 30}

    failed = info["failed-run"]
    assert failed.status == "failed"
    assert failed.error.startswith("RuntimeError: batch 19")
    # the summary of a failed run has no best: computed from val events + config monitor
    assert failed.best == {
        "metric": "val/loss",
        "value": pytest.approx(4.7281, abs=1e-4),
        "step": 15,
    }

    corrupt = info["corrupt-run"]  # no final status, silent for an hour: killed
    assert corrupt.status == "interrupted"
    assert "no final status" in corrupt.error and "1 corrupt line" in corrupt.error
    assert corrupt.step == 20  # last complete train event before the torn line

    assert info["empty"].status == "unknown" and "empty" in info["empty"].error
    assert info["live"].status == "running" and info["live"].experiment == "exp"
    assert 0 <= info["live"].duration_s < 60
    assert info["killed"].status == "interrupted"
    assert info["killed"].duration_s == pytest.approx(0, abs=1)  # last event - start


def test_stale_threshold_is_a_parameter(runs: Path) -> None:
    assert by_id(runs)["corrupt-run"].status == "interrupted"
    assert by_id(runs, stale_after_s=7200)["corrupt-run"].status == "running"
    age(runs / "corrupt-run", 0)  # freshly written: running
    assert by_id(runs)["corrupt-run"].status == "running"


def dead_owner() -> dict:
    """pid, host and start time of a process of this host that has exited."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return {"pid": gone.pid, "host": socket.gethostname(), "pid_start": 1}


def test_a_started_run_whose_process_is_gone_reads_killed(tmp_path: Path) -> None:
    owners = {
        "dead": dead_owner(),
        "alive": run_words.owner(),  # this test's own process
        "elsewhere": {**dead_owner(), "host": "elsewhere"},  # cannot be checked here
    }
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "events.jsonl").write_text(
            line("status", status="started", experiment="e", **owner) + line("train", step=3)
        )
    age(tmp_path / "alive", 3600)
    age(tmp_path / "elsewhere", 3600)
    info = by_id(tmp_path)
    assert info["dead"].status == "killed"  # at once, not after stale_after_s of silence
    assert "ended without a final status" in info["dead"].error
    assert info["alive"].status == "running"  # silent for an hour, but its process runs
    assert info["elsewhere"].status == "interrupted"  # the silence rule
    tail = EventTail(tmp_path / "dead" / "events.jsonl")
    tail.poll()
    assert tail.status == "killed"


def test_bad_files_never_raise(runs: Path) -> None:
    (runs / "recorded-llava" / "summary.json").write_text('{"status": "fini')
    (runs / "garbage").mkdir()
    (runs / "garbage" / "events.jsonl").write_bytes(b"\xff\xfe\x00 nonsense\n[1, 2]\n")
    (runs / "odd-summary").mkdir()
    (runs / "odd-summary" / "summary.json").write_text('["a list"]')
    info = by_id(runs)
    assert info["recorded-llava"].status == "unknown"
    assert info["recorded-llava"].error.startswith("summary.json: JSONDecodeError")
    assert info["garbage"].status == "unknown"
    assert "no status event" in info["garbage"].error and "2 corrupt" in info["garbage"].error
    assert info["odd-summary"].status == "unknown"
    assert list_runs(runs / "missing") == []


def test_list_runs_follows_a_run_and_a_resume(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    events = run / "events.jsonl"
    events.write_text(line("status", status="started", experiment="e"))
    assert by_id(tmp_path)["r1"].status == "running"
    with events.open("a") as fh:
        fh.write(line("status", status="interrupted", error="KeyboardInterrupt: "))
    summary = {"status": "interrupted", "started_at": time.time() - 5, "total_s": 5.0}
    summary["finished_at"] = time.time() - 0.5
    (run / "summary.json").write_text(json.dumps(summary))
    assert by_id(tmp_path)["r1"].status == "interrupted"
    # resume=true appends a new "started" while the old summary stays until the end
    with events.open("a") as fh:
        fh.write(line("status", status="started", experiment="e", resumed_from="last.ckpt"))
    assert by_id(tmp_path)["r1"].status == "running"


# -- EventTail ------------------------------------------------------------------------------
def test_event_tail_reads_appended_chunks(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.poll() == 0 and tail.status == "unknown"  # not there yet

    with path.open("a") as fh:
        fh.write(line("status", status="started"))
        fh.flush()
        assert tail.poll() == 1 and tail.status == "running"
        train = line("train", step=10, loss=2.0, lr=1e-3, samples_per_s=50.0, gpu_mem_mb=None)
        fh.write(train[:25])  # torn: the writer has not finished the line
        fh.flush()
        assert tail.poll() == 0
        fh.write(train[25:] + line("train", step=20, loss=1.5, lr=5e-4))
        fh.flush()
        assert tail.poll() == 2
        assert tail.poll() == 0

    assert tail.series("loss") == ([10.0, 20.0], [2.0, 1.5])
    assert tail.metric_names() == ["loss", "lr", "samples_per_s"]  # gpu_mem_mb was null
    assert tail.series("nope") == ([], [])
    assert tail.last["train"]["step"] == 20 and tail.corrupt == 0
    assert tail.log_lines(1)[0].endswith("train step 20 loss 1.5 lr 5.0e-4")


def test_event_tail_recorded_run() -> None:
    tail = EventTail(RECORDED / "events.jsonl")
    assert tail.poll() == 26
    assert tail.status == "finished" and tail.corrupt == 0
    names = tail.metric_names()
    for name in ("train/loss", "val/loss", "test/loss", "lr", "samples_per_s", "cpu_mem_mb"):
        assert name in names
    assert not {"step", "epoch", "t", "gpu_mem_mb"} & set(names)
    steps, values = tail.series("val/loss")
    assert steps == [15.0, 30.0] and values[1] == pytest.approx(4.4463, abs=1e-4)
    assert tail.series("train/loss")[0] == [float(s) for s in range(2, 31, 2)]
    log = tail.log_lines(200)
    assert len(log) == 26 and log == tail.log_lines(26)
    assert any(" train step 2 loss 6.078 lr 9.9e-4 " in entry for entry in log)
    assert any("params llava params 253,888 trainable 147,904" in entry for entry in log)
    assert log[-1].split(" ", 1)[1].startswith("summary step 30 finished total 110.3s")


def test_event_tail_corrupt_and_torn_lines() -> None:
    tail = EventTail(RUNS / "corrupt-run" / "events.jsonl")
    assert tail.poll() == 14
    assert tail.corrupt == 1  # the torn last line is not corrupt: it may still complete
    assert tail.status in ("running", "interrupted")  # by the file's age
    assert tail._status == "started"
    assert 10.0 not in tail.series("loss")[0] and tail.series("loss")[0][-1] == 20.0


def test_event_tail_restarts_on_truncation_and_replacement(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(line("train", step=s, loss=1.0 / s) for s in range(1, 6)))
    tail = EventTail(path)
    assert tail.poll() == 5
    path.write_text(line("train", step=1, loss=9.0))  # truncated and rewritten
    assert tail.poll() == 1
    assert tail.series("loss") == ([1.0], [9.0]) and len(tail.log_lines()) == 1

    new = tmp_path / "new.jsonl"  # replaced by a bigger file (new inode)
    new.write_text("".join(line("val", step=s, **{"val/acc": 0.5}) for s in range(1, 20)))
    os.replace(new, path)
    assert tail.poll() == 19
    assert tail.metric_names() == ["val/acc"]

    path.unlink()
    assert tail.poll() == 0
    path.write_text(line("status", status="started"))
    assert tail.poll() == 1 and tail.metric_names() == []


@pytest.mark.parametrize("max_points", [4, 7, 500])
def test_event_tail_memory_is_bounded(tmp_path: Path, max_points: int) -> None:
    path = tmp_path / "events.jsonl"
    n = 100_000
    with path.open("w") as fh:
        fh.writelines(f'{{"t": 0, "type": "train", "step": {s}, "loss": {s}}}\n' for s in range(n))
    tail = EventTail(path, max_points=max_points)
    assert tail.poll() == n
    steps, values = tail.series("loss")
    assert len(steps) <= max_points
    assert steps[0] == 0 and steps[-1] == n - 1 and steps == values
    stored = steps[:-1]  # evenly spaced, the latest point kept on top
    assert len({b - a for a, b in itertools.pairwise(stored)}) == 1
    assert len(tail.log_lines(10**6)) == 1000 and tail.log_lines(1)[0].endswith("99999")


# -- downsample -----------------------------------------------------------------------------
def test_downsample_keeps_min_and_max_per_bucket() -> None:
    n, width = 1000, 10
    xs = [float(i) for i in range(n)]
    ys = [((i * 37) % 101) / 100 for i in range(n)]
    ys[123], ys[877] = 50.0, -50.0  # spikes
    out_x, out_y = downsample(xs, ys, width)
    assert len(out_x) == len(out_y) <= 2 * width
    assert out_x == sorted(out_x)
    for b in range(width):
        bucket = ys[b * n // width : (b + 1) * n // width]
        kept = [y for x, y in zip(out_x, out_y, strict=True) if b * 100 <= x < (b + 1) * 100]
        assert min(bucket) in kept and max(bucket) in kept
    assert 50.0 in out_y and -50.0 in out_y


def test_downsample_short_input_passes_through() -> None:
    xs, ys = [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]
    assert downsample(xs, ys, 2) == (xs, ys)
    assert downsample(xs, ys, 0) == ([], [])
    assert downsample([], [], 5) == ([], [])
    assert len(downsample(list(range(7)), list(range(7)), 3)[0]) <= 6


# -- replay ---------------------------------------------------------------------------------
@pytest.mark.parametrize("run", ["recorded-llava", "corrupt-run"])
def test_replay_writes_an_identical_file(tmp_path: Path, run: str) -> None:
    src = RUNS / run / "events.jsonl"
    dst = tmp_path / "out" / "events.jsonl"
    assert replay(src, dst, speed=None) == len(src.read_bytes().splitlines())
    assert dst.read_bytes() == src.read_bytes()


def test_replay_while_watching(tmp_path: Path) -> None:
    """A live run: the tail follows a timed replay and ends with the full picture."""
    dst = tmp_path / "live" / "events.jsonl"
    writer = threading.Thread(target=replay, args=(RECORDED / "events.jsonl", dst, 1e3, 0.01))
    tail, seen = EventTail(dst), []
    writer.start()
    while writer.is_alive():
        seen.append(tail.poll())
        time.sleep(0.002)
    writer.join()
    seen.append(tail.poll())
    assert sum(seen) == 26 and sum(1 for s in seen if s) > 1
    full = EventTail(RECORDED / "events.jsonl")
    full.poll()
    assert tail.status == "finished"
    assert tail.series("train/loss") == full.series("train/loss")
    assert dst.read_bytes() == (RECORDED / "events.jsonl").read_bytes()


def test_replay_run_looks_like_training(tmp_path: Path) -> None:
    dst = tmp_path / "runs" / "demo"
    replay_run(RECORDED, dst)
    info = by_id(tmp_path / "runs")["demo"]
    assert info.status == "finished" and info.best["metric"] == "val/loss"
    assert (dst / "config.yaml").read_bytes() == (RECORDED / "config.yaml").read_bytes()


def test_format_event_curriculum_switch() -> None:
    line = format_event({"t": 0, "type": "curriculum", "epoch": 2, "stage": "audio",
                         "kinds": ["image", "frame", "audio"], "samples": 367})  # fmt: skip
    assert line.endswith("curriculum epoch 2 -> audio (image, frame, audio) 367 samples")
