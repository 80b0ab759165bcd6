"""Several runs' curves of one metric overlaid, one colour per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Select, Static

from tui.config import TuiConfig
from tui.format import literal, printable
from tui.runs_data import EventTail, fmt_value
from tui.screens.base import PollingScreen, events_path, run_status
from tui.widgets.plot import LinePlot, plot_specs


@dataclass
class Overlay:
    """What one read of the runs hands the UI."""

    metric: str | None
    common: list[str]  # metric names every run has
    data: dict[str, tuple[list[float], list[float]]]  # run label -> (steps, values)
    status: dict[str, str]  # run label -> status


class CompareScreen(PollingScreen):
    """Overlay one metric (a Select of the metrics the runs share) for several runs.

    The first series of the config's first plot is the default metric; each run keeps
    the colour of its place in the list (the plot's ``lineplot--series-<i>`` styles).
    """

    SCOPE = "compare"

    def __init__(self, run_paths: list[str | Path], config: TuiConfig) -> None:
        super().__init__(config)
        self.poll_s = config.poll_s * 2  # several logs: half as often
        max_points = config.max_points
        self.labels = _labels([Path(p) for p in run_paths])
        self.tails = {
            label: EventTail(events_path(p), max_points)
            for label, p in zip(self.labels, run_paths, strict=True)
        }
        series = plot_specs(config.plots)[0]["series"]
        self.default_metric = series[0] if series else None
        self.metric: str | None = None
        self.overlay: Overlay | None = None
        self._options: list[str] = []

    def compose(self) -> ComposeResult:
        with Horizontal(id="compare-bar"):
            yield Label("metric")
            yield Select([], prompt="metric", allow_blank=True, id="compare-metric")
        yield LinePlot("", self.labels, id="compare-plot")
        yield Static("", id="compare-legend", markup=False)

    # -- reading (worker thread) ------------------------------------------------------
    def read(self) -> Overlay:
        for tail in self.tails.values():
            tail.poll()
        names = [set(t.metric_names()) for t in self.tails.values()]
        first = next(iter(self.tails.values())).metric_names()
        common = [n for n in first if all(n in s for s in names)]
        metric = self.metric if self.metric in common else self._default(common)
        data = {k: t.series(metric) for k, t in self.tails.items()} if metric else {}
        status = {k: run_status(t.status) for k, t in self.tails.items()}
        return Overlay(metric, common, data, status)

    def _default(self, common: list[str]) -> str | None:
        if self.default_metric in common:
            return self.default_metric
        return common[0] if common else None

    # -- showing (UI thread) ----------------------------------------------------------
    def show(self, overlay: Overlay) -> None:
        if self.metric in overlay.common and overlay.metric != self.metric:
            return  # read before another metric was chosen; the next read has it
        self.overlay = overlay
        select = self.query_one("#compare-metric", Select)
        if self._options != overlay.common:
            self._options = list(overlay.common)
            with select.prevent(Select.Changed):
                select.set_options([(literal(n), n) for n in overlay.common])
        self.metric = overlay.metric
        if overlay.metric is not None and select.value != overlay.metric:
            with select.prevent(Select.Changed):
                select.value = overlay.metric
        plot = self.query_one("#compare-plot", LinePlot)
        plot.title = overlay.metric or "no metric common to these runs"
        plot.update_data(overlay.data)
        self.query_one("#compare-legend", Static).update(self._legend(overlay))

    def _legend(self, overlay: Overlay) -> Text:
        out = Text()
        plot = self.query_one("#compare-plot", LinePlot)
        for label in self.labels:
            xs, ys = overlay.data.get(label, ([], []))
            out.append("━━ ", style=plot.color(label))
            out.append(printable(label), style="bold")
            out.append("  ")
            out.append_text(self.status_text(overlay.status.get(label, "unknown")))
            if ys:
                out.append(f"  last {fmt_value(ys[-1])} @ {fmt_value(xs[-1])}", style="dim")
                out.append(f"  min {fmt_value(min(ys))}  max {fmt_value(max(ys))}", style="dim")
            out.append("\n")
        out.rstrip()
        return out

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id != "compare-metric" or event.value is Select.NULL:
            return
        if event.value != self.metric:
            self.metric = str(event.value)
            self.poll(force=True)

    # -- actions ----------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_choose_metric(self) -> None:
        select = self.query_one("#compare-metric", Select)
        select.focus()
        select.expanded = True

    def action_next_metric(self, step: int) -> None:
        common = self.overlay.common if self.overlay else []
        if not common:
            return
        at = common.index(self.metric) if self.metric in common else -step
        self.query_one("#compare-metric", Select).value = common[(at + step) % len(common)]


def _labels(paths: list[Path]) -> list[str]:
    """Run labels: the folder names, made unique with the parent folder when needed."""
    names = [p.stem if p.suffix == ".jsonl" else p.name for p in paths]
    out = []
    for path, name in zip(paths, names, strict=True):
        label = name if names.count(name) == 1 else f"{path.parent.name}/{name}"
        while label in out:
            label += "'"
        out.append(label)
    return out
