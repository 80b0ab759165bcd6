"""``lakeloom split``: stratified train/val/test splits written to ``samples.split``.

Rules, in order:

1. **Scope**: the samples selected by ``where`` / ``dataset`` (default: all). Samples
   outside the scope keep their split.
2. **Exclusion**: a sample flagged by one of ``exclude_flags`` (check names, e.g.
   ``caption_mismatch``) gets split ``excluded``; with ``exclude_confirmed`` so does a
   sample whose latest review decision on some check is ``confirmed`` (the tags of
   :mod:`lake.review`, written by the TUI).
3. **Units that never straddle**: samples that share a media (exact duplicates, the same
   image under two datasets), a source video (their media's ``parent_id``: frames and
   clips of one video) or a duplicate group of the duplicates check
   (``check_duplicates_group``) are joined (union-find) into one unit; a unit goes to one
   split as a whole. A unit with an excluded member is excluded whole, so no copy of a
   flagged sample leaks into training.
4. **Splits never move**: a sample already in ``train`` / ``val`` / ``test`` keeps it
   (only an exclusion takes it out, to ``excluded``). A new sample whose unit already has
   a split takes that split. A unit whose members were placed in different splits before
   a new sample joined them keeps them where they are, and its new samples are
   ``excluded`` (reported; never trained and tested at once). Only the units with no
   placed member are split below. ``reassign=true`` splits the whole scope afresh and
   the report counts the samples that moved (``changes.moves``: ``train->test`` ...).
5. **Stratification**: each unit's stratum is its members' most common value of
   ``stratify_by`` (``label`` by default; ``null`` is a stratum of its own). Within a
   stratum the new units are shuffled (``seed`` and the stratum's name: adding a class
   changes nobody else's order) and each goes to the split furthest below its target
   share of the stratum (``ratios``, counting the samples already placed), so every class
   is split in the same proportions, up to the size of one unit.
6. **Cap**: with ``max_per_class``, a dataset keeps at most that many samples of a class
   (each sample counts for its own dataset and class; unlabelled samples are the class
   ``<none>``). Placed samples count first; new units that would pass the cap (in
   shuffled order) are ``excluded``.
7. **Oversampling**: ``oversample: {class: factor}`` sets ``samples.split_repeat`` to the
   factor for that class's train samples (1 elsewhere); the training data module repeats
   them that many times per epoch.

The result is deterministic for a given lake, config and seed (units are ordered by their
smallest ``sample_id`` before shuffling, never by scan order). The report (counts per class
and split, repeats, exclusions; what was kept, newly assigned and moved) is printed and
written to ``{lake.reports}/split.json`` (DVC metrics) and ``split.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from lake.errors import ConfigError, LakeloomError
from lake.job import RunContext, hydra_job, run_record
from lake.review import is_confirmed
from lake.schema import MEDIA, SAMPLES
from lake.sql import filter_error
from lake.store import Lake

log = logging.getLogger("lakeloom.split")

SPLIT_NAMES = ("train", "val", "test")
EXCLUDED = "excluded"
REPEAT_COLUMN = "split_repeat"
DUPLICATE_GROUP = "check_duplicates_group"
NO_CLASS = "<none>"


class _UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def _ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    """Normalised ``train/val/test`` shares; unknown names or negative shares are errors."""
    unknown = set(ratios) - set(SPLIT_NAMES)
    if unknown:
        raise ConfigError(f"split.ratios: unknown split(s) {sorted(unknown)}; use {SPLIT_NAMES}")
    shares = {s: float(ratios.get(s, 0.0) or 0.0) for s in SPLIT_NAMES}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ConfigError(f"split.ratios must be >= 0 and not all 0, got {dict(ratios)}")
    total = sum(shares.values())
    return {s: v / total for s, v in shares.items()}


def _units(ids: list[str], media: list[list[str] | None], groups: list[str | None]) -> list[int]:
    """Unit root of every sample: shared media or duplicate group joins samples."""
    uf = _UnionFind(len(ids))
    first: dict[str, int] = {}
    for i, mids in enumerate(media):
        for key in mids or []:
            j = first.setdefault("m:" + key, i)
            if j != i:
                uf.union(i, j)
    for i, g in enumerate(groups):
        if g:
            j = first.setdefault("g:" + g, i)
            if j != i:
                uf.union(i, j)
    return [uf.find(i) for i in range(len(ids))]


def _class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per class: adding a class never changes how another one is shuffled."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def assign_splits(
    ids: Sequence[str],
    classes: Sequence[str | None],
    media: Sequence[list[str] | None],
    groups: Sequence[str | None],
    excluded: Sequence[bool],
    ratios: Mapping[str, float],
    seed: int = 0,
    max_per_class: int | None = None,
    current: Sequence[str | None] | None = None,
    datasets: Sequence[str | None] | None = None,
) -> list[str]:
    """The split of every sample (see the module docstring; pure, no lake access).

    ``current`` holds the splits the samples already have: a sample in ``train``, ``val``
    or ``test`` keeps it (it only leaves for ``excluded`` when its unit is excluded), and a
    new sample of a unit that already has a split joins it. ``None``: everything is split
    afresh. ``datasets`` makes ``max_per_class`` count per dataset (``None``: one dataset).
    """
    shares = _ratios(ratios)
    n = len(ids)
    now = [c if c in SPLIT_NAMES else None for c in (current or [None] * n)]
    sets = list(datasets) if datasets is not None else [None] * n
    roots = _units(list(ids), list(media), list(groups))
    members: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(roots):
        members[r].append(i)
    out = [""] * n
    # per class: samples per split so far, and the units still to place
    have: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLIT_NAMES, 0))
    by_class: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)
    # samples kept in a split per (dataset, own class): what max_per_class counts
    capped: Counter[tuple[str | None, str]] = Counter()

    def own(i: int) -> tuple[str | None, str]:
        return sets[i], classes[i] if classes[i] is not None else NO_CLASS

    for rows in members.values():
        if any(excluded[i] for i in rows):
            for i in rows:
                out[i] = EXCLUDED
            continue
        votes = Counter(classes[i] if classes[i] is not None else NO_CLASS for i in rows)
        top = max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0]
        placed = {now[i] for i in rows if now[i] is not None}
        if len(placed) > 1:
            # the unit was joined after its members were split (a new copy bridges two
            # splits): they keep their splits, its new samples go nowhere
            for i in rows:
                out[i] = now[i] or EXCLUDED
                if now[i] is not None:
                    have[top][now[i]] += 1
                    capped[own(i)] += 1
            continue
        if placed:
            split = placed.pop()
            for i in rows:
                out[i] = split
                capped[own(i)] += 1
            have[top][split] += len(rows)
            continue
        by_class[top].append((min(ids[i] for i in rows), rows))
    for name in sorted(by_class):
        units = sorted(by_class[name])
        order = _class_rng(seed, name).permutation(len(units))
        units = [units[k] for k in order]
        if max_per_class is not None:
            kept = []
            for key, rows in units:
                need = Counter(own(i) for i in rows)
                if any(capped[k] > 0 and capped[k] + v > max_per_class for k, v in need.items()):
                    for i in rows:
                        out[i] = EXCLUDED
                    continue
                capped.update(need)
                kept.append((key, rows))
            units = kept
        count = have[name]
        total = sum(count.values()) + sum(len(rows) for _, rows in units)
        for _, rows in units:
            # the split furthest below its target after this unit (ties: train, val, test)
            split = max(
                SPLIT_NAMES,
                key=lambda s: (shares[s] * total - count[s], -SPLIT_NAMES.index(s)),
            )
            if shares[split] == 0:  # every share is met: keep the largest target
                split = max(SPLIT_NAMES, key=lambda s: shares[s])
            count[split] += len(rows)
            for i in rows:
                out[i] = split
    return out


def changes(before: Sequence[str | None], after: Sequence[str]) -> dict[str, Any]:
    """What a split run changed: kept, newly placed, moved (with ``from->to`` counts)."""
    moves: Counter[str] = Counter()
    kept = placed = left = 0
    for b, a in zip(before, after, strict=True):
        if b in SPLIT_NAMES and a == b:
            kept += 1
        elif b in SPLIT_NAMES and a in SPLIT_NAMES:
            moves[f"{b}->{a}"] += 1
        elif b in SPLIT_NAMES:
            left += 1
        elif a in SPLIT_NAMES:
            placed += 1
    return {
        "kept": kept,
        "assigned": placed,
        "moved": sum(moves.values()),
        "moves": dict(sorted(moves.items())),
        "newly_excluded": left,
    }


def repeats(
    splits: Sequence[str], classes: Sequence[str | None], oversample: Mapping[str, float]
) -> list[int]:
    """``split_repeat`` of every sample: the class factor for train samples, else 1."""
    factors: dict[str, int] = {}
    for name, factor in (oversample or {}).items():
        f = int(factor)
        if f != factor or f < 1:
            raise ConfigError(f"split.oversample.{name}: the factor must be an integer >= 1")
        factors[str(name)] = f
    return [
        factors.get(c, 1) if s == "train" and c is not None else 1
        for s, c in zip(splits, classes, strict=True)
    ]


def report(
    splits: Sequence[str], classes: Sequence[str | None], reps: Sequence[int]
) -> dict[str, Any]:
    """Counts per class and split, with train counts after oversampling."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s, c, r in zip(splits, classes, reps, strict=True):
        name = c if c is not None else NO_CLASS
        table[name][s] += 1
        if s == "train":
            table[name]["train_repeated"] += r
    cols = [*SPLIT_NAMES, "train_repeated", EXCLUDED]
    per_class = {name: {k: int(table[name].get(k, 0)) for k in cols} for name in sorted(table)}
    totals = {k: sum(v[k] for v in per_class.values()) for k in cols}
    return {"samples": len(splits), "totals": totals, "per_class": per_class}


def markdown(rep: dict[str, Any]) -> str:
    """The report as a Markdown table."""
    cols = [*SPLIT_NAMES, "train_repeated", EXCLUDED]
    lines = [
        "# Split report",
        "",
        f"{rep['samples']} samples, seed {rep['seed']}, ratios {rep['ratios']}.",
        "",
        "| class | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, row in [*rep["per_class"].items(), ("**total**", rep["totals"])]:
        lines.append(f"| {name} | " + " | ".join(str(row[c]) for c in cols) + " |")
    if rep.get("exclude_confirmed"):
        lines += ["", _confirmed_line(rep)]
    if rep.get("changes"):
        lines += ["", changes_line(rep)]
    return "\n".join(lines) + "\n"


def _confirmed_line(rep: dict[str, Any]) -> str:
    n = rep.get("excluded_confirmed", 0)
    return f"{n} samples excluded by a confirmed review (their units with them)."


def changes_line(rep: dict[str, Any]) -> str:
    """One sentence on what this run changed: kept, newly assigned, moved, newly excluded."""
    c = rep["changes"]
    text = (
        f"{c['kept']} samples kept their split, {c['assigned']} newly assigned, "
        f"{c['newly_excluded']} newly excluded, {c['moved']} moved"
    )
    if c["moves"]:
        text += " (" + ", ".join(f"{k}: {v}" for k, v in c["moves"].items()) + ")"
    if not rep.get("reassign"):
        text += "; split.reassign=true would re-split the assigned samples"
    return text + "."


def format_report(rep: dict[str, Any]) -> str:
    """The report as a console table."""
    cols = [*SPLIT_NAMES, "train_repeated", EXCLUDED]
    width = max([len(n) for n in rep["per_class"]] + [5])
    lines = [f"{'class':<{width}}" + "".join(f"{c:>16}" for c in cols)]
    for name, row in [*rep["per_class"].items(), ("total", rep["totals"])]:
        lines.append(f"{name:<{width}}" + "".join(f"{row[c]:>16}" for c in cols))
    if rep.get("exclude_confirmed"):
        lines.append(_confirmed_line(rep))
    if rep.get("changes"):
        lines.append(changes_line(rep))
    return "\n".join(lines)


def _video_keys(lake: Lake, media: Sequence[list[str] | None]) -> list[list[str]]:
    """Each sample's media ids plus the source video of each (``media.parent_id``).

    A frame or an extracted audio track names its video as parent, so every sample cut
    from one video shares that key and the video goes to one split whole.
    """
    if not lake.exists(MEDIA):
        return [list(m or []) for m in media]
    rows = lake.dataset(MEDIA).to_table(
        columns=["media_id", "parent_id"], filter="parent_id IS NOT NULL"
    )
    parent = dict(
        zip(rows.column("media_id").to_pylist(), rows.column("parent_id").to_pylist(), strict=True)
    )
    out = []
    for mids in media:
        keys = list(mids or [])
        keys += [parent[m] for m in keys if m in parent]
        out.append(keys)
    return out


def split_lake(
    lake: Lake,
    ratios: Mapping[str, float],
    seed: int = 0,
    where: str | None = None,
    stratify_by: str = "label",
    exclude_flags: Sequence[str] = (),
    oversample: Mapping[str, float] | None = None,
    max_per_class: int | None = None,
    reports: str | Path | None = None,
    exclude_confirmed: bool = False,
    reassign: bool = False,
) -> dict[str, Any]:
    """Assign splits to the selected samples and write ``split`` and ``split_repeat``.

    Samples that already have a split keep it (new ones are placed around them); with
    ``reassign`` the selection is split afresh and the report counts what moved.
    """
    if not lake.exists(SAMPLES):
        raise ConfigError(f"lake {lake.uri} has no samples table: ingest something first")
    have = {f.name for f in lake.table(SAMPLES).schema}
    if stratify_by not in have:
        raise ConfigError(f"split.stratify_by: samples have no column {stratify_by!r}")
    cols = ["sample_id", "dataset", "media_ids", "flags", "split", stratify_by]
    if exclude_confirmed:
        cols.append("tags")
    if DUPLICATE_GROUP in have:
        cols.append(DUPLICATE_GROUP)
    try:
        rows = lake.dataset(SAMPLES).to_table(columns=list(dict.fromkeys(cols)), filter=where)
    except ValueError as exc:  # Lance reports a bad filter as ValueError
        raise filter_error("split where filter", where, exc) from exc
    if rows.num_rows == 0:
        raise ConfigError(f"no samples selected by {where!r}")
    ids = rows.column("sample_id").to_pylist()
    classes = [None if c is None else str(c) for c in rows.column(stratify_by).to_pylist()]
    before = rows.column("split").to_pylist()
    flags = rows.column("flags").to_pylist()
    drop = set(exclude_flags or ())
    excluded = [bool(drop & set(f or [])) for f in flags]
    confirmed = (
        [is_confirmed(t) for t in rows.column("tags").to_pylist()]
        if exclude_confirmed
        else [False] * len(ids)
    )
    excluded = [e or c for e, c in zip(excluded, confirmed, strict=True)]
    groups = (
        rows.column(DUPLICATE_GROUP).to_pylist() if DUPLICATE_GROUP in cols else [None] * len(ids)
    )
    splits = assign_splits(
        ids,
        classes,
        _video_keys(lake, rows.column("media_ids").to_pylist()),
        groups,
        excluded,
        ratios,
        seed,
        max_per_class,
        current=None if reassign else before,
        datasets=rows.column("dataset").to_pylist(),
    )
    moved = changes(before, splits)
    if moved["moved"] and not reassign:  # assign_splits keeps every placed sample
        raise LakeloomError(f"split moved {moved['moved']} samples without split.reassign")
    reps = repeats(splits, classes, oversample or {})
    lake.add_columns(SAMPLES, [pa.field(REPEAT_COLUMN, pa.int32())])
    lake.update_columns(
        SAMPLES,
        pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "split": pa.array(splits, pa.string()),
                REPEAT_COLUMN: pa.array(reps, pa.int32()),
            }
        ),
    )
    rep = report(splits, classes, reps)
    rep.update(
        seed=int(seed),
        ratios={k: round(v, 6) for k, v in _ratios(ratios).items()},
        where=where,
        stratify_by=stratify_by,
        exclude_flags=sorted(drop),
        exclude_confirmed=bool(exclude_confirmed),
        excluded_confirmed=sum(confirmed),
        oversample={str(k): int(v) for k, v in (oversample or {}).items()},
        max_per_class=max_per_class,
        reassign=bool(reassign),
        changes=moved,
    )
    if reports is not None:
        out = Path(reports)
        out.mkdir(parents=True, exist_ok=True)
        (out / "split.json").write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
        (out / "split.md").write_text(markdown(rep))
    return rep


@hydra_job("split")
def main(cfg: Any) -> int:
    """Hydra entry point: split the selected samples and write the reports."""
    from omegaconf import OmegaConf

    from lake.check import scope

    ctx = RunContext.from_config("split", cfg)
    lake = Lake.from_config(cfg.lake)
    s = cfg.split
    where = scope(cfg.get("where"), cfg.get("dataset"))
    oversample = OmegaConf.to_container(s.oversample, resolve=True) if s.oversample else {}
    with run_record(lake, ctx, {"where": where}):
        rep = split_lake(
            lake,
            ratios=OmegaConf.to_container(s.ratios, resolve=True),  # type: ignore[arg-type]
            seed=int(s.seed),
            where=where,
            stratify_by=str(s.stratify_by),
            exclude_flags=list(s.exclude_flags or []),
            exclude_confirmed=bool(s.get("exclude_confirmed", False)),
            oversample=oversample,  # type: ignore[arg-type]
            max_per_class=None if s.max_per_class is None else int(s.max_per_class),
            reports=cfg.lake.reports,
            reassign=bool(s.get("reassign", False)),
        )
        print(format_report(rep))
        print(f"reports: {Path(cfg.lake.reports) / 'split.md'}, split.json")
        versions = lake.tag(ctx.run_id)
        lake.record_run(ctx.record("finished", counts=rep["totals"], versions=versions))
    return 0


if __name__ == "__main__":
    main()
