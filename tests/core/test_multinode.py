"""Two Lightning nodes, for real, on one machine: the training entry point launched twice.

``python -m core.train +experiment=probe_exp trainer=ddp_cpu_multinode`` runs as node 0
and node 1 (``NODE_RANK``, ``LOCAL_RANK=0``, ``MASTER_ADDR=127.0.0.1``) in one
loopback-only network and PID namespace (tests/netns.py), as a user would launch it by
hand on two machines. Each rank reports what it saw through :class:`RankReport`; the run
directory must be written by rank 0 alone.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from core.checkpoint import load_lightning_checkpoint
from core.run import read_events
from tests.core.conftest import TEST_CONF
from tests.netns import require_netns, run_in_netns

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


class RankReport(L.Callback):
    """Write ``rank<global_rank>.json`` into ``out_dir`` when fit ends: world size,
    backend, node rank, step, and the parameters at the start and at the end."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.start: dict[str, list[float]] = {}

    @staticmethod
    def _params(module: L.LightningModule) -> dict[str, list[float]]:
        return {k: v.detach().flatten().tolist() for k, v in module.state_dict().items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self._params(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dist = torch.distributed
        report: dict[str, Any] = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "step": trainer.global_step,
            "start": self.start,
            "end": self._params(pl_module),
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def _logs(paths: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in paths if p.exists())


@pytest.mark.slow  # two processes importing torch + lightning on 2 cores: ~60 s
def test_two_lightning_nodes_train_in_step(lake_dir: Path, tmp_path: Path) -> None:
    require_netns()
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    command = shlex.join([
        sys.executable, "-m", "core.train", f"hydra.searchpath=[file://{TEST_CONF}]",
        "+experiment=probe_exp", "trainer=ddp_cpu_multinode", "trainer.num_nodes=2",
        f"trainer.max_steps={STEPS}", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", f"lake.uri={lake_dir}", f"runs_dir={runs}",
        "run_id=two-nodes", "+callbacks.report._target_=tests.core.test_multinode.RankReport",
        f"+callbacks.report.out_dir={reports}",
    ])  # fmt: skip
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    # both nodes in the background; the first to fail ends the namespace (and the other)
    script = f"""
export MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 GLOO_SOCKET_IFNAME=lo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
NODE_RANK=0 LOCAL_RANK=0 {command} > {logs[0]} 2>&1 & pids="$!"
NODE_RANK=1 LOCAL_RANK=0 {command} > {logs[1]} 2>&1 & pids="$pids $!"
# poll by PID: `wait -n` answers 127 when both nodes end together (nothing left to wait for)
while [ -n "$pids" ]; do
  left=""
  for pid in $pids; do
    if kill -0 "$pid" 2>/dev/null; then left="$left $pid"; continue; fi
    wait "$pid"; rc=$?
    [ $rc -eq 0 ] || {{ echo "a node exited with $rc"; exit $rc; }}
  done
  pids="$left"; [ -z "$pids" ] || sleep 1
done
"""
    try:
        done = run_in_netns(script, timeout=180, cwd=REPO)
    except AssertionError as exc:  # timed out: say where each node was
        raise AssertionError(f"{exc}\n{_logs(logs)}") from None
    assert done.returncode == 0, f"{done.tail()}\n{_logs(logs)}"

    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, rep in enumerate(ranks):
        assert rep["global_rank"] == rep["node_rank"] == rank
        assert rep["world_size"] == 2 and rep["backend"] == "gloo"
        assert rep["step"] == STEPS
        assert rep["end"] != rep["start"]  # the steps trained
    assert ranks[0]["start"] == ranks[1]["start"]  # DDP broadcast rank 0's initial weights
    assert ranks[0]["end"] == ranks[1]["end"]  # gradients were all-reduced every step

    # one run directory, written by rank 0 alone; its last checkpoint = the ranks' weights
    assert [p.name for p in runs.iterdir()] == ["two-nodes"]
    run = runs / "two-nodes"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    started = [e for e in read_events(run / "events.jsonl") if e.get("status") == "started"]
    assert len(started) == 1, started
    saved = load_lightning_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert {k: v.flatten().tolist() for k, v in saved.items()} == ranks[0]["end"]
