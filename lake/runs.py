"""Run status words and the liveness check of a run's process (torch-free, the one owner).

Lake jobs (the ``runs`` table) and training runs (``runs/<id>/``) record who runs them
when they start: :func:`owner` gives the pid, the host and the process's start time
(from ``/proc/<pid>/stat``, so a pid reused by another process is not mistaken for the
run). A reader that finds a run still ``running`` / ``started`` whose process is gone
on this host shows it as ``killed`` (:func:`effective_status`); runs of other hosts, or
records without an owner, keep their word (their liveness cannot be checked here).

It also owns the training run directory ``runs/<run_id>/`` (:class:`RunDir`): every file
and folder name of a run is spelled here and nowhere else. ``config.yaml`` (resolved
config), ``events.jsonl`` (one JSON event per line, flushed per line, so a monitor can
tail it while training runs: :class:`EventLog` writes it, :func:`read_events` reads it
back, :func:`parse_event` is the one line parser), ``summary.json`` (written at the end),
``checkpoints/`` (``last.ckpt``, ``best.ckpt``, periodic ``step-NNNNNNN.ckpt``, PEFT
adapters in ``adapter-step-NNNNNNN/`` and ``adapter-last/``), and the exports: ``hf/``
(a VLM's adapter or weights, Apotheon's whole model), ``merged/`` (``lakeloom merge``),
``open_clip/`` (a CLIP run). The event types are the ``EV_*`` constants.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNING = "running"  # a lake job's row while it runs
STARTED = "started"  # a training run's status event while it runs
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: the run stopped cleanly
KILLED = "killed"  # the process died without recording an end (SIGKILL, OOM, power)
UNKNOWN = "unknown"

ACTIVE = frozenset({RUNNING, STARTED})
FINAL = frozenset({FINISHED, FAILED, INTERRUPTED, KILLED})


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (None: not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its ')'
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])  # field 22 of proc(5)


def owner(pid: int | None = None) -> dict[str, Any]:
    """``{"pid", "host", "pid_start"}`` of this process (or of ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "host": socket.gethostname(), "pid_start": process_start(pid)}


def is_alive(record: Mapping[str, Any]) -> bool | None:
    """Whether the process that ``record`` names still runs: None when it cannot be told.

    Only a record of this host with a pid can be checked. False when that pid no longer
    exists or now belongs to a process started at another time than ``pid_start``.
    """
    pid, host = record.get("pid"), record.get("host")
    if pid is None or host != socket.gethostname():
        return None
    if not Path("/proc/self/stat").exists():  # no procfs: fall back to a signal probe
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    started = process_start(int(pid))
    if started is None:
        return False
    recorded = record.get("pid_start")
    return recorded is None or int(recorded) == started


def is_dead(record: Mapping[str, Any]) -> bool:
    """Whether the process that ``record`` names is known to be gone (see :func:`is_alive`).

    False when alive or when it cannot be told.
    """
    return is_alive(record) is False


def effective_status(record: Mapping[str, Any]) -> str:
    """The record's ``status``, or ``killed`` when it is active but its process is dead."""
    status = str(record.get("status") or UNKNOWN)
    if status in ACTIVE and is_dead(record):
        return KILLED
    return status


# -- the run directory ----------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
CKPT_SUFFIX = ".ckpt"
LAST = "last"  # checkpoints/last.ckpt: the newest state, what resume=true takes
BEST = "best"  # checkpoints/best.ckpt: the best monitored validation value
STEP_PREFIX = "step-"  # periodic checkpoints: step-0000120.ckpt
STEP_TEMPLATE = STEP_PREFIX + "{step:07d}"  # Lightning ModelCheckpoint ``filename``
ADAPTER_PREFIX = "adapter-" + STEP_PREFIX  # periodic PEFT adapters: adapter-step-0000120/
ADAPTER_LAST = "adapter-" + LAST  # the PEFT adapter when training ends
HF_DIR = "hf"
MERGED_DIR = "merged"
OPEN_CLIP_DIR = "open_clip"

# -- event types (the ``type`` of each line of events.jsonl) --------------------------------
EV_STATUS = "status"  # started (with owner() and experiment), finished, failed, interrupted
EV_TRAIN = "train"  # logged training metrics every events_every_n_steps optimizer steps
EV_VAL = "val"
EV_TEST = "test"
EV_SUMMARY = "summary"  # the run summary, also written to summary.json
EV_PARAMS = "params"  # parameter counts per module
EV_CURRICULUM = "curriculum"  # a data module switched stage
EV_GENERATIONS = "generations"  # texts generated at validation
EV_SKIPPED = "skipped"  # samples a collator left out
METRIC_EVENTS = (EV_TRAIN, EV_VAL, EV_TEST)


@dataclass(frozen=True)
class RunDir:
    """Paths of one training run ``runs/<run_id>/`` (nothing is created or read here)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of(cls, runs_dir: str | os.PathLike[str], run_id: str) -> RunDir:
        """The run ``run_id`` under ``runs_dir``."""
        return cls(Path(runs_dir) / str(run_id))

    @property
    def run_id(self) -> str:
        """The folder name."""
        return self.path.name

    @property
    def config(self) -> Path:
        """The resolved config the run was started (or last resumed) with."""
        return self.path / CONFIG_FILE

    @property
    def events(self) -> Path:
        """The append-only events log."""
        return self.path / EVENTS_FILE

    @property
    def summary(self) -> Path:
        """The summary written when the run ends."""
        return self.path / SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder (Lightning checkpoints and periodic adapters)."""
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.ckpt`` (``last``, ``best``, ``step-0000120``)."""
        return self.checkpoints / f"{name}{CKPT_SUFFIX}"

    def step_checkpoint(self, step: int) -> Path:
        """The periodic checkpoint of optimizer step ``step``."""
        return self.checkpoint(STEP_TEMPLATE.format(step=int(step)))

    @property
    def last_ckpt(self) -> Path:
        """``checkpoints/last.ckpt``."""
        return self.checkpoint(LAST)

    @property
    def best_ckpt(self) -> Path:
        """``checkpoints/best.ckpt``."""
        return self.checkpoint(BEST)

    def step_checkpoints(self) -> list[Path]:
        """The periodic ``step-*.ckpt``, newest (highest step, then latest written) first."""
        steps = []
        for path in self.checkpoints.glob(f"{STEP_PREFIX}*{CKPT_SUFFIX}"):
            number = path.stem.removeprefix(STEP_PREFIX).split("-")[0]
            if number.isdigit():
                steps.append((int(number), path.stat().st_mtime, path))
        return [p for *_, p in sorted(steps, reverse=True)]

    def adapter_dir(self, step: int) -> Path:
        """The periodic PEFT adapter folder of optimizer step ``step``."""
        return self.checkpoints / f"{ADAPTER_PREFIX}{int(step):07d}"

    def adapter_dirs(self) -> list[Path]:
        """The periodic adapter folders, oldest first."""
        return sorted(self.checkpoints.glob(f"{ADAPTER_PREFIX}*"))

    @property
    def adapter_last(self) -> Path:
        """The adapter folder written when training ends."""
        return self.checkpoints / ADAPTER_LAST

    @property
    def hf(self) -> Path:
        """The export of a VLM / Apotheon run (``from_pretrained`` layout, or an adapter)."""
        return self.path / HF_DIR

    @property
    def merged(self) -> Path:
        """``lakeloom merge``'s output: the base model with the adapters merged in."""
        return self.path / MERGED_DIR

    @property
    def open_clip(self) -> Path:
        """The export of a CLIP run (open_clip's local-dir layout)."""
        return self.path / OPEN_CLIP_DIR

    def is_run(self) -> bool:
        """Whether the folder holds a run (an events log or a summary)."""
        return self.events.exists() or self.summary.exists()


def run_dirs(runs_dir: str | os.PathLike[str], pattern: str = "*") -> list[RunDir]:
    """The runs under ``runs_dir`` (folders matching ``pattern`` with a saved config)."""
    return [RunDir(p.parent) for p in sorted(Path(runs_dir).glob(f"{pattern}/{CONFIG_FILE}"))]


# -- the events log -------------------------------------------------------------------------
class EventLog:
    """Append-only JSON-lines writer; one line per event, flushed as written."""

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh: Any = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")

    def write(self, type: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"t": now, "type": type, **fields}`` and return it."""
        event = {
            "t": round(time.time(), 3),
            "type": type,
            **{k: plain(v) for k, v in fields.items()},
        }
        if self._fh is not None:
            self._fh.write(json.dumps(event, default=str) + "\n")
            self._fh.flush()
        return event

    def close(self) -> None:
        """Close the file (further writes are returned, not written)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_decode = json.JSONDecoder().decode


def parse_event(line: bytes | str) -> dict[str, Any] | None:
    """The event of one log line, ``None`` for a blank one; ``ValueError`` when corrupt
    (not JSON, not UTF-8, or not an object with a string ``type``)."""
    text = line.decode() if isinstance(line, bytes) else line  # UnicodeDecodeError: ValueError
    if not text.strip():
        return None
    event = _decode(text)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("not an event object")
    return event


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete event of a log (a run directory or its events file); corrupt and
    torn lines are skipped."""
    path = Path(path)
    if path.is_dir():
        path = RunDir(path).events
    out = []
    for line in path.read_bytes().splitlines():
        try:
            event = parse_event(line)
        except ValueError:
            continue
        if event is not None:
            out.append(event)
    return out


def events_path(path: str | os.PathLike[str]) -> Path:
    """The events log of ``path``: the path itself when it is a ``.jsonl`` file, else the
    log of the run directory it names."""
    path = Path(path)
    return path if path.suffix == Path(EVENTS_FILE).suffix else RunDir(path).events


def write_summary(run: RunDir, summary: Mapping[str, Any]) -> Path:
    """Write ``summary.json`` atomically (a reader never sees half of it)."""
    tmp = run.summary.with_name(SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(summary), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(run.summary)
    return run.summary


def read_summary(run: RunDir) -> dict[str, Any] | None:
    """The run's summary (None: none yet); ``ValueError`` when it is not a JSON object."""
    try:
        data = run.summary.read_bytes()
    except FileNotFoundError:
        return None
    return parse_summary(data)


def parse_summary(data: bytes | str) -> dict[str, Any]:
    """The content of a ``summary.json``; ``ValueError`` when it is not a JSON object."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def plain(value: Any) -> Any:
    """JSON-friendly scalars: tensors and numpy numbers to float, NaN/inf to None."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def fmt_duration(seconds: float | None) -> str:
    """``12s``, ``3m 05s``, ``1h 02m``, ``2d 03h``; empty when unknown."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"
