"""A real 2-node Ray cluster on one machine runs ``lakeloom enrich executor=ray``.

Inside one loopback-only network and PID namespace (tests/netns.py): ``ray start --head``
and ``ray start --address=...`` (one CPU each, token auth with a token file in a private
folder, dashboard and usage statistics off), then the enrich job joins the cluster
through ``executor.address=127.0.0.1:<port>`` exactly as a user would, then
``ray stop --force`` (safe only because the PID namespace holds nothing else). The job
must process rows on both nodes (the ``progress`` table names the node of each fragment)
and leave the table equal to the local executor's run on a copy of the lake.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lake import progress
from lake.store import Lake
from tests.lake.test_ray_enrich import assert_same, bulk_load, columns, images, step_names
from tests.netns import require_netns, run_in_netns

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PORT = 6380  # the namespace is private: no other process can hold it


@pytest.fixture
def ray_dir() -> Iterator[Path]:
    """A short private folder for Ray's session files and token (Ray's unix socket paths
    must stay under ~107 characters, which pytest's tmp_path can exceed); removed after."""
    folder = Path(tempfile.mkdtemp(prefix="lkray-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # two Ray nodes start in ~15 s, the job and a local run ~30 s on 2 cores
def test_enrich_runs_on_both_nodes_of_a_two_node_cluster(tmp_path: Path, ray_dir: Path) -> None:
    require_netns()
    data = images(48)
    bulk_load(Lake(tmp_path / "local"), data, per_fragment=3)  # 16 fragments, no phash yet
    shutil.copytree(tmp_path / "local", tmp_path / "local_before")

    def enrich(lake: Path, *more: str) -> str:
        return shlex.join([
            sys.executable, "-m", "lake.cli", "enrich", "enrich=phash",
            f"lake.uri={lake}", "enrich.progress=false", *more,
        ])  # fmt: skip

    # One actor per node: 0.75 CPU each leaves no room for a second actor on a 1-CPU node
    # (0.5 would let Ray pack both on the head), but room for a 0.25-CPU read task (G1).
    on_cluster = enrich(
        tmp_path / "cluster", "executor=ray", f"executor.address=127.0.0.1:{PORT}",
        "executor.actors=2", "executor.read_cpus=0.25", "executor.cpus_per_actor=0.75",
        "executor.batch_size=3",
    )  # fmt: skip
    ray = shlex.quote(str(BIN / "ray"))
    token = ray_dir / "auth_token"
    script = f"""
set -u
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER  # it refuses multi-node clusters (SCALE.md G4)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token} PYTHONPATH={REPO}
{sys.executable} -c "import secrets; print(secrets.token_hex(32), end='')" > {token}
{enrich(tmp_path / "local")} || exit 10
{ray} start --head --port={PORT} --num-cpus=1 --include-dashboard=false \\
    --temp-dir={ray_dir / "t"} --disable-usage-stats || exit 11
{ray} start --address=127.0.0.1:{PORT} --num-cpus=1 --disable-usage-stats || exit 12
# the driver starts the stage only once both actors are up, so a fast first actor
# cannot take every batch before the other node's actor is ready
RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=120 timeout 240 {on_cluster}
rc=$?
{ray} stop --force > /dev/null 2>&1  # every Ray process here, and only here
exit $rc
"""
    # Ray Data gives a block to an actor on the block's node first; the enrich job reads one
    # fragment per task, spread over the nodes, so both actors get work (before that, 1 run
    # in 3 here had every read on one node). Placement stays Ray's choice, so a run from a
    # fresh copy may retry it; the lake must come out right on every attempt.
    for _attempt in range(4):
        shutil.rmtree(tmp_path / "cluster", ignore_errors=True)
        shutil.copytree(tmp_path / "local_before", tmp_path / "cluster")
        done = run_in_netns(script, timeout=420, cwd=REPO)
        assert done.returncode == 0, done.tail()
        cluster = Lake(tmp_path / "cluster")
        stages = progress.stages(cluster)
        units = [u for s in stages for u in progress.units(cluster, s["backfill"])]
        nodes = {n for u in units for n in (u["node"] or "").split(",") if n}
        assert sum(u["rows"] for u in units) == len(data)
        assert {s["status"] for s in stages} == {progress.COMMITTED}
        if len(nodes) == 2:
            break
    assert len(nodes) == 2, units  # rows were processed on both nodes (in one of 4 runs)

    local = Lake(tmp_path / "local")
    names = ("phash", "thumb", "phash_model")
    assert_same(columns(local, "media", "media_id", *names),
                columns(cluster, "media", "media_id", *names))  # fmt: skip
    assert step_names(local, "media") == step_names(cluster, "media")
    assert all(
        r["phash"] is not None for r in columns(cluster, "media", "media_id", "phash").values()
    )
