"""``lakeloom jobs``: the lake's jobs and their state; ``run=ID``: one job per stage and node.

A job is a row of the ``runs`` table (status as :func:`lake.runs.effective_status` reads
it: a ``running`` row whose process is gone is ``killed``). A distributed job also has
rows in the ``progress`` table (see ``PROGRESS_SCHEMA``): one per stage (``unit`` "",
``rows`` done so far, ``total`` planned) and one per unit of work (a fragment, a shard)
with the node that did it, its rows, seconds and attempts. The figures:

- rows done / total: the stage rows' ``rows`` / ``total`` (a stage whose row a later run
  of the same backfill took over counts the rows of this run's done units, total unknown);
- failures: units whose last attempt failed; retries: ``attempts - 1`` summed over units;
- a job's rows/s: the rows its units wrote over the job's wall time (start to finish; to
  now while it runs; to its last progress row when it was killed);
- a stage's rows/s: the rows its units wrote over the stage's wall time (first unit start
  to last unit end; to now while the job runs); a node's rows/s: that node's rows over the
  same stage wall time, so the nodes' rates add up to the stage's.

Readers here are torch-free and cheap (the TUI's jobs view polls them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from lake import runs as run_words
from lake.errors import ConfigError, LakeNotFoundError
from lake.progress import COMMITTED, DONE, FAILED, run_rows
from lake.runs import fmt_duration
from lake.store import Lake

FORMATS = ("text", "json")
WROTE = (DONE, COMMITTED)  # a unit that produced its rows (staged, or in the table)


@dataclass
class NodeFigures:
    """What one node did in a stage."""

    node: str
    rows: int = 0
    units: int = 0  # units done
    failures: int = 0
    retries: int = 0
    seconds: float = 0.0  # summed unit seconds (busy time)
    rate: float | None = None  # rows/s over the stage's wall time


@dataclass
class StageFigures:
    """One stage of a job, with its nodes."""

    stage: str
    status: str
    rows: int = 0
    total: int | None = None
    units_done: int = 0
    units: int = 0  # units recorded (done, failed or in flight)
    failures: int = 0
    retries: int = 0
    rate: float | None = None
    errors: list[str] = field(default_factory=list)
    nodes: list[NodeFigures] = field(default_factory=list)


@dataclass
class JobFigures:
    """One job (a ``runs`` row) with its progress, summed over its stages."""

    run_id: str
    job: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    rows: int | None = None  # None: the job has no progress rows
    total: int | None = None
    rate: float | None = None
    failures: int = 0
    retries: int = 0
    error: str | None = None
    stages: list[StageFigures] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able values (times as ISO 8601 strings)."""
        out = asdict(self)
        for key in ("started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def _rate(rows: int, seconds: float | None) -> float | None:
    return rows / seconds if seconds else None


def stage_figures(
    rows: list[dict[str, Any]], job_status: str, now: datetime | None = None
) -> list[StageFigures]:
    """Per-stage and per-node figures of one run's progress rows (see the module doc)."""
    now = now or _now()
    active = job_status in run_words.ACTIVE
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_stage.setdefault(str(r.get("stage") or ""), []).append(r)
    out = []
    for name, stage_rows in by_stage.items():
        head = next((r for r in stage_rows if not r.get("unit")), None)
        units = [r for r in stage_rows if r.get("unit")]
        status = str((head or {}).get("status") or run_words.RUNNING)
        if status == run_words.RUNNING and not active:
            status = job_status  # the job ended (killed, failed) while this stage ran
        st = StageFigures(stage=name, status=status, units=len(units))
        nodes: dict[str, NodeFigures] = {}
        starts, ends = [], []
        for u in units:
            node = nodes.setdefault(
                str(u.get("node") or "?"), NodeFigures(str(u.get("node") or "?"))
            )
            retries = max(int(u.get("attempts") or 1) - 1, 0)
            node.retries += retries
            st.retries += retries
            seconds = float(u.get("seconds") or 0.0)
            node.seconds += seconds
            if u.get("status") in WROTE:
                n = int(u.get("rows") or 0)
                node.rows += n
                node.units += 1
                st.units_done += 1
            elif u.get("status") == FAILED:
                node.failures += 1
                st.failures += 1
                if u.get("error"):
                    st.errors.append(f"{u['unit']}: {u['error']}")
            ended = u.get("updated_at")
            if ended is not None and u.get("status") in (*WROTE, FAILED):
                ends.append(ended)
                starts.append(ended.timestamp() - seconds)
        unit_rows = sum(n.rows for n in nodes.values())
        if head is not None:
            st.rows = int(head.get("rows") or 0)
            st.total = None if head.get("total") is None else int(head["total"])
        else:
            st.rows = unit_rows
        if starts:
            end = (
                now.timestamp() if active and status == run_words.RUNNING else max(ends).timestamp()
            )
            wall = max(end - min(starts), 0.0)
            st.rate = _rate(unit_rows, wall)
            for node in nodes.values():
                node.rate = _rate(node.rows, wall)
        st.nodes = sorted(nodes.values(), key=lambda n: n.node)
        out.append(st)
    return out


def job_figures(
    run: dict[str, Any], rows: list[dict[str, Any]], now: datetime | None = None
) -> JobFigures:
    """A ``runs`` record (as :meth:`Lake.runs` gives it) with its progress rows, summed."""
    now = now or _now()
    status = str(run.get("status") or run_words.UNKNOWN)
    started, finished = run.get("started_at"), run.get("finished_at")
    if finished is None and status in run_words.ACTIVE:
        end = now
    elif finished is None:  # killed: it ended at its last word
        stamps = [r["updated_at"] for r in rows if r.get("updated_at") is not None]
        end = max(stamps) if stamps else None
    else:
        end = finished
    job = JobFigures(
        run_id=str(run["run_id"]),
        job=str(run.get("job") or ""),
        status=status,
        started_at=started,
        finished_at=finished,
        duration_s=_seconds(started, end),
        error=run.get("error"),
    )
    if not rows:
        return job
    job.stages = stage_figures(rows, status, now)
    job.rows = sum(s.rows for s in job.stages)
    totals = [s.total for s in job.stages]
    job.total = None if any(t is None for t in totals) else sum(totals)  # type: ignore[misc]
    job.failures = sum(s.failures for s in job.stages)
    job.retries = sum(s.retries for s in job.stages)
    unit_rows = sum(n.rows for s in job.stages for n in s.nodes)
    job.rate = _rate(unit_rows, job.duration_s)
    return job


def list_jobs(lake: Lake, now: datetime | None = None) -> list[JobFigures]:
    """Every job of the lake, newest first, with its progress figures."""
    if not lake.present():
        raise LakeNotFoundError(f"no lake at {lake.uri}: ingest something first")
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in run_rows(lake):
        by_run.setdefault(str(r.get("run_id")), []).append(r)
    records = sorted(
        lake.runs(),
        key=lambda r: r["started_at"] or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    return [job_figures(r, by_run.get(r["run_id"], []), now) for r in records]


def job_detail(lake: Lake, run_id: str, now: datetime | None = None) -> JobFigures:
    """One job with its stages and nodes; ConfigError when the lake has no such run."""
    if not lake.present():
        raise LakeNotFoundError(f"no lake at {lake.uri}: ingest something first")
    record = next((r for r in lake.runs() if r["run_id"] == run_id), None)
    if record is None:
        raise ConfigError(f"run={run_id}: no such job in the runs table of {lake.uri}")
    return job_figures(record, run_rows(lake, run_id), now)


# -- text ----------------------------------------------------------------------------------
def fmt_rows(rows: int | None, total: int | None) -> str:
    """``1,200/5,000`` (``1,200`` when the total is unknown; blank without progress)."""
    if rows is None:
        return ""
    return f"{rows:,}" if total is None else f"{rows:,}/{total:,}"


def fmt_rate(rate: float | None) -> str:
    """Rows per second with 3 significant digits (blank when unknown)."""
    return "" if rate is None else f"{rate:,.3g}" if rate < 1000 else f"{rate:,.0f}"


def short_node(node: str) -> str:
    """A node id for a table cell: Ray's 56-hex ids cut to their first 12 characters."""
    return node if len(node) <= 28 else node[:12] + "…"


def _when(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def format_jobs(jobs: list[JobFigures]) -> str:
    """One line per job: run id, job, status, started (UTC), duration, rows, rows/s,
    failures, retries."""
    if not jobs:
        return "no jobs recorded in this lake yet"
    width = max(len("run_id"), *(len(j.run_id) for j in jobs)) + 2
    head = (f"{'run_id':<{width}}{'job':<9}{'status':<12}{'started (UTC)':<21}{'time':>7}"
            f"{'rows':>20}{'rows/s':>9}{'fail':>6}{'retry':>6}")  # fmt: skip
    lines = [head]
    for j in jobs:
        lines.append(
            f"{j.run_id:<{width}}{j.job:<9}{j.status:<12}{_when(j.started_at):<21}"
            f"{fmt_duration(j.duration_s):>7}{fmt_rows(j.rows, j.total):>20}{fmt_rate(j.rate):>9}"
            f"{'' if j.rows is None else j.failures:>6}{'' if j.rows is None else j.retries:>6}"
        )
    return "\n".join(lines)


def format_job(job: JobFigures) -> str:
    """One job in detail: its state, then per stage a line and one line per node."""
    lines = [
        f"run     {job.run_id}",
        f"job     {job.job}",
        f"status  {job.status}",
        f"started {_when(job.started_at)} UTC   time {fmt_duration(job.duration_s)}",
    ]
    if job.error:
        lines.append(f"error   {job.error}")
    if not job.stages:
        lines.append("no progress rows (a local job, or one that has not started a stage)")
        return "\n".join(lines)
    lines += [
        f"rows    {fmt_rows(job.rows, job.total)}   rows/s {fmt_rate(job.rate)}   "
        f"failures {job.failures}   retries {job.retries}",
        "",
        f"  {'stage / node':<30}{'status':<11}{'rows':>20}{'rows/s':>9}{'units':>11}"
        f"{'fail':>6}{'retry':>6}",
    ]
    for s in job.stages:
        lines.append(
            f"  {s.stage:<30}{s.status:<11}{fmt_rows(s.rows, s.total):>20}{fmt_rate(s.rate):>9}"
            f"{f'{s.units_done}/{s.units}':>11}{s.failures:>6}{s.retries:>6}"
        )
        for n in s.nodes:
            lines.append(
                f"    {short_node(n.node):<28}{'':<11}{n.rows:>20,}{fmt_rate(n.rate):>9}"
                f"{n.units:>11}{n.failures:>6}{n.retries:>6}"
            )
        lines += [f"    ! {e}" for e in s.errors]
    return "\n".join(lines)


def jobs(cfg: Any) -> int:
    """Print the jobs (or ``run=ID`` in detail) as text or JSON (``format=json``)."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, not {cfg.format!r}")
    lake = Lake.from_config(cfg.lake)
    if cfg.run:
        job = job_detail(lake, str(cfg.run))
        print(json.dumps(job.to_json(), indent=2) if cfg.format == "json" else format_job(job))
        return 0
    found = list_jobs(lake)
    if cfg.format == "json":
        print(json.dumps([j.to_json() for j in found], indent=2))
    else:
        print(format_jobs(found))
    return 0


def main() -> Any:
    """``lakeloom jobs [run=ID] [format=text|json] [lake.uri=...]`` (Hydra app)."""
    from lake.job import hydra_job

    return hydra_job("jobs")(jobs)()


if __name__ == "__main__":
    main()
