"""The ``lakeloom`` console script: ``lakeloom <job> [hydra overrides]``.

Each job is a module with a Hydra ``main``; it is imported only when run, so
``lakeloom --help`` starts without torch, transformers or even lancedb.
"""

from __future__ import annotations

import importlib
import sys

# job -> (module, one-line description)
JOBS: dict[str, tuple[str, str]] = {
    "demo": ("lake.demo", "generate the shapes demo data (if absent) and run the pipeline on it"),
    "demo-data": ("lake.demo_data", "generate the synthetic shapes demo dataset"),
    "ingest": ("lake.ingest", "ingest a source into the lake: source=NAME source.path=PATH"),
    "stats": ("lake.stats", "row counts per table, dataset and media kind"),
    "versions": ("lake.versions", "list lake versions and the runs that tagged them"),
    "jobs": ("lake.jobs_cmd", "jobs and their state, per stage and node: [run=ID] [format=json]"),
    "check": ("lake.check", "run consistency checks: [check=NAME] [where=SQL] [dataset=NAME]"),
    "split": ("lake.split", "stratified train/val/test splits: [split.seed=N] [where=SQL]"),
    "train": (
        "core.train",
        "train a model on the lake: +experiment=NAME [model=NAME] [+debug=NAME]",
    ),
    "merge": ("core.merge", "merge a VLM run's adapters into a from_pretrained dir: run=ID"),
    "enrich": (
        "lake.enrich",
        "add columns with enricher plugins: enrich=clip [enrich.model.run=ID]",
    ),
    "whisper-convert": (
        "plugins.whisper_models",
        "convert a fine-tuned Whisper for `enrich=transcribe`: src=DIR out=DIR [quantization=int8]",
    ),
    "export": ("lake.export", "export a split for training: export=NAME split=train out=DIR"),
    "doctor": ("lake.doctor", "find and repair duplicate keys: [doctor.dry_run=true]"),
    "compact": ("lake.compact", "compact fragments, drop old versions: [compact.retention_days=7]"),
    "query": ("lake.query", 'search the lake by CLIP similarity: text="..." | image=PATH [k=10]'),
    "tui": (
        "tui.__main__",
        "browse the lake and training runs in the terminal: [lake.uri=] [runs_dir=] "
        "| tui serve [port=8000]",
    ),
    "why": ("lake.why", "why is this row here: lineage of a sample or media id [format=json]"),
    "plugins": ("lake.plugins_cmd", "list installed plugins"),
    "schema": ("lake.schema_cmd", "print the lake schema as Markdown"),
}


def usage() -> str:
    """The help text listing every job."""
    width = max(map(len, JOBS))
    lines = [
        "usage: lakeloom <job> [key=value ...]   (Hydra overrides; `--cfg job` shows the config)",
        "",
        "jobs:",
    ]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in JOBS.items()]
    lines += ["", "Every job is also `python -m <module>`; see README.md."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch to the job's Hydra entry point with the remaining arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"lakeloom: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(JOBS[job][0])
    sys.argv = [f"lakeloom {job}", *rest]
    module.main()


if __name__ == "__main__":
    main()
