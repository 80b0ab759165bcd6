"""Training runs for the TUI: the run list, a live tail of ``events.jsonl``, plotting help.

No Textual imports, and cheap enough to poll twice a second: every reader keeps its
file offset and reads only the bytes appended since the previous call.

Run status rule (:func:`list_runs`), in order:

1. ``summary.json`` present: its ``status`` (``finished`` / ``failed`` /
   ``interrupted``), unless the events log holds a ``started`` status newer than the
   summary (a resumed run still going: rule 2 applies). A summary that does not parse
   gives ``unknown`` with the reason in ``error``.
2. Otherwise the last ``status`` event of ``events.jsonl``. A final one (``finished``,
   ``failed``, ``interrupted``) is taken as is. ``started`` carries the run's pid, host
   and process start time, read by :func:`lake.runs.effective_status` (the one owner):
   a run whose process on this host is gone (SIGKILL, OOM) never wrote a final status
   and is shown as ``killed``; one whose process still runs is ``running``. When that
   cannot be told (another host, an event without a pid) ``started`` means ``running``
   while the log keeps changing, and once the log has not been modified for
   ``stale_after_s`` seconds (default 10 minutes, longer than any normal gap between
   events) the run is shown as ``interrupted`` with the silence in ``error``.
3. No status event at all (empty or unreadable log): ``unknown`` with the reason.

Corrupt lines are skipped and mentioned in ``error``; nothing here raises for a bad run.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lake import runs

FINAL = runs.FINAL
MAX_LOG_LINES = 1000
MAX_LINE_BYTES = 16 * 2**20  # a longer "line" is garbage (no newline in sight): dropped
_NOT_METRICS = {"t", "type", "step", "epoch"}


# -- incremental line reader ----------------------------------------------------------------
class _LineReader:
    """Complete lines appended to a file since the last call; restarts on truncation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino)
        self.buffer = b""
        self.dropping = False  # inside an over-long line, skip to its newline
        self.dropped = 0  # over-long lines dropped
        self.mtime = 0.0

    def read(self, max_bytes: int | None = None) -> tuple[list[bytes], bool]:
        """``(new complete lines, restarted)``; a missing file gives ``([], restarted)``."""
        try:
            st = os.stat(self.path)
        except OSError:
            restarted = self.ident is not None
            self._reset(None)
            return [], restarted
        ident = (st.st_dev, st.st_ino)
        restarted = self.ident is not None and (ident != self.ident or st.st_size < self.offset)
        if restarted or self.ident is None:
            self._reset(ident)
        self.mtime = st.st_mtime
        if st.st_size == self.offset:
            return [], restarted
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(max_bytes if max_bytes else -1)
        self.offset += len(data)
        return self._split(data), restarted

    def _reset(self, ident: tuple[int, int] | None) -> None:
        self.ident, self.offset, self.buffer, self.dropping = ident, 0, b"", False

    def _split(self, data: bytes) -> list[bytes]:
        if self.dropping:
            cut = data.find(b"\n")
            if cut < 0:
                return []
            data, self.dropping = data[cut + 1 :], False
        data = self.buffer + data
        *lines, self.buffer = data.split(b"\n")
        if len(self.buffer) > MAX_LINE_BYTES:
            self.buffer, self.dropping = b"", True
            self.dropped += 1
        return lines


_parse = runs.parse_event  # the one line parser: ValueError for a corrupt line


def metric_values(event: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """``(key, value)`` of an event's numeric metrics (bookkeeping fields left out)."""
    for key, raw in event.items():
        value = _number(raw)
        if value is not None and key not in _NOT_METRICS:
            yield key, value


def _number(value: Any) -> float | None:
    kind = type(value)  # exact types: bool is no number here
    if kind is float:
        return value if math.isfinite(value) else None
    return float(value) if kind is int else None


# -- run list -------------------------------------------------------------------------------
@dataclass
class RunInfo:
    """One run directory as the run list shows it (see the module doc for ``status``)."""

    run_id: str
    path: Path
    status: str  # running | finished | failed | interrupted | killed | unknown
    experiment: str | None
    started: float | None  # epoch seconds of the latest (re)start
    duration_s: float | None  # summary total_s; now - started while running
    best: dict | None  # {"metric", "value", "step"}
    error: str | None
    step: int | None = None  # latest train step (summary step when finished)


class _RunScan:
    """What :func:`list_runs` needs from one run's events, kept up to date incrementally."""

    def __init__(self, events: Path) -> None:
        self.reader = _LineReader(events)
        self.clear()

    def clear(self) -> None:
        self.lines = 0
        self.corrupt = 0
        self.experiment: str | None = None
        self.status: dict[str, Any] | None = None  # last status event
        self.started_t: float | None = None  # t of the last "started" status
        self.last_t: float | None = None
        self.step: int | None = None
        self.extremes: dict[str, list] = {}  # val metric -> [min, min_step, max, max_step]

    def update(self) -> None:
        lines, restarted = self.reader.read()
        if restarted:
            self.clear()
        self.corrupt += self.reader.dropped
        self.reader.dropped = 0
        for line in lines:
            try:
                event = _parse(line)
            except ValueError:
                self.lines += 1
                self.corrupt += 1
                continue
            if event is not None:
                self.lines += 1
                self._add(event)

    def _add(self, event: dict[str, Any]) -> None:
        t = _number(event.get("t"))
        self.last_t = t if t is not None else self.last_t
        kind = event["type"]
        step = event.get("step")
        if kind == runs.EV_STATUS:
            self.status = event
            if event.get("status") == runs.STARTED:
                self.started_t = t
                self.experiment = event.get("experiment") or self.experiment
        elif kind == runs.EV_TRAIN and isinstance(step, int):
            self.step = step
        elif kind == runs.EV_VAL:
            for key, value in metric_values(event):
                ext = self.extremes.get(key)
                if ext is None:
                    self.extremes[key] = [value, step, value, step]
                    continue
                if value < ext[0]:
                    ext[0], ext[1] = value, step
                if value > ext[2]:
                    ext[2], ext[3] = value, step

    def best(self, monitor: str | None, mode: str) -> dict | None:
        ext = self.extremes.get(monitor) if monitor else None
        if ext is None:
            return None
        value, step = (ext[0], ext[1]) if mode == "min" else (ext[2], ext[3])
        return {"metric": monitor, "value": value, "step": step}


class _Cached:
    """A small file parsed again only when its size or mtime changes."""

    def __init__(self, path: Path, parse: Any) -> None:
        self.path, self.parse = path, parse
        self.key: tuple[int, int] | None = None
        self.value: Any = None

    def get(self) -> Any:
        """The parsed content; ``None`` when absent, an error string when unreadable."""
        try:
            st = os.stat(self.path)
        except OSError:
            self.key = self.value = None
            return None
        key = (st.st_size, st.st_mtime_ns)
        if key != self.key:
            self.key = key
            try:
                self.value = self.parse(self.path.read_bytes())
            except Exception as exc:  # any garbage in a run dir must not break the list
                self.value = f"{type(exc).__name__}: {exc}".strip()
        return self.value


_summary = runs.parse_summary


_EVENTS, _SUMMARY = runs.EVENTS_FILE, runs.SUMMARY_FILE  # the names errors mention


def _monitor(data: bytes) -> tuple[str | None, str]:
    import yaml

    cfg = yaml.safe_load(data) or {}
    ckpt = (cfg.get("checkpoint") or {}) if isinstance(cfg, dict) else {}
    return ckpt.get("monitor"), str(ckpt.get("mode") or "max")


class _Run:
    def __init__(self, path: Path) -> None:
        self.path = path
        run = runs.RunDir(path)
        self.scan = _RunScan(run.events)
        self.summary = _Cached(run.summary, _summary)
        self.config = _Cached(run.config, _monitor)

    def info(self, now: float, stale_after_s: float) -> RunInfo:
        scan = self.scan
        try:
            scan.update()
        except OSError as exc:
            return self._unknown(f"{_EVENTS}: {exc}")
        summary = self.summary.get()
        if isinstance(summary, str):
            return self._unknown(f"{_SUMMARY}: {summary}")
        notes = []
        if scan.corrupt:
            notes.append(f"{scan.corrupt} corrupt line(s) in {_EVENTS} skipped")
        if summary is not None and not self._resumed_after(summary):
            return self._from_summary(summary, notes)
        return self._from_events(now, stale_after_s, notes)

    def _resumed_after(self, summary: dict[str, Any]) -> bool:
        status, started = self.scan.status, self.scan.started_t
        if status is None or status.get("status") != runs.STARTED or started is None:
            return False
        ended = _number(summary.get("finished_at"))
        return ended is not None and started > ended

    def _from_summary(self, summary: dict[str, Any], notes: list[str]) -> RunInfo:
        status = summary.get("status")
        if status not in FINAL:
            return self._unknown(f"{_SUMMARY}: unexpected status {status!r}")
        error = summary.get("error")
        best = summary.get("best") if isinstance(summary.get("best"), dict) else None
        step = summary.get("step")
        return RunInfo(
            run_id=self.path.name,
            path=self.path,
            status=status,
            experiment=summary.get("experiment") or self.scan.experiment,
            started=_number(summary.get("started_at")) or self.scan.started_t,
            duration_s=_number(summary.get("total_s")),
            best=best or self._best(),
            error=_join(error, notes),
            step=step if isinstance(step, int) else self.scan.step,
        )

    def _from_events(self, now: float, stale_after_s: float, notes: list[str]) -> RunInfo:
        scan = self.scan
        if scan.status is None:
            if not self.scan.reader.path.exists():
                return self._unknown(f"no {_EVENTS}")
            reason = "no status event" if scan.lines else f"{_EVENTS} is empty"
            return self._unknown("; ".join([reason, *notes]))
        status = scan.status.get("status")
        error = scan.status.get("error")
        started = scan.started_t
        duration = None
        if status == runs.STARTED:
            idle = now - scan.reader.mtime
            status = started_status(scan.status, idle, stale_after_s)
            if status == runs.KILLED:
                end = scan.last_t
                error = _gone(scan.status)
            elif status == runs.INTERRUPTED:
                error = f"no final status and no events for {_ago(idle)} (process killed?)"
                end = scan.last_t
            else:
                end = now
            duration = end - started if end is not None and started is not None else None
        elif status in FINAL:
            if scan.last_t is not None and started is not None:
                duration = scan.last_t - started
        else:
            return self._unknown(f"{_EVENTS}: unexpected status {status!r}")
        return RunInfo(
            run_id=self.path.name,
            path=self.path,
            status=status,
            experiment=scan.experiment,
            started=started,
            duration_s=None if duration is None else max(0.0, duration),
            best=self._best(),
            error=_join(error, notes),
            step=scan.step,
        )

    def _best(self) -> dict | None:
        config = self.config.get()
        if not isinstance(config, tuple):
            return None
        return self.scan.best(*config)

    def _unknown(self, reason: str) -> RunInfo:
        return RunInfo(
            run_id=self.path.name,
            path=self.path,
            status=runs.UNKNOWN,
            experiment=self.scan.experiment,
            started=self.scan.started_t,
            duration_s=None,
            best=None,
            error=reason,
            step=self.scan.step,
        )


def _join(error: Any, notes: list[str]) -> str | None:
    return "; ".join(([str(error)] if error else []) + notes) or None


def started_status(event: dict, idle_s: float, stale_after_s: float) -> str:
    """Status of a run whose last status event is ``started``: ``killed`` when its process
    is gone, ``interrupted`` when it cannot be checked (other host, no pid) and its log has
    been silent for ``stale_after_s``, else ``running``; the process is checked once."""
    alive = runs.is_alive(event)
    if alive is False:
        return runs.KILLED
    if alive is None and idle_s > stale_after_s:
        return runs.INTERRUPTED
    return runs.RUNNING


def _gone(event: dict[str, Any]) -> str:
    """Why a started run reads ``killed``."""
    return f"process {event.get('pid')} on {event.get('host')} ended without a final status"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_RUNS: dict[Path, dict[Path, _Run]] = {}
_RUNS_LOCK = threading.Lock()


def list_runs(
    runs_dir: str | Path, stale_after_s: float = 600.0, now: float | None = None
) -> list[RunInfo]:
    """Every run under ``runs_dir`` (a folder with events.jsonl or summary.json), newest
    first. Never raises for a bad run; a missing ``runs_dir`` gives ``[]``. Readers are
    kept between calls, so a repeated call only stats files and reads appended bytes."""
    root = Path(runs_dir)
    now = time.time() if now is None else now
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except OSError:
        return []
    out = []
    with _RUNS_LOCK:
        known = _RUNS.get(root, {})
        kept: dict[Path, _Run] = {}
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_dir():
                    continue
            except OSError:
                continue
            if not runs.RunDir(path).is_run():
                continue
            run = kept[path] = known.get(path) or _Run(path)
            out.append(run.info(now, stale_after_s))
        _RUNS[root] = kept
    out.sort(key=lambda r: (r.started or 0.0, r.run_id), reverse=True)
    return out


# -- live tail ------------------------------------------------------------------------------
class _Series:
    """At most ``max_points`` (step, value) points, evenly decimated, latest point kept.

    Points are stored while there is room. When more than ``max_points - 1`` are
    stored, every other stored point is dropped and from then on only every 2nd incoming point is
    stored (then every 4th, 8th...), so the kept points stay evenly spaced over the
    whole run. The first point is always kept, and the latest incoming point is kept
    aside when it fell between two stored ones, so the curve always ends at "now".
    """

    def __init__(self, max_points: int) -> None:
        self.cap = max_points - 1  # one slot for the latest point
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.stride = 1
        self.count = 0  # points added so far; point i is stored when i % stride == 0
        self.tail: tuple[float, float] | None = None

    def add(self, x: float, y: float) -> None:
        index, self.count = self.count, self.count + 1
        if index % self.stride:
            self.tail = (x, y)
            return
        self.tail = None
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.cap:
            if len(self.xs) % 2 == 0:  # the latest point is about to be dropped
                self.tail = (self.xs[-1], self.ys[-1])
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self.stride *= 2

    def points(self) -> tuple[list[float], list[float]]:
        if self.tail is None:
            return list(self.xs), list(self.ys)
        return [*self.xs, self.tail[0]], [*self.ys, self.tail[1]]


class EventTail:
    """Incremental, bounded reader of one run's ``events.jsonl``.

    :meth:`poll` reads only the bytes appended since the previous call; a torn last line
    waits in a buffer until its newline arrives; a corrupt complete line is counted in
    ``corrupt`` and skipped; a file that shrank or was replaced is read again from the
    start (all state cleared); a missing file is simply "no events yet". ``status``
    follows the :func:`list_runs` rule, without the summary file.
    Memory is bounded: ``max_points`` per metric series (see :class:`_Series`), the last
    1,000 log lines, and the last event of each type in ``last``.
    """

    def __init__(
        self,
        path: str | Path,
        max_points: int = 4096,
        stale_after_s: float = 600.0,
        max_bytes: int = 8 * 2**20,
    ) -> None:
        if max_points < 4:
            raise ValueError("max_points must be at least 4")
        self.path = Path(path)
        self.max_points = max_points
        self.stale_after_s = stale_after_s
        self.max_bytes = max_bytes  # per poll, so a huge log is caught up over a few polls
        self._reader = _LineReader(self.path)
        self._clear()

    def _clear(self) -> None:
        self._status = runs.UNKNOWN  # last status event's status
        self._status_event: dict[str, Any] = {}  # and that event (pid, host of a start)
        self.corrupt = 0
        self.events = 0
        self.last: dict[str, dict] = {}
        self.step: int | None = None
        self._series: dict[str, _Series] = {}
        # [event, None] until log_lines() formats it to [None, line]: a fast catch-up
        # on a long log formats only the lines someone looks at
        self._log: deque[list] = deque(maxlen=MAX_LOG_LINES)

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``failed``, ``interrupted``, ``killed`` or ``unknown``,
        by the rule of :func:`list_runs` (a ``started`` run whose process is gone is
        ``killed``; one that cannot be checked, silent for ``stale_after_s`` at the last
        poll, is ``interrupted``)."""
        if self._status != runs.STARTED:
            return self._status if self._status in FINAL else runs.UNKNOWN
        idle = time.time() - self._reader.mtime
        return started_status(self._status_event, idle, self.stale_after_s)

    @property
    def mtime(self) -> float:
        """Modification time of the log at the last poll (0 before one saw the file)."""
        return self._reader.mtime

    def poll(self) -> int:
        """Read what was appended since the last call; return the number of new events."""
        try:
            lines, restarted = self._reader.read(self.max_bytes)
        except OSError:
            return 0
        if restarted:
            self._clear()
        dropped, self._reader.dropped = self._reader.dropped, 0
        self.corrupt += dropped
        new = 0
        for line in lines:
            try:
                event = _parse(line)
            except ValueError:
                self.corrupt += 1
                continue
            if event is not None:
                self._add(event)
                new += 1
        self.events += new
        return new

    def _add(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        self.last[kind] = event
        if kind == runs.EV_STATUS and isinstance(event.get("status"), str):
            self._status = event["status"]
            self._status_event = event
        step = event.get("step")
        if isinstance(step, int) and not isinstance(step, bool):
            self.step = step
        if kind in runs.METRIC_EVENTS and self.step is not None:
            x = float(self.step)
            for key, value in metric_values(event):
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = _Series(self.max_points)
                series.add(x, value)
        self._log.append([event, None])

    def metric_names(self) -> list[str]:
        """Numeric keys seen in train/val/test events, sorted."""
        return sorted(self._series)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """``(steps, values)`` of one metric; empty lists for an unknown name."""
        series = self._series.get(name)
        return series.points() if series is not None else ([], [])

    def log_lines(self, n: int = 200) -> list[str]:
        """The last ``n`` events as readable lines, oldest first."""
        if n <= 0:
            return []
        entries = list(self._log)[-n:]
        for entry in entries:
            if entry[1] is None:
                try:
                    entry[1] = format_event(entry[0])
                except Exception:  # odd field types in a hand-edited log: show it raw
                    entry[1] = json.dumps(entry[0], default=str)[:300]
                entry[0] = None
        return [entry[1] for entry in entries]


# -- formatting -----------------------------------------------------------------------------
def fmt_value(value: Any) -> str:
    """Compact number: ``0.53``, ``1300``, ``2.0e-3``; other values via ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    mantissa, exp = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exp)}"


def format_event(event: dict[str, Any]) -> str:
    """One log line: ``12:03:04 train step 120 loss 0.53 lr 2.0e-3 ...``."""
    t = _number(event.get("t"))
    clock = time.strftime("%H:%M:%S", time.localtime(t)) if t is not None else "--:--:--"
    kind = event.get("type", "?")
    parts = [clock, str(kind)]
    if kind == runs.EV_STATUS:
        parts.append(str(event.get("status")))
        if event.get("experiment"):
            parts.append(f"experiment {event['experiment']}")
        if event.get("resumed_from"):
            parts.append(f"resumed from {event['resumed_from']}")
        if event.get("error"):
            parts.append(f"error {event['error']}")
        return " ".join(parts)
    if "step" in event:
        parts.append(f"step {event['step']}")
    if kind == runs.EV_PARAMS:
        rows = event.get("rows") if isinstance(event.get("rows"), list) else []
        total = next((r for r in rows if isinstance(r, dict) and r.get("module") == "total"), {})
        parts += [str(event.get("family", "")), f"params {_count(total.get('params'))}"]
        if "trainable" in total:
            parts.append(f"trainable {_count(total['trainable'])}")
        return " ".join(parts)
    if kind == runs.EV_CURRICULUM:
        kinds = event.get("kinds") if isinstance(event.get("kinds"), list) else []
        parts += [f"epoch {event.get('epoch')} -> {event.get('stage')}",
                  f"({', '.join(map(str, kinds))})", f"{event.get('samples')} samples"]  # fmt: skip
        return " ".join(parts)
    if kind in (runs.EV_GENERATIONS, runs.EV_SKIPPED):
        samples = event.get("samples")
        if event.get("split"):
            parts.append(str(event["split"]))
        parts.append(f"{len(samples) if isinstance(samples, list) else '?'} samples")
        return " ".join(parts)
    if kind == runs.EV_SUMMARY:
        parts.append(str(event.get("status")))
        if _number(event.get("total_s")) is not None:
            parts.append(f"total {event['total_s']:.1f}s")
        best = event.get("best")
        if isinstance(best, dict):
            parts.append(f"best {best.get('metric')} {fmt_value(best.get('value'))}")
        if event.get("error"):
            parts.append(f"error {event['error']}")
        return " ".join(parts)
    keys = [
        k
        for k, v in event.items()
        if k not in ("t", "type", "step")
        and v is not None
        and not isinstance(v, (dict, list))
        and not (k.startswith("train/") and event.get(k[6:]) == v)  # duplicates "loss"
    ]
    keys.sort(key=_key_rank)
    parts += [f"{k} {fmt_value(event[k])}" for k in keys]
    return " ".join(parts)


def _key_rank(key: str) -> int:
    """Losses and lr first, throughput and memory last, the rest as logged."""
    if key.endswith("loss"):
        return 0
    if key in ("lr", "train/lr"):
        return 1
    if key in ("epoch", "samples_per_s", "cpu_mem_mb", "gpu_mem_mb"):
        return 3
    return 2


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


# -- plotting -------------------------------------------------------------------------------
def downsample(
    xs: Sequence[float], ys: Sequence[float], width: int
) -> tuple[list[float], list[float]]:
    """At most ``2 * width`` points: the min and the max of each of ``width`` equal
    index buckets, in their original order (spikes survive). Short input is returned
    unchanged."""
    n = min(len(xs), len(ys))
    if width <= 0:
        return [], []
    if n <= 2 * width:
        return list(xs[:n]), list(ys[:n])
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(width):
        lo, hi = b * n // width, (b + 1) * n // width
        i_min = i_max = lo
        for i in range(lo + 1, hi):
            if ys[i] < ys[i_min]:
                i_min = i
            elif ys[i] > ys[i_max]:
                i_max = i
        for i in sorted({i_min, i_max}):
            out_x.append(xs[i])
            out_y.append(ys[i])
    return out_x, out_y


# -- replay ---------------------------------------------------------------------------------
def replay(
    src_events: str | Path,
    dst_events: str | Path,
    speed: float | None = None,
    max_gap_s: float | None = None,
) -> int:
    """Append a recorded events log to ``dst_events`` line by line, flushing each line.

    ``speed=None`` writes as fast as possible; ``speed=10`` sleeps the recorded gaps
    between events (their ``t``) divided by 10, each capped at ``max_gap_s``. The bytes
    written are exactly the source's. Returns the number of lines written.
    """
    dst = Path(dst_events)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prev_t: float | None = None
    written = 0
    with open(src_events, "rb") as src, open(dst, "ab") as out:
        for line in src:
            if speed:
                t = _event_time(line)
                if t is not None and prev_t is not None and t > prev_t:
                    gap = (t - prev_t) / speed
                    time.sleep(gap if max_gap_s is None else min(gap, max_gap_s))
                prev_t = t if t is not None else prev_t
            out.write(line)
            out.flush()
            written += 1
    return written


def _event_time(line: bytes) -> float | None:
    try:
        event = _parse(line)
    except ValueError:
        return None
    return _number(event.get("t")) if event is not None else None


def replay_run(
    src_dir: str | Path,
    dst_dir: str | Path,
    speed: float | None = None,
    max_gap_s: float | None = None,
) -> int:
    """Replay a whole recorded run as training would write it: ``config.yaml`` first,
    then the events, then ``summary.json`` (when the recording has them)."""
    src, dst = runs.RunDir(src_dir), runs.RunDir(dst_dir)
    dst.path.mkdir(parents=True, exist_ok=True)
    if src.config.is_file():
        dst.config.write_bytes(src.config.read_bytes())
    n = replay(src.events, dst.events, speed, max_gap_s)
    if src.summary.is_file():
        tmp = dst.summary.with_name(dst.summary.name + ".tmp")
        tmp.write_bytes(src.summary.read_bytes())
        tmp.replace(dst.summary)
    return n
