"""Every job on a lake on the S3 server (SeaweedFS, ``s3`` fixture), and no credential in
any output.

One lake at ``s3://lake/...``: ``ingest`` (an image folder, with the storage options as
command-line overrides, and a LLaVA JSON, with the ``AWS_*`` variables), ``train`` (tiny
CLIP, the lake read by a DataLoader worker process), ``enrich`` (CLIP from that run),
``check``, ``split``, ``export``, ``compact``, ``query``, ``stats``, ``versions`` (all with the
``AWS_*`` variables), then the TUI on the same lake. Every stdout/stderr, the ``runs`` table,
the provenance columns, the run directory and the TUI's screen text are searched for the
secret key: it never appears.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, jpeg_bytes, png_bytes

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 300


def _folder(root: Path) -> Path:
    """``pets/{cat,dog}``: 6 cats (JPEG) and 6 dogs (PNG), distinct colours."""
    for name, make, rgb in (("cat", jpeg_bytes, (200, 40, 30)), ("dog", png_bytes, (10, 60, 200))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            colour = tuple((c + 29 * i) % 256 for c in rgb)
            suffix = "jpg" if name == "cat" else "png"
            (root / name / f"{name}{i}.{suffix}").write_bytes(make(colour))
    return root


def _llava(root: Path) -> Path:
    """A LLaVA JSON of 4 captioned images."""
    (root / "img").mkdir(parents=True)
    records = []
    for i, colour in enumerate(("red", "green", "blue", "yellow")):
        rgb = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
               "yellow": (230, 220, 30)}[colour]  # fmt: skip
        (root / "img" / f"{i}.jpg").write_bytes(jpeg_bytes(rgb))
        conv = [
            {"from": "human", "value": "<image>\nWhat colour is it?"},
            {"from": "gpt", "value": f"It is {colour}."},
        ]
        records.append({"id": str(i), "image": f"img/{i}.jpg", "conversations": conv})
    (root / "llava.json").write_text(json.dumps(records))
    return root / "llava.json"


class Jobs:
    """Runs ``python -m <module>`` against the S3 lake and keeps every output."""

    def __init__(self, s3: Any, root: Path) -> None:
        self.s3, self.root = s3, root
        self.uri = s3.uri("lake")
        self.runs_dir = root / "runs"
        self.outputs: list[str] = []
        base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.plain_env = {
            **base, "AWS_EC2_METADATA_DISABLED": "true", "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LAKELOOM_DEBUG": "1",
        }  # fmt: skip
        so = s3.storage_options
        self.aws_env = {
            **self.plain_env, "AWS_ENDPOINT": so["endpoint"], "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": so["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": so["aws_secret_access_key"], "AWS_REGION": so["region"],
        }  # fmt: skip
        self.cli_options = [f"+lake.storage_options.{k}='{v}'" for k, v in so.items()]

    def run(self, module: str, *overrides: str, env: str = "aws") -> str:
        """Run one job; the storage options come from the ``AWS_*`` variables (``aws``) or
        from command-line overrides (``cli``). Returns stdout + stderr."""
        args = [
            sys.executable, "-m", module, f"lake.uri={self.uri}",
            f"lake.reports={self.root / 'reports'}", f"runs_dir={self.runs_dir}", *overrides,
        ]  # fmt: skip
        if env == "cli":
            args += self.cli_options
        proc = subprocess.run(
            args, cwd=REPO, env=self.aws_env if env == "aws" else self.plain_env,
            capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        self.outputs.append(out)
        assert proc.returncode == 0, f"{module} {overrides}: exit {proc.returncode}\n{out[-4000:]}"
        return out


@pytest.fixture(scope="module")
def jobs(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    """Every job, run once in pipeline order on one S3 lake (outputs kept for the tests)."""
    root = tmp_path_factory.mktemp("s3_jobs")
    j = Jobs(s3, root)
    pets = _folder(root / "pets")
    j.run("lake.ingest", "source=image_folder", f"source.path={pets}", "ingest.workers=0",
          "ingest.progress=false", env="cli")  # fmt: skip
    j.run("lake.ingest", "source=llava", f"source.path={_llava(root / 'convs')}",
          "dataset=convs", "ingest.workers=0", "ingest.progress=false")  # fmt: skip
    j.run("core.train", "+experiment=clip_tiny", "+debug=limit_batches", "data.datasets=null",
          "data.batch_size=4", "data.num_workers=1", "trainer.max_epochs=1",
          "checkpoint.monitor=null", "test_after_fit=false", "run_id=emb",
          "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false")  # fmt: skip
    j.run("lake.enrich", "enrich=clip", "enrich.model.run=emb", "enrich.reembed=true",
          "enrich.progress=false")  # fmt: skip
    j.run("lake.check")
    j.run("lake.split")
    j.run("lake.export", "export=llava", "dataset=convs", f"out={root / 'export'}")
    j.outputs_query = j.run("lake.query", "text='a photo of a cat'", "k=3", "json=true")
    j.run("lake.compact", "compact.retention_days=0")
    j.outputs_stats = j.run("lake.stats", f"out={root / 'stats.json'}")
    j.outputs_versions = j.run("lake.versions", "table=samples")
    return j


def _lake(j: Jobs) -> Any:
    from lake.store import Lake

    return Lake(j.uri, j.s3.storage_options)


def test_every_job_works_on_the_s3_lake(jobs: Jobs) -> None:
    from lake.schema import MEDIA, SAMPLES

    lake = _lake(jobs)
    assert lake.count(SAMPLES) == 16  # 12 pets (the folder's byte copy is its own sample) + 4
    assert lake.count(MEDIA) == 16
    # train read the S3 lake in a DataLoader worker and finished
    summary = json.loads((jobs.runs_dir / "emb" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] > 0
    # enrich embedded every image with the run's model
    media = lake.dataset(MEDIA).to_table(columns=["clip_image"])
    assert media.column("clip_image").null_count == 0
    # check flagged or scored, split placed every sample
    samples = lake.dataset(SAMPLES).to_table(columns=["split", "flags"]).to_pylist()
    splits = {r["split"] for r in samples}
    assert None not in splits and "train" in splits
    # export wrote the 4 conversations, their images beside them
    exported = json.loads((jobs.root / "export" / "llava.json").read_text())
    assert len(exported) == 4
    assert all((jobs.root / "export" / r["image"]).is_file() for r in exported)
    hits = [json.loads(line) for line in jobs.outputs_query.splitlines() if line.startswith("{")]
    assert len(hits) == 3
    stats = json.loads((jobs.root / "stats.json").read_text())
    assert json.dumps(stats).count("16") >= 1
    assert "samples" in jobs.outputs_versions
    # every job recorded a finished run in the lake's runs table
    finished = {r["job"] for r in lake.runs() if r["status"] == "finished"}
    assert {"ingest", "enrich", "check", "split", "export", "compact"} <= finished, finished


def _secret_free(text: str, secret: str, where: str) -> None:
    assert secret not in text, f"the secret key appears in {where}"


def test_no_credential_is_printed_logged_or_recorded(jobs: Jobs) -> None:
    from lake.schema import MEDIA, RUNS, SAMPLES

    secret = jobs.s3.storage_options["aws_secret_access_key"]
    for i, out in enumerate(jobs.outputs):
        _secret_free(out, secret, f"the output of job #{i}")
    lake = _lake(jobs)
    runs = lake.dataset(RUNS).to_table().to_pylist()
    assert len(runs) >= 7  # ingest x2, enrich, check, split, export, compact
    _secret_free(json.dumps(runs, default=str), secret, "the runs table")
    # the masked config is what the run recorded (the options are there, the keys masked)
    ingest_cli = [r for r in runs if "aws_secret_access_key" in (r["config_yaml"] or "")]
    assert ingest_cli and all("***" in r["config_yaml"] for r in ingest_cli)
    for table in (SAMPLES, MEDIA):
        prov = lake.dataset(table).to_table(columns=["provenance"]).to_pylist()
        _secret_free(json.dumps(prov, default=str), secret, f"{table}.provenance")
    for path in sorted((jobs.runs_dir / "emb").rglob("*")):
        if path.is_file():
            _secret_free(path.read_bytes().decode("latin-1"), secret, str(path))
    for path in sorted((jobs.root / "reports").rglob("*")):
        if path.is_file():
            _secret_free(path.read_bytes().decode("latin-1"), secret, str(path))


@pytest.mark.anyio
async def test_the_tui_browses_the_s3_lake(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.tui.pilot import SIZE, make_app, until
    from tui.widgets.sample_table import SampleTable

    for key, value in jobs.aws_env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    app = make_app(jobs.uri, runs=jobs.runs_dir)
    assert app.config.storage_options["endpoint"] == jobs.s3.endpoint
    secret = jobs.s3.storage_options["aws_secret_access_key"]
    _secret_free(repr(app.config), secret, "the TUI config's repr")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.view is not None or app.lake_error, timeout=30)
        assert app.lake_error is None and app.view is not None
        await until(pilot, lambda: pilot.app.screen.query(SampleTable).first() is not None)
        table = pilot.app.screen.query_one(SampleTable)
        await until(pilot, lambda: len(table) == 16, timeout=30)
        screen = app.export_screenshot()
    assert jobs.uri in app.sub_title
    _secret_free(screen, secret, "the TUI's screen")
