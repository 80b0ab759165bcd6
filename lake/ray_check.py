"""The checks' heavy passes on Ray (``lakeloom check executor=ray``).

A check that has a row-wise heavy pass declares it through ``check.passes.map_rows(...)``
with a picklable batch function (:class:`lake.check.LocalPasses` runs it here). On Ray the
same function runs as a Ray Data stage: lance-ray reads the rows (read tasks ask for
``read_cpus``: below a node's free CPUs, or the stage never starts), ``map_batches`` with a
class UDF on an actor pool (``actors`` x ``cpus_per_actor`` / ``gpus_per_actor``), and the
driver collects the small results and keeps the check's light logic (grouping, flags,
reports), so flags, scores and reports equal the local executor's. ``executor.stages.<pass>``
overrides the resources of one pass (the duplicates check's is ``thumbs``).

Built-in passes: the duplicates check's thumbnail decoding (every candidate media's
thumbnail decoded into zoomed RGB views). The other built-in checks work on matrices of
stored embeddings already in memory (k-NN distances, caption scores, prompt
similarities); they run on the driver under either executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from lake import progress
from lake.check import run_checks
from lake.job import RunContext
from lake.plugin import Check
from lake.ray_enrich import settings_for
from lake.ray_runtime import ray_session
from lake.sql import in_list
from lake.store import Lake


class BatchUDF:
    """Ray Data class UDF: one instance per actor, calling a check's batch function."""

    def __init__(self, fn: Callable[[pa.Table], pa.Table]) -> None:
        self.fn = fn

    def __call__(self, batch: pa.Table) -> pa.Table:
        """The batch function on one batch."""
        return self.fn(batch)


class RayPasses:
    """Runs a check's batch function as a Ray Data stage over the selected rows."""

    def __init__(self, ray: Any, executor: Any, ctx: RunContext | None) -> None:
        self.ray = ray
        self.executor = executor
        self.run_id = ctx.run_id if ctx else ""

    def map_rows(
        self,
        lake: Lake,
        table: str,
        columns: list[str],
        key: str,
        ids: list[str],
        fn: Callable[[pa.Table], pa.Table],
        stage: str,
    ) -> pa.Table:
        """``fn`` over the rows of ``table`` (``columns``) whose ``key`` is in ``ids``."""
        import lance_ray
        from ray.data import ActorPoolStrategy

        name = f"check:{stage}"
        s = settings_for(self.executor, stage)
        backfill = progress.backfill_id(job="check", stage=name, run=self.run_id)
        progress.record_stage(lake, backfill, self.run_id, "check", name, "running", 0, len(ids))
        started = time.perf_counter()
        ds = lance_ray.read_lance(
            lake.dataset(table).uri,
            columns=columns,
            filter=f"{key} IN {in_list(ids)}",
            storage_options=lake.storage_options or None,
            ray_remote_args={"num_cpus": float(s.read_cpus)},
        )
        gpus = float(s.gpus_per_actor or 0)
        ds = ds.map_batches(
            BatchUDF,
            fn_constructor_args=(fn,),
            batch_format="pyarrow",
            batch_size=int(s.batch_size),
            compute=ActorPoolStrategy(size=int(s.actors)),
            num_cpus=float(s.cpus_per_actor),
            **({"num_gpus": gpus} if gpus else {}),
            max_restarts=int(s.max_retries),
        )
        parts = [self.ray.get(ref) for ref in ds.to_arrow_refs()]
        parts = [p for p in parts if p.num_rows]
        if parts:
            out = pa.concat_tables(parts)
        else:  # nothing selected: the function's own empty result
            out = fn(lake.dataset(table).to_table(columns=columns, limit=0))
        seconds = time.perf_counter() - started
        progress.record_stage(
            lake, backfill, self.run_id, "check", name, progress.COMMITTED, out.num_rows,
            len(ids), seconds,
        )  # fmt: skip
        return out


def run_checks_ray(
    lake: Lake,
    checks: dict[str, Check],
    where: str | None,
    reports: str | Path | None,
    ctx: RunContext | None,
    worst: int,
    executor: Any,
    runs_dir: str | Path | None = None,
) -> dict[str, Any]:
    """:func:`lake.check.run_checks` with the checks' heavy passes on Ray."""
    with ray_session(
        str(executor["address"]), executor["num_cpus"], executor["num_gpus"], executor["temp_dir"]
    ) as ray:
        passes = RayPasses(ray, executor, ctx)
        saved = {n: c.__dict__.get("passes") for n, c in checks.items() if hasattr(c, "passes")}
        for name in saved:
            checks[name].passes = passes  # type: ignore[attr-defined]
        try:
            return run_checks(lake, checks, where, reports, ctx, worst, runs_dir)
        finally:
            for name, value in saved.items():
                if value is None:
                    del checks[name].passes  # type: ignore[attr-defined]
                else:
                    checks[name].passes = value  # type: ignore[attr-defined]
