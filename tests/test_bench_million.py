"""``bench/million.py`` end to end at a tiny size: every step runs through the real jobs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("ingest", "clip", "tokens", "dups", "checks", "split", "export", "query", "packing", "why")


def _run(keep: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "million.py"), "--keep", str(keep), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_tiny_sizes_every_step_then_one_step_again(tmp_path: Path) -> None:
    """Both sizes get every step's seconds and peak RSS, a growth exponent each, and a later
    ``--steps`` run reuses the kept lakes and keeps the other figures."""
    keep = tmp_path / "bench"
    out = _run(keep, "--sizes", "200,400", "--reps", "2")
    assert out["sizes"] == [200, 400]
    assert set(out["steps"]) == set(STEPS)
    for step, entry in out["steps"].items():
        for n in ("200", "400"):
            fig = entry["figures"][n]
            assert fig["s"] > 0 and fig["rss_mb"] > 0, (step, n, fig)
        assert entry["exponents"][0] is not None, step
    assert out["steps"]["packing"]["figures"]["400"]["planned"] > 0
    assert out["steps"]["query"]["figures"]["200"]["p50_ms"] > 0
    assert out["steps"]["why"]["figures"]["400"]["p50_ms"] > 0
    # the images were made once, for the largest size; each lake holds its prefix
    assert [p.name for p in keep.glob("images_*")] == ["images_400"]
    assert (keep / "export_200" / "pairs.csv").is_file()

    before = out["steps"]["split"]["figures"]["200"]
    again = _run(keep, "--sizes", "200,400", "--steps", "why")
    assert again["steps"]["split"]["figures"]["200"] == before
    assert set(again["steps"]) == set(STEPS)
