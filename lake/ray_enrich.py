"""Enrichers on Ray (``executor=ray``): resumable backfills, one commit per enricher.

The same plugin classes as the local runner (:mod:`lake.enrich`), planned the same way
(:func:`lake.enrich.plan`: owner check, todo filter). Per enricher (one job stage):

1. pin the table version V and plan per fragment of V: the fragments holding todo rows;
2. skip the fragments that an earlier run of the same **backfill** (table, plugin, its
   version, owner, scope, reembed: :func:`backfill`) already staged;
3. one streaming pass: lance-ray reads the planned fragments' todo rows at V,
   ``map_batches`` runs :class:`EnrichUDF` in an actor pool (each actor instantiates the
   enricher from its Hydra config and loads its model once), and the driver consumes the
   outputs once (``iter_batches``: nothing is re-executed, SCALE.md G2). As soon as all
   planned rows of a fragment came back, they are staged durably next to the lake
   (``<lake>/_staging/<backfill>-fragment-<id>.lance``, same storage) and the fragment
   recorded ``done`` in the ``progress`` table (so a kill loses only fragments in flight);
4. ONE commit writes every staged row into the table (``Lake.update_columns``, a
   merge-insert on the key, restricted to rows still todo), then the stage is marked
   ``committed`` and the staging dropped.

A killed driver or worker never leaves a wrong table: staging is not the table, and the
commit is one atomic Lance commit. A re-run recomputes only the fragments in flight. Rows
appended while a backfill runs sit in fragments that were not planned: they stay null and
the next run fills them. Why not lance-ray's ``add_columns`` / ``merge_columns_from``:
the output columns already exist (``plan`` adds them as nulls, like the local runner),
only todo rows are computed (a fragment can be partly done), and ``merge_columns_from``
needs every fragment covered (SCALE.md G8) — a merge-insert of the staged rows on the key
fits all three and is the write the local runner does.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lake import progress, provenance
from lake.enrich import EnrichReport, Plan, enriched, enrichment_step, input_columns, plan
from lake.job import RunContext
from lake.plugin import Enricher
from lake.ray_runtime import ray_session
from lake.store import Lake

log = logging.getLogger("lakeloom.ray_enrich")

JOB = "enrich"
STAGING = "_staging"
FRAGMENT = "_fragid"  # lance-ray's fragment id column (with_metadata=True)
NODE = "_node"


@dataclass(frozen=True)
class RaySettings:
    """Resources and batching of one Ray stage (``conf/executor/ray.yaml``)."""

    read_cpus: float
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int
    max_retries: int


def settings_for(executor: Any, stage: str) -> RaySettings:
    """The settings of stage ``stage``: the executor's, with its ``stages.<stage>`` overrides."""
    values = {name: executor[name] for name in RaySettings.__dataclass_fields__}
    values.update(dict((executor.get("stages") or {}).get(stage) or {}))
    return RaySettings(**values)


def backfill(enricher: Enricher, work: Plan, reembed: bool) -> str:
    """The backfill id of an enricher's work on its table (what a resumed run looks for)."""
    return progress.backfill_id(
        table=work.table,
        enricher=enricher.name,
        version=enricher.version,
        owner=work.owner,
        scope=work.scope,
        reembed=reembed,
    )


class EnrichUDF:
    """Ray Data class UDF: one enricher per actor, set up once, then ``process`` per batch."""

    def __init__(
        self,
        config: dict[str, Any],
        uri: str,
        storage_options: dict[str, str],
        key: str,
        columns: list[str],
        step: dict[str, str],
    ) -> None:
        import ray
        from hydra.utils import instantiate

        self.enricher: Enricher = instantiate(config)
        self.enricher.prepare(Lake(uri, storage_options))
        self.enricher.setup()
        self.key, self.columns, self.step = key, columns, step
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Outputs (key, output columns, provenance) plus the fragment and node of each row."""
        out = enriched(self.enricher, batch.select(self.columns), self.key, self.step)
        fragment = dict(
            zip(batch.column(self.key).to_pylist(), batch.column(FRAGMENT).to_pylist(), strict=True)
        )
        frags = pa.array([fragment[k] for k in out.column(self.key).to_pylist()], pa.int64())
        out = out.append_column(FRAGMENT, frags)
        return out.append_column(NODE, pa.array([self.node] * out.num_rows, pa.string()))


def _staging_db(lake: Lake) -> Any:
    import lancedb

    uri = f"{lake.uri.rstrip('/')}/{STAGING}"
    return lancedb.connect(uri, storage_options=lake.storage_options or None)


def _staged_name(backfill_id: str, fragment: int) -> str:
    return f"{backfill_id}-fragment-{fragment}"


def _done_units(lake: Lake, backfill_id: str, staged: set[str]) -> dict[int, dict[str, Any]]:
    """Fragments an earlier run of this backfill staged (``done``), whose staging exists."""
    done = {}
    for u in progress.units(lake, backfill_id):
        frag = progress.unit_fragment(u["unit"])
        if u["status"] == progress.DONE and (
            not u["rows"] or _staged_name(backfill_id, frag) in staged
        ):
            done[frag] = u
    return done


def enrich_on_ray(
    enricher: Enricher,
    config: dict[str, Any],
    lake: Lake,
    settings: RaySettings,
    reembed: bool = False,
    ctx: RunContext | None = None,
    on_unit: Callable[[int], None] | None = None,
) -> EnrichReport:
    """Run one enricher over its table on the current Ray session; return the counts.

    ``config`` is the enricher's Hydra node (``_target_`` + arguments, resolved): each
    actor builds its own enricher from it. ``on_unit(fragment)`` is called after each
    fragment is staged and recorded.
    """
    ctx = ctx or RunContext(JOB, provenance.new_run_id(JOB), "", "")
    started = time.perf_counter()
    work = plan(enricher, lake, reembed)
    report = EnrichReport(enricher.name, work.table, work.owner, todo=work.todo)
    report.skipped = work.skipped
    bid, stage_name = backfill(enricher, work, reembed), f"{JOB}:{enricher.name}"
    prior = progress.stage(lake, bid)
    if prior is not None and prior["status"] == progress.COMMITTED:
        progress.forget_units(lake, bid)  # finished work starting over: new fragments
    db = _staging_db(lake)
    done = _done_units(lake, bid, set(db.list_tables().tables))
    if not work.todo and not done:
        enricher.finish(lake)
        report.seconds = time.perf_counter() - started
        return report

    pinned = lake.dataset(work.table)
    version = pinned.version
    todo_rows = pinned.to_table(columns=[], filter=work.todo_filter, with_row_address=True)
    per_fragment = Counter(a >> 32 for a in todo_rows.column("_rowaddr").to_pylist())
    planned = sorted(f for f in per_fragment if f not in done)
    rows_done = sum(per_fragment[f] for f in per_fragment if f in done)

    def stage(status: str, error: str | None = None) -> None:
        progress.record_stage(lake, bid, ctx.run_id, JOB, stage_name, status, rows_done,
                              work.todo, time.perf_counter() - started, error)  # fmt: skip

    stage(progress.RUNNING)
    step = enrichment_step(enricher, work.owner, ctx.run_id)
    buffers: dict[int, list[pa.Table]] = {}
    got: Counter[int] = Counter()

    def finish_unit(frag: int, seconds: float) -> None:
        nonlocal rows_done
        rows = pa.concat_tables(buffers.pop(frag)) if frag in buffers else None
        n = rows.num_rows if rows is not None else 0
        nodes = sorted(set(rows.column(NODE).to_pylist())) if rows is not None else []
        if rows is not None and n:
            db.create_table(_staged_name(bid, frag), rows.drop_columns([FRAGMENT, NODE]),
                            mode="overwrite", on_bad_vectors="null")  # fmt: skip
        unit = {"unit": progress.fragment_unit(frag), "status": progress.DONE, "rows": n,
                "node": ",".join(nodes), "attempts": attempts, "seconds": seconds}  # fmt: skip
        progress.record_units(lake, bid, ctx.run_id, JOB, stage_name, [unit])
        rows_done += n
        stage(progress.RUNNING)
        if on_unit is not None:
            on_unit(frag)

    attempts = 0
    try:
        while planned:
            attempts += 1
            t0, first = time.perf_counter(), {}
            try:
                # one streaming pass (one actor pool, a model load per actor): each
                # fragment is staged as soon as all its planned rows came back
                for out in _outputs(lake, work, enricher, config, settings, step, version, planned):
                    for frag in pc.unique(out.column(FRAGMENT)).to_pylist():
                        rows = out.filter(pc.equal(out.column(FRAGMENT), frag))
                        buffers.setdefault(frag, []).append(rows)
                        first.setdefault(frag, time.perf_counter())
                        got[frag] += rows.num_rows
                        if got[frag] >= per_fragment[frag]:
                            finish_unit(frag, time.perf_counter() - first[frag])
                            planned.remove(frag)
                for frag in list(planned):  # fewer outputs than rows planned: all came back
                    finish_unit(frag, time.perf_counter() - first.get(frag, t0))
                    planned.remove(frag)
            except Exception as exc:  # the pass Ray could not finish: redo the open units
                if attempts > settings.max_retries:
                    raise
                log.warning("attempt %d failed, retrying %d fragments: %s", attempts,
                            len(planned), exc)  # fmt: skip
                buffers.clear()
                got.clear()
        report.done = _commit(lake, work, bid, db)
    except BaseException as exc:
        stage(progress.FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    committed = [u for u in progress.units(lake, bid) if u["status"] == progress.DONE]
    progress.record_units(lake, bid, ctx.run_id, JOB, stage_name,
                          [{**u, "status": progress.COMMITTED} for u in committed])  # fmt: skip
    stage(progress.COMMITTED)
    for name in db.list_tables().tables:
        if name.startswith(f"{bid}-"):
            db.drop_table(name)
    enricher.finish(lake)
    report.seconds = time.perf_counter() - started
    return report


def _outputs(
    lake: Lake,
    work: Plan,
    enricher: Enricher,
    config: dict[str, Any],
    settings: RaySettings,
    step: dict[str, str],
    version: int,
    fragments: list[int],
) -> Iterator[pa.Table]:
    """Stream the enricher's outputs for the todo rows of ``fragments`` at ``version``."""
    import lance_ray
    import ray

    columns = input_columns(enricher, work.key)
    ds = lance_ray.read_lance(
        lake.dataset(work.table).uri,
        columns=columns,
        filter=work.todo_filter,
        fragment_ids=list(fragments),
        dataset_options={"version": version},
        storage_options=lake.storage_options or None,
        with_metadata=True,
        # one read task per fragment, spread over the nodes: Ray Data hands a block to an
        # actor on the block's node first, so reads bunched on one node starve the others
        override_num_blocks=len(fragments),
        ray_remote_args={"num_cpus": settings.read_cpus, "scheduling_strategy": "SPREAD"},
    )
    ds = ds.map_batches(
        EnrichUDF,
        fn_constructor_kwargs={
            "config": config,
            "uri": lake.uri,
            "storage_options": lake.storage_options,
            "key": work.key,
            "columns": columns,
            "step": step,
        },
        compute=ray.data.ActorPoolStrategy(size=max(1, min(settings.actors, len(fragments)))),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
        batch_size=settings.batch_size,
        batch_format="pyarrow",
        max_restarts=settings.max_retries,
        max_task_retries=settings.max_retries,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows:
            yield batch


def _commit(lake: Lake, work: Plan, bid: str, db: Any) -> int:
    """Write every staged row of the backfill that is still todo, in one commit."""
    names = [n for n in db.list_tables().tables if n.startswith(f"{bid}-")]
    if not names:
        return 0
    staged = pa.concat_tables([db.open_table(n).to_arrow() for n in names])
    # a row moved to another fragment between two runs may be staged twice (same values)
    last = dict(zip(staged.column(work.key).to_pylist(), range(staged.num_rows), strict=True))
    staged = staged.take(sorted(last.values()))
    still = lake.dataset(work.table).to_table(columns=[work.key], filter=work.todo_filter)
    rows = staged.filter(pc.is_in(staged.column(work.key), value_set=still.column(work.key)))
    return lake.update_columns(work.table, rows)


@contextlib.contextmanager
def on_ray_from_config(lake: Lake, executor: Any) -> Iterator[Callable[..., EnrichReport]]:
    """A Ray session for the job (``executor`` config) and the per-enricher runner in it."""
    from omegaconf import OmegaConf

    with ray_session(executor.address, executor.num_cpus, executor.num_gpus, executor.temp_dir):

        def run(enricher: Enricher, node: Any, reembed: bool, ctx: RunContext) -> EnrichReport:
            config = OmegaConf.to_container(node, resolve=True)
            settings = settings_for(executor, enricher.name)
            return enrich_on_ray(enricher, config, lake, settings, reembed, ctx)  # type: ignore[arg-type]

        yield run
