"""Line plots of metric series, drawn with braille dots through Textual's Line API.

plotext needs ~60 ms to build one 100x20 plot, too slow for four live plots redrawn
twice a second; this renderer draws the same in a few ms and only when data changed.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from tui.format import printable
from tui.runs_data import downsample

#: Plots shown for a run when the config declares none.
DEFAULT_PLOTS: list[dict[str, Any]] = [
    {"title": "loss", "series": ["train/loss", "val/loss"]},
    {"title": "lr", "series": ["lr"]},
    {"title": "throughput", "series": ["samples_per_s"]},
    {"title": "memory", "series": ["cpu_mem_mb", "gpu_mem_mb"]},
]

#: Series colours: ``LinePlot > .lineplot--series-<i>`` in ``tui/lakeloom.tcss``, i < this.
SERIES_STYLES = 10

# Braille dot bits by (row, column) inside a 2x4 cell.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))

Series = tuple[list[float], list[float]]
Grid = list[list[int]]


def plot_specs(plots: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Normalised plot declarations: ``title`` and ``series`` (or ``metrics``: names or
    fnmatch patterns), optional ``x`` / ``x_label``, ``y_label``, ``log_y``;
    ``DEFAULT_PLOTS`` when none are given."""
    out = []
    for i, spec in enumerate(plots or DEFAULT_PLOTS):
        series = spec.get("series") or spec.get("metrics") or []
        if isinstance(series, str):
            series = [series]
        out.append({
            "title": str(spec.get("title") or (series[0] if series else f"plot {i + 1}")),
            "series": [str(s) for s in series],
            "x_label": str(spec.get("x_label") or spec.get("x") or "step"),
            "y_label": str(spec.get("y_label") or ""),
            "log_y": bool(spec.get("log_y", False)),
        })  # fmt: skip
    return out


def expand(patterns: Sequence[str], names: Sequence[str]) -> list[str]:
    """Series names of a plot: literal names as given, fnmatch patterns (``val/*acc*``)
    replaced by the matching ``names`` in sorted order."""
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            out += sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
        else:
            out.append(pattern)
    return list(dict.fromkeys(out))


def fmt_number(value: float) -> str:
    """Compact tick / legend label: ``0.0005``, ``3.41``, ``1300``, ``12.5k``, ``1.2M``."""
    a = abs(value)
    if a >= 1e9:
        return f"{value / 1e9:.3g}G"
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clean(xs: Sequence[Any], ys: Sequence[Any], log_y: bool) -> Series:
    """Finite numeric points only (NaN and inf are logged as null); log10 of y if asked."""
    cx, cy = [], []
    for x, y in zip(xs, ys, strict=False):
        if x is None or y is None:
            continue
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)) or (log_y and y <= 0):
            continue
        cx.append(x)
        cy.append(math.log10(y) if log_y else y)
    return cx, cy


def wanted(specs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """Every series the ``specs`` plot given a run's metric ``names`` (patterns expanded)."""
    return list(dict.fromkeys(n for spec in specs for n in expand(spec["series"], names)))


class LinePlot(Widget):
    """One plot of one or more named series against step, with a title and legend.

    Data is held bounded (``max_points`` per series, min/max downsampled beyond that),
    downsampled to the plot's width when drawn, and redrawn only when it changed.
    """

    COMPONENT_CLASSES = frozenset(
        {
            "lineplot--axis",
            "lineplot--title",
            *(f"lineplot--series-{i}" for i in range(SERIES_STYLES)),
        }
    )

    def __init__(
        self,
        title: str = "",
        series: Sequence[str] = (),
        *,
        x_label: str = "step",
        y_label: str = "",
        log_y: bool = False,
        max_points: int = 4096,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._title = title
        self.x_label = x_label
        self.y_label = y_label
        self.log_y = log_y
        self.max_points = max(16, int(max_points))
        self._names: list[str] = list(series)
        self._data: dict[str, Series] = {}
        self._version = 0
        self._key: tuple | None = None
        self._lines: list[Strip] = []
        self._base = Style()
        self.drawn_points = 0
        """Points drawn by the last render, after downsampling to the width."""
        self.renders = 0
        """Times the plot was rebuilt (a redraw of unchanged data reuses the last one)."""

    @property
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, title: str) -> None:
        if title != self._title:
            self._title = title
            self._changed()

    # -- data -------------------------------------------------------------------------
    @property
    def series_names(self) -> list[str]:
        return list(self._names)

    def set_series_names(self, names: Sequence[str]) -> None:
        """Replace the plotted series (each drawn in the style of its place); drops other
        data."""
        self._names = list(names)
        self._data = {k: v for k, v in self._data.items() if k in self._names}
        self._changed()

    def color(self, name: str) -> Style:
        """The style a series is drawn in: ``lineplot--series-<its place>`` (cycled)."""
        index = self._names.index(name) if name in self._names else len(self._names)
        return self.get_component_rich_style(
            f"lineplot--series-{index % SERIES_STYLES}", partial=True
        )

    @property
    def point_count(self) -> int:
        """Points held across all series."""
        return sum(len(xs) for xs, _ in self._data.values())

    def points(self, name: str) -> Series:
        """The held (steps, values) of a series (log10 values for a log plot)."""
        xs, ys = self._data.get(name, ([], []))
        return list(xs), list(ys)

    def set_series(self, name: str, xs: Sequence[Any], ys: Sequence[Any]) -> bool:
        """Set one series' points; returns whether anything changed."""
        changed = self._store(name, xs, ys)
        if changed:
            self._changed()
        return changed

    def update_data(self, data: Mapping[str, tuple[Sequence[Any], Sequence[Any]]]) -> bool:
        """Set several series at once (names not plotted are ignored); one redraw."""
        changed = False
        for name in self._names:
            if name in data:
                changed |= self._store(name, *data[name])
        if changed:
            self._changed()
        return changed

    def clear(self) -> None:
        """Drop all points."""
        if self._data:
            self._data = {}
            self._changed()

    def _store(self, name: str, xs: Sequence[Any], ys: Sequence[Any]) -> bool:
        if name not in self._names:
            return False
        cx, cy = _clean(xs, ys, self.log_y)
        if len(cx) > self.max_points:
            cx, cy = _thin(cx, cy, self.max_points // 2 - 1)
        if self._data.get(name) == (cx, cy):
            return False
        self._data[name] = (cx, cy)
        return True

    def _changed(self) -> None:
        self._version += 1
        self.refresh()

    # -- drawing ----------------------------------------------------------------------
    def render_lines(self, crop: Region) -> list[Strip]:
        # rich_style walks every ancestor: look it up once per paint, not once per line
        width, height = self.size
        base = self.rich_style
        key = (self._version, width, height, base)
        if key != self._key:
            self._lines = self._build(width, height, base)
            self._key = key
            self.renders += 1
        self._base = base
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        if y < len(self._lines):
            return self._lines[y]
        return Strip.blank(self.size.width, self._base)

    def _build(self, width: int, height: int, base: Style) -> list[Strip]:
        if width <= 0 or height <= 0:
            return []
        axis = self.get_component_rich_style("lineplot--axis")
        title = self.get_component_rich_style("lineplot--title")
        visible = [n for n in self._names if self._data.get(n, ([], []))[0]]
        lines = [self._title_line(width, base, title)]
        rows = height - 2
        if rows < 1:
            return lines[:height]
        if not visible:
            wait = printable(f"waiting for {', '.join(self._names) or 'data'}…")
            lines += [Strip.blank(width, base) for _ in range(rows + 1)]
            lines[1 + rows // 2] = _text_line(wait.center(width), width, axis)
            self.drawn_points = 0
            return lines
        xs_all = [x for n in visible for x in self._data[n][0]]
        ys_all = [y for n in visible for y in self._data[n][1]]
        x0, x1 = min(xs_all), max(xs_all)
        y0, y1 = min(ys_all), max(ys_all)
        if y1 == y0:
            pad = abs(y0) * 0.05 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        ticks = {0: y1, rows - 1: y0}
        if rows >= 5:
            ticks[(rows - 1) // 2] = y1 - (y1 - y0) * ((rows - 1) // 2) / (rows - 1)
        labels = {r: self._y_label(v) for r, v in ticks.items()}
        label_w = max(len(s) for s in labels.values())
        cols = width - label_w - 1
        if cols < 2:
            return lines + [Strip.blank(width, base) for _ in range(rows + 1)]
        bits = [[0] * cols for _ in range(rows)]
        owner = [[-1] * cols for _ in range(rows)]
        self.drawn_points = 0
        for index, name in enumerate(visible):
            xs, ys = _thin(*self._data[name], cols)
            self.drawn_points += len(xs)
            _draw(bits, owner, index, xs, ys, (x0, x1), (y0, y1))
        styles = [base + self.color(n) for n in visible]
        for r in range(rows):
            mark = "┤" if r in labels else "│"
            segments = [Segment(labels.get(r, "").rjust(label_w) + mark, axis)]
            segments += _cells(bits[r], owner[r], styles, base)
            lines.append(Strip(segments, width))
        lines.append(self._x_axis(width, label_w, cols, x0, x1, axis))
        return lines

    def _y_label(self, value: float) -> str:
        return fmt_number(10**value) if self.log_y else fmt_number(value)

    def _title_line(self, width: int, base: Style, title: Style) -> Strip:
        name = printable(self.title + (f" ({self.y_label})" if self.y_label else ""))
        segments = [Segment(name, title)]
        for n in self._names:
            ys = self._data.get(n, ([], []))[1]
            last = self._y_label(ys[-1]) if ys else "–"
            segments.append(Segment("  ━ ", base + self.color(n)))
            segments.append(Segment(f"{printable(n)} {last}", base))
        return Strip(segments).crop_extend(0, width, base)

    def _x_axis(
        self, width: int, label_w: int, cols: int, x0: float, x1: float, axis: Style
    ) -> Strip:
        row = [" "] * cols
        left, right = fmt_number(x0), fmt_number(x1)
        mid = fmt_number((x0 + x1) / 2)
        _put(row, 0, left)
        if cols > len(left) + len(mid) + len(right) + 6:
            _put(row, (cols - len(mid)) // 2, mid)
        if x1 != x0:
            _put(row, cols - len(right), right)
        text = " " * (label_w + 1) + "".join(row)
        x_label = printable(self.x_label)
        if x_label and cols > len(left) + len(right) + len(x_label) + 4:
            # the axis name sits just left of the last tick
            at = label_w + 1 + cols - len(right) - len(x_label) - 1
            text = text[:at] + x_label + text[at + len(x_label) :]
        return _text_line(text, width, axis)


def _thin(xs: list[float], ys: list[float], width: int) -> Series:
    """``downsample`` that keeps the last point (the legend and the curve end at "now")."""
    tx, ty = downsample(xs, ys, width)
    if xs and (not tx or tx[-1] != xs[-1] or ty[-1] != ys[-1]):
        tx, ty = [*tx, xs[-1]], [*ty, ys[-1]]
    return list(tx), list(ty)


def _put(row: list[str], at: int, text: str) -> None:
    for i, ch in enumerate(text):
        if 0 <= at + i < len(row):
            row[at + i] = ch


def _text_line(text: str, width: int, style: Style) -> Strip:
    return Strip([Segment(text[:width].ljust(width), style)], width)


def _cells(bits: list[int], owner: list[int], styles: list[Style], base: Style) -> list[Segment]:
    """One plot row as segments, one per run of cells drawn by the same series."""
    out: list[Segment] = []
    run: list[str] = []
    current = -2
    for b, o in zip(bits, owner, strict=True):
        if o != current and run:
            out.append(Segment("".join(run), styles[current] if current >= 0 else base))
            run = []
        current = o
        run.append(chr(0x2800 + b) if b else " ")
    if run:
        out.append(Segment("".join(run), styles[current] if current >= 0 else base))
    return out


def _draw(
    bits: Grid,
    owner: Grid,
    index: int,
    xs: Sequence[float],
    ys: Sequence[float],
    xr: tuple[float, float],
    yr: tuple[float, float],
) -> None:
    """Draw a polyline into the braille grid (2 dots wide, 4 high per cell)."""
    rows, cols = len(bits), len(bits[0])
    w, h = cols * 2 - 1, rows * 4 - 1
    sx = w / (xr[1] - xr[0]) if xr[1] > xr[0] else 0.0
    sy = h / (yr[1] - yr[0])
    # a single step sits in the middle rather than on the left edge
    off = 0 if sx else w // 2
    points = [
        (off + round((x - xr[0]) * sx), round((yr[1] - y) * sy))
        for x, y in zip(xs, ys, strict=False)
    ]
    prev = points[0]
    _dot(bits, owner, index, *prev)
    for p in points[1:]:
        _line(bits, owner, index, prev, p)
        prev = p


def _line(bits: Grid, owner: Grid, index: int, a: tuple[int, int], b: tuple[int, int]) -> None:
    """Bresenham between two dots."""
    (x, y), (x1, y1) = a, b
    dx, dy = abs(x1 - x), -abs(y1 - y)
    step_x, step_y = (1 if x < x1 else -1), (1 if y < y1 else -1)
    err = dx + dy
    while True:
        _dot(bits, owner, index, x, y)
        if x == x1 and y == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x += step_x
        if e2 <= dx:
            err += dx
            y += step_y


def _dot(bits: Grid, owner: Grid, index: int, x: int, y: int) -> None:
    r, c = y >> 2, x >> 1
    bits[r][c] |= _DOTS[y & 3][x & 1]
    owner[r][c] = index


class PlotGrid(Widget):
    """The declared plots (``plots: [{title, series}, ...]``) in a two-column grid."""

    def __init__(
        self,
        plots: list[dict] | None = None,
        *,
        max_points: int = 4096,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.specs = plot_specs(plots)
        self.max_points = max_points
        if len(self.specs) == 1:
            self.add_class("-single")

    def compose(self):
        for spec in self.specs:
            yield LinePlot(
                spec["title"],
                spec["series"],
                x_label=spec["x_label"],
                y_label=spec["y_label"],
                log_y=spec["log_y"],
                max_points=self.max_points,
            )

    def wanted(self, names: Sequence[str]) -> list[str]:
        """The series the plots show given the metric ``names`` a run has."""
        return wanted(self.specs, names)

    @property
    def plots(self) -> list[LinePlot]:
        return list(self.query_children(LinePlot))

    def update_data(
        self,
        data: Mapping[str, tuple[Sequence[Any], Sequence[Any]]],
        names: Sequence[str] | None = None,
    ) -> bool:
        """Hand each plot its series, patterns expanded over ``names`` (default: the
        keys of ``data``); returns whether any plot changed."""
        names = list(data) if names is None else names
        changed = False
        for spec, plot in zip(self.specs, self.plots, strict=True):
            series = expand(spec["series"], names)
            if series != plot.series_names:
                plot.set_series_names(series)
                changed = True
            changed |= plot.update_data(data)
        return changed
