"""The `lakeloom` console script and the lake jobs, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lake.cli import JOBS, usage
from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lake.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_jobs_without_importing_heavy_modules() -> None:
    code = (
        "import sys, lake.cli; lake.cli.main(['--help']); "
        "print(sorted(m for m in ('lancedb', 'torch', 'hydra') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip().endswith("[]")
    for job in JOBS:
        assert job in usage()


def test_unknown_job_exits_2() -> None:
    assert _run("frobnicate").returncode == 2


def test_ingest_stats_versions_through_the_cli(class_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    common = [f"lake.uri={lake}", f"lake.reports={tmp_path / 'reports'}"]
    out = _run(
        "ingest", f"source.path={class_folder}", "dataset=pets", "ingest.progress=false", *common
    )
    assert out.returncode == 0, out.stderr
    assert "8 new samples" in out.stdout and "images/s" in out.stdout
    stats = _run("stats", *common[:1])
    assert stats.returncode == 0
    assert any(line.split() == ["pets", "8"] for line in stats.stdout.splitlines())
    assert any(line.split() == ["media", "7"] for line in stats.stdout.splitlines())
    versions = _run("versions", "table=samples", *common[:1])
    assert versions.returncode == 0 and "ingest-" in versions.stdout


def test_invalid_config_and_nothing_ingested_are_errors(tmp_path: Path) -> None:
    lake = f"lake.uri={tmp_path / 'lake'}"
    missing = _run("ingest", f"source.path={tmp_path / 'nope'}", lake)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = _run("ingest", "source=no_such_source", "source.path=x", lake)
    assert unknown.returncode != 0 and "no_such_source" in unknown.stderr
    empty = tmp_path / "empty" / "cls"
    empty.mkdir(parents=True)
    (empty / "bad.jpg").write_bytes(b"junk")
    nothing = _run("ingest", f"source.path={empty.parent}", lake, "ingest.progress=false")
    assert nothing.returncode == 1 and "nothing could be ingested" in nothing.stdout


def test_plugins_lists_every_builtin_source() -> None:
    out = _run("plugins")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    names = {r[1] for r in rows if r and r[0] == "source"}
    assert names == {
        "image_folder",
        "llava",
        "messages",
        "sharegpt",
        "clip_pairs",
        "trl",
        "video",
        "audio",
    }
    kinds = {r[1]: r[0] for r in rows if r}
    assert kinds["clip_image"] == "enricher" and kinds["duplicates"] == "check"
    assert {kinds[n] for n in ("transcribe", "clip_transcript", "caption")} == {"enricher"}


def test_every_configured_plugin_is_registered() -> None:
    """A plugin a conf group selects by ``_target_`` is also in the entry-point group."""
    from importlib.metadata import entry_points

    from lake.plugin import PLUGIN_GROUP

    registered = {ep.value.replace(":", ".") for ep in entry_points(group=PLUGIN_GROUP)}
    configured = set()
    for group in ("source", "export", "enrich", "check"):
        for path in (REPO / "conf" / group).glob("*.yaml"):
            for line in path.read_text().splitlines():
                target = line.strip().removeprefix("_target_:").strip()
                if line.strip().startswith("_target_:") and target.startswith("plugins."):
                    configured.add(target)
    assert "plugins.trl.TrlSource" in configured
    assert configured - registered == set()
