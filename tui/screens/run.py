"""One training run, live: curves, throughput, memory, status, where its weights come from
(random-init / pretrained / from a run, frozen / LoRA / trained; the data) and the event log."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Log, Static

from lake.weights_origin import UNKNOWN, describe, run_weights
from tui.config import TuiConfig
from tui.format import clip, fmt_duration, printable
from tui.runs_data import EventTail, fmt_value
from tui.screens.base import PollingScreen, events_path, run_status
from tui.widgets.plot import PlotGrid, plot_specs, wanted


@dataclass
class Snapshot:
    """What one read of the events log hands the UI."""

    names: list[str]
    data: dict[str, tuple[list[float], list[float]]]
    status: str
    step: int | None
    events: int
    corrupt: int
    last: dict[str, dict]
    started: float | None
    log: list[str] = field(default_factory=list)  # lines new since the previous snapshot
    log_reset: bool = False  # the log restarted: replace what is shown
    weights: str | None = None  # where the model's weights come from (lake.weights_origin)


class RunScreen(PollingScreen):
    """Live view of one run, read from its events log every ``poll_s`` in a thread.

    It reads ``plots``, ``log_lines`` (log tail length) and ``max_points`` (points kept
    per series) of the config.
    """

    SCOPE = "run"

    def __init__(self, run_path: str | Path, config: TuiConfig) -> None:
        super().__init__(config)
        self.run_path = Path(run_path)
        self.poll_s = config.poll_s
        self.log_n = config.log_lines
        self.max_chars = config.max_text_chars
        self.tail = EventTail(events_path(run_path), config.max_points)
        self.specs = plot_specs(config.plots)
        self.snapshot: Snapshot | None = None
        self.paused = False
        # read-side state, touched only by the (single) worker thread
        self._seen = -1
        self._corrupt = 0
        self._started: float | None = None
        self._weights: str | None = None

    @property
    def run_id(self) -> str:
        return self.run_path.stem if self.run_path.suffix == ".jsonl" else self.run_path.name

    def compose(self) -> ComposeResult:
        yield Static(Text(printable(self.run_id), style="bold"), id="run-head", markup=False)
        yield Static("", id="run-weights", markup=False)
        yield Static("", id="run-notice", markup=False)
        yield Static("", id="run-error", markup=False)
        with Horizontal(id="run-body"):
            yield PlotGrid(self.specs, id="run-plots")
            yield Static("", id="run-stats", markup=False)
        yield Log(max_lines=max(self.log_n, 1), highlight=False, id="run-log")

    def on_mount(self) -> None:
        # PollingScreen.on_mount starts the reads (Textual calls it too)
        self.set_interval(1.0, self._show_head)

    # -- reading (worker thread) ------------------------------------------------------
    def read(self) -> Snapshot | None:
        tail = self.tail
        if self.paused:
            return None
        tail.poll()
        if tail.events == self._seen and tail.corrupt == self._corrupt:
            return None
        reset = tail.events < self._seen
        new = tail.events - max(self._seen, 0) if not reset else tail.events
        status = tail.last.get("status") or {}
        if status.get("status") == "started":
            self._started = status.get("t")
        self._seen, self._corrupt = tail.events, tail.corrupt
        if self._weights is None or self._weights == UNKNOWN:  # config.yaml may come later
            folder = self.tail.path.parent
            self._weights = printable(clip(describe(run_weights(folder)), self.max_chars))
        names = tail.metric_names()
        return Snapshot(
            names=names,
            data={n: tail.series(n) for n in wanted(self.specs, names)},
            status=tail.status,
            step=tail.step,
            events=tail.events,
            corrupt=tail.corrupt,
            last={k: dict(v) for k, v in tail.last.items() if k != "params"},
            started=self._started,
            # events are data: controls made visible, huge values cut (in this thread)
            log=[
                printable(clip(line, self.max_chars))
                for line in tail.log_lines(min(new, self.log_n))
            ],
            log_reset=reset,
            weights=self._weights,
        )

    # -- showing (UI thread) ----------------------------------------------------------
    def show(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.query_one("#run-plots", PlotGrid).update_data(snap.data, snap.names)
        self._show_head()
        if snap.weights:
            self.query_one("#run-weights", Static).update(f"weights: {snap.weights}")
        self._show_notice()
        self._show_error()
        self.query_one("#run-stats", Static).update(self._stats(snap))
        log = self.query_one("#run-log", Log)
        if snap.log_reset:
            log.clear()
        if snap.log:
            log.write_lines(snap.log)

    def read_failed(self, error: BaseException) -> None:
        notice = self.query_one("#run-notice", Static)
        notice.update(printable(f"⚠ cannot read {self.tail.path}: {type(error).__name__}: {error}"))
        notice.set_class(True, "-warning")
        notice.display = True

    def _show_head(self) -> None:
        snap = self.snapshot
        head = Text()
        head.append(printable(self.run_id), style="bold")
        if snap is None:
            head.append("  reading …", style="dim")
        else:
            head.append("  ")
            head.append_text(self.status_text(run_status(snap.status)))
            experiment = (snap.last.get("status") or {}).get("experiment")
            if experiment:
                head.append(f"  {printable(experiment)}")
            train = snap.last.get("train") or {}
            if snap.step is not None:
                head.append(f"  step {snap.step}", style="bold")
            if train.get("epoch") is not None:
                head.append(f"  epoch {printable(train['epoch'])}")
            elapsed = self._elapsed(snap)
            if elapsed is not None:
                head.append(f"  {fmt_duration(elapsed)}")
            if self.paused:
                head.append("  paused", style="reverse")
        self.query_one("#run-head", Static).update(head)

    def _elapsed(self, snap: Snapshot) -> float | None:
        total = (snap.last.get("summary") or {}).get("total_s")
        if isinstance(total, (int, float)):
            return float(total)
        if snap.started is not None and run_status(snap.status) == "running":
            return max(0.0, time.time() - snap.started)
        return None

    def _show_notice(self) -> None:
        snap = self.snapshot
        notice = self.query_one("#run-notice", Static)
        if snap is None:
            return
        if snap.corrupt:
            lines = "line" if snap.corrupt == 1 else "lines"
            text = (
                f"⚠ {snap.corrupt} unreadable {lines} skipped in {self.tail.path} "
                "(half-written or corrupt); the rest is shown"
            )
        elif not snap.events:
            text = f"No events in {self.tail.path} yet; waiting for the run to write some."
        else:
            text = ""
        notice.update(printable(text))
        notice.set_class(bool(snap.corrupt), "-warning")
        notice.display = bool(text)

    def _show_error(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        error = (snap.last.get("status") or {}).get("error") or (
            snap.last.get("summary") or {}
        ).get("error")
        box = self.query_one("#run-error", Static)
        box.update(
            Text(f"✘ {printable(clip(str(error), self.max_chars), multiline=True)}")
            if error
            else ""
        )
        box.display = bool(error)

    def _stats(self, snap: Snapshot) -> Text:
        train = snap.last.get("train") or {}
        out = Text()
        rows = [
            ("samples/s", _first(train, "samples_per_s")),
            ("tokens/s", _first(train, "tokens_per_s", suffix=True)),
            ("MFU", _first(train, "mfu", suffix=True)),
            ("lr", _first(train, "lr")),
        ]
        _section(out, "train", [(k, v) for k, v in rows if v is not None or k == rows[0][0]])
        _section(
            out,
            "memory",
            [("CPU", _mem(train.get("cpu_mem_mb"))), ("GPU", _mem(train.get("gpu_mem_mb")))],
        )
        for kind in ("val", "test"):
            event = snap.last.get(kind) or {}
            metrics = [(k, v) for k, v in event.items() if k not in ("t", "type", "step", "epoch")]
            if metrics:
                _section(out, f"{kind} @ step {event.get('step')}", metrics, self.max_chars)
        best = (snap.last.get("summary") or {}).get("best")
        if isinstance(best, dict) and best.get("value") is not None:
            _section(out, "best", [(str(best.get("metric")), best["value"])], self.max_chars)
        return out

    # -- actions ----------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_toggle_log(self) -> None:
        log = self.query_one("#run-log", Log)
        log.display = not log.display

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._show_head()
        if not self.paused:
            self.poll(force=True)


def _first(event: dict, key: str, suffix: bool = False) -> Any:
    """``event[key]``, or with ``suffix`` the first field named ``*key`` / ``*/key``."""
    if event.get(key) is not None or not suffix:
        return event.get(key)
    for name, value in event.items():
        if name.endswith(("/" + key, "_" + key)) and value is not None:
            return value
    return None


def _mem(mb: Any) -> str | None:
    if not isinstance(mb, (int, float)):
        return None
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def _section(out: Text, title: str, rows: list[tuple[str, Any]], limit: int = 0) -> None:
    if out:
        out.append("\n")
    out.append(printable(title) + "\n", style="bold")
    rows = [(printable(k), v) for k, v in rows]
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        shown = "–" if value is None else value if isinstance(value, str) else fmt_value(value)
        out.append(f" {key.ljust(width)}  ", style="dim")
        out.append(f"{printable(clip(shown, limit))}\n")
    out.rstrip()
