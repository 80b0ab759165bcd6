"""The enrich runner: plan output columns, skip finished rows, process in batches.

``lakeloom enrich enrich=NAME`` runs the enrichers of ``conf/enrich/NAME.yaml`` in order.
Rows whose owner column already names the current owner are skipped, so a re-run or a
run resumed after a crash only does the remaining work; rows produced by another owner
(another model) are replaced only with ``enrich.reembed=true``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from lake import provenance
from lake.errors import ConfigError, LakeNotFoundError
from lake.job import RunContext, hydra_job, run_record
from lake.plugin import Enricher
from lake.schema import KEYS
from lake.sql import and_filters, quote
from lake.store import Lake

log = logging.getLogger("lakeloom.enrich")


@dataclass
class EnrichReport:
    """What one enricher did."""

    enricher: str
    table: str
    owner: str
    todo: int = 0
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for people."""
        rate = self.done / self.seconds if self.seconds else 0.0
        return (
            f"enrich {self.enricher} -> {self.table}: {self.done} rows written, {self.skipped} "
            f"already done by {self.owner} ({self.seconds:.1f} s, {rate:.0f} rows/s)"
        )


@dataclass(frozen=True)
class Plan:
    """What an enricher has to do on its table: owner, filters and counts."""

    table: str
    key: str
    owner: str
    owner_column: str
    scope: str | None
    todo_filter: str
    todo: int
    skipped: int


def plan(enricher: Enricher, lake: Lake, reembed: bool = False) -> Plan:
    """Prepare the enricher, add its output columns and count the rows it has to do.

    Raises ConfigError when rows hold another owner's outputs and ``reembed`` is off.
    """
    table, key = enricher.table, KEYS[enricher.table]
    if not lake.exists(table):  # before any write: a missing lake stays missing
        raise LakeNotFoundError(f"table {table!r} does not exist in lake {lake.uri}")
    enricher.prepare(lake)
    lake.add_columns(table, enricher.output_fields())
    owner, oc = enricher.owner(), enricher.owner_column()
    scope = enricher.where()
    others = lake.count(table, and_filters(scope, f"{oc} IS NOT NULL AND {oc} != {quote(owner)}"))
    if others and not reembed:
        raise ConfigError(
            f"{others} rows of {table} were produced by another owner than {owner!r} "
            f"(column {oc}); set enrich.reembed=true to replace them"
        )
    pending = f"{oc} IS NULL" if not reembed else f"{oc} IS NULL OR {oc} != {quote(owner)}"
    todo_filter = and_filters(scope, pending)
    todo = lake.count(table, todo_filter)
    skipped = lake.count(table, scope) - todo
    return Plan(table, key, owner, oc, scope, todo_filter, todo, skipped)


def input_columns(enricher: Enricher, key: str) -> list[str]:
    """The columns an enricher's batches are read with: key, inputs, provenance."""
    return list(dict.fromkeys([key, *enricher.inputs, "provenance"]))


def enrichment_step(enricher: Enricher, owner: str, run_id: str) -> dict[str, str]:
    """The provenance step an enricher appends to every row it writes."""
    params = {"owner": owner, "version": enricher.version, "run_id": run_id}
    return {"name": enricher.name, "params": json.dumps(params)}


def enriched(enricher: Enricher, rows: pa.Table, key: str, step: dict[str, str]) -> pa.Table:
    """The enricher's outputs for ``rows`` (key + inputs + provenance) with their provenance."""
    out = enricher.process(rows)
    return out.append_column("provenance", _with_step(rows, out, key, step))


def enrich(
    enricher: Enricher,
    lake: Lake,
    batch_size: int = 256,
    write_batch: int = 4096,
    reembed: bool = False,
    ctx: RunContext | None = None,
    progress: bool = True,
) -> EnrichReport:
    """Run one enricher over its table in this process; return the counts."""
    ctx = ctx or RunContext("enrich", provenance.new_run_id("enrich"), "", "")
    work = plan(enricher, lake, reembed)
    table, key = work.table, work.key
    report = EnrichReport(enricher.name, table, work.owner, todo=work.todo, skipped=work.skipped)
    started = time.perf_counter()
    if report.todo:
        enricher.setup()
        step = enrichment_step(enricher, work.owner, ctx.run_id)
        bar = _progress(progress, report.todo, f"{enricher.name}")
        pinned = lake.dataset(table)  # scan one version while writing new ones
        columns = input_columns(enricher, key)
        buffer: list[pa.Table] = []
        buffered = 0
        for batch in pinned.to_batches(
            columns=columns, filter=work.todo_filter, batch_size=batch_size
        ):
            if batch.num_rows == 0:
                continue
            out = enriched(enricher, pa.Table.from_batches([batch]), key, step)
            buffer.append(out)
            buffered += out.num_rows
            if bar is not None:
                bar.update(batch.num_rows)
            if buffered >= write_batch:
                report.done += lake.update_columns(table, pa.concat_tables(buffer))
                buffer, buffered = [], 0
        if buffer:
            report.done += lake.update_columns(table, pa.concat_tables(buffer))
        if bar is not None:
            bar.close()
    enricher.finish(lake)
    report.seconds = time.perf_counter() - started
    return report


def _with_step(rows: pa.Table, out: pa.Table, key: str, step: dict[str, str]) -> pa.Array:
    """Each output row's provenance with the enrichment step appended."""
    prov = dict(
        zip(rows.column(key).to_pylist(), rows.column("provenance").to_pylist(), strict=True)
    )
    values = []
    for k in out.column(key).to_pylist():
        p = dict(prov[k] or {})
        p["steps"] = [*(p.get("steps") or []), step]
        values.append(p)
    return pa.array(values, type=rows.schema.field("provenance").type)


def _progress(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"enrich {desc}", unit="row", mininterval=0.5)


@hydra_job("enrich")
def main(cfg: Any) -> int:
    """Hydra entry point: run the configured enrichers in order."""
    from hydra.utils import instantiate

    ctx = RunContext.from_config("enrich", cfg)
    lake = Lake.from_config(cfg.lake)
    if not lake.present():  # before loading any model
        raise LakeNotFoundError(f"no lake at {cfg.lake.uri}: ingest something first")
    with contextlib.ExitStack() as stack, run_record(lake, ctx, {"enrich": cfg.enrich.name}):
        on_ray = None
        if cfg.get("executor", {}).get("name") == "ray":  # the Ray code lives in its module
            from lake.ray_enrich import on_ray_from_config

            on_ray = stack.enter_context(on_ray_from_config(lake, cfg.executor))
        reports = []
        for name, node in cfg.enrich.steps.items():
            enricher = instantiate(node)
            if not isinstance(enricher, Enricher):
                raise ConfigError(f"enrich step {name}: {node.get('_target_')} is not an Enricher")
            e = cfg.enrich
            if on_ray is not None:
                report = on_ray(enricher, node, e.reembed, ctx)
            else:
                report = enrich(
                    enricher, lake, e.batch_size, e.write_batch, e.reembed, ctx, e.progress
                )
            print(report.summary())
            reports.append(report.__dict__)
        versions = lake.tag(ctx.run_id)
        lake.record_run(ctx.record("finished", counts=reports, versions=versions))
    return 0


if __name__ == "__main__":
    main()
